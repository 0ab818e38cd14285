"""Published-format loaders on tiny fixtures written in each set's exact layout, torch
files without torch, and deterministic splits."""

import collections
import json
import pickle
import random

import numpy as np
import pytest

from wsl.data import pretrained, published, splits


def rng_arrays(*shapes, seed=0):
    r = np.random.default_rng(seed)
    return [r.normal(size=s).astype(np.float32) for s in shapes]


def test_torch_zip_roundtrip(tmp_path):
    w, b, m = rng_arrays((4, 3), (4,), (2, 3, 5, 5))
    obj = {
        "model": collections.OrderedDict([("fc.weight", w), ("fc.bias", b), ("conv.weight", m)]),
        "config": {"residual": [-1, 0], "activation": ["relu", "tanh"]},
        "iteration": 7,
        "name": "x",
        "view": m[:, 1],
    }
    published.save_torch(obj, tmp_path / "c.pt")
    back = published.load_torch(tmp_path / "c.pt")
    assert isinstance(back["model"], collections.OrderedDict)
    assert list(back["model"]) == ["fc.weight", "fc.bias", "conv.weight"]
    np.testing.assert_array_equal(back["model"]["conv.weight"], m)
    np.testing.assert_array_equal(back["view"], m[:, 1])
    assert back["config"] == obj["config"] and back["iteration"] == 7


def test_torch_loader_refuses_other_globals(tmp_path):
    import zipfile

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"a": Evil()}, protocol=2))
    with pytest.raises(pretrained.UnsafePickleError, match="print, which is not allowed"):
        published.load_torch(path)


def _dws_state(seed):
    w0, b0, w1, b1, w2, b2 = rng_arrays((32, 2), (32,), (32, 32), (32,), (1, 32), (1,), seed=seed)
    return collections.OrderedDict(
        [
            ("seq.0.weight", w0),
            ("seq.0.bias", b0),
            ("seq.1.weight", w1),
            ("seq.1.bias", b1),
            ("seq.2.weight", w2),
            ("seq.2.bias", b2),
        ]
    )


def test_dwsnets_inrs(tmp_path):
    # mnist-inrs/mnist_png_<split>_<label>_<id>/checkpoints/model_final.pth + splits json
    root = tmp_path / "dataset"
    rel, labels, states = [], [], []
    for i, (split, label) in enumerate([("training", 3), ("training", 7), ("testing", 1)]):
        p = root / "mnist-inrs" / f"mnist_png_{split}_{label}_{100 + i}" / "checkpoints"
        sd = _dws_state(i)
        published.save_torch(sd, p / "model_final.pth")
        rel.append(str((p / "model_final.pth").relative_to(root)))
        labels.append(str(label))
        states.append(sd)
    spl = {
        "train": {"path": rel[:2], "label": labels[:2]},
        "test": {"path": rel[2:], "label": labels[2:]},
    }
    (root / "mnist_splits.json").write_text(json.dumps(spl))
    s = published.load_dwsnets_inrs(root / "mnist_splits.json", "train")
    assert len(s) == 2 and s.targets.tolist() == [3, 7]
    np.testing.assert_array_equal(s.weights[1][1]["kernel"], states[1]["seq.1.weight"].T)
    np.testing.assert_array_equal(s.weights[1][2]["bias"], states[1]["seq.2.bias"])
    assert s.stacked()[0]["kernel"].shape == (2, 2, 32)
    from wsl.data.inr import coordinates

    img = published.dwsnets_inr_apply(s.weights[0], np.asarray(coordinates(28, 28)))
    sd = states[0]
    h = np.sin(30 * (np.asarray(coordinates(28, 28)) @ sd["seq.0.weight"].T + sd["seq.0.bias"]))
    h = np.sin(30 * (h @ sd["seq.1.weight"].T + sd["seq.1.bias"]))
    np.testing.assert_allclose(
        img, h @ sd["seq.2.weight"].T + sd["seq.2.bias"] + 0.5, rtol=1e-5, atol=1e-5
    )
    with pytest.raises(KeyError, match="val"):
        published.load_dwsnets_inrs(root / "mnist_splits.json", "val")


def test_cnn_wild_park(tmp_path):
    root = tmp_path / "dataset"
    k0, b0, k1, b1, fw, fb = rng_arrays((8, 3, 5, 5), (8,), (4, 8, 3, 3), (4,), (10, 4), (10,))
    cfg = {
        "n_layers": 2,
        "channels": [3, 8, 4],
        "kernel_size": [5, 3],
        "stride": [1, 1],
        "padding": [2, 1],
        "residual": [-1, -1],
        "activation": ["relu", "gelu"],
    }
    paths = []
    for step in (10, 20):
        p = root / "cifar10_zooV2" / "trial_0" / f"checkpoint_{step:06d}" / "checkpoint.pt"
        published.save_torch(
            {
                "model": collections.OrderedDict(
                    [
                        ("layers.0.weight", k0 * step),
                        ("layers.0.bias", b0),
                        ("layers.1.weight", k1),
                        ("layers.1.bias", b1),
                        ("fc.weight", fw),
                        ("fc.bias", fb),
                    ]
                ),
                "config": cfg,
                "iteration": step,
                "last_result": {"test/acc": step / 100},
            },
            p,
        )
        paths.append(str(p.relative_to(root)))
    spl = {"train": {"path": paths, "score": [0.1, 0.2], "step": [10, 20]}}
    (root / "cnn_park_splits.json").write_text(json.dumps(spl))
    s = published.load_cnn_wild_park(root / "cnn_park_splits.json", "train")
    assert s.targets.tolist() == [0.1, 0.2]
    assert [layer.kind for layer in s.specs[0].layers] == ["conv", "conv", "dense"]
    np.testing.assert_array_equal(s.weights[1][0]["kernel"], (k0 * 20).transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(s.weights[0][2]["kernel"], fw.T)
    assert s.meta[0]["config"]["activation"] == ["relu", "gelu"] and s.meta[1]["step"] == 20


def _zoo_state(seed):
    shapes = [
        (8, 1, 5, 5),
        (8,),
        (6, 8, 5, 5),
        (6,),
        (4, 6, 2, 2),
        (4,),
        (20, 36),
        (20,),
        (10, 20),
        (10,),
    ]
    names = [
        "module_list.0.weight",
        "module_list.0.bias",
        "module_list.3.weight",
        "module_list.3.bias",
        "module_list.6.weight",
        "module_list.6.bias",
        "module_list.9.weight",
        "module_list.9.bias",
        "module_list.11.weight",
        "module_list.11.bias",
    ]
    return collections.OrderedDict(zip(names, rng_arrays(*shapes, seed=seed), strict=True))


def test_model_zoo_raw(tmp_path):
    root = tmp_path / "tune_zoo_mnist_uniform"
    for m in range(2):
        d = root / f"NN_tune_trainable_{m:05d}_0_seed={m}"
        d.mkdir(parents=True)
        (d / "params.json").write_text(
            json.dumps({"model::nlin": "tanh", "seed": m, "optim::lr": 3e-4})
        )
        with open(d / "result.json", "w") as f:
            for e in range(1, 4):
                f.write(
                    json.dumps(
                        {
                            "test_acc": 0.5 + 0.1 * e + m / 100,
                            "train_acc": 0.6,
                            "training_iteration": e,
                        }
                    )
                    + "\n"
                )
        for e in (1, 3):
            published.save_torch(_zoo_state(10 * m + e), d / f"checkpoint_{e:06d}" / "checkpoints")
    s = published.load_model_zoo_raw(root, epochs=[3])
    assert len(s) == 2
    np.testing.assert_allclose(s.targets, [0.8, 0.81])
    assert s.meta[1]["config"]["seed"] == 1 and s.meta[0]["epoch"] == 3
    np.testing.assert_array_equal(
        s.weights[0][0]["kernel"], _zoo_state(3)["module_list.0.weight"].transpose(2, 3, 1, 0)
    )
    assert len(published.load_model_zoo_raw(root)) == 4


def test_model_zoo_preprocessed(tmp_path):
    def dataset(seed, n):
        return published.PickledObject(
            "checkpoints_to_datasets.dataset_base",
            "ModelDatasetBase",
            {
                "data_in": [_zoo_state(seed + i) for i in range(n)],
                "properties": {
                    "test_acc": [0.5 + i / 10 for i in range(n)],
                    "training_iteration": [5] * n,
                },
                "epochs": [5] * n,
                "mode": "checkpoint",
            },
        )

    obj = {"trainset": dataset(0, 3), "valset": dataset(10, 1), "testset": dataset(20, 2)}
    published.save_torch(obj, tmp_path / "dataset.pt")
    ds = published.load_model_zoo_preprocessed(tmp_path / "dataset.pt")
    assert set(ds) == {"trainset", "valset", "testset"}
    tr = ds["trainset"]
    assert isinstance(tr, published.ModelZooDataset)
    assert tr.weights.shape == (3, 2464) and tr.properties["test_acc"][2] == 0.7
    np.testing.assert_array_equal(
        tr.weights[1][:200], _zoo_state(1)["module_list.0.weight"].reshape(-1)
    )


def test_random_split_deterministic_partition():
    a = splits.random_split(103, (0.8, 0.1, 0.1), seed=3)
    b = splits.random_split(103, (0.8, 0.1, 0.1), seed=3)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    allidx = np.sort(np.concatenate(list(a.values())))
    np.testing.assert_array_equal(allidx, np.arange(103))
    assert [len(a[k]) for k in splits.SPLITS] == [82, 10, 11]
    c = splits.random_split(103, (0.8, 0.1, 0.1), seed=4)
    assert not np.array_equal(a["test"], c["test"])
    assert [len(v) for v in splits.random_split(10, (5, 3, 2)).values()] == [5, 3, 2]


def test_split_by_model_keeps_checkpoints_together():
    ids = np.repeat([f"model_{i}" for i in range(20)], 3)
    s = splits.split_by_model(ids, (0.5, 0.25, 0.25), seed=0)
    owner = {}
    for name, rows in s.items():
        for r in rows:
            assert owner.setdefault(ids[r], name) == name
    assert sum(len(v) for v in s.values()) == 60


def test_nfn_split_convention(tmp_path):
    # 10 models x 3 checkpoints; NFN: permute rows by the index file, keep step == 86,
    # test = second half, train/val = first half shuffled by random.Random(0), 80/20
    steps = np.tile([0, 20, 86], 10)
    order = np.random.default_rng(0).permutation(30)
    (tmp_path / "mnist_split.csv").write_text("\n".join(map(str, order)) + "\n")
    s = splits.small_cnn_zoo_split({"step": steps}, "nfn", tmp_path / "mnist_split.csv")
    kept = order[steps[order] == 86]
    trainval = list(range(5))
    random.Random(0).shuffle(trainval)
    np.testing.assert_array_equal(s["test"], kept[5:])
    np.testing.assert_array_equal(s["train"], kept[trainval[:4]])
    np.testing.assert_array_equal(s["val"], kept[trainval[4:]])
    assert all(steps[s[k]].tolist() == [86] * len(s[k]) for k in s)
    with pytest.raises(ValueError, match="permutation"):
        splits.nfn_split(steps, order[:-1])


def test_sources_have_urls():
    assert published.SOURCES["small_cnn_zoo/cifar10"].url.endswith("cifar10.tar.xz")
    for src in published.SOURCES.values():
        assert src.url.startswith("https://")
        assert src.sha256 is None or len(src.sha256) == 64


def test_non_torch_file_gets_a_clear_error(tmp_path):
    # a non-zip file goes to the legacy reader (tests/test_pretrained.py checks that a real
    # legacy file loads through load_torch), which names the file
    with pytest.raises(ValueError, match="corrupt torch file .*x.pt"):
        published.load_torch(_write(tmp_path / "x.pt", b"not a torch file"))


def _write(path, data):
    path.write_bytes(data)
    return path


def test_pickle_stub_keeps_unknown_state():
    bag = published.ModelZooDataset()
    bag.__setstate__([1, 2])
    assert bag.state == [1, 2]
    assert "ModelZooDataset" in repr(published.ModelZooDataset())
