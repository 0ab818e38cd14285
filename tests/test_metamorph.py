"""Neural metamorphosis: smoothing, BatchNorm re-parameterisation, INR weight generation,
the NeuMeta train step (toy ResNet8 throughout; no data files needed)."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from wsl.methods import metamorph
from wsl.nn import hyper, subjects
from wsl.train import loop, parallel
from wsl.weights import convert, fold, spec, symmetry

X = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
WIDTHS = (4, 8, 16)
_CACHE: dict = {}


def _bumped(variables, key):
    """Non-trivial BatchNorm statistics (means ~ N(0, 0.2^2), variances in [0.5, 1.5]) and
    affine parameters; the networks stay alive (their outputs differ between inputs:
    `_alive`), so comparing outputs tests something."""
    stats = variables["batch_stats"]
    paths, tree = jax.tree_util.tree_flatten_with_path(stats)
    ks = jax.random.split(key, 2 * len(paths))
    stats = jax.tree.unflatten(
        tree,
        [
            0.2 * jax.random.normal(k, x.shape)
            if path[-1].key == "mean"
            else jax.random.uniform(k, x.shape, minval=0.5, maxval=1.5)
            for k, (path, x) in zip(ks[: len(paths)], paths, strict=True)
        ],
    )
    params = jax.tree.map(
        lambda x: x + 0.1 * jax.random.normal(ks[-1], x.shape), variables["params"]
    )
    return {"params": params, "batch_stats": stats}


def resnet8():
    """(module, variables, spec) of a BatchNorm ResNet8 with random statistics."""
    if "r8" not in _CACHE:
        m = subjects.ResNet(8, widths=WIDTHS)
        v = _bumped(dict(m.init(jax.random.key(0), X)), jax.random.key(3))
        _CACHE["r8"] = (m, v, spec.spec_from_flax(m, v, X))
    return _CACHE["r8"]


def folded8():
    if "f8" not in _CACHE:
        m, v, s = resnet8()
        fs, fw = fold.reparameterize_batchnorm(s, convert.flax_to_canonical(s, v))
        _CACHE["f8"] = (subjects.ResNet(8, widths=WIDTHS, norm=False), fs, fw)
    return _CACHE["f8"]


def run(module, s, weights):
    return np.asarray(module.apply(convert.canonical_to_flax(s, weights), X))


def test_fixture_networks_are_alive():
    """The toy networks' outputs differ between inputs (with all-negative pre-activations
    every output would be the classifier's bias, and output comparisons would be empty)."""
    m, v, _ = resnet8()
    assert np.asarray(m.apply(v, X)).std(0).max() > 0.1
    for depth in (8, 14):
        assert run(*folded(depth)).std(0).max() > 0.1


# ---- preparation --------------------------------------------------------------------


def test_fold_and_smooth_keep_the_function_and_lower_total_variation():
    m, v, _ = resnet8()
    fm, fs, fw = folded8()
    ref = np.asarray(m.apply(v, X))
    assert np.max(np.abs(run(fm, fs, fw) - ref)) < 1e-4
    t = symmetry.smoothing_transform(fs, fw)
    assert [x is None for x in t] == [not g.permutable for g in fs.groups]
    assert t[0] is None and t[-1] is None  # network input and output never permuted
    sw = symmetry.apply_transform(fs, fw, t)
    assert np.max(np.abs(run(fm, fs, sw) - ref)) < 1e-4
    assert symmetry.total_variation(fs, sw) < symmetry.total_variation(fs, fw)


def test_shortest_path_recovers_a_line():
    rng = np.random.default_rng(0)
    pts = rng.permutation(np.linspace(0, 1, 30))
    dist = np.abs(pts[:, None] - pts[None, :])
    order = symmetry.shortest_path(dist)
    assert sorted(order.tolist()) == list(range(30))
    assert abs(symmetry.path_length(dist, order) - 1.0) < 1e-9


class _PostAddBN(nn.Module):
    """conv -> (+ input) -> BatchNorm (no conv to fold into) -> relu -> pool -> dense;
    `as_conv` puts a 1x1 conv where the BatchNorm was."""

    as_conv: bool = False

    @nn.compact
    def __call__(self, x, train=False):
        y = nn.Conv(3, (3, 3), name="conv")(x) + x
        if self.as_conv:
            y = nn.Conv(3, (1, 1), name="bn")(y)
        else:
            y = nn.BatchNorm(use_running_average=True, name="bn")(y)
        y = nn.relu(nn.Conv(5, (3, 3), name="conv2")(y))
        return nn.Dense(2, name="out")(jnp.mean(y, axis=(1, 2)))


def test_batchnorm_without_conv_becomes_a_1x1_conv():
    m = _PostAddBN()
    v = dict(m.init(jax.random.key(0), X))
    v = {"params": v["params"], "batch_stats": _bumped(v, jax.random.key(1))["batch_stats"]}
    s = spec.spec_from_flax(m, v, X)
    ns, nw = fold.reparameterize_batchnorm(s, convert.flax_to_canonical(s, v))
    assert [layer.kind for layer in ns.layers] == ["conv", "conv", "conv", "dense"]
    out = _PostAddBN(as_conv=True).apply(convert.canonical_to_flax(ns, nw), X)
    assert np.max(np.abs(np.asarray(out) - np.asarray(m.apply(v, X)))) < 1e-4


# ---- INR and generation -------------------------------------------------------------


def _subject():
    fm, fs, fw = folded8()
    return metamorph.make_subject(fm, fs, fw, r"layer3_\d+/conv[12]", r"layer3_\d+/conv1", False)


def test_generate_every_layer_in_one_call_deterministic_and_masked():
    sub = _subject()
    plan = sub.plan
    inr = hyper.INR(hidden=16, num_layers=2, num_freqs=4)
    params = inr.init(jax.random.key(0), jnp.zeros((1, 6)))["params"]
    full = hyper.full_shape(plan)
    gen = jax.jit(lambda p, k: hyper.generate(inr, p, plan, full, k, 1.0))
    a, b = gen(params, jax.random.key(7)), gen(params, jax.random.key(7))
    for x, y, i in zip(a, b, plan.layers, strict=True):
        assert x["kernel"].shape == sub.spec.layers[i].shape_of["kernel"]
        np.testing.assert_array_equal(x["kernel"], y["kernel"])
    c = gen(params, jax.random.key(8))
    assert not np.allclose(a[0]["kernel"], c[0]["kernel"])
    # a narrower configuration: zero outside, crop gives the true shapes, the net runs
    sizes = metamorph.widths_for(plan.group_sizes, sub.groups, 0.75)
    g = hyper.generate(inr, params, plan, hyper.shape_for(plan, sizes))
    h = int(sizes[sub.groups[0]])
    assert h == 4 and np.all(np.asarray(g[0]["kernel"])[..., h:] == 0)
    assert np.all(np.asarray(g[0]["bias"])[h:] == 0)
    assert np.all(np.asarray(g[1]["kernel"])[:, :, h:, :] == 0)
    cropped = hyper.crop(plan, g, sizes)
    assert cropped[0]["kernel"].shape[-1] == h and cropped[1]["kernel"].shape[-2] == h
    assert np.all(np.isfinite(run(sub.module, sub.spec, metamorph.insert(sub, g))))
    mean = hyper.generate_mean(inr, params, plan, full, jax.random.key(2), 3, 1.0)
    assert mean[0]["kernel"].shape == a[0]["kernel"].shape


def test_generate_at_uses_the_configured_norm_with_and_without_samples():
    """generate_at passes inr.norm on both paths (k = 1: noiseless; k > 1: sample mean with
    noise 0 equals the noiseless weights)."""
    sub = _subject()
    inr = hyper.INR(hidden=16, num_layers=2, num_freqs=4)
    params = inr.init(jax.random.key(0), jnp.zeros((1, 6)))["params"]
    key = jax.random.key(1)
    one, _ = metamorph.generate_at(sub, inr, params, 0.5, key, 1, 0.0, 16.0)
    mean, _ = metamorph.generate_at(sub, inr, params, 0.5, key, 3, 0.0, 16.0)
    other, _ = metamorph.generate_at(sub, inr, params, 0.5, key, 1, 0.0, 64.0)
    np.testing.assert_allclose(one[0]["kernel"], mean[0]["kernel"], atol=1e-6)
    assert not np.allclose(one[0]["kernel"], other[0]["kernel"])


def test_zero_channels_compute_the_narrow_network():
    """The masking principle behind every width: an MLP of hidden width 16 with channels
    >= 10 cut computes what an MLP of width 10 with the leading weights computes."""
    wide, narrow = subjects.MLP(hidden=(16,)), subjects.MLP(hidden=(10,))
    x = jax.random.normal(jax.random.key(0), (5, 7))
    v = wide.init(jax.random.key(1), x)
    s = spec.spec_from_flax(wide, v, x)
    w = convert.flax_to_canonical(s, v)
    sizes = [g.size for g in s.groups]
    sizes[s.layers[0].out_group] = 10
    masked = jax.tree.map(lambda a, m: a * m, w, metamorph.channel_mask(s, sizes))
    cut = (
        {"kernel": w[0]["kernel"][:, :10], "bias": w[0]["bias"][:10]},
        {**w[1], "kernel": w[1]["kernel"][:10]},
    )
    vn = {"params": {"dense0": cut[0], "dense1": cut[1]}}
    np.testing.assert_allclose(
        wide.apply(convert.canonical_to_flax(s, masked), x), narrow.apply(vn, x), atol=1e-5
    )


def _neumeta_steps(sub, data, steps=8):
    """Losses of `steps` NeuMeta train steps on `data` and the final evaluation."""
    c = ml_collections.ConfigDict(
        {
            "seed": 0,
            "noise": 1.0,
            "inr": {"hidden": 32, "num_layers": 2, "num_freqs": 4, "scalar": 0.1, "norm": 16.0},
            "loss": {"ce": 1.0, "recon": 1.0, "l2": 1e-4},
            "widths": {"train_max_compression": 0.5, "full_prob": 0.5, "eval": [0.75]},
            "train": {"batch_size": 4, "ema": 0.9},
            "eval": {"k_samples": 2},
        }
    )
    inr = metamorph.make_inr(c)
    tx = optax.adam(1e-2)
    task = metamorph.make_neumeta_task(sub, inr, tx, data, c, parallel.make_mesh())
    state = task.init(jax.random.key(0))
    step = jax.jit(task.train_step)
    losses = []
    for i in range(steps):
        state, m = step(state, task.batch(i), jax.random.key(i))
        losses.append(float(m["loss"]))
    return np.asarray(losses), task.evaluate(state)


def test_neumeta_train_step_lowers_the_loss_and_the_cached_prefix_is_exact():
    data = {"train": (np.asarray(X), np.arange(4) % 2), "test": (np.asarray(X), np.arange(4) % 2)}
    sub = _subject()
    losses, out = _neumeta_steps(sub, data)
    assert np.all(np.isfinite(losses)) and min(losses[4:]) < losses[0]
    assert set(out) >= {"acc_c75", "recon_rel_error", "acc_full_noiseless"}
    # the frozen blocks before the generated one, run once: the same network, split
    m, v, _ = resnet8()
    for k in range(4):
        split = m.apply(v, m.apply(v, X, stop=k), start=k)
        np.testing.assert_allclose(split, m.apply(v, X), atol=1e-5)
    assert metamorph.frozen_blocks(sub) == 2  # layer3_0 is ResNet8's third block
    cached_sub, cached = metamorph.cache_prefix(sub, data)
    assert cached_sub.start == 2 and cached["train"][0].shape == (4, 4, 4, 8)
    cached_losses, cached_out = _neumeta_steps(cached_sub, cached)
    np.testing.assert_allclose(cached_losses, losses, rtol=1e-5, atol=1e-6)
    assert set(cached_out) == set(out)
    for key in out:
        np.testing.assert_allclose(cached_out[key], out[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_warm_up_runs_at_its_own_rate_and_the_joint_phase_restarts_its_schedule():
    c = ml_collections.ConfigDict(
        {
            "optimizer": {
                "name": "adamw",
                "learning_rate": 1e-4,
                "schedule": "cosine",
                "warmup_steps": 10,
                "weight_decay": 0.0,
            },
            "train": {"num_steps": 120, "recon_steps": 20, "recon_learning_rate": 3e-3},
        }
    )
    lr = metamorph.neumeta_learning_rate(c)
    np.testing.assert_allclose([lr(0), lr(19)], [3e-3, 3e-3], rtol=1e-6)
    np.testing.assert_allclose([lr(20), lr(25), lr(30)], [0.0, 5e-5, 1e-4], rtol=1e-5)
    assert float(lr(119)) < 1e-6  # cosine over the 100 joint steps
    c.train.recon_learning_rate = 0.0  # 0: the optimizer's rate
    assert float(metamorph.neumeta_learning_rate(c)(5)) == np.float32(1e-4)
    c.train.recon_steps = 0  # no warm-up: the plain schedule over all steps
    np.testing.assert_allclose(metamorph.neumeta_learning_rate(c)(10), 1e-4, rtol=1e-6)


def test_normalised_recon_is_one_at_zero_and_scale_free():
    rng = np.random.default_rng(0)
    t = ({"kernel": rng.normal(size=(3, 3, 4, 5)), "bias": rng.normal(size=5)},)
    g = jax.tree.map(lambda a: a + 0.3 * rng.normal(size=a.shape), t)
    zero = jax.tree.map(np.zeros_like, t)
    np.testing.assert_allclose(metamorph.recon_loss(zero, t, True), 1.0, rtol=1e-5)
    raw, norm = metamorph.recon_loss(g, t), metamorph.recon_loss(g, t, True)
    big = jax.tree.map(lambda a: 10 * a, (g, t))
    np.testing.assert_allclose(metamorph.recon_loss(*big), 100 * raw, rtol=1e-4)
    np.testing.assert_allclose(metamorph.recon_loss(*big, True), norm, rtol=1e-4)
    # the raw loss in numpy: mean over arrays of mean(|t| / max|t| * (g - t)^2)
    expect = np.mean(
        [np.mean(np.abs(t[0][r]) / np.abs(t[0][r]).max() * (g[0][r] - t[0][r]) ** 2) for r in t[0]]
    )
    np.testing.assert_allclose(raw, expect, rtol=1e-4)
    # uniform weighting, normalised: the mean over arrays of ||g - t||^2 / ||t||^2
    uniform = metamorph.recon_loss(g, t, True, "uniform")
    expect = np.mean([np.sum((g[0][r] - t[0][r]) ** 2) / np.sum(t[0][r] ** 2) for r in t[0]])
    np.testing.assert_allclose(uniform, expect, rtol=1e-4)
    with pytest.raises(loop.UserError, match="unknown loss.recon_weighting 'nope'"):
        metamorph.recon_loss(g, t, True, "nope")


def test_individual_block_trains_only_the_generated_layers_inside_the_width():
    sub, data = metamorph.cache_prefix(_subject(), DATA)
    sizes = metamorph.widths_for(sub.plan.group_sizes, sub.groups, 0.5)
    model = metamorph.block_model(sub, sizes)
    params = model.init(jax.random.key(0), None)["params"]
    frozen = convert.canonical_to_flax(sub.spec, sub.weights)["params"]
    x = jnp.asarray(data["train"][0])
    # with the pretrained weights in the generated layers at full width: the pretrained net
    full = metamorph.block_model(sub, sub.plan.group_sizes)
    np.testing.assert_allclose(
        full.apply({"params": frozen}, x), run(sub.module, sub.spec, sub.weights), atol=1e-5
    )
    # the generated layers start fresh, the others pretrained
    start = convert.flax_to_canonical(sub.spec, {"params": params})
    for i, (a, w) in enumerate(zip(start, sub.weights, strict=True)):
        same = all(np.allclose(a[r], w[r]) for r in w)
        assert same != (i in sub.plan.layers), sub.spec.layers[i].name

    def loss(p):
        return jnp.sum(model.apply({"params": p}, x) ** 2)

    grads = convert.flax_to_canonical(sub.spec, {"params": jax.grad(loss)(params)})
    mask = metamorph.channel_mask(sub.spec, sizes)
    for i, (g, m) in enumerate(zip(grads, mask, strict=True)):
        for r in g:
            g_r = np.abs(np.asarray(g[r]))
            if i not in sub.plan.layers:
                assert g_r.max() == 0.0, sub.spec.layers[i].name
            else:
                assert g_r[m[r] == 0].max(initial=0.0) == 0.0 and g_r[m[r] == 1].max() > 0.0


# ---- HTTY ---------------------------------------------------------------------------


def folded(depth):
    """(folded module, folded spec, folded weights) of a toy BatchNorm ResNet-`depth`."""
    key = f"f{depth}"
    if key not in _CACHE:
        m = subjects.ResNet(depth, widths=WIDTHS)
        v = _bumped(dict(m.init(jax.random.key(0), X)), jax.random.key(3))
        s = spec.spec_from_flax(m, v, X)
        fs, fw = fold.reparameterize_batchnorm(s, convert.flax_to_canonical(s, v))
        _CACHE[key] = (subjects.ResNet(depth, widths=WIDTHS, norm=False), fs, fw)
    return _CACHE[key]


def _htty_config(depth=8, per_phase=3, steps=4, final=0, order="input_first"):
    return ml_collections.ConfigDict(
        {
            "seed": 0,
            "model": {
                "depth": depth,
                "generate": r"layer\d_\d+/conv[12]",
                "hidden": r"layer\d_\d+/conv1",
                "shared": r"linear",
                "smooth": False,
                "order": order,
                "train_depths": [depth],
                "eval_depths": [8] if depth > 8 else [],
            },
            "phases": {
                "blocks_per_phase": per_phase,
                "steps_per_phase": steps,
                "final_steps": final,
            },
            "inr": {"hidden": 32, "num_layers": 2, "num_freqs": 4, "scalar": 0.1, "norm": 16.0},
            "noise": 1.0,
            "loss": {"ce": 1.0, "recon": 1.0, "l2": 1e-4},
            "widths": {"train_max_compression": 0.5, "full_prob": 0.5, "eval": [0.0, 0.75]},
            "optimizer": {"learning_rate": 1e-2, "warmup_steps": 0, "weight_decay": 0.0},
            "train": {"batch_size": 4, "ema": 0.9, "clip": 10.0},
            "eval": {"k_samples": 2},
        }
    )


def _htty(depth=8, **kw):
    c = _htty_config(depth, **kw)
    sub = metamorph.make_htty_subject(*folded(depth), c.model)
    return sub, c, metamorph.make_inr(c)


DATA = {"train": (np.asarray(X), np.arange(4) % 2), "test": (np.asarray(X), np.arange(4) % 2)}


def test_gaussian_encoding_is_fixed_and_fits_a_channel_table_faster_than_per_axis():
    """A random 32 x 32 table over (input, output channel), as a conv layer's: the INR with
    gaussian features fits it to a lower error in the same steps; the encoding is not a
    parameter (two inits share it) and matches its closed form."""
    x = jax.random.uniform(jax.random.key(3), (5, 6))
    f = hyper.gaussian_features(x, 12, 10.0)
    b = jax.random.normal(jax.random.key(0), (6, 12)) * 10.0
    a = 2 * np.pi * np.asarray(x, np.float64) @ np.asarray(b, np.float64)
    np.testing.assert_allclose(f, np.concatenate([x, np.sin(a), np.cos(a)], -1), atol=2e-4)
    i, o = np.meshgrid(np.arange(32) / 32, np.arange(32) / 32, indexing="ij")
    coords = jnp.asarray(
        np.stack([np.zeros_like(i), i, o, *(np.full_like(i, v) for v in (1, 0.5, 0.5))], -1)
    ).reshape(-1, 6)
    target = jax.random.normal(jax.random.key(1), (32 * 32,))
    losses = {}
    for enc in ("axis", "gaussian"):
        inr = hyper.INR(64, 2, 8, encoding=enc)
        params = inr.init(jax.random.key(2), coords)
        if enc == "gaussian":
            other = inr.init(jax.random.key(5), coords)
            assert jax.tree.structure(other) == jax.tree.structure(params)
        tx = optax.adam(3e-3)

        def loss(p, inr=inr):
            return jnp.mean((inr.apply(p, coords)["dense"] - target) ** 2)

        @jax.jit
        def step(p, s, loss=loss, tx=tx):
            v, g = jax.value_and_grad(loss)(p)
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s, v

        s = tx.init(params)
        for _ in range(300):
            params, s, _ = step(params, s)
        losses[enc] = float(loss(params))
    assert losses["gaussian"] < 0.5 * losses["axis"], losses


def test_per_block_inrs_answer_in_one_call_as_separate_inrs_would():
    sub, _, inr = _htty(8, order="output_first")
    plan = sub.plan
    assert sub.blocks == ("layer3_0", "layer2_0", "layer1_0") and plan.num_inrs == 3
    params = hyper.init_params(inr, jax.random.key(0), plan)
    gen = hyper.generate(inr, params, plan, hyper.full_shape(plan))
    for b in range(plan.num_inrs):
        mine = [j for j, blk in enumerate(plan.blocks) if blk == b]
        one = hyper.make_plan(sub.spec, [plan.layers[j] for j in mine])
        alone = hyper.generate(
            inr, jax.tree.map(lambda a, b=b: a[b], params), one, hyper.full_shape(one)
        )
        for j, a in zip(mine, alone, strict=True):
            for r in a:
                np.testing.assert_allclose(gen[j][r], a[r], rtol=1e-5, atol=1e-7)


def test_htty_train_step_runs_and_lowers_the_loss():
    sub, c, inr = _htty(8, per_phase=3, steps=8)
    task = metamorph.make_htty_task(sub, inr, optax.adam(1e-2), DATA, c, parallel.make_mesh())
    state = task.init(jax.random.key(0))
    step = jax.jit(task.train_step)
    losses = []
    for i in range(8):
        state, m = step(state, task.batch(i), jax.random.key(i))
        state = state.replace(step=state.step + 1)
        losses.append(float(m["loss"]))
        assert int(m["blocks"]) == 3
    assert np.all(np.isfinite(losses)) and min(losses[4:]) < losses[0]
    out = task.evaluate(state)
    assert set(out) >= {"acc_c0", "acc_c75", "recon_rel_error", "acc_full_noiseless"}
    assert out["blocks_added"] == 3


def test_blockwise_phases_start_each_block_from_the_previous_blocks_inr():
    sub, c, inr = _htty(8, per_phase=1, steps=2, final=1)
    phases = metamorph.make_phases(sub, c)
    assert (phases.num, phases.num_steps) == (3, 7)
    task = metamorph.make_htty_task(sub, inr, optax.sgd(0.0), DATA, c, parallel.make_mesh())
    state = task.init(jax.random.key(0))
    step = jax.jit(task.train_step)
    row = lambda tree, b: jax.tree.leaves(jax.tree.map(lambda a: a[b], tree["inr"]))  # noqa: E731
    same = lambda x, y: all(np.array_equal(a, b) for a, b in zip(x, y, strict=True))  # noqa: E731
    assert not same(row(state.params, 0), row(state.params, 1))  # independent inits
    added = []
    for i in range(phases.num_steps):
        before = state.params
        state, m = step(state, task.batch(i), jax.random.key(i))
        state = state.replace(step=state.step + 1)
        added.append(int(m["blocks"]))
        if i in (2, 4):  # phase starts: block i // 2 is a copy of block i // 2 - 1
            b = i // 2
            assert same(row(state.params, b), row(before, b - 1))
            for x, y in zip(row(state.model_state["ema"], b), row(before, b - 1), strict=True):
                np.testing.assert_allclose(x, y, rtol=1e-6)
            assert not same(row(before, b), row(before, b - 1))
        else:  # lr 0: nothing else moves
            assert same(jax.tree.leaves(state.params), jax.tree.leaves(before))
    assert added == [1, 1, 2, 2, 3, 3, 3]
    # the optimiser's per-block moments are copied too (its step count is not)
    tx = metamorph.make_htty_optimizer(sub, c)
    grads = jax.tree.map(lambda a: jnp.cumsum(jnp.ones_like(a), axis=0), state.params["inr"])
    _, opt = tx.update({**state.params, "inr": grads}, tx.init(state.params), state.params)
    moved = metamorph.copy_blocks(opt, 0, jnp.array([False, True, False]))
    is_inr = lambda path: any(getattr(k, "key", None) == "inr" for k in path)  # noqa: E731
    pairs = [
        (is_inr(path), np.asarray(a), np.asarray(b))
        for (path, a), b in zip(
            jax.tree_util.tree_leaves_with_path(opt), jax.tree.leaves(moved), strict=True
        )
    ]
    rows = [(a, b) for inr_leaf, a, b in pairs if inr_leaf]
    assert rows and not all(np.array_equal(a[1], a[0]) for a, _ in rows)
    assert all(np.array_equal(b[1], a[0]) and np.array_equal(b[2], a[2]) for a, b in rows)
    assert all(np.array_equal(a, b) for inr_leaf, a, b in pairs if not inr_leaf)


def test_htty_phases_start_with_a_reconstruction_warm_up_at_its_own_rate():
    sub, c, inr = _htty(8, per_phase=1, steps=4, final=2)
    c.train.recon_steps, c.train.recon_learning_rate = 2, 3e-3
    c.optimizer.warmup_steps = 1
    phases = metamorph.make_phases(sub, c)
    warm = [bool(phases.warming(i)) for i in range(phases.num_steps)]
    assert warm == [True, True, False, False] * 3 + [False, False]
    lr = phases.learning_rate(1e-2, 1, 3e-3)
    np.testing.assert_allclose([lr(0), lr(1), lr(4), lr(9)], 3e-3, rtol=1e-6)
    np.testing.assert_allclose([lr(2), lr(6), lr(10)], 1e-2, rtol=1e-6)  # 1 warm-up step
    assert float(lr(13)) < float(lr(11)) < 1e-2  # the last phase's cosine spans final too
    decayed = phases.learning_rate(1e-2, 1, 3e-3, recon_decay=0.1)  # cosine 3e-3 -> 3e-4
    c.train.recon_decay = 2.0
    with pytest.raises(loop.UserError, match="recon_decay=2.0 must be"):
        metamorph.make_htty_optimizer(sub, c)
    c.train.recon_decay = 1.0
    np.testing.assert_allclose([decayed(4), decayed(5), decayed(6)], [3e-3, 3e-4, 1e-2], rtol=1e-5)
    no_recon = dataclasses.replace(phases, recon=0).learning_rate(1e-2, 1)
    np.testing.assert_allclose([no_recon(0), no_recon(4)], 1e-2, rtol=1e-6)
    task = metamorph.make_htty_task(sub, inr, optax.adam(1e-3), DATA, c, parallel.make_mesh())
    state, step = task.init(jax.random.key(0)), jax.jit(task.train_step)
    for i in range(8):  # full width in warm-up steps, loss = recon alone; then CE counts
        state, m = step(state.replace(step=jnp.asarray(i)), task.batch(i), jax.random.key(i))
        if warm[i]:
            assert int(m["width"]) == metamorph.htty_layout(sub, [8]).ref  # full width
            np.testing.assert_allclose(m["loss"], m["recon"], rtol=1e-6)
        else:
            assert float(m["loss"]) >= float(m["ce"]) > 0.0
    c.train.recon_steps = 4
    with pytest.raises(loop.UserError, match="recon_steps=4 must be"):
        metamorph.make_phases(sub, c)


def test_unseen_depth_and_width_are_deterministic_and_depth_drops_blocks_exactly():
    sub, c, inr = _htty(14)
    lay = metamorph.htty_layout(sub, c.model.train_depths)
    params = (
        metamorph.make_htty_task(sub, inr, optax.sgd(0.0), DATA, c, parallel.make_mesh())
        .init(jax.random.key(0))
        .params
    )
    gen = metamorph.htty_generator(sub, inr, lay, c)
    on = np.ones(len(sub.blocks), bool)
    h = round(lay.ref * 0.25)  # 75 % compression: never trained (widths 8..16 are)
    a, _ = gen(params, on, h, 8, jax.random.key(5), 3)
    b, _ = gen(params, on, h, 8, jax.random.key(5), 3)
    d, _ = gen(params, on, h, 8, jax.random.key(6), 3)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert not all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(d), strict=True)
    )
    # dropped blocks (layer<s>_1) are zero; kept inner widths cut to round(4 * h / 16) = 1
    names = [layer.name for layer in sub.spec.layers]
    for i, name in enumerate(names):
        if "_1/" in name:
            assert all(np.all(np.asarray(v) == 0) for v in a[i].values())
    k = np.asarray(a[names.index("layer1_0/conv1")]["kernel"])
    assert np.all(k[..., 1:] == 0) and np.any(k[..., :1] != 0)
    # the depth-8 network inside ResNet14 is exactly a ResNet8 with the kept layers
    m14, s14, _ = folded(14)
    m8, s8, _ = folded(8)
    w8 = tuple(a[names.index(layer.name)] for layer in s8.layers)
    np.testing.assert_allclose(run(m14, s14, a), run(m8, s8, w8), rtol=1e-4, atol=1e-5)
    ids, num, keep = metamorph.depth_config(sub, 8)
    assert num == 8 and int(keep.sum()) == 8 and sorted(ids[ids >= 0].tolist()) == list(range(1, 7))


def test_generating_only_the_added_blocks_gives_the_same_steps_as_generating_all():
    sub, c, inr = _htty(8, per_phase=1, steps=3, final=1)
    c.noise = 0.0  # noise draws depend on how many queries are generated
    c.train.recon_steps, c.train.recon_learning_rate = 1, 1e-2
    phases = metamorph.make_phases(sub, c)
    assert metamorph.generation_buckets(phases, 3) == (1, 2, 3)
    assert metamorph.generation_buckets(phases, 2) == (2, 3)
    assert metamorph.generation_buckets(phases, 1) == (3,)
    runs = {}
    for name, buckets in (("all", 1), ("variants", 3), ("variants1", 1)):
        c.train.generate_buckets = buckets
        tx = metamorph.make_htty_optimizer(sub, c)
        task = metamorph.make_htty_task(sub, inr, tx, DATA, c, parallel.make_mesh())
        state, logs, seen, fns = task.init(jax.random.key(0)), [], set(), {}
        for i in range(phases.num_steps):
            v = task.variant(i) if name != "all" else None
            seen.add(v)
            if v not in fns:  # one compilation per variant, as the loop does
                fns[v] = jax.jit(functools.partial(task.train_step, variant=v))
            fn = fns[v]
            state, m = fn(state, task.batch(i), jax.random.key(i))
            state = state.replace(step=state.step + 1)
            logs.append(m)
        runs[name] = (state, logs, seen)
    assert runs["variants"][2] == {
        (0, False),
        (0, True),
        (1, False),
        (1, True),
        (2, False),
        (2, True),
    }
    assert runs["variants1"][2] == {(0, False), (0, True)}
    a, la, _ = runs["all"]
    for other in ("variants", "variants1"):
        b, lb, _ = runs[other]
        for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
            np.testing.assert_allclose(x, y, rtol=2e-4, atol=1e-6)
        for i, (m, n) in enumerate(zip(la, lb, strict=True)):
            np.testing.assert_allclose(m["loss"], n["loss"], rtol=1e-4)
            warm = bool(phases.warming(i))
            assert np.isnan(float(n["ce"])) == warm  # reconstruction only: the net is not run
            if not warm:
                np.testing.assert_allclose(m["ce"], n["ce"], rtol=1e-4)


def test_per_block_scalars_start_every_block_as_the_identity_and_are_never_copied():
    """branch_scalar=per_block (the reference's skip-init alpha, init 0): an added block's
    residual branch is zero, so the network is the pretrained one with that block removed;
    reconstruction sees the raw generated weights; the cross-entropy moves the scalars of
    the added blocks only, and a phase start copies INRs, not scalars."""
    sub, c, inr = _htty(8, per_phase=1, steps=3)
    c.model.branch_scalar = "per_block"
    lay = metamorph.htty_layout(sub, c.model.train_depths)
    task = metamorph.make_htty_task(sub, inr, optax.adam(1e-2), DATA, c, parallel.make_mesh())
    state = task.init(jax.random.key(0))
    np.testing.assert_array_equal(state.params["scalars"], np.zeros(3))
    gen = metamorph.htty_generator(sub, inr, lay, c)
    on = np.array([True, True, False])
    w, eff = gen(state.params, on, lay.ref, 8, None, 1)
    raw = hyper.generate(
        inr, state.params["inr"], sub.plan, hyper.full_shape(sub.plan), norm=c.inr.norm
    )
    for j, i in enumerate(sub.plan.layers):
        block_on = on[lay.layer_block[j]]
        for r in raw[j]:
            np.testing.assert_allclose(eff[j][r], raw[j][r], rtol=1e-5, atol=1e-7)  # unscaled
            if lay.branch_out[j] and block_on:  # conv2 of an added block: zero
                assert np.all(np.asarray(w[i][r]) == 0)
            elif block_on:
                np.testing.assert_allclose(w[i][r], raw[j][r], rtol=1e-5, atol=1e-7)
            else:  # not added yet: pretrained
                np.testing.assert_array_equal(w[i][r], sub.weights[i][r])
    # with blocks 0 and 1 added, the network is the pretrained one without them
    m, s, _ = folded(8)
    names = [layer.name for layer in s.layers]
    cut = list(sub.weights)
    for b in sub.blocks[:2]:
        i = names.index(f"{b}/conv2")
        cut[i] = {r: jnp.zeros_like(a) for r, a in cut[i].items()}
    np.testing.assert_allclose(run(m, s, w), run(m, s, tuple(cut)), rtol=1e-5, atol=1e-6)
    step = jax.jit(task.train_step)
    for i in range(3):  # phase 0: block 0 only
        state, _ = step(state, task.batch(i), jax.random.key(i))
        state = state.replace(step=state.step + 1)
    a = np.asarray(state.params["scalars"])
    assert a[0] != 0 and a[1] == 0 and a[2] == 0
    moved = metamorph.copy_blocks(state.params, 0, jnp.array([False, True, False]))
    np.testing.assert_array_equal(moved["scalars"], a)  # block 1 will start at 0
    assert np.array_equal(moved["inr"]["input"]["kernel"][1],
                          state.params["inr"]["input"]["kernel"][0])  # fmt: skip
    c.model.branch_scalar = "per_channel"
    with pytest.raises(loop.UserError, match="branch_scalar"):
        metamorph.make_htty_task(sub, inr, optax.sgd(0.0), DATA, c, parallel.make_mesh())


def test_htty_evaluation_at_a_phase_end_uses_the_blocks_trained_so_far():
    sub, c, inr = _htty(8, per_phase=1, steps=2, final=1)
    task = metamorph.make_htty_task(sub, inr, optax.sgd(0.0), DATA, c, parallel.make_mesh())
    state = task.init(jax.random.key(0))
    assert task.evaluate(state.replace(step=jnp.asarray(2)))["blocks_added"] == 1
    assert task.evaluate(state.replace(step=jnp.asarray(7)))["blocks_added"] == 3


def test_sampled_reconstruction_is_the_full_one_at_fraction_1_and_unbiased_below():
    """`sampled_recon` from every query equals `_per_layer_recon` of the generated weights
    (with a per-layer scale, as HTTY's per-width scalar on the residual branch; both
    weightings); from a quarter of the queries its mean over draws matches it; a step on
    it lowers the loss."""
    sub, _, inr = _htty(8)
    plan = sub.plan
    params = hyper.init_params(inr, jax.random.key(0), plan)
    shape = hyper.full_shape(plan)
    targets = tuple(sub.weights[i] for i in plan.layers)
    scale = jnp.asarray(np.linspace(0.5, 1.5, len(plan.layers)), jnp.float32)
    key = jax.random.key(4)
    gen = hyper.generate(inr, params, plan, shape, jax.random.split(key)[0], 0.5, 16.0)
    eff = tuple({r: a * scale[j] for r, a in g.items()} for j, g in enumerate(gen))
    for weighting in ("uniform", "neumeta"):  # the table of the last one is used below
        table = metamorph.query_targets(plan, targets, inr.kernel_size, True, weighting)
        full = metamorph._per_layer_recon(eff, targets, True, weighting)
        got = metamorph.sampled_recon(inr, params, plan, shape, table, scale, key, 1.0, 0.5, 16.0)
        np.testing.assert_allclose(got, full, rtol=1e-4)

    def est(params, key, fraction):
        return metamorph.sampled_recon(
            inr, params, plan, shape, table, scale, key, fraction, 0.5, 16.0
        )

    # noise-free coordinates: the draws differ only in which queries are sampled
    many = jax.vmap(lambda k: metamorph.sampled_recon(
        inr, params, plan, shape, table, scale, k, 0.25, 0.0, 16.0
    ))(jax.random.split(jax.random.key(5), 300))  # fmt: skip
    exact = metamorph.sampled_recon(inr, params, plan, shape, table, scale, key, 1.0, 0.0, 16.0)
    many = np.asarray(many, np.float64)
    stderr = many.std(0) / np.sqrt(len(many))
    assert np.all(stderr > 1e-4 * np.asarray(exact))  # really sampled
    assert np.all(np.abs(many.mean(0) - exact) < 4 * stderr), (many.mean(0), exact, stderr)
    assert np.all(np.abs(many.mean(0) - exact) < 0.1 * np.asarray(exact))
    grad = jax.grad(lambda p: jnp.sum(est(p, key, 0.25)))(params)
    moved = jax.tree.map(lambda p, g: p - 1e-3 * g, params, grad)
    assert float(jnp.sum(est(moved, key, 0.25))) < float(jnp.sum(est(params, key, 0.25)))


def test_htty_reconstruction_steps_from_a_sample_of_queries():
    sub, c, inr = _htty(8, per_phase=3, steps=12)
    c.train.recon_steps, c.train.recon_learning_rate = 10, 1e-2
    c.train.recon_fraction = 0.25
    tx = metamorph.make_htty_optimizer(sub, c)
    task = metamorph.make_htty_task(sub, inr, tx, DATA, c, parallel.make_mesh())
    state, recon, fns = task.init(jax.random.key(0)), [], {}
    for i in range(12):
        v = task.variant(i)
        fns.setdefault(v, jax.jit(functools.partial(task.train_step, variant=v)))
        state, m = fns[v](state, task.batch(i), jax.random.key(i))
        state = state.replace(step=state.step + 1)
        recon.append(float(m["recon"]))
        assert np.isnan(float(m["ce"])) == (i < 10)
    assert np.all(np.isfinite(recon)) and np.mean(recon[7:10]) < np.mean(recon[:3])
    c.train.recon_fraction = 0.0
    with pytest.raises(loop.UserError, match="recon_fraction=0.0 must be"):
        metamorph.make_htty_task(sub, inr, tx, DATA, c, parallel.make_mesh())


def test_inr_without_size_coords_ignores_the_layer_sizes_only():
    """size_coords=False: coordinates that differ only in I / N, O / N give the same weights;
    positions still matter; the default sees the sizes."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 1, (8, 6)), jnp.float32)
    y = x.at[:, 4:].set(jnp.asarray(rng.uniform(0, 1, (8, 2)), jnp.float32))
    z = x.at[:, 1].add(0.25)
    for size_coords, same in ((False, True), (True, False)):
        inr = hyper.INR(32, 2, 4, size_coords=size_coords)
        params = inr.init(jax.random.key(0), x)
        fx, fy, fz = (np.asarray(inr.apply(params, c)["conv"]) for c in (x, y, z))
        assert np.allclose(fx, fy) == same
        assert not np.allclose(fx, fz)
