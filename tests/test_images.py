"""Tests for wsl.data.images on the offline data (WSL_DATA_DIR) and small synthetic files."""

import gzip
import io
import os
import pathlib
import pickle
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from wsl.data import images

IDX_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@pytest.fixture(scope="module")
def root(offline):
    return offline(f"mnist/{IDX_NAMES[0]}").parents[1]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Never write decode caches into the user's home during tests."""
    monkeypatch.setenv("WSL_CACHE_DIR", str(tmp_path / "cache"))


# ------------------------------------------------------------------------------ paths


def test_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("WSL_DATA_DIR", str(tmp_path / "env"))
    assert images.data_dir() == tmp_path / "env"
    assert images.data_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("WSL_DATA_DIR")
    assert images.data_dir() == pathlib.Path.home() / ".cache" / "wsl" / "data"


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_missing_file_is_one_clear_error(tmp_path, name):
    with pytest.raises(images.DataNotFoundError) as info:
        images.load(name, path=tmp_path)
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "WSL_DATA_DIR" in msg and "download=True" in msg and str(tmp_path) in msg
    expected = "train-images-idx3-ubyte.gz" if name != "cifar10" else "cifar-10-python.tar.gz"
    assert expected in msg and "://" in msg


def test_missing_file_found_through_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WSL_DATA_DIR", str(tmp_path))
    with pytest.raises(images.DataNotFoundError, match=str(tmp_path / "mnist")):
        images.load("mnist")


def test_unknown_dataset():
    with pytest.raises(ValueError, match="fashion_mnist"):
        images.load("imagenet")


# -------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize(
    "name, train_sum, test_sum, first_labels",
    [
        ("mnist", 1567298545, 264923200, [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]),
        ("fashion_mnist", 3431114169, 573469082, [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]),
    ],
)
def test_idx_datasets(root, name, train_sum, test_sum, first_labels):
    d = images.load(name, path=root)
    assert d.name == name and len(d.classes) == 10
    assert d.train_x.shape == (60000, 28, 28, 1) and d.test_x.shape == (10000, 28, 28, 1)
    assert d.train_x.dtype == np.uint8 and d.test_x.dtype == np.uint8
    assert d.train_y.dtype == np.int32 and d.test_y.dtype == np.int32
    assert d.train_y.shape == (60000,) and d.test_y.shape == (10000,)
    for y in (d.train_y, d.test_y):
        assert y.min() == 0 and y.max() == 9
    assert int(d.train_x.sum(dtype=np.int64)) == train_sum
    assert int(d.test_x.sum(dtype=np.int64)) == test_sum
    assert d.train_y[:10].tolist() == first_labels


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + np.array(arr.shape, ">u4").tobytes()
    return header + arr.astype(np.uint8).tobytes()


def test_read_idx_roundtrip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx_bytes(arr)))
    (tmp_path / "a").write_bytes(_idx_bytes(arr))
    np.testing.assert_array_equal(images.read_idx(tmp_path / "a.gz"), arr)
    np.testing.assert_array_equal(images.read_idx(tmp_path / "a"), arr)


@pytest.mark.parametrize("damage", ["short_data", "bad_magic", "truncated_gzip", "not_gzip"])
def test_corrupt_idx_names_the_file(tmp_path, damage):
    raw = _idx_bytes(np.zeros((10, 28, 28), np.uint8))
    blob = {
        "short_data": gzip.compress(raw[:200]),
        "bad_magic": gzip.compress(b"\x12\x34" + raw[2:]),
        "truncated_gzip": gzip.compress(raw)[:40],
        "not_gzip": b"this is not gzip data at all",
    }[damage]
    folder = tmp_path / "mnist"
    folder.mkdir()
    for n in IDX_NAMES:  # valid label files, so only the damaged image file can fail
        arr = np.zeros((10,) if "labels" in n else (10, 28, 28), np.uint8)
        (folder / n).write_bytes(gzip.compress(_idx_bytes(arr)))
    bad = folder / "train-images-idx3-ubyte.gz"
    bad.write_bytes(blob)
    with pytest.raises(ValueError, match="corrupt IDX file") as info:
        images.load("mnist", path=tmp_path)
    assert str(bad) in str(info.value)


# --------------------------------------------------------------------------- CIFAR-10


def test_cifar10_jpeg_full_and_cache(root, tmp_path):
    tarball = root / images.CIFAR10_JPEG
    if not tarball.is_file():
        pytest.fail(f"{tarball} missing from the offline data")
    t0 = time.perf_counter()
    d = images.load("cifar10", path=root)
    t_decode = time.perf_counter() - t0
    assert d.train_x.shape == (50000, 32, 32, 3) and d.test_x.shape == (10000, 32, 32, 3)
    assert d.train_x.dtype == np.uint8 and d.train_y.dtype == np.int32
    assert d.classes == images.CIFAR10_CLASSES and len(d.classes) == 10
    assert np.bincount(d.train_y).tolist() == [5000] * 10
    assert np.bincount(d.test_y).tolist() == [1000] * 10
    caches = list((tmp_path / "cache").glob("cifar10-jpeg-*.npz"))
    assert len(caches) == 1 and not list((tmp_path / "cache").glob("*.tmp"))
    t0 = time.perf_counter()
    again = images.load("cifar10", path=root)
    t_cached = time.perf_counter() - t0
    assert t_cached < 5 and t_cached < t_decode / 3, (t_decode, t_cached)
    for a, b in zip(
        (d.train_x, d.train_y, d.test_x, d.test_y),
        (again.train_x, again.train_y, again.test_x, again.test_y),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


COLOURS = {"airplane": (250, 10, 10), "cat": (10, 250, 10), "truck": (10, 10, 250)}


def _jpeg(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _write_jpeg_tar(path: pathlib.Path, files: dict[str, bytes]):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for name, blob in files.items():  # in the given (unsorted) order
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))


def test_cifar10_jpeg_synthetic(tmp_path):
    files = {
        "test/truck/0000.jpg": _jpeg(COLOURS["truck"]),
        "train/truck/0001.jpg": _jpeg(COLOURS["truck"]),
        "train/airplane/0001.jpg": _jpeg(COLOURS["airplane"]),
        "train/cat/0000.jpg": _jpeg(COLOURS["cat"]),
        "train/airplane/0000.jpg": _jpeg(COLOURS["airplane"]),
        "test/cat/0000.jpg": _jpeg(COLOURS["cat"]),
    }
    tarball = tmp_path / "data" / images.CIFAR10_JPEG
    _write_jpeg_tar(tarball, files)
    d = images.load("cifar10", path=tmp_path / "data")
    assert d.train_x.shape == (4, 32, 32, 3) and d.test_x.shape == (2, 32, 32, 3)
    assert d.train_y.tolist() == [0, 0, 3, 9] and d.test_y.tolist() == [3, 9]
    for x, y in ((d.train_x, d.train_y), (d.test_x, d.test_y)):
        for img, label in zip(x, y, strict=True):
            colour = COLOURS[images.CIFAR10_CLASSES[label]]
            assert np.abs(img.astype(int) - colour).max() <= 4
    cache = list((tmp_path / "cache").glob("*.npz"))
    assert len(cache) == 1
    # cached arrays are used as they are: tamper with them to prove the cache is read
    with np.load(cache[0]) as z:
        arrays = dict(z)
    arrays["train_y"] = arrays["train_y"] + 100
    np.savez(cache[0], **arrays)
    assert images.load("cifar10", path=tmp_path / "data").train_y.tolist() == [100, 100, 103, 109]
    # a damaged cache is rebuilt with a warning
    cache[0].write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable cache"):
        rebuilt = images.load("cifar10", path=tmp_path / "data")
    assert rebuilt.train_y.tolist() == [0, 0, 3, 9]
    # a changed tarball (size / mtime) gets a new cache entry
    del files["train/cat/0000.jpg"]
    _write_jpeg_tar(tarball, files)
    os.utime(tarball, ns=(1, 1))
    assert images.load("cifar10", path=tmp_path / "data").train_y.tolist() == [0, 0, 9]


def _cifar_batches(rng) -> dict[str, dict]:
    batches = {}
    for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        batches[n] = {
            b"batch_label": n.encode(),
            b"labels": rng.integers(0, 10, 3).tolist(),
            b"data": data,
            b"filenames": [b"a.png", b"b.png", b"c.png"],
        }
    return batches


def test_cifar10_python_batches_folder_and_tarball(tmp_path):
    batches = _cifar_batches(np.random.default_rng(0))
    blobs = {n: pickle.dumps(b, protocol=2) for n, b in batches.items()}
    folder = tmp_path / "a" / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for n, blob in blobs.items():
        (folder / n).write_bytes(blob)
    tarball = tmp_path / "b" / "cifar10" / "cifar-10-python.tar.gz"
    _write_jpeg_tar(tarball, {f"cifar-10-batches-py/{n}": blob for n, blob in blobs.items()})
    # the lossless official batches win over a JPEG copy in the same data dir
    _write_jpeg_tar(tmp_path / "a" / images.CIFAR10_JPEG, {"test/cat/0.jpg": _jpeg((0, 0, 0))})

    from_folder = images.load("cifar10", path=tmp_path / "a")
    from_tar = images.load("cifar10", path=tmp_path / "b")
    assert from_folder.train_x.shape == (15, 32, 32, 3) and from_folder.test_x.shape == (
        3,
        32,
        32,
        3,
    )
    want = batches["data_batch_2"][b"data"][1].reshape(3, 32, 32).transpose(1, 2, 0)
    np.testing.assert_array_equal(from_folder.train_x[4], want)
    assert from_folder.train_y.dtype == np.int32
    assert from_folder.test_y.tolist() == batches["test_batch"][b"labels"]
    for a, b in zip(
        (from_folder.train_x, from_folder.train_y, from_folder.test_x, from_folder.test_y),
        (from_tar.train_x, from_tar.train_y, from_tar.test_x, from_tar.test_y),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_cifar10_python_batch_refuses_foreign_globals(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    marker = tmp_path / "pwned"
    evil = b"\x80\x02cos\nsystem\nX" + len(f"touch {marker}").to_bytes(4, "little")
    evil += f"touch {marker}".encode() + b"\x85R."
    for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / n).write_bytes(evil)
    with pytest.raises(ValueError, match="os.system"):
        images.load("cifar10", path=tmp_path)
    assert not marker.exists()


# ----------------------------------------------------------------------------- digits


def test_digits():
    d = images.load("digits")
    assert d.train_x.shape == (1437, 8, 8, 1) and d.test_x.shape == (360, 8, 8, 1)
    assert d.train_x.dtype == np.uint8 and d.train_y.dtype == np.int32
    assert d.train_x.max() == 255 and d.train_x.min() == 0
    allowed = set(np.round(np.arange(17) * 255 / 16).astype(int).tolist())
    assert set(np.unique(d.train_x).tolist()) <= allowed
    again = images.load("digits")
    np.testing.assert_array_equal(d.train_x, again.train_x)
    np.testing.assert_array_equal(d.test_y, again.test_y)
    assert set(d.test_y.tolist()) == set(range(10))


# ---------------------------------------------------------------------- split, preprocess


def test_train_val_split():
    x = np.arange(100)[:, None] * np.ones((1, 3), int)
    y = np.arange(100)
    (tx, ty), (vx, vy) = images.train_val_split(x, y, 20, seed=3)
    assert len(tx) == 80 and len(vx) == 20
    assert set(ty.tolist()).isdisjoint(vy.tolist()) and len(set(ty) | set(vy)) == 100
    np.testing.assert_array_equal(tx[:, 0], ty)
    (tx2, ty2), (vx2, vy2) = images.train_val_split(x, y, 20, seed=3)
    np.testing.assert_array_equal(ty, ty2)
    np.testing.assert_array_equal(vy, vy2)
    np.testing.assert_array_equal(vy, np.random.default_rng(3).permutation(100)[:20])
    (_, ty3), (_, vy3) = images.train_val_split(x, y, 0.25, seed=4)
    assert len(vy3) == 25 and len(ty3) == 75 and not np.array_equal(vy3[:20], vy)
    with pytest.raises(ValueError):
        images.train_val_split(x, y, 101, seed=0)
    with pytest.raises(ValueError):
        images.train_val_split(x, y, 1.5, seed=0)
    with pytest.raises(ValueError):
        images.train_val_split(x, y[:5], 2, seed=0)


def test_preprocess_schemes():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 5, 5, 3), dtype=np.uint8)
    x[0, 0, 0] = 0
    x[0, 0, 1] = 255
    out = {s: images.preprocess(x, s) for s in images.SCHEMES}
    assert all(v.dtype == np.float32 for v in out.values())
    assert out["unit"].min() == 0 and out["unit"].max() == 1
    assert out["symmetric"].min() == -1 and out["symmetric"].max() == 1
    assert out["unterthiner"].shape == (4, 5, 5, 1)
    np.testing.assert_allclose(out["unterthiner"][..., 0], out["symmetric"].mean(-1), atol=1e-6)
    assert out["unterthiner"].min() >= -1 and out["unterthiner"].max() <= 1
    mean, std = np.array(images.CIFAR_MEAN), np.array(images.CIFAR_STD)
    np.testing.assert_allclose(out["cifar"], (x / 255 - mean) / std, rtol=1e-5, atol=1e-6)
    lo, hi = (0 - mean) / std, (1 - mean) / std
    assert np.all(out["cifar"] >= lo - 1e-5) and np.all(out["cifar"] <= hi + 1e-5)
    grey = images.preprocess(x[..., :1], "unterthiner")
    np.testing.assert_allclose(grey, out["symmetric"][..., :1])
    with pytest.raises(ValueError, match="unit.*symmetric.*unterthiner.*cifar"):
        images.preprocess(x, "imagenet")


def test_ensure_file_existing_is_not_hashed(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    assert images.ensure_file(f, "https://example.invalid/x.bin", "0" * 64) == f


def test_subset_is_fixed_sorted_and_covers_class_ordered_files():
    y = np.repeat(np.arange(10), 1000)  # files list examples class by class
    idx = images.subset(len(y), 2000)
    assert len(np.unique(idx)) == 2000 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, images.subset(len(y), 2000))
    assert np.bincount(y[idx], minlength=10).min() > 150  # `[:2000]` would hold 2 classes
    np.testing.assert_array_equal(images.subset(50, 0), np.arange(50))
    np.testing.assert_array_equal(images.subset(50, 80), np.arange(50))
