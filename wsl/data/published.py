"""Loaders for published weight-space data sets, in their own file layouts, without
PyTorch.

- Small CNN Zoo (Unterthiner et al. 2020): `weights.npy`, `metrics.csv.gz`,
  `layout.csv` -> `wsl.data.zoo.load_small_cnn_zoo`.
- Model Zoos (Schürholt et al. 2022): raw = one folder per model with `params.json`,
  `result.json`, `checkpoint_<epoch>/checkpoints` -> `load_model_zoo_raw`; preprocessed =
  `*.pt` holding {"trainset", "valset", "testset"} -> `load_model_zoo_preprocessed`.
- DWSNets INR sets (Navon et al. 2023): splits JSON {split: {"path", "label"}} + one
  torch `state_dict` per INR -> `load_dwsnets_inrs`.
- CNN Wild Park (Kofinas et al. 2024): splits JSON {split: {"path", "score", "step"}} +
  `checkpoint.pt` = {"model", "config", ...} per checkpoint -> `load_cnn_wild_park`.

Torch files are read by :func:`load_torch`: zip-format files (torch >= 1.6) and legacy
ones (`wsl.data.pretrained.load_torch_legacy`), with a restricted unpickler (tensors,
storages, OrderedDict, and for Model Zoos' `dataset.pt` its dataset class as a plain
attribute bag); anything else is refused before it is called. :func:`save_torch`
writes the zip format (for fixtures and exports).

Download locations are in :data:`SOURCES` (sha256 None where the publisher gives none
and we could not fetch the file to compute it; `wsl.data.images.ensure_file` skips the
check then).

**DWSNets' INR variant** (`DWSNets/nn/inr.py`): 2 -> 32 -> 32 -> 1, `Siren` layers
sin(30 (x W^T + b)) in layers 0 and 1, `nn.Linear` last layer; sine-layer biases
initialised to **zero**; both sine layers W ~ U(-sqrt(6/in)/30, +) (W0: +-0.058: the
first-layer init of Sitzmann's SIREN is *not* applied, `is_first` is never set); the last
layer keeps PyTorch's default init; the output is **`+ 0.5`**; coordinates as
`wsl.data.inr.coordinates` (x = column). Keys `seq.{0,1,2}.{weight,bias}`, torch layout.
:func:`dwsnets_inr_apply` evaluates one.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import pathlib
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence

import numpy as np

from wsl.data import pretrained
from wsl.weights import convert
from wsl.weights import spec as wspec


@dataclasses.dataclass(frozen=True)
class Source:
    url: str
    sha256: str | None
    note: str = ""


_GCS = "https://storage.googleapis.com/gresearch/smallcnnzoo-dataset/"
_ZENODO = "https://zenodo.org/records/"
_DWS = "https://www.dropbox.com/sh/56pakaxe58z29mq/"
_NFN = (
    "https://raw.githubusercontent.com/AllanYangZhou/nfn/main/experiments/predict_gen_data_splits/"
)
SOURCES: dict[str, Source] = {
    # Small CNN Zoo: public GCS bucket (the README links storage.cloud.google.com, which
    # asks for a Google login; storage.googleapis.com serves the same object). No
    # checksum is published; not fetched here (no network), so None.
    "small_cnn_zoo/mnist": Source(_GCS + "mnist.tar.xz", None, "269,973 rows"),
    "small_cnn_zoo/fashion_mnist": Source(_GCS + "fashion_mnist.tar.xz", None, "270,000 rows"),
    "small_cnn_zoo/cifar10": Source(_GCS + "cifar10.tar.xz", None, "CIFAR10-GS, 270,000 rows"),
    "small_cnn_zoo/svhn_cropped": Source(
        _GCS + "svhn_cropped.tar.xz", None, "SVHN-GS, 269,892 rows"
    ),
    # NFN / neural-graphs split convention: a fixed permutation of weights.npy rows.
    "nfn_split/mnist": Source(_NFN + "mnist_split.csv", None),
    "nfn_split/fashion_mnist": Source(_NFN + "fashion_mnist_split.csv", None),
    "nfn_split/cifar10": Source(_NFN + "cifar10_split.csv", None),
    "nfn_split/svhn": Source(_NFN + "svhn_split.csv", None),
    # Schürholt et al. Model Zoos: Zenodo records (raw zips and preprocessed .pt files;
    # file names inside the records are listed on the record pages).
    "model_zoos/mnist_cnn_s": Source(_ZENODO + "6632086", None, "DOI 10.5281/zenodo.6632086"),
    "model_zoos/fashion_mnist_cnn_s": Source(
        _ZENODO + "6632104", None, "DOI 10.5281/zenodo.6632104"
    ),
    "model_zoos/svhn_cnn_s": Source(_ZENODO + "6632120", None, "DOI 10.5281/zenodo.6632120"),
    "model_zoos/usps_cnn_s": Source(_ZENODO + "6633626", None, "DOI 10.5281/zenodo.6633626"),
    "model_zoos/cifar10_cnn_s_l": Source(_ZENODO + "6620868", None, "DOI 10.5281/zenodo.6620868"),
    # DWSNets INR sets (Dropbox folder of the DWSNets / neural-graphs READMEs).
    "dwsnets/mnist_inrs": Source(_DWS + "AABrctdu2U65jGYr2WQRzmMna/mnist-inrs.zip?dl=1", None),
    "dwsnets/fmnist_inrs": Source(_DWS + "AAAssoHq719OmSHSKKTiKKHGa/fmnist_inrs.zip?dl=1", None),
    # CNN Wild Park (neural-graphs): Zenodo record.
    "cnn_wild_park": Source(_ZENODO + "12797219", None, "DOI 10.5281/zenodo.12797219"),
}


# ======================================================================================
# torch files without torch
# ======================================================================================


class _AttrBag:
    """Stands in for a pickled Python object of an allowed class: its state becomes
    attributes (a dict state) or `state` (anything else)."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = {**state[0], **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.state = state

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {sorted(self.__dict__)}>"


class ModelZooDataset(_AttrBag):
    """Model Zoos' `ModelDatasetBase` as an attribute bag (`data_in`, `properties`,
    `paths`, `epochs`, ...)."""


def _path(*parts):
    return pathlib.PurePosixPath(*parts)


class _ZipUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): pretrained._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): pretrained._rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): pretrained._rebuild_parameter,
        ("pathlib", "PosixPath"): _path,
        ("pathlib", "PurePosixPath"): _path,
        ("pathlib", "WindowsPath"): pathlib.PureWindowsPath,
    }
    # Model Zoos' preprocessed dataset class (module path as pickled by their code)
    _DATASETS = {"ModelDatasetBase"}

    def __init__(self, file, path, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.path, self.archive, self.prefix = path, archive, prefix
        self.storages: dict[str, np.ndarray] = {}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[module, name]
        if module == "torch" and name in pretrained.STORAGE_DTYPES:
            return pretrained._StorageType(name, np.dtype(pretrained.STORAGE_DTYPES[name]))
        if name in self._DATASETS and module.split(".")[-1] == "dataset_base":
            return ModelZooDataset
        raise pretrained.UnsafePickleError(
            f"{self.path}: the pickle asks for {module}.{name}, which is not allowed; only "
            "tensors, storages, OrderedDict, paths and Model Zoos' dataset class are loaded "
            "(refused, nothing executed)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pretrained.UnsafePickleError(f"{self.path}: refusing persistent id {pid!r}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, pretrained._StorageType):
            raise pretrained.UnsafePickleError(f"{self.path}: storage of unknown type {stype!r}")
        if key not in self.storages:
            raw = self.archive.read(f"{self.prefix}data/{key}")
            arr = np.frombuffer(raw, stype.dtype)
            if arr.size != int(numel):
                raise ValueError(
                    f"corrupt torch file {self.path}: storage {key} has "
                    f"{arr.size} elements, expected {numel}"
                )
            self.storages[key] = arr
        return self.storages[key]


def load_torch(path):
    """Load a `torch.save` file without torch: tensors become numpy arrays (native byte
    order, owned copies); containers stay. Zip format (torch >= 1.6) or legacy."""
    path = pathlib.Path(path)
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"PK":
        return pretrained.load_torch_legacy(path)
    with zipfile.ZipFile(path) as zf:
        pkl = [n for n in zf.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise ValueError(f"{path} is a zip but not a torch file (data.pkl entries: {pkl})")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = f"{prefix}byteorder"
        if byteorder in zf.namelist() and zf.read(byteorder).strip() != b"little":
            raise ValueError(f"{path}: only little-endian torch files are supported")
        try:
            obj = _ZipUnpickler(io.BytesIO(zf.read(pkl[0])), path, zf, prefix).load()
        except pretrained.UnsafePickleError:
            raise
        except (EOFError, pickle.UnpicklingError, KeyError) as e:
            raise ValueError(f"corrupt torch file {path}: {e}") from e
    return _materialize(obj)


def _materialize(obj):
    if isinstance(obj, np.ndarray):
        return np.array(obj, dtype=obj.dtype.newbyteorder("="), copy=True)
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_materialize(v) for v in obj)
    if isinstance(obj, _AttrBag):
        obj.__dict__.update({k: _materialize(v) for k, v in obj.__dict__.items()})
    return obj


_STORAGE_NAMES = {np.dtype(v).newbyteorder("<"): k for k, v in pretrained.STORAGE_DTYPES.items()}


class _Global:
    """A (module, name) global to write into a pickle without importing it."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name


class _Tensor:
    def __init__(self, array: np.ndarray):
        self.array = np.ascontiguousarray(array)


@dataclasses.dataclass
class PickledObject:
    """An instance of `module.name` to write with :func:`save_torch` without importing
    it: pickled as `cls.__new__(cls)` then `__setstate__(state)` (how protocol 2 stores a
    plain Python object, e.g. Model Zoos' dataset class)."""

    module: str
    name: str
    state: dict


class _TorchPickler(pickle._Pickler):  # the pure-Python pickler: save_global overridable
    def __init__(self, file):
        super().__init__(file, protocol=2)
        self.storages: list[np.ndarray] = []

    def persistent_id(self, obj):
        if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == "__storage__":
            arr = obj[1]
            key = str(len(self.storages))
            self.storages.append(arr)
            name = _STORAGE_NAMES[arr.dtype.newbyteorder("<")]
            return ("storage", _Global("torch", name), key, "cpu", int(arr.size))
        return None

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        if isinstance(obj, _Tensor):
            a = obj.array
            stride = tuple(int(s // a.itemsize) for s in a.strides) if a.ndim else ()
            self.save_reduce(
                _Global("torch._utils", "_rebuild_tensor_v2"),
                (
                    ("__storage__", a.reshape(-1)),
                    0,
                    tuple(a.shape),
                    stride,
                    False,
                    collections.OrderedDict(),
                ),
                obj=None,
            )
            return
        if isinstance(obj, np.ndarray):
            return self.save(_Tensor(obj))
        if isinstance(obj, PickledObject):
            self.save(_Global(obj.module, obj.name))
            self.save(())
            self.write(pickle.NEWOBJ)
            self.save(obj.state)
            self.write(pickle.BUILD)
            return
        if isinstance(obj, collections.OrderedDict):
            self.save_reduce(_Global("collections", "OrderedDict"), (list(obj.items()),), obj=None)
            return
        super().save(obj, save_persistent_id)

    def save_reduce(
        self, func, args, state=None, listitems=None, dictitems=None, state_setter=None, *, obj=None
    ):
        if isinstance(func, _Global):
            self.save(func)
            self.save(args)
            self.write(pickle.REDUCE)
            return
        super().save_reduce(func, args, state, listitems, dictitems, state_setter, obj=obj)


def save_torch(obj, path, archive_name: str = "archive") -> None:
    """Write `obj` (dicts / OrderedDicts / lists of numpy arrays, numbers, strings) as a
    zip-format `torch.save` file that `torch.load` and :func:`load_torch` read; numpy
    arrays become tensors. Used for test fixtures in the published layouts."""
    buf = io.BytesIO()
    p = _TorchPickler(buf)
    p.dump(obj)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{archive_name}/data.pkl", buf.getvalue())
        zf.writestr(f"{archive_name}/byteorder", "little")
        for i, arr in enumerate(p.storages):
            zf.writestr(
                f"{archive_name}/data/{i}",
                np.ascontiguousarray(arr, arr.dtype.newbyteorder("<")).tobytes(),
            )
        zf.writestr(f"{archive_name}/version", "3\n")


# ======================================================================================
# DWSNets INR sets
# ======================================================================================


@dataclasses.dataclass
class PublishedSet:
    """Networks of one split of a published set: canonical weights per network (tuples
    of per-layer dicts), the torch-name spec of each, a target per network (`labels` or
    `scores`), file paths, and per-network metadata dicts."""

    weights: list
    specs: list
    targets: np.ndarray
    paths: list
    meta: list

    def __len__(self) -> int:
        return len(self.weights)

    def stacked(self) -> tuple:
        """Stack the weights (all networks must share one architecture)."""
        return convert.stack(self.weights)


def _read_splits(splits_json, split: str) -> dict:
    with open(splits_json) as f:
        splits = json.load(f)
    if split not in splits:
        raise KeyError(f"{splits_json} has splits {sorted(splits)}, not {split!r}")
    return splits[split]


def _resolve(root: pathlib.Path, p: str) -> pathlib.Path:
    q = pathlib.Path(p)
    return q if q.is_absolute() else root / q


def load_dwsnets_inrs(
    splits_json, split: str = "train", root=None, limit: int | None = None
) -> PublishedSet:
    """One split of a DWSNets INR set: `splits_json` = {split: {"path": [...], "label":
    [...]}} (as `generate_data_splits.py` writes it), each path a `state_dict` with keys
    `seq.{i}.weight/bias` (torch layout). Relative paths are relative to `root` (default:
    the JSON's folder). Weights come back canonical (dense kernels (in, out))."""
    s = _read_splits(splits_json, split)
    root = pathlib.Path(root) if root is not None else pathlib.Path(splits_json).parent
    paths = s["path"][:limit] if limit else s["path"]
    weights, specs = [], []
    for p in paths:
        sd = load_torch(_resolve(root, p))
        specs.append(wspec.spec_from_state_dict(sd))
        weights.append(convert.torch_to_canonical(sd))
    labels = np.asarray([int(v) for v in s["label"][: len(paths)]])
    return PublishedSet(weights, specs, labels, list(paths), [{} for _ in paths])


def dwsnets_inr_apply(weights, coords, omega_0: float = 30.0, offset: float = 0.5):
    """Evaluate one DWSNets INR from canonical weights: sine layers, linear last layer,
    `+ offset` (0.5 in DWSNets)."""
    h = np.asarray(coords, np.float32)
    for i, layer in enumerate(weights):
        h = h @ layer["kernel"] + layer["bias"]
        if i < len(weights) - 1:
            h = np.sin(omega_0 * h)
    return h + offset


# ======================================================================================
# CNN Wild Park
# ======================================================================================


def load_cnn_wild_park(
    splits_json, split: str = "train", root=None, limit: int | None = None
) -> PublishedSet:
    """One split of CNN Wild Park: `splits_json` = {split: {"path", "score", "step"}}
    (`cnn_park_splits.json`), each path a `checkpoint.pt` = {"model": state_dict
    (`layers.{i}.weight/bias` convs, `fc.weight/bias`), "config": {"residual",
    "activation", "channels", "kernel_size", ...}, ...}. Targets are the scores (test
    accuracy); meta holds each network's config and step."""
    s = _read_splits(splits_json, split)
    root = pathlib.Path(root) if root is not None else pathlib.Path(splits_json).parent
    paths = s["path"][:limit] if limit else s["path"]
    weights, specs, meta = [], [], []
    for i, p in enumerate(paths):
        ckpt = load_torch(_resolve(root, p))
        if not isinstance(ckpt, dict) or "model" not in ckpt:
            raise ValueError(f"{p}: expected a dict with 'model' (and 'config')")
        sd = ckpt["model"]
        specs.append(wspec.spec_from_state_dict(sd))
        weights.append(convert.torch_to_canonical(sd))
        meta.append(
            {"config": dict(ckpt.get("config", {})), "step": s.get("step", [None] * len(paths))[i]}
        )
    return PublishedSet(
        weights, specs, np.asarray(s["score"][: len(paths)], np.float64), list(paths), meta
    )


# ======================================================================================
# Model Zoos (Schürholt et al.)
# ======================================================================================


def _read_jsonl(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_model_zoo_raw(root, epochs: Sequence[int] | None = None) -> PublishedSet:
    """A raw Model Zoo folder (ray-tune layout): one folder per model with `params.json`
    (the config), `result.json` (one JSON object per epoch, e.g. `test_acc`,
    `train_acc`, `training_iteration`) and `checkpoint_<epoch>/checkpoints` (a torch
    state_dict; `checkpoint_000005` or `checkpoint_5`). Returns one entry per (model,
    epoch) with canonical weights, target = that epoch's `test_acc`, meta = {"config",
    "result", "epoch", "model"}. Models are in sorted folder order."""
    root = pathlib.Path(root)
    models = sorted(p for p in root.iterdir() if p.is_dir() and (p / "params.json").exists())
    if not models:
        raise FileNotFoundError(f"{root}: no model folders with params.json")
    weights, specs, targets, paths, meta = [], [], [], [], []
    for m in models:
        config = json.loads((m / "params.json").read_text())
        results = _read_jsonl(m / "result.json") if (m / "result.json").exists() else []
        by_iter = {int(r.get("training_iteration", i + 1)): r for i, r in enumerate(results)}
        ckpts = {}
        for c in m.glob("checkpoint_*"):
            if (c / "checkpoints").exists() and re.fullmatch(r"checkpoint_\d+", c.name):
                ckpts[int(c.name.split("_")[1])] = c / "checkpoints"
        for e in sorted(ckpts) if epochs is None else [e for e in epochs if e in ckpts]:
            sd = load_torch(ckpts[e])
            if isinstance(sd, dict) and "model_state_dict" in sd:
                sd = sd["model_state_dict"]
            specs.append(wspec.spec_from_state_dict(sd))
            weights.append(convert.torch_to_canonical(sd))
            res = by_iter.get(e, {})
            targets.append(float(res.get("test_acc", np.nan)))
            paths.append(str(ckpts[e]))
            meta.append({"config": config, "result": res, "epoch": e, "model": m.name})
    return PublishedSet(weights, specs, np.asarray(targets), paths, meta)


def load_model_zoo_preprocessed(path) -> dict[str, ModelZooDataset]:
    """A preprocessed Model Zoo file (`*.pt` from the Zenodo records): {"trainset",
    "valset", "testset"} of their `ModelDatasetBase`. Each comes back as an attribute bag
    with (at least) `data_in` (checkpoints as OrderedDicts of numpy arrays, or a weight
    matrix in 'vector' mode), `properties` (dict of lists: test_acc, training_iteration,
    ggap, config keys), `paths`, `epochs`; plus `weights` (N, P): the vectorised weights
    (`weights_in` if present, else each checkpoint's arrays flattened in order)."""
    obj = load_torch(path)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict of datasets, got {type(obj).__name__}")
    out = {}
    for name, ds in obj.items():
        if not isinstance(ds, _AttrBag):
            raise ValueError(f"{path}: {name!r} is a {type(ds).__name__}, not a dataset")
        if getattr(ds, "weights_in", None) is not None:
            ds.weights = np.asarray(ds.weights_in)
        elif isinstance(getattr(ds, "data_in", None), np.ndarray):
            ds.weights = ds.data_in
        else:
            ds.weights = (
                np.stack(
                    [
                        np.concatenate([np.asarray(v).reshape(-1) for v in ck.values()])
                        for ck in ds.data_in
                    ]
                )
                if ds.data_in
                else np.zeros((0, 0))
            )
        out[name] = ds
    return out
