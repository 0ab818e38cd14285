"""Block Redundancy and Redundant Blocks Approximation (wsl.methods.redundancy)."""

import os
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsl import configs
from wsl.methods import redundancy as R
from wsl.nn.subjects import ResNet, ViT, option_a_shortcut

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(os.environ.get("WSL_DATA_DIR", "/work/shared/data"))


class Linear(nn.Module):
    """An exactly linear block (Dense with bias on every token)."""

    dim: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.dim, name="dense")(x)


class Residual(nn.Module):
    dim: int

    @nn.compact
    def __call__(self, x):
        return x + nn.Dense(self.dim)(nn.relu(nn.Dense(2 * self.dim)(x)))


class Toy(nn.Module):
    """Tokens in, four blocks (block1 linear), mean-pooled Dense head."""

    dim: int = 6

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(self.dim, name="embed")(x)
        x = Residual(self.dim, name="block0")(x)
        x = Linear(self.dim, name="block1")(x)
        x = Residual(self.dim, name="block2")(x)
        x = Residual(self.dim, name="block3")(x)
        return nn.Dense(3, name="head")(x.mean(1))


@pytest.fixture(scope="module")
def toy():
    model = Toy()
    x = jax.random.normal(jax.random.key(0), (300, 5, 4))
    variables = jax.jit(model.init)(jax.random.key(1), x[:1])
    return model, variables, np.asarray(x)


@pytest.fixture(scope="module")
def resnet8():
    model = ResNet(8, widths=(4, 8, 16))
    x = jax.random.normal(jax.random.key(2), (64, 16, 16, 3))
    variables = jax.jit(model.init)(jax.random.key(3), x[:1])
    return model, variables, np.asarray(x)


def _numpy_lstsq(x, y):
    sol = np.linalg.lstsq(np.c_[x, np.ones(len(x))], y, rcond=None)[0]
    return sol[:-1], sol[-1]


def test_lstsq_equals_numpy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 7)), rng.normal(size=(200, 5))
    for xx in (x, np.c_[x[:, :5], np.zeros(200), x[:, 0] * 2]):  # full rank, rank-deficient
        w, b = R.lstsq(xx, y)
        w_np, b_np = _numpy_lstsq(xx, y)
        np.testing.assert_allclose(w, w_np, atol=1e-10)
        np.testing.assert_allclose(b, b_np, atol=1e-10)
    # one map per position: independent problems along the leading axis
    xs, ys = rng.normal(size=(3, 50, 4)), rng.normal(size=(3, 50, 2))
    w, b = R.lstsq(xs, ys)
    for p in range(3):
        w_np, b_np = _numpy_lstsq(xs[p], ys[p])
        np.testing.assert_allclose(w[p], w_np, atol=1e-10)
        np.testing.assert_allclose(b[p], b_np, atol=1e-10)


def test_fit_map_shared_and_position_equal_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 8, 8, 3)).astype(np.float32)
    y = rng.normal(size=(40, 4, 4, 5)).astype(np.float32)
    xs = x[:, ::2, ::2]  # spatial sizes are matched by subsampling
    m = R.fit_map(x, y, "shared")
    w_np, b_np = _numpy_lstsq(xs.reshape(-1, 3), y.reshape(-1, 5))
    np.testing.assert_allclose(m["weight"], w_np, atol=1e-5)
    np.testing.assert_allclose(m["bias"], b_np, atol=1e-5)
    m = R.fit_map(x, y, "position")
    assert m["weight"].shape == (16, 3, 5) and m["bias"].shape == (16, 5)
    w_np, b_np = _numpy_lstsq(xs[:, 1, 2], y[:, 1, 2])
    np.testing.assert_allclose(m["weight"][1 * 4 + 2], w_np, atol=1e-5)
    out = R.apply_map(m, jnp.asarray(x), y.shape[1:])
    np.testing.assert_allclose(out[:, 1, 2], xs[:, 1, 2] @ w_np + b_np, atol=1e-4)


def test_capture_matches_flax_intermediates(resnet8):
    model, variables, x = resnet8
    blocks = R.find_blocks(model, variables, x)
    assert blocks.names == ("layer1_0", "layer2_0", "layer3_0") and blocks.head == "linear"
    assert blocks.out_shapes == ((16, 16, 4), (8, 8, 8), (4, 4, 16))
    cap = R.capture(model, variables, x, blocks, batch_size=40)
    apply = jax.jit(
        lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"])
    )
    logits, inter = apply(variables, x)
    for b, name in enumerate(blocks.names):
        np.testing.assert_allclose(cap.reps[b + 1], inter["intermediates"][name]["__call__"][0])
    np.testing.assert_allclose(cap.logits, logits, rtol=1e-5, atol=1e-5)
    assert cap.head_in.shape == (64, 16)
    # the identity skip of layer1_0 = the block with its last BatchNorm zeroed (relu(0 + x))
    bn2 = variables["params"]["layer1_0"]["bn2"]
    zeroed = jax.tree.map(jnp.zeros_like, bn2)
    params = {**variables["params"], "layer1_0": {**variables["params"]["layer1_0"], "bn2": zeroed}}
    expect = jax.jit(model.apply)({**variables, "params": params}, x)
    got = R.predict(model, variables, x, blocks, [(0, 1)], [{}])
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-5)


def test_exact_linear_block_recovered(toy):
    model, variables, x = toy
    blocks = R.find_blocks(model, variables, x)
    assert blocks.names == ("block0", "block1", "block2", "block3")
    cap = R.capture(model, variables, x, blocks)
    (m,) = R.fit_spans(model, variables, x, blocks, [(1, 2)], original=cap)
    dense = variables["params"]["block1"]["dense"]
    assert np.abs(m["weight"] - dense["kernel"]).max() < 1e-5
    assert np.abs(m["bias"] - dense["bias"]).max() < 1e-5
    y = np.argmax(cap.logits, -1)
    assert R.accuracy(model, variables, x, y, blocks, [(1, 2)], [m]) == 1.0
    logits = R.predict(model, variables, x, blocks, [(1, 2)], [m])
    np.testing.assert_allclose(logits, cap.logits, atol=1e-5)


def test_nonlinearity_zero_for_a_linear_block(toy):
    """The exactly linear block1 has no non-linear share on held-out samples; the ReLU
    residual blocks have some (and less than the identity's, which is 1)."""
    model, variables, x = toy
    blocks = R.find_blocks(model, variables, x)
    fit = R.capture(model, variables, x[:200], blocks).reps
    held = R.capture(model, variables, x[200:], blocks).reps
    nl = R.nonlinearity(fit, held)
    assert nl.shape == (4,) and nl[1] < 1e-8
    assert np.all(nl[[0, 2, 3]] > 1e-3) and np.all(nl[[0, 2, 3]] < 1.0)
    # RBA-fit's ranking: the linear block first (score 0), though BR need not rank it so
    lin = R.linear_redundancy(fit)
    assert abs(lin[1]) < 1e-8 and np.all(lin[[0, 2, 3]] < -1e-6)
    assert R.select_spans(lin, 1) == ((1, 2),)


def test_parameter_accounting_is_exact(resnet8):
    model, variables, x = resnet8
    blocks = R.find_blocks(model, variables, x)
    # conv 3x3 without bias + BatchNorm scale and bias, per conv; counted by hand
    assert blocks.num_params == (
        2 * (9 * 4 * 4) + 2 * 2 * 4,
        9 * 4 * 8 + 9 * 8 * 8 + 2 * 2 * 8,
        9 * 8 * 16 + 9 * 16 * 16 + 2 * 2 * 16,
    )
    assert blocks.total_params == sum(x.size for x in jax.tree.leaves(variables["params"]))
    cap = R.capture(model, variables, x, blocks)
    shared = R.fit_spans(model, variables, x, blocks, [(1, 3)], original=cap)
    assert shared[0]["weight"].shape == (4, 16)  # 16x16x4 -> 4x4x16 across two stages
    assert R.params_removed(blocks, [(1, 3)], shared) == 896 + 3520 - (4 * 16 + 16)
    pos = R.fit_spans(model, variables, x, blocks, [(1, 3)], "position", original=cap)
    assert R.params_removed(blocks, [(1, 3)], pos) == 896 + 3520 - 16 * (4 * 16 + 16)
    assert R.params_removed(blocks, [(0, 1), (2, 3)], [{}, {}]) == 304 + 3520
    # drop + re-fitted head: the head keeps its size
    v2 = R.refit_head(model, variables, x, blocks, [(1, 2)], [{}], cap)
    assert jax.tree.map(np.shape, v2) == jax.tree.map(np.shape, variables)


def test_identity_across_stages_is_option_a_shortcut(resnet8):
    h = jax.random.normal(jax.random.key(4), (2, 16, 16, 4))
    np.testing.assert_array_equal(R.adapt(h, (8, 8, 8)), option_a_shortcut(h, 8, 2))
    np.testing.assert_array_equal(R.adapt(np.asarray(h), (16, 16, 4)), h)


def test_degenerate_inputs_fail_clearly(toy, resnet8):
    model, variables, x = toy
    blocks = R.find_blocks(model, variables, x)
    with pytest.raises(ValueError, match="underdetermined"):
        R.lstsq(np.ones((5, 8)), np.ones((5, 2)))
    rng = np.random.default_rng(0)
    w, b = R.lstsq(rng.normal(size=(5, 8)), rng.normal(size=(5, 2)), ridge=1e-3)
    assert np.isfinite(w).all() and np.isfinite(b).all()
    with pytest.raises(ValueError, match="NaN"):
        R.lstsq(np.full((20, 2), np.nan), np.ones((20, 2)))
    with pytest.raises(ValueError, match="no blocks"):
        R.check_spans(blocks, [(2, 2)])
    with pytest.raises(ValueError, match="head 'head' is not a block"):
        R.check_spans(blocks, [(2, 5)])
    with pytest.raises(ValueError, match="overlap"):
        R.check_spans(blocks, [(0, 2), (1, 3)])
    with pytest.raises(ValueError, match="classifier head"):
        R.find_blocks(model, variables, x, pattern=r"block\d+|head")
    with pytest.raises(ValueError, match="matches blocks"):
        R.find_blocks(model, variables, x, pattern="nothing")
    # 2 images x 4 positions = 8 rows < 16 inputs + 1 for a map out of stage 2 of resnet8
    rmodel, rvars, rx = resnet8
    rblocks = R.find_blocks(rmodel, rvars, rx)
    with pytest.raises(ValueError, match="underdetermined"):
        R.fit_spans(rmodel, rvars, rx[:2], rblocks, [(2, 3)], "position")


def test_block_redundancy_and_similarity():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4, 4, 2))
    red = R.block_redundancy([x, x, 2 * x, 2 * x[:, ::2, ::2]])
    np.testing.assert_allclose(red["br"], [0.0, -1.0, 0.0], atol=1e-12)  # last: subsampled
    assert red["ranking"][0] == 0
    sim = R.similarity([x, 2 * x, rng.normal(size=(30, 8))])
    np.testing.assert_allclose(sim["cka"][0, 1], 1.0)
    np.testing.assert_allclose(sim["cosine"][0, 1], 1.0)
    assert np.isnan(sim["cosine"][0, 2])  # shapes that the identity cannot map
    assert np.allclose(sim["cka"], sim["cka"].T)


def test_span_selection():
    assert R.group_spans([5, 1, 2, 7, 6]) == ((1, 3), (5, 8))
    assert R.select_spans(np.array([-0.5, -0.1, -0.2, -0.9]), 2) == ((1, 3),)
    for seed in range(20):
        spans = R.random_spans(jax.random.key(seed), [3, 1, 2], 10)
        assert sorted(b - a for a, b in spans) == [1, 2, 3]
        covered = [i for a, b in spans for i in range(a, b)]
        assert len(set(covered)) == 6 and min(covered) >= 0 and max(covered) < 10


def test_vit_blocks():
    model = ViT(patch=4, dim=16, depth=3, heads=2, mlp_dim=32)
    x = jax.random.normal(jax.random.key(0), (40, 8, 8, 1))
    variables = jax.jit(model.init)(jax.random.key(1), x[:1])
    blocks = R.find_blocks(model, variables, x)
    assert blocks.names == ("block0", "block1", "block2") and blocks.head == "head"
    assert blocks.in_shapes[0] == (5, 16)
    cap = R.capture(model, variables, x, blocks)
    maps = R.fit_spans(model, variables, x, blocks, [(0, 2)], original=cap)
    assert maps[0]["weight"].shape == (16, 16)
    assert R.params_removed(blocks, [(0, 2)], maps) == 2 * blocks.num_params[0] - 16 * 17


@pytest.mark.skipif(
    not (DATA / "resnet-cifar10").is_dir(), reason="pretrained ResNets not in WSL_DATA_DIR"
)
def test_pretrained_resnet20_run(tmp_path, monkeypatch):
    """The experiment end to end on ResNet20, 256 fit samples and 500 test images: the two
    most redundant blocks replaced by their maps keep most of the accuracy."""
    import ml_collections

    monkeypatch.setenv("WSL_DATA_DIR", str(DATA))
    config = configs.load(ROOT / "experiments" / "redundancy.py", "smoke")
    config.model, config.approx = "resnet20", "RBA"
    config.num_samples, config.eval_size, config.similarity_samples = 256, 500, 100
    config.fractions, config.target_fraction = (0.12,), 0.12
    config.results_dir = str(tmp_path / "results")
    assert isinstance(config, ml_collections.ConfigDict)
    out = R.run(config, tmp_path / "run")
    assert out["num_blocks"] == 9 and out["blocks_replaced"] == 2
    assert out["original_accuracy"] > 0.7
    # 2 of 9 blocks: 15 points on a random 500-image subset (identity: ~50, see results/)
    assert out["accuracy_drop"] < 0.2
    assert (tmp_path / "results" / "redundancy_similarity_resnet20.png").exists()
    assert out["params_removed"] > 0
    assert len(out["nonlinearity"]) == 9
    assert 0 < out["nonlinearity_min"] <= out["nonlinearity_replaced"] < 1
