"""akamaster's pretrained CIFAR-10 ResNets, read without PyTorch.

The checkpoints (``akamaster/pytorch_resnet_cifar10``, ``pretrained_models/*.th``) are
legacy (pre-1.6, non-zip) ``torch.save`` files: a sequence of pickles in one file,

1. the magic number ``0x1950a86a20f9469cfc6c``, 2. the protocol version ``1001``,
3. ``sys_info`` (``little_endian``, type sizes), 4. the object itself, whose tensors
   are ``torch._utils._rebuild_tensor[_v2](storage, offset, size, stride, ...)`` calls and
   whose storages are persistent ids ``('storage', torch.FloatStorage, key, location,
   size, view_metadata)``, 5. the list of storage keys,

then, for each key in that list, an 8-byte little-endian element count and the raw
little-endian data. :func:`load_torch_legacy` reads this with a restricted unpickler that
allows only the few names above and refuses anything else with :class:`UnsafePickleError`.
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
import pickle

import numpy as np

from wsl.data import images

_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
RESNET_CIFAR10 = {
    depth: (name, _URL + name, sha)
    for depth, name, sha in (
        (
            20,
            "resnet20-12fca82f.th",
            "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
        ),
        (
            32,
            "resnet32-d509ac18.th",
            "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850",
        ),
        (
            44,
            "resnet44-014dd654.th",
            "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4",
        ),
        (
            56,
            "resnet56-4bfd9763.th",
            "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367",
        ),
    )
}

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
# torch storage class -> little-endian numpy dtype of its raw data.
STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global (or persistent object) outside the allowed few."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Stands in for ``torch.<Name>Storage``: only says which dtype the raw data has."""

    name: str
    dtype: np.dtype


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    """``torch._utils._rebuild_tensor[_v2]``: a strided view of a storage, as numpy."""
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise pickle.UnpicklingError("tensor does not refer to a storage")
    size, stride, offset = tuple(map(int, size)), tuple(map(int, stride)), int(storage_offset)
    if len(size) != len(stride) or offset < 0 or min(size + stride, default=0) < 0:
        raise pickle.UnpicklingError(f"bad tensor geometry {offset=} {size=} {stride=}")
    if 0 not in size:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= storage.size:
            raise pickle.UnpicklingError(
                f"tensor {size=} {stride=} at offset {offset} overruns its storage of "
                f"{storage.size} elements"
            )
    base = storage[offset:] if offset < storage.size else storage[:0]
    strides = tuple(s * storage.itemsize for s in stride)
    return np.lib.stride_tricks.as_strided(base, shape=size, strides=strides)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
    """``torch._utils._rebuild_parameter``: an ``nn.Parameter`` is just its data here."""
    return data


class _LegacyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the names a legacy ``state_dict`` checkpoint needs.

    Storages are allocated (uninitialised) in ``storages`` as they are first referred to;
    :func:`load_torch_legacy` fills them from the data after the pickles."""

    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, file, path, storages):
        super().__init__(file)
        self.path = path
        self.storages = storages

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[module, name]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name, np.dtype(STORAGE_DTYPES[name]))
        raise UnsafePickleError(
            f"{self.path}: the pickle asks for {module}.{name}, which is not allowed; "
            "only tensors, storages and OrderedDict are loaded (refused, nothing executed)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            kind = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
            raise UnsafePickleError(f"{self.path}: refusing persistent object {kind!r}")
        _, stype, key, _location, size, *view = pid
        if not isinstance(stype, _StorageType):
            raise UnsafePickleError(f"{self.path}: storage of unknown type {stype!r}")
        root = self.storages.get(key)
        if root is None:
            root = self.storages[key] = np.empty(int(size), stype.dtype)
        if root.dtype != stype.dtype or root.size != int(size):
            raise pickle.UnpicklingError(f"{self.path}: storage {key} declared twice differently")
        if view and view[0] is not None:
            _view_key, offset, view_size = view[0]
            return root[int(offset) : int(offset) + int(view_size)]
        return root


def _materialize(obj):
    """Copy every array view into an owned, native-endian array; rebuild containers."""
    if isinstance(obj, np.ndarray):
        return np.array(obj, dtype=obj.dtype.newbyteorder("="), copy=True)
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def load_torch_legacy(path) -> object:
    """Load a legacy (pre-1.6, non-zip) ``torch.save`` file without torch.

    Tensors become numpy arrays (``FloatStorage`` -> float32, ``LongStorage`` -> int64,
    ...); ``OrderedDict``, dicts, lists, numbers and strings stay as they are. Any other
    global in the pickle raises :class:`UnsafePickleError` before anything is called."""
    path = pathlib.Path(path)
    storages: dict[str, np.ndarray] = {}

    def unpickle(f):
        return _LegacyUnpickler(f, path, storages).load()

    with open(path, "rb") as f:
        if f.read(2) == b"PK":
            raise ValueError(f"{path} is a zip-format torch file (torch >= 1.6), not legacy")
        f.seek(0)
        try:
            magic = unpickle(f)
            if magic != LEGACY_MAGIC:
                raise ValueError(f"{path} is not a legacy torch file (magic {magic!r})")
            if (version := unpickle(f)) != LEGACY_PROTOCOL:
                raise ValueError(f"{path}: unsupported torch protocol version {version!r}")
            sys_info = unpickle(f)
            if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
                raise ValueError(f"{path}: only little-endian files are supported ({sys_info})")
            obj = unpickle(f)
            keys = unpickle(f)
        except (EOFError, pickle.UnpicklingError) as e:
            if isinstance(e, UnsafePickleError):
                raise
            raise ValueError(f"corrupt torch file {path}: {e}") from e
        if not isinstance(keys, list) or set(keys) != set(storages) or len(keys) != len(set(keys)):
            raise ValueError(f"corrupt torch file {path}: storage key list does not match")
        for key in keys:
            buf = storages[key]
            count = int.from_bytes(f.read(8), "little")
            if count != buf.size:
                raise ValueError(
                    f"corrupt torch file {path}: storage {key} has {count} elements, "
                    f"expected {buf.size}"
                )
            if f.readinto(buf.view(np.uint8)) != buf.nbytes:
                raise ValueError(f"corrupt torch file {path}: storage {key} is truncated")
    return _materialize(obj)


def load_resnet_cifar10(
    depth: int, path=None, download: bool = False
) -> tuple[dict[str, np.ndarray], float]:
    """akamaster's pretrained CIFAR-10 ResNet-``depth`` (20, 32, 44 or 56).

    ``path`` is the data root (default :func:`wsl.data.images.data_dir`; the file is
    ``resnet-cifar10/<name>`` under it) or the checkpoint file itself. Returns the
    ``state_dict`` in file order with the ``module.`` prefix stripped (torch layouts:
    conv ``(out, in, kh, kw)``, linear ``(out, in)``) and ``best_prec1`` (top-1 %, on the
    original lossless CIFAR-10 test set)."""
    if depth not in RESNET_CIFAR10:
        raise ValueError(f"no pretrained ResNet-{depth}; choose one of {sorted(RESNET_CIFAR10)}")
    name, url, sha256 = RESNET_CIFAR10[depth]
    if path is not None and pathlib.Path(path).is_file():
        file = pathlib.Path(path)
    else:
        file = images.data_dir(path) / "resnet-cifar10" / name
    images.ensure_file(file, url, sha256, download)
    ckpt = load_torch_legacy(file)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"{file}: expected a dict with a 'state_dict', got {type(ckpt)}")
    state = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
    return state, float(ckpt.get("best_prec1", float("nan")))


def resnet_cifar10_flax(depth: int, path=None, download: bool = False):
    """akamaster's pretrained ResNet-`depth` as Flax: (module, variables, spec).

    The torch state dict is converted through the spec traced from `subjects.ResNet`
    (so the weights carry the network's symmetry information); a checkpoint whose
    layers do not match the architecture stops with an error naming the first layer."""
    import jax
    import jax.numpy as jnp

    from wsl.nn.subjects import ResNet
    from wsl.weights import convert, spec

    state_dict, _ = load_resnet_cifar10(depth, path, download)
    module = ResNet(depth)
    x = jnp.zeros((1, 32, 32, 3), jnp.float32)
    spec_ = spec.spec_from_flax(module, module.init(jax.random.key(0), x), x)
    weights = convert.torch_to_canonical(state_dict, spec_)
    return module, convert.canonical_to_flax(spec_, weights), spec_
