"""The property-prediction harness: graph batches equal jraph's, invariant encoders have a
zero invariance gap (and MLP does not), the harness learns a property of the weights, and
bad configs fail with one clear message."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import jraph
import ml_collections
import numpy as np
import pytest

from wsl.methods import predict
from wsl.nn import baselines, subjects
from wsl.train import loop, parallel
from wsl.weights import chunk, graph, spec, symmetry

N = 96


def _data(seed=0, classification=False):
    """Random SmallCNN(4 channels) weights; target = a function of the dense layer's
    weights that is invariant to hidden permutations (so invariant encoders can learn it)."""
    module = subjects.SmallCNN(features=4)
    x = jnp.zeros((1, 28, 28, 1))
    v = module.init(jax.random.key(0), x)
    s = spec.spec_from_flax(module, v, x)
    rng = np.random.default_rng(seed)
    scales = rng.uniform(0.2, 2.0, N).astype(np.float32)
    weights = tuple(
        {
            role: (
                rng.standard_normal((N, *shape))
                * (scales.reshape(-1, *[1] * len(shape)) if i == len(s.layers) - 1 else 1)
            ).astype(np.float32)
            for role, shape in layer.shapes
        }
        for i, layer in enumerate(s.layers)
    )
    if classification:
        target = (scales > 1.1).astype(np.int32)
        nc = 2
    else:
        target = (scales / 2.0).astype(np.float32)
        nc = 0
    rows = np.random.default_rng(1).permutation(N)
    parts = {"train": rows[:64], "val": rows[64:80], "test": rows[80:]}
    return predict.WeightData(s, weights, target, parts, nc, "memory")


def _config(name, steps=120, **over):
    c = ml_collections.ConfigDict(
        {
            "seed": 0,
            "encoder": {"name": name, "kwargs": {}},
            "encoders": {
                "MLP": {"hidden": (32,)},
                "StatNN": {"hidden": (32, 32)},
                "DeepSets": {"phi": (16,), "rho": (16,)},
                "NG-GNN": {"hidden": 8, "num_layers": 2, "pooling": "mean", "fourier_dim": 8},
                "NG-T": {"d_node": 8, "d_edge": 4, "d_attn": 8, "d_node_hidden": 8,
                         "d_edge_hidden": 4, "d_out_hidden": 8, "num_layers": 1, "heads": 2,
                         "pooling": "mean", "fourier_dim": 8},
                "SNE": {"dim": 8, "hidden": 8, "heads": 2, "depth": 1},
            },
            "inputs": {"k_max": 3, "reverse": True, "chunk_size": 8},
            "augment": {"permute": False, "noise": 0.0, "dropout": 0.0},
            "loss": "bce",
            "invariance_weight": 0.0,
            "optimizer": {"name": "adam", "learning_rate": 3e-3, "schedule": "constant",
                          "warmup_steps": 0, "momentum": 0.0, "weight_decay": 0.0},
            "train": {"batch_size": 16, "num_steps": steps, "eval_batch_size": 32,
                      "eval_every": steps, "log_every": steps, "checkpoint_every": steps,
                      "keep_checkpoints": 1, "async_checkpoints": False, "nan_at_step": 0},
        }
    )  # fmt: skip
    c.update_from_flattened_dict(over)
    return c


def test_graph_batch_equals_jraph_batch():
    d = _data()
    w = predict._take(d.weights, np.arange(3))
    ours = predict.graph_batch(d.spec, w, 3, True)["graph"]
    ref = jraph.batch(
        [graph.to_graph(d.spec, predict._take(w, i), k_max=3, reverse=True) for i in range(3)]
    )
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["StatNN", "DeepSets", "NG-GNN", "NG-T", "MLP"])
def test_invariance_gap(name):
    """Untrained encoders: the evaluated gap |f(w) - f(pi w)| is ~0 for the invariant
    ones and clearly not for MLP, while the predictions differ across networks."""
    d = _data()
    task, model = predict.build(_config(name), d, parallel.make_mesh())
    state = task.init(jax.random.key(0))
    ev = task.evaluate(state)
    gap = ev["test_invariance_gap"]
    if name == "MLP":
        assert gap > 1e-3
    else:
        assert gap < 1e-5
    # ... and not because the input ignores the weights: the test networks' predictions,
    # rebuilt from their standardised weights through the encoder's input path, are the
    # harness's (same RMSE) and clearly differ (a constant input would give std 0; the
    # near-constant untrained DeepSets gives ~2e-3)
    pred, y = _test_predictions(name, d, model, state.params), d.target[d.splits["test"]]
    np.testing.assert_allclose(np.sqrt(np.mean((pred - y) ** 2)), ev["test_rmse"], rtol=1e-4)
    assert pred.std() > 3e-4, (name, pred)


def _test_predictions(name, d, model, params):
    """Sigmoid outputs of `model` on d's test networks, the input built as predict.build
    does: weights standardised with the training set's statistics, then predict.Inputs (the
    StatNN statistics standardised with the training networks' too)."""
    stats = predict.weight_stats(d.weights, d.splits["train"])
    norm = lambda rows: predict.standardise(predict._take(d.weights, rows), stats)  # noqa: E731
    kind = predict.ENCODERS[name][1]
    inputs = predict.Inputs(d.spec, kind, k_max=3, reverse=True, chunk_size=8)
    if kind == "stats":
        f = jax.vmap(lambda w: baselines.statnn_features(d.spec, w))(norm(d.splits["train"]))
        f = np.asarray(f)
        sd = np.where(f.std(0) > 0, f.std(0), 1.0)
        inputs = dataclasses.replace(
            inputs, stats_mean=tuple(f.mean(0).tolist()), stats_std=tuple(sd.tolist())
        )
    out = jax.jit(lambda w: model.apply({"params": params}, inputs(w), train=False))(
        norm(d.splits["test"])
    )
    return np.asarray(jax.nn.sigmoid(out[:, 0]))


@pytest.mark.parametrize("kind", ["flat", "elements", "graph", "chunks"])
def test_inputs_do_not_depend_on_jit_or_dict_order(kind):
    """jit rebuilds dicts with sorted keys; an encoder's input must not change with it
    (a model trained under jit, applied eagerly, would otherwise see scrambled inputs)."""
    m = subjects.SmallCNN(features=4)
    x = jnp.zeros((1, 28, 28, 1))
    s = spec.spec_from_flax(m, m.init(jax.random.key(0), x), x)
    rng = np.random.default_rng(0)
    w = tuple(
        {r: rng.standard_normal((2, *sh)).astype(np.float32) for r, sh in layer.shapes}
        for layer in s.layers
    )
    backwards = tuple(dict(reversed(list(a.items()))) for a in w)
    inp = predict.Inputs(s, kind, 3, True, 8)
    ref = jax.tree.leaves(jax.jit(inp)(w))
    for out in (inp(w), inp(backwards)):
        for a, b in zip(jax.tree.leaves(out), ref, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_learns_a_weight_property(tmp_path):
    """StatNN reads the dense layer's scale from its statistics (16 test networks)."""
    d = _data()
    cfg = _config("StatNN", steps=200)
    task, _ = predict.build(cfg, d, parallel.make_mesh())
    _, final = loop.train(task, cfg, tmp_path)
    assert final["test_r2"] > 0.8 and final["test_kendall_tau"] > 0.5, final


def test_classification_and_logit_invariance(tmp_path):
    d = _data(classification=True)
    cfg = _config("MLP", steps=40, invariance_weight=1.0, **{"augment.noise": 0.1})
    task, _ = predict.build(cfg, d, parallel.make_mesh())
    _, final = loop.train(task, cfg, tmp_path)
    assert {"val_accuracy", "test_accuracy", "test_loss"} <= set(final)
    assert np.isfinite(final["test_loss"])


def _cross_entropy(logits, y):
    return float(-jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1)))


def _step_loss(cfg, d, key):
    """(loss of one jitted train step from the initial state, state, batch, model)."""
    task, model = predict.build(cfg, d, parallel.make_mesh())
    state, batch = task.init(jax.random.key(0)), task.batch(0)
    _, metrics = jax.jit(task.train_step)(state, batch, key)
    return float(metrics["loss"]), state, batch, model


def test_train_loss_is_the_task_loss_plus_the_logit_invariance_term():
    """One train step's loss (MLP, classification, no augmentation), recomputed outside the
    harness with the step's key split (augment, dropout, permutation keys; one permutation
    key per network) and wsl.weights.symmetry.permute network by network: cross-entropy
    + w * mean (f(w) - f(pi w))^2. The term is clearly positive for the untrained MLP, and
    w = 0 leaves the cross-entropy alone."""
    d, key, w_inv = _data(classification=True), jax.random.key(7), 0.5
    loss0, _, _, _ = _step_loss(_config("MLP", invariance_weight=0.0), d, key)
    loss, state, batch, model = _step_loss(_config("MLP", invariance_weight=w_inv), d, key)
    _, dkey, pkey = jax.random.split(key, 3)
    x, y = batch["x"], jnp.asarray(batch["y"])
    keys = jax.random.split(pkey, len(y))
    permute = jax.jit(functools.partial(symmetry.permute, d.spec))
    pis = [permute(jax.tree.map(lambda v, i=i: v[i], x), keys[i]) for i in range(len(y))]
    x_pi = jax.tree.map(lambda *v: jnp.stack(v), *pis)
    f = jax.jit(
        lambda w: model.apply(
            {"params": state.params},
            predict.Inputs(d.spec, "flat", 3, True, 8)(w),
            train=True,
            rngs={"dropout": dkey},
        )
    )
    out, out_pi = f(x), f(x_pi)
    task_loss = _cross_entropy(out, y)
    term = float(jnp.mean((out - out_pi) ** 2))
    assert term > 1e-2, term
    np.testing.assert_allclose(loss0, task_loss, rtol=1e-5)
    np.testing.assert_allclose(loss, task_loss + w_inv * term, rtol=1e-5)
    np.testing.assert_allclose(loss - loss0, w_inv * term, rtol=1e-3)


def test_train_step_augments_the_raw_weights():
    """augment.noise changes the step's inputs, and the step's loss is the cross-entropy on
    the raw batch (unstandardised: x sd + mean of the training set, recomputed here)
    augmented by predict.augment with the step's augment key, then standardised again.
    Weights x 5 + 3, so the standardisation is far from the identity."""
    d = _data(classification=True)
    d = dataclasses.replace(d, weights=jax.tree.map(lambda a: 5.0 * a + 3.0, d.weights))
    key = jax.random.key(7)
    noisy, state, batch, model = _step_loss(_config("MLP", **{"augment.noise": 0.5}), d, key)
    rows = d.splits["train"]
    stats = [{k: (v[rows].mean(), v[rows].std()) for k, v in a.items()} for a in d.weights]
    x = batch["x"]
    raw = tuple({k: v * stats[i][k][1] + stats[i][k][0] for k, v in a.items()}
                for i, a in enumerate(x))  # fmt: skip
    akey = jax.random.split(key, 3)[0]
    aug = predict.augment(d.spec, raw, akey, {"noise": 0.5})
    x_aug = tuple({k: (v - stats[i][k][0]) / stats[i][k][1] for k, v in a.items()}
                  for i, a in enumerate(aug))  # fmt: skip
    diff = jax.tree.map(lambda a, b: np.abs(a - b).mean(), x_aug, x)  # (dict orders differ)
    change = np.mean(jax.tree.leaves(diff))
    assert 0.2 < change < 0.5, change  # E|N(0, 0.5)| = 0.4: noise 0.5 x own spread (~1)
    f = jax.jit(
        lambda w: model.apply(
            {"params": state.params}, predict.Inputs(d.spec, "flat", 3, True, 8)(w), train=True
        )
    )
    y = jnp.asarray(batch["y"])
    plain = _cross_entropy(f(x), y)  # the step's loss without augmentation (test above)
    np.testing.assert_allclose(noisy, _cross_entropy(f(x_aug), y), rtol=1e-4)
    assert abs(noisy - plain) > 1e-2, (noisy, plain)


def test_invariance_weight_defaults_to_the_encoders_own():
    # unset: SNE's method includes logit invariance (1.0), other encoders none, and none on
    # a heterogeneous zoo (its networks cannot be permuted as one batch); set: as given
    unset = ml_collections.config_dict.placeholder(float)
    for name, mixed, want in (("SNE", False, 1.0), ("SNE", True, 0.0), ("NG-GNN", False, 0.0)):
        cfg = _config(name, invariance_weight=unset)
        assert cfg.invariance_weight is None
        assert predict.invariance_weight(cfg, mixed) == want, (name, mixed)
    assert predict.invariance_weight(_config("SNE", invariance_weight=0.0), False) == 0.0
    assert predict.invariance_weight(_config("MLP", invariance_weight=2.0), False) == 2.0


def test_clear_errors(tmp_path):
    d = _data()
    with pytest.raises(loop.UserError, match="unknown encoder 'GNN'"):
        predict.build(_config("GNN"), d, parallel.make_mesh())
    with pytest.raises(loop.UserError, match="exceeds the 64 training networks"):
        predict.build(_config("MLP", **{"train.batch_size": 128}), d, parallel.make_mesh())
    data_cfg = ml_collections.ConfigDict({"kind": "cnn_zoo", "path": str(tmp_path / "nope")})
    with pytest.raises(loop.UserError, match="make_zoo.py"):
        predict.load_data(data_cfg, 0)


ARCHS = [  # heterogeneous CNNs (wsl.data.zoo.HeteroCNN): depth, width, kernel, residual
    {"kind": "cnn", "widths": [4, 6], "kernel_sizes": [3, 3], "strides": [2, 2],
     "residual": [-1, -1], "act": "relu"},
    {"kind": "cnn", "widths": [4, 4, 6, 4], "kernel_sizes": [5, 5, 5, 5],
     "strides": [2, 2, 1, 1], "residual": [-1, -1, -1, 1], "act": "tanh"},
]  # fmt: skip


def _mixed(n_per=12):
    from wsl.data import zoo

    rng = np.random.default_rng(0)
    specs, weights, target = [], [], []
    for i in range(2 * n_per):
        s = zoo.spec_of(ARCHS[i % 2])
        specs.append(s)
        scale = rng.uniform(0.2, 2.0)
        weights.append(
            tuple(
                {r: (scale * rng.standard_normal(sh)).astype(np.float32) for r, sh in layer.shapes}
                for layer in s.layers
            )
        )
        target.append(scale / 2)
    n = 2 * n_per
    parts = {
        "train": np.arange(0, n - 8),
        "val": np.arange(n - 8, n - 4),
        "test": np.arange(n - 4, n),
    }
    return predict.WeightData(None, weights, np.asarray(target, np.float32), parts, 0, "m", specs)


@pytest.mark.parametrize("name", ["NG-GNN", "SNE"])
def test_mixed_architectures_batch_like_alone(name):
    """Padded slots / chunk budgets of a mixed batch give each network the output it has
    alone; evaluation covers the held-out and transfer sets; a train step is finite."""
    d = _mixed()
    other = predict._rows_only(d, np.arange(1, 9, 2))  # the deeper architecture only
    cfg = _config(name, steps=10, **{"train.eval_batch_size": 8, "train.batch_size": 8})
    task, model = predict.build(cfg, d, parallel.make_mesh(), {"transfer_deeper": other})
    state = task.init(jax.random.key(0))
    ev = task.evaluate(state)
    assert {"test_kendall_tau", "transfer_deeper_kendall_tau"} <= set(ev)
    # one network alone, through the same encoder
    sets = [predict._rows_only(d, np.asarray([i])) for i in (0, 1)]
    kind = "graph" if name == "NG-GNN" else "chunks"
    x_mixed = predict.mixed_inputs(kind, [d], 5, True, 8, 1.0)[0]
    x_alone = predict.mixed_inputs(kind, sets, 5, True, 8, 1.0)
    # each set padded to its own largest network: the small one pays for no more
    if kind == "chunks":
        sizes = [x["values"].shape[1] for x in x_alone]
        assert sizes == [chunk.num_chunks(s.specs[0], 8) for s in sets]
        assert x_mixed["values"].shape[1] == max(sizes) > min(sizes)
    else:
        sizes = [x["weight"].shape[1] for x in x_alone]
        assert sizes == [len(graph.structure(s.specs[0], 5, True)["senders"]) for s in sets]
        assert x_mixed["weight"].shape[1] == max(sizes) > min(sizes)
    enc = predict.slots_to_graph if kind == "graph" else (lambda x: x)
    kw = {"train": False} if name != "SNE" else {}
    apply = jax.jit(lambda x: model.apply({"params": state.params}, enc(x), **kw))
    both = apply(jax.tree.map(lambda a: a[:2], x_mixed))
    for i in (0, 1):
        alone = apply(x_alone[i])
        if kind == "graph":
            np.testing.assert_allclose(both[::2][i], alone[::2][0], rtol=1e-4, atol=1e-5)
        else:
            np.testing.assert_allclose(both[i], alone[0], rtol=1e-4, atol=1e-5)
    new, metrics = jax.jit(task.train_step)(state, task.batch(0), jax.random.key(1))
    assert np.isfinite(float(metrics["loss"]))
    assert all(np.all(np.isfinite(np.asarray(p))) for p in jax.tree.leaves(new.params))


def test_mixed_rejects_fixed_size_encoders():
    with pytest.raises(loop.UserError, match="needs networks of one architecture"):
        predict.build(_config("MLP"), _mixed(4), parallel.make_mesh())


def test_optimizer_clips_the_gradient_norm():
    """optimizer.clip bounds the update of an SGD step by the clipped norm; 0 leaves it."""
    from wsl.methods import classify

    params = {"w": jnp.zeros(4)}
    grads = {"w": jnp.full(4, 100.0)}  # norm 200
    for clip, norm in ((1.0, 1.0), (0.0, 200.0)):
        opt = ml_collections.ConfigDict(
            {"name": "sgd", "learning_rate": 1.0, "schedule": "constant", "clip": clip}
        )
        tx = classify.make_optimizer(opt, 10)
        updates, _ = tx.update(grads, tx.init(params), params)
        np.testing.assert_allclose(float(jnp.linalg.norm(updates["w"])), norm, rtol=1e-5)


@pytest.mark.parametrize("name", ["NG-GNN", "NG-T"])
def test_cat_readout_of_the_last_graph(name):
    """With no padding graph at the end, the last graph's 'cat' readout must still read its
    output neurons only (a -1 scatter index once wrapped every other node into its slot)."""
    d = _data()
    w = predict._take(d.weights, np.arange(3))
    batch = predict.graph_batch(d.spec, w, 3, True)
    padded = jraph.pad_with_graphs(batch["graph"], 200, 6000, 4)
    cfg = _config(name)
    model, _, _ = predict.make_encoder(cfg.encoder, [d.spec], 2, cfg.inputs, cfg.encoders)
    model = model.clone(pooling="cat")
    params = jax.jit(model.init)(jax.random.key(0), batch)
    plain = jax.jit(model.apply)(params, batch)
    ref = jax.jit(model.apply)(params, {"graph": padded, "graph_mask": jnp.arange(4) < 3})
    np.testing.assert_allclose(plain, ref[:3], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["StatNN", "NG-GNN", "SNE"])
def test_a_second_test_set_leaves_training_unchanged(tmp_path, name):
    """Training does not depend on the extra evaluation sets (data.test_path): a transfer
    run's model is the plain run's, so scripts/reproduce.py may reuse it (Run.reuse)."""
    d = _data()
    other = predict._rows_only(_data(seed=1), np.arange(40))
    cfg = _config(name, steps=20)
    states = []
    for sub, extra in (("plain", None), ("transfer", {"transfer": other})):
        task, _ = predict.build(cfg, d, parallel.make_mesh(), extra)
        state, final = loop.train(task, cfg, tmp_path / sub)
        states.append((state.params, final))
    (p0, f0), (p1, f1) = states
    jax.tree.map(np.testing.assert_array_equal, p0, p1)
    assert f0["test_kendall_tau"] == f1["test_kendall_tau"] and "transfer_kendall_tau" in f1


def test_weight_noise_is_relative_to_each_networks_spread_and_dropout_rescales():
    """augment: noise of std `noise` x the network's own std of each array (a network 10x
    larger gets 10x the noise; a single value none), dropout zeroes ~p and scales by 1/(1-p)
    (the neural-graphs reference's CNNDataset._augment)."""
    s = _data().spec
    scales = np.asarray([1.0, 10.0], np.float32)
    rng = np.random.default_rng(0)
    w = tuple(
        {r: (rng.standard_normal((2, *shape)) * scales.reshape(-1, *[1] * len(shape)))
            .astype(np.float32) for r, shape in layer.shapes}
        for layer in s.layers
    )  # fmt: skip
    w = w[:-1] + ({**w[-1], "bias": w[-1]["bias"][:, :1]},)  # a one-value array
    out = predict.augment(s, w, jax.random.key(0), {"noise": 0.1})
    for a, b in zip(jax.tree.leaves(w), jax.tree.leaves(out), strict=True):
        d = np.asarray(b) - np.asarray(a)
        if a[0].size == 1:
            np.testing.assert_array_equal(d, 0.0)
            continue
        own = np.asarray(a).reshape(2, -1).std(1)
        if a[0].size >= 100:
            np.testing.assert_allclose(d.reshape(2, -1).std(1) / own, 0.1, rtol=0.25)
    kernel = w[0]["kernel"]
    dropped = np.asarray(predict.augment(s, w, jax.random.key(1), {"dropout": 0.25})[0]["kernel"])
    kept = dropped != 0
    assert 0.6 < kept.mean() < 0.9
    np.testing.assert_allclose(dropped[kept], kernel[kept] / 0.75, rtol=1e-6)


def test_inr_augmentations_translate_rotate_and_rescale_the_input_exactly():
    """augment_inr on a 2-layer MLP (so the translation always enters the first bias): the
    first bias moves by t @ W0 with |t| <= s (the input shifted by t, exactly), a rotation
    keeps W0's Gram matrix, a rescaling multiplies W0 by one factor in [1 - s, 1 + s]."""
    rng = np.random.default_rng(0)
    b = 64
    w = (
        {"kernel": rng.standard_normal((b, 2, 8)).astype(np.float32),
         "bias": rng.standard_normal((b, 8)).astype(np.float32)},
        {"kernel": rng.standard_normal((b, 8, 1)).astype(np.float32),
         "bias": rng.standard_normal((b, 1)).astype(np.float32)},
    )  # fmt: skip
    k0 = w[0]["kernel"]
    t = predict.augment_inr(w, jax.random.key(0), {"translate": 0.25})
    db = np.asarray(t[0]["bias"]) - w[0]["bias"]
    shift = np.einsum("bo,bio->bi", db, np.linalg.pinv(k0).transpose(0, 2, 1))
    np.testing.assert_allclose(np.einsum("bi,bio->bo", shift, k0), db, atol=1e-4)
    assert np.abs(shift).max() <= 0.25 + 1e-4 and np.abs(shift).max() > 0.1
    np.testing.assert_array_equal(t[1]["bias"], w[1]["bias"])
    np.testing.assert_array_equal(t[0]["kernel"], k0)
    r = np.asarray(predict.augment_inr(w, jax.random.key(1), {"rotate": 45.0})[0]["kernel"])
    gram = lambda a: np.einsum("bio,bjo->bij", a, a)  # noqa: E731
    np.testing.assert_allclose(gram(r.transpose(0, 2, 1)), gram(k0.transpose(0, 2, 1)), atol=1e-4)
    assert not np.allclose(r, k0)
    c = np.asarray(predict.augment_inr(w, jax.random.key(2), {"input_scale": 0.2})[0]["kernel"])
    ratio = np.sum(c * k0, (1, 2)) / np.sum(k0 * k0, (1, 2))
    np.testing.assert_allclose(c, ratio[:, None, None] * k0, atol=1e-5)
    assert 0.8 - 1e-6 <= ratio.min() and ratio.max() <= 1.2 + 1e-6 and ratio.std() > 0.01


def test_standardised_inputs_ignore_each_arrays_scale_and_raw_inputs_do_not(tmp_path):
    """inputs.standardise (default): training on the weights x 1000 predicts as on the
    weights; with standardise=False (raw weights, the reference's on CNN zoos) it does not."""
    d = _data()
    big = dataclasses.replace(d, weights=jax.tree.map(lambda a: a * 1000.0, d.weights))
    for standardise in (True, False):
        preds = []
        for i, data in enumerate((d, big)):
            cfg = _config("MLP", steps=5, **{"inputs.standardise": standardise})
            task, _ = predict.build(cfg, data, parallel.make_mesh())
            _, final = loop.train(task, cfg, tmp_path / f"{standardise}{i}")
            preds.append(final["test_rmse"])
        assert np.isclose(preds[0], preds[1], rtol=1e-3) == standardise, (standardise, preds)


def test_pna_degree_is_the_forward_layouts_even_with_reverse_edges():
    """graph_defaults' average log degree of a 2-32-32-1 SIREN: the reference's histogram of
    the layer layout (2 inputs of degree 0, 32 of degree 2, 33 of degree 32), whatever
    config.inputs.reverse adds."""
    module = subjects.MLP(hidden=(32, 32), num_classes=1)
    x = jnp.zeros((1, 2))
    s = spec.spec_from_flax(module, module.init(jax.random.key(0), x), x)
    want = (32 * np.log(3.0) + 33 * np.log(33.0)) / 67
    d = predict.graph_defaults([s], k_max=3)
    assert abs(d["avg_log_degree"] - want) < 1e-6
    assert (d["max_inputs"], d["max_hidden_layers"], d["max_outputs"]) == (2, 2, 1)
