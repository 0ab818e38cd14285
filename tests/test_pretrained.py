"""Tests for wsl.data.pretrained: legacy torch checkpoints read without torch."""

import collections
import io
import pickle
import sys
import types

import numpy as np
import pytest

from wsl.data import images, pretrained, published


@pytest.fixture(scope="module")
def root(offline):
    return offline("resnet-cifar10").parent


# ------------------------------------------------------------------- real checkpoints


@pytest.mark.parametrize(
    "depth, n_keys, prec1, conv1_sum",
    [(20, 97, 91.78, 1.3100982), (56, 277, 93.62, -2.5577815)],
)
def test_load_resnet(root, depth, n_keys, prec1, conv1_sum):
    state, best_prec1 = pretrained.load_resnet_cifar10(depth, path=root)
    assert type(state) is dict and len(state) == n_keys
    assert isinstance(best_prec1, float) and 80 < best_prec1 < 100
    assert best_prec1 == pytest.approx(prec1, abs=1e-4)
    keys = list(state)
    assert keys[0] == "conv1.weight" and keys[-2:] == ["linear.weight", "linear.bias"]
    assert not any(k.startswith("module.") for k in keys)
    assert state["conv1.weight"].shape == (16, 3, 3, 3)
    assert state["linear.weight"].shape == (10, 64) and state["linear.bias"].shape == (10,)
    n = (depth - 2) // 6
    assert state[f"layer3.{n - 1}.conv2.weight"].shape == (64, 64, 3, 3)
    assert state["layer2.0.conv1.weight"].shape == (32, 16, 3, 3)
    assert state["bn1.running_var"].shape == (16,) and (state["bn1.running_var"] > 0).all()
    for k, v in state.items():
        assert v.dtype == np.float32 and np.isfinite(v).all(), k
        assert v.flags.c_contiguous and v.flags.owndata, k
    # these 2018 checkpoints predate BatchNorm's num_batches_tracked buffer
    assert not any(k.endswith("num_batches_tracked") for k in keys)
    assert float(state["conv1.weight"].sum(dtype=np.float64)) == pytest.approx(conv1_sum, 1e-6)


def test_load_resnet_from_file_path(root):
    name = pretrained.RESNET_CIFAR10[20][0]
    a, _ = pretrained.load_resnet_cifar10(20, path=root / "resnet-cifar10" / name)
    b, _ = pretrained.load_resnet_cifar10(20, path=root)
    assert list(a) == list(b)
    np.testing.assert_array_equal(a["layer1.0.conv1.weight"], b["layer1.0.conv1.weight"])


def test_registry():
    assert sorted(pretrained.RESNET_CIFAR10) == [20, 32, 44, 56]
    for name, url, sha in pretrained.RESNET_CIFAR10.values():
        assert url.endswith("/pretrained_models/" + name) and url.startswith("https://github.com/")
        assert len(sha) == 64 and name.split("-")[1].removesuffix(".th") == sha[:8]


def test_missing_checkpoint(tmp_path):
    with pytest.raises(images.DataNotFoundError) as info:
        pretrained.load_resnet_cifar10(32, path=tmp_path)
    msg = str(info.value)
    assert "resnet32-d509ac18.th" in msg and str(tmp_path) in msg
    assert "WSL_DATA_DIR" in msg and pretrained.RESNET_CIFAR10[32][1] in msg


def test_unknown_depth():
    with pytest.raises(ValueError, match="20, 32, 44, 56"):
        pretrained.load_resnet_cifar10(110)


def test_truncated_checkpoint(root, tmp_path):
    blob = (root / "resnet-cifar10" / pretrained.RESNET_CIFAR10[20][0]).read_bytes()
    for cut, what in ((len(blob) - 100, "truncated"), (5000, "corrupt torch file")):
        bad = tmp_path / f"cut{cut}.th"
        bad.write_bytes(blob[:cut])
        with pytest.raises(ValueError, match=what):
            pretrained.load_torch_legacy(bad)


def test_zip_format_is_named(tmp_path):
    f = tmp_path / "new.pt"
    f.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ValueError, match="zip-format"):
        pretrained.load_torch_legacy(f)


# ------------------------------------------------------------- synthetic legacy files


def _header() -> bytes:
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}}
    return b"".join(pickle.dumps(o, protocol=2) for o in (pretrained.LEGACY_MAGIC, 1001, sys_info))


class _Storage:
    def __init__(self, key, data, view=None):
        self.key, self.data, self.view = key, data, view


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride)

    def __reduce__(self):
        hooks = collections.OrderedDict()
        return sys.modules["torch._utils"]._rebuild_tensor_v2, (*self.args, False, hooks)


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            stype = getattr(
                sys.modules["torch"], {"f": "FloatStorage", "i": "LongStorage"}[obj.data.dtype.kind]
            )
            return ("storage", stype, obj.key, "cpu", obj.data.size, obj.view)
        return None


@pytest.fixture
def fake_torch(monkeypatch):
    """Just enough of a `torch` module for pickle to write legacy-format references."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called: only pickled by reference")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    for name in ("FloatStorage", "LongStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def _legacy_file(path, obj, storages):
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    blob = _header() + buf.getvalue() + pickle.dumps([s.key for s in storages], protocol=2)
    for s in storages:
        data = s.data.astype(s.data.dtype.newbyteorder("<"))
        blob += data.size.to_bytes(8, "little") + data.tobytes()
    path.write_bytes(blob)
    return path


def test_synthetic_roundtrip(tmp_path, fake_torch):
    w = np.arange(24, dtype=np.float32) - 7.5
    shared = _Storage("k0", w)
    count = _Storage("k1", np.array([123], np.int64))
    root = np.linspace(-1, 1, 10).astype(np.float32)
    view = _Storage("k2", root, view=("k2v", 4, 3))  # elements 4..6 of root storage k2
    state = collections.OrderedDict(
        [
            ("module.w", _Tensor(shared, 0, (2, 3, 4), (12, 4, 1))),
            ("module.wT", _Tensor(shared, 0, (4, 6), (1, 4))),  # non-contiguous, same storage
            ("module.tail", _Tensor(shared, 20, (4,), (1,))),  # storage offset
            ("module.bn.num_batches_tracked", _Tensor(count, 0, (), ())),  # 0-dim int64
            ("module.view", _Tensor(view, 1, (2,), (1,))),
        ]
    )
    path = _legacy_file(
        tmp_path / "ck.th", {"state_dict": state, "best_prec1": 12.5}, [shared, count, view]
    )
    obj = pretrained.load_torch_legacy(path)
    sd = obj["state_dict"]
    assert isinstance(sd, collections.OrderedDict) and obj["best_prec1"] == 12.5
    # the general reader (zip or legacy) falls back to this one for legacy files
    via = published.load_torch(path)["state_dict"]
    assert list(via) == list(sd)
    for key in sd:
        np.testing.assert_array_equal(via[key], sd[key])
    np.testing.assert_array_equal(sd["module.w"], w.reshape(2, 3, 4))
    np.testing.assert_array_equal(sd["module.wT"], w.reshape(6, 4).T)
    np.testing.assert_array_equal(sd["module.tail"], w[20:])
    assert sd["module.bn.num_batches_tracked"].dtype == np.int64
    assert (
        sd["module.bn.num_batches_tracked"].shape == ()
        and sd["module.bn.num_batches_tracked"] == 123
    )
    np.testing.assert_array_equal(sd["module.view"], root[5:7])
    sd["module.w"][0, 0, 0] = 99  # every tensor owns its memory
    assert sd["module.wT"][0, 0] == w[0]

    state2, prec = pretrained.load_resnet_cifar10(20, path=path)
    assert list(state2) == ["w", "wT", "tail", "bn.num_batches_tracked", "view"] and prec == 12.5


def test_synthetic_overrun_is_refused(tmp_path, fake_torch):
    s = _Storage("k0", np.zeros(6, np.float32))
    path = _legacy_file(tmp_path / "bad.th", {"t": _Tensor(s, 2, (5,), (1,))}, [s])
    with pytest.raises(ValueError, match="overruns"):
        pretrained.load_torch_legacy(path)


def test_synthetic_missing_storage_data(tmp_path, fake_torch):
    s = _Storage("k0", np.zeros(6, np.float32))
    path = _legacy_file(tmp_path / "bad.th", {"t": _Tensor(s, 0, (6,), (1,))}, [])
    with pytest.raises(ValueError, match="storage key list"):
        pretrained.load_torch_legacy(path)


def _reduce_call(module: str, name: str, arg: str) -> bytes:
    """Protocol-2 pickle bytes for `module.name(arg)`: GLOBAL, BINUNICODE, TUPLE1, REDUCE."""
    a = arg.encode()
    return (
        b"c" + f"{module}\n{name}\n".encode() + b"X" + len(a).to_bytes(4, "little") + a + b"\x85R"
    )


@pytest.mark.parametrize(
    "module, name, code",
    [("os", "system", "touch {m}"), ("builtins", "eval", "open({m!r}, 'w').close()")],
)
@pytest.mark.parametrize("where", ["main", "nested", "sys_info"])
def test_tampered_pickle_is_refused(tmp_path, module, name, code, where):
    marker = tmp_path / "pwned"
    call = _reduce_call(module, name, code.format(m=str(marker)))
    if where == "main":
        main = b"\x80\x02" + call + b"."
    else:  # {"state_dict": OrderedDict([("w", <call>)])}
        od = b"ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00w" + call + b"u"
        main = b"\x80\x02}(X\n\x00\x00\x00state_dict" + od + b"u."
    head = _header()
    if where == "sys_info":
        magic_and_version = b"".join(pickle.dumps(o, 2) for o in (pretrained.LEGACY_MAGIC, 1001))
        head = magic_and_version + b"\x80\x02" + call + b"."
    path = tmp_path / "evil.th"
    path.write_bytes(head + main + pickle.dumps([], protocol=2))
    with pytest.raises(pretrained.UnsafePickleError) as info:
        pretrained.load_torch_legacy(path)
    assert f"{module}.{name}" in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()
    with pytest.raises(pretrained.UnsafePickleError):
        pretrained.load_resnet_cifar10(20, path=path)
    assert not marker.exists()


def test_foreign_persistent_id_is_refused(tmp_path):
    # BINPERSID on ('module', ...) as legacy torch.save writes for whole nn.Modules
    main = b"\x80\x02(X\x06\x00\x00\x00moduleX\x01\x00\x00\x00xt" + b"Q."
    path = tmp_path / "mod.th"
    path.write_bytes(_header() + main + pickle.dumps([], protocol=2))
    with pytest.raises(pretrained.UnsafePickleError, match="module"):
        pretrained.load_torch_legacy(path)
