"""Real image data sets as uint8 NHWC arrays: MNIST, Fashion-MNIST, CIFAR-10, sklearn digits.

Files are read from ``data_dir()`` (``$WSL_DATA_DIR``, else ``~/.cache/wsl/data``) in their
canonical published formats:

- ``mnist/`` and ``fashion-mnist/``: the four gzipped IDX files.
- ``cifar10/``: the official python batches, either extracted
  (``cifar10/cifar-10-batches-py/data_batch_1`` ...) or as ``cifar10/cifar-10-python.tar.gz``;
  else the offline JPEG copy ``cifar10-jpeg/cifar10-jpeg.tar.gz`` (``{train,test}/<class>/*.jpg``,
  lossy), decoded once and cached as ``.npz`` under ``$WSL_CACHE_DIR`` (else
  ``~/.cache/wsl/cache``).
- ``digits`` ships with scikit-learn and needs no file.

Missing files raise :class:`DataNotFoundError`; ``download=True`` fetches them from the
published URL and checks their sha256 (only on download, not on every load).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pathlib
import pickle
import secrets
import tarfile
import urllib.request
import warnings
import zlib

import numpy as np

DATASETS = ("mnist", "fashion_mnist", "cifar10", "digits")

DIGIT_CLASSES = tuple(str(i) for i in range(10))
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# (sub-directory, base URL, {file name: sha256 of the published file}).
IDX_FILES = {
    "mnist": (
        "mnist",
        _MNIST_URL,
        {
            "train-images-idx3-ubyte.gz": (
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
            ),
            "train-labels-idx1-ubyte.gz": (
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
            ),
            "t10k-images-idx3-ubyte.gz": (
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
            ),
            "t10k-labels-idx1-ubyte.gz": (
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
            ),
        },
    ),
    "fashion_mnist": (
        "fashion-mnist",
        _FASHION_URL,
        {
            "train-images-idx3-ubyte.gz": (
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"
            ),
            "train-labels-idx1-ubyte.gz": (
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"
            ),
            "t10k-images-idx3-ubyte.gz": (
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"
            ),
            "t10k-labels-idx1-ubyte.gz": (
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"
            ),
        },
    ),
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # the checksum published with the file
CIFAR10_JPEG = "cifar10-jpeg/cifar10-jpeg.tar.gz"  # offline lossy copy, no public URL

SCHEMES = ("unit", "symmetric", "unterthiner", "cifar")
CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)

# IDX type codes -> big-endian numpy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_JPEG_CACHE_VERSION = 1


class DataNotFoundError(FileNotFoundError):
    """A data file is missing (and was not downloaded)."""


@dataclasses.dataclass(frozen=True)
class ImageData:
    """A data set split in train and test. Images uint8 NHWC, labels int32."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]
    name: str


def data_dir(path=None) -> pathlib.Path:
    """The data root: ``path`` if given, else ``$WSL_DATA_DIR``, else ``~/.cache/wsl/data``."""
    if path is not None:
        return pathlib.Path(path).expanduser()
    env = os.environ.get("WSL_DATA_DIR")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "wsl" / "data"


def cache_dir() -> pathlib.Path:
    """Where decoded arrays are cached: ``$WSL_CACHE_DIR``, else ``~/.cache/wsl/cache``."""
    env = os.environ.get("WSL_CACHE_DIR")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "wsl" / "cache"


def sha256sum(path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_file(path, url: str, sha256: str | None, download: bool = False) -> pathlib.Path:
    """Return ``path`` if it exists; else download it from ``url`` (checking ``sha256``) or
    raise :class:`DataNotFoundError` naming the file, the URL and how to fix it."""
    path = pathlib.Path(path)
    if path.is_file():
        return path
    if not download:
        raise DataNotFoundError(
            f"data file not found: {path.absolute()}\n"
            f"  published at: {url}\n"
            "  set WSL_DATA_DIR to the folder that holds it (or pass path=...), "
            "or pass download=True to fetch it."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    try:
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        if sha256 is not None and (got := sha256sum(tmp)) != sha256:
            raise OSError(f"checksum mismatch for {url}: sha256 {got}, expected {sha256}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


# ------------------------------------------------------------------------------------- IDX


def read_idx(path) -> np.ndarray:
    """Read a (gzipped if the name ends in .gz) IDX file into a native-endian numpy array.

    Raises ``ValueError`` naming the file if it is truncated or not a valid IDX file."""
    path = pathlib.Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"corrupt IDX file {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"corrupt IDX file {path}: bad magic number {raw[:4].hex()!r}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"corrupt IDX file {path}: truncated header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"corrupt IDX file {path}: {len(raw)} bytes, expected {expected} for shape {shape}"
        )
    data = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _load_idx_set(name: str, root: pathlib.Path, download: bool) -> ImageData:
    sub, base_url, files = IDX_FILES[name]
    arrays = {}
    for fname, sha in files.items():
        path = ensure_file(root / sub / fname, base_url + fname, sha, download)
        arrays[fname] = read_idx(path)
    splits = []
    for prefix in ("train", "t10k"):
        x = arrays[f"{prefix}-images-idx3-ubyte.gz"]
        y = arrays[f"{prefix}-labels-idx1-ubyte.gz"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(
                f"{root / sub}: {prefix} images {x.shape} do not match labels {y.shape}"
            )
        splits += [x.astype(np.uint8)[..., None], y.astype(np.int32)]
    classes = DIGIT_CLASSES if name == "mnist" else FASHION_CLASSES
    return ImageData(*splits, classes=classes, name=name)


# ------------------------------------------------------------------------------ CIFAR-10


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler for the official CIFAR-10 batches: dicts of bytes, lists and numpy arrays.

    Allows only numpy's array reconstruction and ``_codecs.encode`` (how protocol-2 pickles
    written by Python 3 store bytes); any other global is refused."""

    _ALLOWED = {
        ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"CIFAR-10 batch refers to {module}.{name}: refused")
        return super().find_class(module, name)


def _read_cifar_batch(f, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _BatchUnpickler(f, encoding="bytes").load()
        x = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        y = np.asarray(batch[b"labels"], np.int32)
    except Exception as e:
        raise ValueError(f"corrupt CIFAR-10 batch {where}: {e}") from e
    if len(x) != len(y):
        raise ValueError(f"corrupt CIFAR-10 batch {where}: {len(x)} images, {len(y)} labels")
    return np.ascontiguousarray(x), y


def _load_cifar_python(source: pathlib.Path) -> ImageData:
    """Read the official batches from a folder or, in one pass, from the tarball."""
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    parts = {}
    if source.is_dir():
        for n in names:
            with open(source / n, "rb") as f:
                parts[n] = _read_cifar_batch(f, str(source / n))
    else:
        with tarfile.open(source, "r:*") as tf:
            for m in tf:
                n = pathlib.PurePosixPath(m.name).name
                if m.isfile() and n in names:
                    parts[n] = _read_cifar_batch(tf.extractfile(m), f"{source}:{m.name}")
        if missing := [n for n in names if n not in parts]:
            raise ValueError(f"{source} lacks CIFAR-10 batches {missing}")
    train_x = np.concatenate([parts[n][0] for n in names[:5]])
    train_y = np.concatenate([parts[n][1] for n in names[:5]])
    return ImageData(
        train_x, train_y, *parts["test_batch"], classes=CIFAR10_CLASSES, name="cifar10"
    )


def decode_jpeg_tar(tarball) -> dict[str, np.ndarray]:
    """Decode a ``{train,test}/<class>/<file>.jpg`` tar(.gz) into uint8 arrays, in memory.

    Images come sorted by split, class name and file name; labels index
    :data:`CIFAR10_CLASSES`. Returns ``{"train_x", "train_y", "test_x", "test_y"}``."""
    from PIL import Image

    entries = []
    with tarfile.open(tarball, "r:*") as tf:
        for m in tf:
            parts = pathlib.PurePosixPath(m.name).parts
            if not m.isfile() or len(parts) < 3 or not parts[-1].lower().endswith(".jpg"):
                continue
            split, cls, fname = parts[-3:]
            if split not in ("train", "test") or cls not in CIFAR10_CLASSES:
                raise ValueError(f"{tarball}: unexpected member {m.name}")
            entries.append((split, cls, fname, tf.extractfile(m).read()))
    entries.sort(key=lambda e: e[:3])
    out = {}
    for split in ("train", "test"):
        rows = [e for e in entries if e[0] == split]
        x = np.empty((len(rows), 32, 32, 3), np.uint8)
        for i, (_, cls, fname, blob) in enumerate(rows):
            with Image.open(io.BytesIO(blob)) as im:
                img = np.asarray(im.convert("RGB"))
            if img.shape != (32, 32, 3):
                raise ValueError(f"{tarball}: {split}/{cls}/{fname} is {img.shape}, not 32x32x3")
            x[i] = img
        out[f"{split}_x"] = x
        out[f"{split}_y"] = np.array([CIFAR10_CLASSES.index(e[1]) for e in rows], np.int32)
    return out


def _load_cifar_jpeg(tarball: pathlib.Path) -> ImageData:
    """Decode the JPEG tarball, or read the decoded arrays from the cache."""
    st = tarball.stat()
    cache = cache_dir() / (f"cifar10-jpeg-{st.st_size}-{st.st_mtime_ns}-v{_JPEG_CACHE_VERSION}.npz")
    arrays = None
    if cache.is_file():
        try:
            with np.load(cache) as z:
                arrays = {k: z[k] for k in ("train_x", "train_y", "test_x", "test_y")}
        except Exception as e:  # a damaged cache is rebuilt, not fatal
            warnings.warn(f"ignoring unreadable cache {cache}: {e}", stacklevel=3)
    if arrays is None:
        arrays = decode_jpeg_tar(tarball)
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f"{cache.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
            try:
                with open(tmp, "wb") as f:
                    np.savez(f, **arrays)
                os.replace(tmp, cache)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        except OSError as e:
            warnings.warn(f"could not write cache {cache}: {e}", stacklevel=3)
    return ImageData(
        arrays["train_x"],
        arrays["train_y"],
        arrays["test_x"],
        arrays["test_y"],
        classes=CIFAR10_CLASSES,
        name="cifar10",
    )


def _load_cifar10(root: pathlib.Path, download: bool) -> ImageData:
    """Official batches (folder, then tarball) first; else the JPEG copy; else download."""
    folder = root / "cifar10" / "cifar-10-batches-py"
    tarball = root / "cifar10" / "cifar-10-python.tar.gz"
    jpeg = root / CIFAR10_JPEG
    if (folder / "test_batch").is_file():
        return _load_cifar_python(folder)
    if tarball.is_file():
        return _load_cifar_python(tarball)
    if jpeg.is_file():
        return _load_cifar_jpeg(jpeg)
    try:
        ensure_file(tarball, CIFAR10_URL, CIFAR10_SHA256, download)
    except DataNotFoundError as e:
        raise DataNotFoundError(f"{e}\n  (or provide the offline JPEG copy at {jpeg})") from None
    return _load_cifar_python(tarball)


# -------------------------------------------------------------------------------- digits


def _load_digits() -> ImageData:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * 255 / 16).astype(np.uint8)[..., None]
    y = d.target.astype(np.int32)
    (train_x, train_y), (test_x, test_y) = train_val_split(x, y, 360, seed=0)
    return ImageData(train_x, train_y, test_x, test_y, classes=DIGIT_CLASSES, name="digits")


# ---------------------------------------------------------------------------------- API


def load(name: str, path=None, download: bool = False) -> ImageData:
    """Load data set ``name`` (one of :data:`DATASETS`) from ``data_dir(path)``.

    Images are uint8 ``(N, H, W, C)`` (C = 1 for grey), labels int32."""
    root = data_dir(path)
    if name in IDX_FILES:
        return _load_idx_set(name, root, download)
    if name == "cifar10":
        return _load_cifar10(root, download)
    if name == "digits":
        return _load_digits()
    raise ValueError(f"unknown data set {name!r}; choose one of {DATASETS}")


def train_val_split(x, y, val_size: int | float, seed: int):
    """Split ``(x, y)`` into ``((train_x, train_y), (val_x, val_y))``.

    ``val_size`` is a count (int) or a fraction (float in [0, 1]). The split is a
    ``np.random.default_rng(seed).permutation``: the first ``val_size`` indices go to
    validation, the rest (in permuted order) to training."""
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x has {n} rows but y has {len(y)}")
    if isinstance(val_size, bool) or not isinstance(val_size, int | float | np.number):
        raise TypeError(f"val_size must be an int count or a float fraction, got {val_size!r}")
    if isinstance(val_size, float | np.floating):
        if not 0.0 <= val_size <= 1.0:
            raise ValueError(f"val_size fraction must be in [0, 1], got {val_size}")
        n_val = int(round(val_size * n))
    else:
        n_val = int(val_size)
        if not 0 <= n_val <= n:
            raise ValueError(f"val_size count must be in [0, {n}], got {n_val}")
    perm = np.random.default_rng(seed).permutation(n)
    val, train = perm[:n_val], perm[n_val:]
    return (x[train], y[train]), (x[val], y[val])


def subset(n_total: int, n: int, seed: int = 1234) -> np.ndarray:
    """Sorted indices of a fixed random `n` of `n_total` examples (all when n is 0 or
    >= n_total). Use it, never `[:n]`: the files list examples by class (the first 2,000
    CIFAR-10 test images are airplanes and cars only)."""
    if not n or n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).permutation(n_total)[:n])


def preprocess(x: np.ndarray, scheme: str) -> np.ndarray:
    """uint8 NHWC images -> float32 by ``scheme``.

    - ``"unit"``: x / 255, in [0, 1].
    - ``"symmetric"``: x / 255 * 2 - 1, in [-1, 1].
    - ``"unterthiner"``: Small CNN Zoo recipe: x / 255, scaled to [-1, 1], then greyscale as
      the mean over channels (C becomes 1).
    - ``"cifar"``: (x / 255 - mean) / std per channel, with the ImageNet mean/std used by
      akamaster's CIFAR-10 ResNets (needs C = 3).
    """
    x = np.asarray(x, np.float32) / np.float32(255)
    if scheme == "unit":
        return x
    if scheme == "symmetric":
        return x * 2 - 1
    if scheme == "unterthiner":
        return (x * 2 - 1).mean(axis=-1, keepdims=True, dtype=np.float32)
    if scheme == "cifar":
        if x.shape[-1] != 3:
            raise ValueError(f"scheme 'cifar' needs 3 channels, got shape {x.shape}")
        mean = np.asarray(CIFAR_MEAN, np.float32)
        std = np.asarray(CIFAR_STD, np.float32)
        return (x - mean) / std
    raise ValueError(f"unknown preprocessing scheme {scheme!r}; choose one of {SCHEMES}")
