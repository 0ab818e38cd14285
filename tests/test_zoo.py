"""Small CNN Zoo and heterogeneous zoo: generation, the published layout, batching,
resumability, accuracy reproduction. Tiny zoos are generated in tmp dirs."""

import csv
import gzip
import io
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from wsl.data import zoo
from wsl.nn.subjects import SmallCNN

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")  # before tiny_zoo
def _offline_mnist(offline):
    offline("mnist/train-images-idx3-ubyte.gz")


def tiny_config(num_models=4, per_shard=2, fractions=(0.5,), acts=("relu",), epochs=1):
    c = ml_collections.ConfigDict(ROOT_CONFIG("smoke").to_dict())
    c.num_models = num_models
    c.epochs = epochs
    c.record_epochs = list(range(epochs + 1))
    c.max_train, c.max_test, c.train_eval_size = 512, 256, 256
    c.hyper.activation = list(acts)
    c.hyper.train_fraction = list(fractions)
    c.trainer.models_per_shard = per_shard
    c.trainer.workers = 1
    return c


def ROOT_CONFIG(variant):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "zoo_mnist", ROOT / "experiments" / "zoo_mnist.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(variant)


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    cfg = tiny_config()
    assert zoo.generate_cnn_zoo(cfg, out, log=lambda s: None)
    zoo.assemble_cnn_zoo(cfg, out)
    return cfg, out


def _write_published_fixture(folder, flat, metrics_rows, header, order="bias_first"):
    """Write files in the published Small CNN Zoo layout, independently of wsl's writer:
    all_weights.npy, layout.csv (pandas index column), metrics.csv.gz (unnamed index)."""
    folder.mkdir()
    names = [
        ("conv2d", (3, 3, 1, 16), 16),
        ("conv2d_1", (3, 3, 16, 16), 16),
        ("conv2d_2", (3, 3, 16, 16), 16),
        ("dense", (16, 10), 10),
    ]
    rows, pos = [], 0
    for layer, kshape, nb in names:
        parts = [("bias", (nb,)), ("kernel", kshape)]
        if order != "bias_first":
            parts = parts[::-1]
        for leaf, shape in parts:
            size = int(np.prod(shape))
            rows.append(
                [len(rows), f"sequential/{layer}/{leaf}:0", pos, pos + size, size, str(shape)]
            )
            pos += size
    with open(folder / "layout.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "varname", "start_idx", "end_idx", "size", "shape"])
        w.writerows(rows)
    np.save(folder / "all_weights.npy", flat)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(metrics_rows)
    (folder / "metrics.csv.gz").write_bytes(gzip.compress(buf.getvalue().encode()))
    return rows


def test_published_layout_loads_to_same_canonical_arrays(tiny_zoo, tmp_path):
    cfg, out = tiny_zoo
    ours = zoo.load_small_cnn_zoo(out)
    assert len(ours) == cfg.num_models * len(cfg.record_epochs)
    assert ours.flat.shape[1] == 4970 == ours.spec.num_params
    # our layout.csv is the published one: bias first, Keras names
    lay = list(csv.DictReader(open(out / "layout.csv")))
    assert [r["varname"] for r in lay[:2]] == [
        "sequential/conv2d/bias:0",
        "sequential/conv2d/kernel:0",
    ]
    assert (lay[1]["start_idx"], lay[1]["end_idx"], lay[1]["shape"]) == (
        "16",
        "160",
        "(3, 3, 1, 16)",
    )
    # a fixture written from the canonical arrays in the published layout
    k0 = ours.params["conv0"]["kernel"]
    flat = np.concatenate(
        [
            ours.params[layer][role].reshape(len(ours), -1)
            for layer in ("conv0", "conv1", "conv2", "dense")
            for role in ("bias", "kernel")
        ],
        axis=1,
    )
    header = ["", *zoo.CONFIG_COLUMNS, "modeldir", "step", *zoo.METRICS]
    mrows = [
        [
            f"/x/{m}/permanent_ckpt-{s}",
            *[ours.metrics[c][i] for c in zoo.CONFIG_COLUMNS],
            m,
            s,
            *[ours.metrics[c][i] for c in zoo.METRICS],
        ]
        for i, (m, s) in enumerate(zip(ours.metrics["modeldir"], ours.metrics["step"], strict=True))
    ]
    _write_published_fixture(tmp_path / "pub", flat, mrows, header)
    pub = zoo.load_small_cnn_zoo(tmp_path / "pub")
    np.testing.assert_array_equal(pub.flat, ours.flat)
    for a, b in zip(jax.tree.leaves(pub.params), jax.tree.leaves(ours.params), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(pub.metrics["test_accuracy"], ours.metrics["test_accuracy"])
    assert pub.params["conv0"]["kernel"].shape == k0.shape == (len(ours), 3, 3, 1, 16)
    # variables are sliced by start/end, whatever the row order
    flat2 = np.concatenate(
        [
            ours.params[layer][role].reshape(len(ours), -1)
            for layer in ("conv0", "conv1", "conv2", "dense")
            for role in ("kernel", "bias")
        ],
        axis=1,
    )
    _write_published_fixture(tmp_path / "pub2", flat2, mrows, header, order="kernel_first")
    pub2 = zoo.load_small_cnn_zoo(tmp_path / "pub2", step=1)
    np.testing.assert_array_equal(
        pub2.params["dense"]["kernel"], ours.params["dense"]["kernel"][ours.metrics["step"] == 1]
    )
    # canonical weights follow the flax spec
    canon = ours.canonical()
    assert canon[0]["kernel"].shape == (len(ours), 3, 3, 1, 16)


def test_forward_from_loaded_weights_reproduces_recorded_accuracy(tiny_zoo):
    cfg, out = tiny_zoo
    z = zoo.load_small_cnn_zoo(out)
    data = zoo.load_images("mnist", max_train=cfg.max_train, max_test=cfg.max_test)
    act = zoo.ACTIVATIONS.index(cfg.hyper.activation[0])
    # the recording evaluator, row by row, from the loaded weights
    for i in range(len(z)):
        _, acc = zoo.evaluate_cnns(
            z.flat[i : i + 1], jnp.zeros(1), data.test_x, data.test_y, act=act
        )
        assert float(acc[0]) == z.metrics["test_accuracy"][i]
    # and flax SmallCNN.apply on the loaded variables: same logits, same accuracy
    for i in (0, len(z) - 1):
        logits = SmallCNN(act=str(z.metrics["config.activation"][i])).apply(
            z.variables(i), data.test_x
        )
        ref = zoo.cnn_forward(
            jax.tree.map(lambda a, i=i: a[i], z.params), data.test_x, act, conv="im2col"
        )
        np.testing.assert_allclose(logits, ref, atol=1e-4)
        acc = float(jnp.mean(jnp.argmax(logits, -1) == data.test_y))
        assert abs(acc - z.metrics["test_accuracy"][i]) <= 1.0 / len(data.test_y)


def test_k_models_together_equal_each_alone():
    cfg = tiny_config(num_models=3, acts=("tanh",))
    cfg.hyper.optimizer = ["sgd", "adam", "rmsprop"]
    models = zoo.sample_hyper(cfg.hyper, 3, cfg.seed)
    data = zoo.load_images("mnist", max_train=256, max_test=128)
    kw = dict(seed=0, epochs=1, record_epochs=[0, 1], batch_size=32, train_eval_size=128)
    together = zoo.train_cnn_chunk(models, data, **kw)
    looped = zoo.train_cnn_chunk(models, data, **kw, formulation="loop")
    for j, m in enumerate(models):
        alone = zoo.train_cnn_chunk([m], data, **kw)
        np.testing.assert_allclose(together["weights"][j], alone["weights"][0], atol=2e-5)
        np.testing.assert_allclose(together["metrics"][j], alone["metrics"][0], atol=1e-4)
    np.testing.assert_allclose(together["weights"], looped["weights"], atol=2e-5)


def test_accuracies_spread(tiny_zoo):
    cfg, out = tiny_zoo
    z = zoo.load_small_cnn_zoo(out, step="last")
    acc = z.metrics["test_accuracy"]
    assert len(acc) == cfg.num_models
    assert acc.max() - acc.min() > 0.05, acc
    spread = __import__("json").loads((out / "config.json").read_text())
    assert spread["test_accuracy_spread_last_epoch"]["n"] == cfg.num_models


def _run(args, **kw):
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def test_make_zoo_resumes_after_sigkill(tmp_path):
    out = tmp_path / "zoo"
    over = {
        "num_models": 6,
        "trainer.models_per_shard": 2,
        "hyper.activation": ("relu",),
        "hyper.train_fraction": (0.25,),
        "max_train": 512,
        "max_test": 128,
        "train_eval_size": 128,
    }
    args = [
        "scripts/make_zoo.py",
        "--config=experiments/zoo_mnist.py:smoke",
        f"--out={out}",
        *(f"--config.{k}={v}" for k, v in over.items()),
        "--workers=1",
    ]
    p = _run(args)
    shards = out / "shards"
    deadline = time.time() + 240
    while time.time() < deadline and not list(shards.glob("shard_*.npz")):
        if p.poll() is not None:
            pytest.fail(p.stdout.read())
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = {f.name: f.stat().st_mtime_ns for f in shards.glob("shard_*.npz")}
    assert 1 <= len(done) < 3, done
    assert not (out / "weights.npy").exists()
    q = _run(args)
    log, _ = q.communicate(timeout=300)
    assert q.returncode == 0, log
    assert f"{3 - len(done)} of 3 shards to train" in log
    for name, mtime in done.items():  # finished shards were neither lost nor retrained
        assert (shards / name).stat().st_mtime_ns == mtime
    z = zoo.load_small_cnn_zoo(out)
    assert len(z) == 12 and np.isfinite(z.flat).all()
    # each shard holds its planned models; rows are (model, epoch) in model-id order
    cfg = ml_collections.ConfigDict(ROOT_CONFIG("smoke").to_dict())
    cfg.update_from_flattened_dict(over)
    plan = zoo.plan_shards(zoo.sample_hyper(cfg.hyper, 6, cfg.seed), 2)
    for j, models in enumerate(plan):
        with np.load(shards / f"shard_{j:05d}.npz") as a:
            np.testing.assert_array_equal(a["model_ids"], [m["model_id"] for m in models])
    assert list(z.metrics["modeldir"]) == [f"model_{m:06d}" for m in range(6) for _ in (0, 1)]
    np.testing.assert_array_equal(z.metrics["step"], [0, 1] * 6)
    # a resumed model's recorded test accuracy, recomputed from its stored weights
    j = min(j for j in range(3) if f"shard_{j:05d}.npz" not in done)
    row = 2 * plan[j][0]["model_id"] + 1  # its last epoch
    data = zoo.load_images("mnist", max_train=512, max_test=128)
    logits = SmallCNN(act="relu").apply(z.variables(row), data.test_x)
    acc = float(jnp.mean(jnp.argmax(logits, -1) == data.test_y))
    assert abs(acc - z.metrics["test_accuracy"][row]) <= 1 / 128
    # killed + resumed == uninterrupted (the same config trained in one go, here): bit
    # for bit, shards and assembled zoo (each model depends only on the seed, its id and
    # hyper-parameters; both runs compile the same programs for the same CPU)
    ref = tmp_path / "ref"
    assert zoo.generate_cnn_zoo(cfg, ref, log=lambda m: None)
    for j in range(3):
        name = f"shard_{j:05d}.npz"
        with np.load(shards / name) as a, np.load(ref / "shards" / name) as b:
            assert sorted(a.files) == sorted(b.files)
            for f in a.files:
                np.testing.assert_array_equal(a[f], b[f], err_msg=f"{name}: {f}")
    zoo.assemble_cnn_zoo(cfg, ref)
    r = zoo.load_small_cnn_zoo(ref)
    np.testing.assert_array_equal(z.flat, r.flat)
    assert z.metrics.keys() == r.metrics.keys()
    for k in z.metrics:
        np.testing.assert_array_equal(z.metrics[k], r.metrics[k], err_msg=k)


def test_hetero_zoo_roundtrip(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("zh", ROOT / "experiments" / "zoo_hetero.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config("smoke")
    cfg.num_models, cfg.trainer.models_per_shard = 2, 1
    cfg.hetero.cnn_depths, cfg.hetero.cnn_widths, cfg.hetero.kernel_sizes = (4,), (8,), (3, 5)
    cfg.hetero.residual_prob, cfg.hetero.mlp_fraction = 1.0, 0.5
    cfg.hetero.families = {}  # every option drawn independently, MLPs included
    cfg.hetero.mlp_depths, cfg.hetero.mlp_widths = (1,), (16,)
    cfg.max_train, cfg.max_test, cfg.train_eval_size = 256, 256, 128
    # a seed whose two models are one residual CNN and one MLP
    cfg.seed = next(
        s
        for s in range(50)
        if sorted(a["kind"] for a in zoo.sample_archs(cfg.hetero, 2, s)) == ["cnn", "mlp"]
    )
    archs = zoo.sample_archs(cfg.hetero, 2, cfg.seed)
    assert any(a["kind"] == "cnn" and max(a["residual"]) >= 0 for a in archs)
    assert zoo.generate_hetero_zoo(cfg, tmp_path, log=lambda s: None)
    zoo.assemble_hetero_zoo(cfg, tmp_path)
    z = zoo.load_hetero_zoo(tmp_path)
    assert len(z) == 2 * len(cfg.record_epochs)
    data = zoo.load_images("mnist", max_train=cfg.max_train, max_test=cfg.max_test)
    for i in range(len(z)):
        spec_i = z.spec(i)
        assert z.offsets[i + 1] - z.offsets[i] == spec_i.num_params
        module = z.module(i)
        _, evaluate = zoo._module_fns(module)
        _, acc = zoo._eval_module(evaluate, z.variables(i)["params"], data.test_x, data.test_y)
        assert acc == z.metrics["test_accuracy"][i]
    cnn = next(i for i, a in enumerate(z.archs) if a["kind"] == "cnn")
    assert z.spec(cnn).residuals, "residual links recorded in the spec"


def test_hetero_families_change_one_property():
    """With `families`, every architecture belongs to the family it drew (exactly one
    property of `base` changed), all requested families occur, and bad settings get one
    clear error."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("zh", ROOT / "experiments" / "zoo_hetero.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    hetero = dict(mod.HETERO)
    archs = zoo.sample_archs(hetero, 200, 0)
    fams = [zoo.family_of(a) for a in archs]
    assert set(fams) == set(zoo.FAMILIES)  # no MLP, no CNN outside a family
    assert 0.25 < fams.count("base") / len(fams) < 0.55  # 0.4 requested
    for a, f in zip(archs, fams, strict=True):
        base_like = len(a["widths"]) <= 3 and max(a["widths"]) <= 32
        assert (f == "wider") == (max(a["widths"]) == 64)
        assert (f == "kernels") == (a["kernel_sizes"][0] != 3)
        assert (f == "residual") == (max(a["residual"]) >= 0)
        assert (f == "base") == (base_like and a["kernel_sizes"][0] == 3 and f != "residual")
    # without `families`: the independent draw (some CNNs belong to no family)
    legacy = zoo.sample_archs({**hetero, "families": {}}, 200, 0)
    assert None in {zoo.family_of(a) for a in legacy}
    with pytest.raises(ValueError, match="names in"):
        zoo.sample_archs({**hetero, "families": {"tall": 1.0}}, 2, 0)
    with pytest.raises(ValueError, match="wide_widths"):
        zoo.sample_archs({**hetero, "families": {"wider": 1.0}, "wide_widths": ()}, 2, 0)
