"""Canonicalisation: groups, the two canonicalisers, invariance, the losses, the method."""

import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from wsl.methods import canonicalize as cz
from wsl.nn import canon, subjects

KEY = jax.random.key(0)


def images(n=6, size=16, channels=1, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, size, size, channels))


@functools.cache
def canonicalizer(name, kind):
    """(module, variables) of a small canonicaliser, shared by the tests (compiling is slow)."""
    grp = canon.group(name)
    if kind == "optimized":
        model = canon.OptimizedCanonicalizer(subjects.SmallCNN(8, 2, num_classes=16), grp)
    else:
        model = canon.GroupCNN(grp, (8, 8), 3, 2)
    return model, model.init(KEY, images())


# ----------------------------------------------------------------------------- groups


@pytest.mark.parametrize("name", ["C4", "D4"])
def test_group_table_matches_the_action(name):
    grp = canon.group(name)
    x = images(2, 5)
    for a in range(grp.order):
        assert int(grp.inverses[grp.inverses[a]]) == a
        for b in range(grp.order):
            ab = canon.transform(grp, canon.transform(grp, x, b), a)
            assert jnp.array_equal(ab, canon.transform(grp, x, int(grp.table[a, b])))


@pytest.mark.parametrize("name", ["C4", "D4", "C8"])
def test_apply_invert_orbit(name):
    grp = canon.group(name)
    x = images(grp.order, 9)
    g = jnp.arange(grp.order)
    moved = canon.apply(grp, x, g)
    for k in range(grp.order):
        assert jnp.array_equal(moved[k], canon.transform(grp, x[k : k + 1], k)[0])
    orb = canon.orbit(grp, x)
    assert orb.shape == (grp.order, grp.order, 9, 9, 1)
    assert jnp.array_equal(orb[:, 0], x)
    cands = canon.candidates(grp, x)
    assert jnp.array_equal(cands[:, 1], canon.transform(grp, x, int(grp.inverses[1])))
    if grp.exact:
        assert jnp.array_equal(canon.invert(grp, moved, g), x)


def test_c8_is_documented_inexact():
    grp = canon.group("C8")
    assert not grp.exact and canon.group("C4").exact and canon.group("D4").exact
    yy, xx = np.mgrid[:33, :33] - 16.0
    blob = np.exp(-((yy - 6) ** 2 + (xx - 3) ** 2) / 20) + np.exp(-((yy + 2) ** 2 + xx**2) / 30)
    x = jnp.asarray(blob, jnp.float32)[None, :, :, None]
    twice = canon.transform(grp, canon.transform(grp, x, 1), 1)
    assert jnp.array_equal(canon.transform(grp, x, 2), jnp.rot90(x, 1, axes=(1, 2)))
    err = float(jnp.abs(twice - canon.transform(grp, x, 2)).max())
    assert 0 < err < 0.1  # close, not exact


def test_unknown_group():
    with pytest.raises(ValueError, match="unknown group 'C5'"):
        canon.group("C5")


# ----------------------------------------------------------------------------- canonicalisers


@pytest.mark.parametrize("name", ["C4", "D4"])
@pytest.mark.parametrize("kind", ["equivariant", "optimized"])
def test_scores_permute_exactly(name, kind):
    """scores(u x)[:, k] == scores(x)[:, index of u^{-1} g_k], bitwise."""
    grp = canon.group(name)
    model, v = canonicalizer(name, kind)
    x = images()
    scores = jax.jit(lambda z: model.apply(v, z)[0])
    s = scores(x)
    assert s.shape == (6, grp.order)
    for u in range(grp.order):
        perm = np.asarray(canon.compose(grp, canon.inverse(grp, u), jnp.arange(grp.order)))
        assert jnp.array_equal(scores(canon.transform(grp, x, u)), s[:, perm])


def test_reference_vector_is_a_constant():
    _, v = canonicalizer("C4", "optimized")
    assert v["constants"]["reference"].shape == (16,)
    assert "reference" not in jax.tree_util.keystr(
        jax.tree_util.tree_flatten_with_path(v["params"])
    )


@pytest.mark.parametrize("name", ["C4", "D4"])
@pytest.mark.parametrize("kind", ["equivariant", "optimized"])
def test_wrapped_predictor_is_exactly_invariant(name, kind):
    grp = canon.group(name)
    model, cvars = canonicalizer(name, kind)
    predictor = subjects.SmallCNN(features=8, num_layers=2)
    x = images(5)
    sym = jnp.ones_like(x[:1]).at[:, 3:6, 2:9].set(2.0)  # a rot180- and flip-symmetric image:
    sym = sym + canon.transform(grp, sym, 2)  # its candidates tie in pairs
    x = jnp.concatenate([x, sym, jnp.zeros_like(sym)])  # and a constant image (all tie)
    pvars = predictor.init(KEY, x)
    f = jax.jit(cz.wrap(model, predictor))
    ref, info = f(cvars, pvars, x)
    for u in range(grp.order):
        out, info_u = f(cvars, pvars, canon.transform(grp, x, u))
        assert jnp.array_equal(out, ref), u
        if u == 0:
            continue
        # the pose moves with the input (not for the tied symmetric images)
        pose = np.asarray(canon.compose(grp, u, info["pose"]))[:5]
        assert np.array_equal(np.asarray(info_u["pose"])[:5], pose)


def test_straight_through_forward_and_gradient():
    grp = canon.group("C4")
    model, v = canonicalizer("C4", "optimized")
    x = images()
    x_eval, info = jax.jit(lambda z: cz.canonicalize(model, v, z))(x)
    x_train, _ = jax.jit(lambda z: cz.canonicalize(model, v, z, train=True))(x)
    np.testing.assert_allclose(x_train, x_eval, atol=1e-6)
    assert jnp.array_equal(x_eval, canon.invert(grp, x, info["pose"]))

    def loss(params):
        x_c, _ = cz.canonicalize(model, {**v, "params": params}, x, train=True)
        return jnp.sum(x_c * jnp.arange(x_c.size).reshape(x_c.shape))

    grads = jax.jit(jax.grad(loss))(v["params"])
    assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)) > 0


def test_invert_canonicalization():
    grp = canon.group("D4")
    model, v = canonicalizer("D4", "equivariant")
    x = images()
    x_c, info = jax.jit(lambda z: cz.canonicalize(model, v, z))(x)
    # an equivariant output (here the image itself) is moved back to the input's frame
    assert jnp.array_equal(cz.invert_canonicalization(grp, x_c, info, "image"), x)
    assert cz.invert_canonicalization(grp, info["scores"], info) is info["scores"]
    # a regular output: y[:, g] of the canonical image is y[:, pose^-1 g] of the input
    reg = cz.invert_canonicalization(grp, info["scores"], info, "regular")
    for i, p in enumerate(np.asarray(info["pose"])):
        for g in range(grp.order):
            assert reg[i, g] == info["scores"][i, grp.table[grp.inverses[p], g]]
    with pytest.raises(ValueError, match="unknown output kind"):
        cz.invert_canonicalization(grp, x_c, info, "vector")


def test_losses():
    scores = jnp.array([[5.0, 0.0, 0.0, 0.0], [0.0, 5.0, 0.0, 0.0]])
    info = {"scores": scores, "pose": jnp.argmax(scores, -1), "embeddings": None}
    assert float(cz.prior_regularization_loss({"scores": scores[:1]})) < 0.03
    assert float(cz.prior_regularization_loss({"scores": scores[1:]})) > 5.0
    assert float(cz.identity_rate(info)) == 0.5
    assert float(cz.contrastive_loss(info)) == 0.0
    eye = jnp.eye(4)[None] * 3.0
    assert float(cz.contrastive_loss({"embeddings": eye})) == 0.0
    same = jnp.ones((1, 4, 4))  # every pair: |<1, 1>| = 4
    np.testing.assert_allclose(cz.contrastive_loss({"embeddings": same}), 4.0, rtol=1e-6)


def test_group_average_is_invariant():
    grp = canon.group("C4")
    predictor = subjects.SmallCNN(features=8, num_layers=2)
    x = images()
    v = predictor.init(KEY, x)
    tta = jax.jit(lambda z: cz.group_average(grp, lambda y: predictor.apply(v, y), z))
    np.testing.assert_allclose(tta(jnp.rot90(x, 1, (1, 2))), tta(x), atol=1e-5)


def test_prior_teaches_identity_on_upright_digits():
    """Trained with the prior loss alone on 1000 upright 8x8 digits, the paper's
    canonicaliser picks the identity for most held-out upright digits."""
    from wsl.data import images as image_data

    d = image_data.load("digits")
    x = jnp.asarray(image_data.preprocess(d.train_x, "symmetric"))
    test_x = jnp.asarray(image_data.preprocess(d.test_x, "symmetric"))
    grp = canon.group("C4")
    model = canon.OptimizedCanonicalizer(subjects.MLP((64,), num_classes=16), grp)
    v = model.init(KEY, x[:2])
    tx = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state, xb):
        def loss(p):
            _, info = cz.canonicalize(model, {**v, "params": p}, xb, train=True)
            return cz.prior_regularization_loss(info)

        g = jax.grad(loss)(params)
        u, opt_state = tx.update(g, opt_state)
        return optax.apply_updates(params, u), opt_state

    params, opt_state = v["params"], tx.init(v["params"])
    rate_of = jax.jit(
        lambda p: cz.identity_rate(cz.canonicalize(model, {**v, "params": p}, test_x)[1])
    )
    before = float(rate_of(v["params"]))
    for i in range(150):
        params, opt_state = step(params, opt_state, x[(i % 10) * 100 : (i % 10 + 1) * 100])
    rate = float(rate_of(params))
    print(f"identity rate on upright held-out digits: {before:.3f} -> {rate:.3f}")
    assert rate > 0.8


# ----------------------------------------------------------------------------- the method


def tiny_config(kind):
    path = "experiments/canon_mnist.py"
    import importlib.util

    spec = importlib.util.spec_from_file_location("canon_mnist", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("smoke")
    c.data.name, c.data.preprocess = "digits", "symmetric"
    c.data.test_size = 64
    c.predictor.kwargs = ml_collections.ConfigDict({"features": 8, "num_layers": 2})
    c.canon.kind = kind
    c.canon.network.kwargs = ml_collections.ConfigDict(
        {"features": 8, "num_layers": 2, "num_classes": 8}
    )
    c.canon.equivariant.features = (8, 8)
    c.train.num_steps, c.train.batch_size, c.train.eval_batch_size = 3, 16, 64
    c.train.async_checkpoints = False
    c.eval.throughput_batch_size, c.eval.throughput_repeats = 16, 2
    return c


@pytest.mark.parametrize("kind", ["optimized", "equivariant", "tta"])
def test_run_end_to_end(tmp_path, kind):
    """optimized: predictor trained jointly; equivariant: frozen predictor, task_weight 0
    (training never runs the predictor); tta: a frozen predictor alone (no training)."""
    c = tiny_config(kind)
    if kind != "optimized":
        c.predictor.trainable, c.canon.task_weight = False, 0.0
    out = cz.run(c, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["kind"] == kind and saved["step"] == (0 if kind == "tta" else 3)
    for k in ("upright_accuracy", "rotated_accuracy", "images_per_s", "invariance_error"):
        assert np.isfinite(out[k])
    if kind == "tta":
        assert out["invariance_error"] < 1e-4
        return
    assert out["invariance_error"] == 0.0
    assert out["rotated_accuracy"] == out["upright_accuracy"]
    assert 0 <= out["identity_rate"] <= 1 and saved["num_params_canonicalizer"] > 0
    train = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert ("ce" in train[0]) == (kind == "optimized")


def test_unknown_kind(tmp_path):
    from wsl.train import loop

    c = tiny_config("rotate")
    with pytest.raises(loop.UserError, match="unknown canon.kind 'rotate'"):
        cz.run(c, tmp_path)
