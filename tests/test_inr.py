"""INR sets: the SIREN variant, batched fitting, resumable generation, loading."""

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

from wsl.data import images, inr
from wsl.nn.subjects import SIREN

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _offline_mnist(offline):
    offline("mnist/train-images-idx3-ubyte.gz")


def smoke_config(**kw):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "inr_mnist", ROOT / "experiments" / "inr_mnist.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = ml_collections.ConfigDict(mod.get_config("smoke").to_dict())
    c.update(kw)
    return c


def test_fast_sin_matches_sin():
    x = jnp.linspace(-3000.0, 3000.0, 100001)
    ref = np.sin(np.asarray(x, np.float64))
    assert float(jnp.max(jnp.abs(inr.fast_sin(x) - ref))) < 1e-6
    g = jax.grad(lambda v: jnp.sum(inr.fast_sin(v)))(x[:1000])
    np.testing.assert_allclose(g, np.cos(np.asarray(x[:1000], np.float64)), atol=1e-6)


def test_siren_variant_as_documented():
    m = inr.siren_module(1)
    c = inr.coordinates(28, 28)
    assert c.shape == (784, 2) and float(c.min()) == -1.0 and float(c.max()) == 1.0
    np.testing.assert_allclose(c[1], [jnp.linspace(-1, 1, 28)[1], -1.0])  # x = column
    p = m.init(jax.random.key(0), c)["params"]
    assert m.omega_0 == 30.0 and [p[f"dense{i}"]["kernel"].shape for i in range(3)] == [
        (2, 32),
        (32, 32),
        (32, 1),
    ]
    assert float(jnp.abs(p["dense0"]["kernel"]).max()) <= 0.5  # U(-1/in, 1/in), in = 2
    assert float(jnp.abs(p["dense1"]["kernel"]).max()) <= np.sqrt(6 / 32) / 30
    assert float(jnp.abs(p["dense0"]["bias"]).max()) <= 1 / np.sqrt(2)
    assert float(jnp.abs(p["dense0"]["bias"]).max()) > 0  # torch-default biases, not zero
    np.testing.assert_allclose(inr.siren_apply(p, c), m.apply({"params": p}, c), atol=1e-5)
    assert inr.siren_spec(1).num_params == 1185


def test_k_inrs_together_equal_each_alone():
    d = images.load("mnist")
    t = jnp.asarray(images.preprocess(d.train_x[:3], "unit").reshape(3, 784, 1))
    keys = jnp.stack([inr.inr_key(0, i) for i in range(3)])
    m, c = inr.siren_module(1), inr.coordinates(28, 28)
    p3, psnr3 = inr.fit_sirens(keys, t, c, module=m, steps=30, lr=1e-3)
    for i in range(3):
        p1, psnr1 = inr.fit_sirens(keys[i : i + 1], t[i : i + 1], c, module=m, steps=30, lr=1e-3)
        for a, b in zip(jax.tree.leaves(p3), jax.tree.leaves(p1), strict=True):
            np.testing.assert_allclose(a[i], b[0], atol=1e-5)
        np.testing.assert_allclose(psnr3[i], psnr1[0], atol=1e-3)
    assert float(psnr3.mean()) > 12.0  # fitting makes progress in 30 steps


def test_fitting_a_shard_in_small_programs_equals_one_program():
    d = images.load("mnist")
    t = jnp.asarray(images.preprocess(d.train_x[:5], "unit").reshape(5, 784, 1))
    keys = jnp.stack([inr.inr_key(0, i) for i in range(5)])
    m, c = inr.siren_module(1), inr.coordinates(28, 28)
    cfg = {"steps": 20, "learning_rate": 1e-3, "inrs_per_program": 5}
    p5, psnr5 = inr._fit_in_programs(keys, t, c, m, cfg)
    p2, psnr2 = inr._fit_in_programs(keys, t, c, m, {**cfg, "inrs_per_program": 2})  # 2+2+1
    assert psnr2.shape == (5,) and jax.tree.leaves(p2)[0].shape[0] == 5
    for a, b in zip(jax.tree.leaves(p5), jax.tree.leaves(p2), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(psnr5, psnr2, atol=1e-3)
    assert len(set(np.round(np.asarray(psnr2), 3))) == 5  # five different INRs, not a padded copy


def test_early_stopping_freezes_each_inr_once_it_reaches_the_target_psnr():
    d = images.load("mnist")
    t = jnp.asarray(images.preprocess(d.train_x[:3], "unit").reshape(3, 784, 1))
    keys = jnp.stack([inr.inr_key(0, i) for i in range(3)])
    m, c = inr.siren_module(1), inr.coordinates(28, 28)
    fit = lambda steps, target=0.0: inr.fit_sirens(  # noqa: E731
        keys, t, c, module=m, steps=steps, lr=1e-3, target_psnr=target
    )
    p_free, psnr_free = fit(40)
    p_never, psnr_never = fit(40, 1000.0)  # never reached: the same fit
    for a, b in zip(jax.tree.leaves(p_free), jax.tree.leaves(p_never), strict=True):
        np.testing.assert_array_equal(a, b)
    target = float(psnr_free.min()) - 1.0  # every INR gets there before the last step
    p_stop, psnr_stop = fit(40, target)
    assert np.all(np.asarray(psnr_stop) >= target)
    assert np.all(np.asarray(psnr_stop) < np.asarray(psnr_free))  # stopped early
    # frozen: 20 more allowed steps change nothing
    p_more, _ = fit(60, target)
    for a, b in zip(jax.tree.leaves(p_stop), jax.tree.leaves(p_more), strict=True):
        np.testing.assert_array_equal(a, b)


def test_dwsnets_variant_initialises_as_dwsnets_and_adds_its_offset():
    c = inr.coordinates(28, 28)
    m = inr.siren_module(1, variant="dwsnets", offset=0.5)
    p = m.init(jax.random.key(0), c[:1])["params"]
    assert float(jnp.abs(p["dense0"]["kernel"]).max()) <= np.sqrt(6 / 2) / 30  # no is_first
    assert float(jnp.abs(p["dense0"]["kernel"]).max()) > np.sqrt(6 / 2) / 30 * 0.8
    assert float(jnp.abs(p["dense1"]["kernel"]).max()) <= np.sqrt(6 / 32) / 30
    for k in ("dense0", "dense1"):
        np.testing.assert_array_equal(p[k]["bias"], 0.0)
    last = p["dense2"]
    assert 0.1 < float(jnp.abs(last["kernel"]).max()) <= 1 / np.sqrt(32)  # torch default
    assert 0.0 < float(jnp.abs(last["bias"]).max()) <= 1 / np.sqrt(32)
    plain = inr.siren_module(1, variant="dwsnets")
    np.testing.assert_allclose(
        m.apply({"params": p}, c), plain.apply({"params": p}, c) + 0.5, atol=1e-6
    )
    with pytest.raises(ValueError, match="unknown SIREN variant"):
        inr.siren_module(1, variant="dws").init(jax.random.key(0), c[:1])


@pytest.mark.parametrize("variant,offset", [("sitzmann", 0.0), ("dwsnets", 0.5)])
def test_inr_set_roundtrip(tmp_path, variant, offset):
    cfg = smoke_config(siren_variant=variant, output_offset=offset)
    assert inr.generate_inr_set(cfg, tmp_path, log=lambda s: None)
    stats = inr.assemble_inr_set(cfg, tmp_path)
    s = inr.load_inr_set(tmp_path)
    assert len(s) == cfg.num_train + cfg.num_test == stats["n"]
    d = images.load("mnist")
    np.testing.assert_array_equal(s.label[: cfg.num_train], d.train_y[: cfg.num_train])
    np.testing.assert_array_equal(s.label[cfg.num_train :], d.test_y[: cfg.num_test])
    assert set(s.split.tolist()) == {0, 1}
    # the stored PSNR is reproduced by SIREN.apply (jnp.sin) on the loaded weights
    c = inr.coordinates(28, 28)
    for i in (0, len(s) - 1):
        img = d.train_x[i] if s.split[i] == 0 else d.test_x[s.image_index[i]]
        target = images.preprocess(img[None], "unit").reshape(784, 1)
        out = s.module().apply(s.variables(i), c)  # with the set's output offset
        psnr = float(inr.psnr(jnp.mean(jnp.square(out - target))))
        assert abs(psnr - float(s.psnr[i])) < 0.05
        if not offset:
            np.testing.assert_allclose(SIREN().apply(s.variables(i), c), out, atol=1e-6)
    assert (tmp_path / "layout.csv").read_text().startswith(",varname,start_idx")


def test_fit_inrs_resumes_after_sigkill(tmp_path):
    out = tmp_path / "inrs"
    over = dict(num_train=24, num_test=8, inrs_per_shard=8, steps=20)
    args = [
        sys.executable,
        "scripts/fit_inrs.py",
        "--config=experiments/inr_mnist.py:smoke",
        f"--out={out}",
        *(f"--config.{k}={v}" for k, v in over.items()),
        "--workers=1",
    ]
    p = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 240
    while time.time() < deadline and not list((out / "shards").glob("shard_*.npz")):
        if p.poll() is not None:
            pytest.fail(p.stdout.read())
        time.sleep(0.1)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = {f.name: f.stat().st_mtime_ns for f in (out / "shards").glob("shard_*.npz")}
    assert 1 <= len(done) < 4
    q = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert q.returncode == 0, q.stdout + q.stderr
    assert f"{4 - len(done)} of 4 shards to fit" in q.stdout + q.stderr
    for name, mtime in done.items():
        assert (out / "shards" / name).stat().st_mtime_ns == mtime
    s = inr.load_inr_set(out)
    assert len(s) == 32 and np.isfinite(s.psnr).all()
    # every row is the INR of its own image: plan order, labels of the data set
    d = images.load("mnist")
    np.testing.assert_array_equal(s.split, np.repeat([0, 1], [24, 8]))
    np.testing.assert_array_equal(s.image_index, np.r_[0:24, 0:8])
    np.testing.assert_array_equal(s.label, np.r_[d.train_y[:24], d.test_y[:8]])
    i = 8 * min(j for j in range(4) if f"shard_{j:05d}.npz" not in done)  # a resumed row
    img = (d.train_x if s.split[i] == 0 else d.test_x)[s.image_index[i]]
    target = images.preprocess(img[None], "unit").reshape(784, 1)
    fit = s.module().apply(s.variables(i), inr.coordinates(28, 28))
    assert abs(float(inr.psnr(jnp.mean(jnp.square(fit - target)))) - s.psnr[i]) < 0.05
    # killed + resumed == uninterrupted (the same config fitted in one go, here): bit for
    # bit, shards and assembled set (each INR depends only on its key and image, and
    # both runs compile the same programs for the same CPU)
    ref = tmp_path / "ref"
    assert inr.generate_inr_set(smoke_config(**over), ref, log=lambda m: None)
    for j in range(4):
        name = f"shard_{j:05d}.npz"
        with np.load(out / "shards" / name) as a, np.load(ref / "shards" / name) as b:
            assert sorted(a.files) == sorted(b.files)
            for f in a.files:
                np.testing.assert_array_equal(a[f], b[f], err_msg=f"{name}: {f}")
    inr.assemble_inr_set(smoke_config(**over), ref)
    r = inr.load_inr_set(ref)
    for f in ("flat", "label", "split", "image_index", "psnr"):
        np.testing.assert_array_equal(getattr(s, f), getattr(r, f), err_msg=f)
