"""Weight-space encoders: invariance to hidden-neuron permutations, padding and batching
independence, positional embeddings breaking the input/output symmetry, probe features."""

import functools

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from wsl.nn import baselines, gnn, subjects, transformer
from wsl.weights import convert, graph, spec, symmetry

K = 3  # one k_max for every architecture, so that graphs of all of them batch together
NETS = {
    "mlp": (subjects.MLP(hidden=(8, 8), num_classes=3), (1, 16)),
    "mlp1": (subjects.MLP(hidden=(8,), num_classes=3), (1, 16)),
    "cnn": (subjects.SmallCNN(features=6), (1, 28, 28, 1)),
    "resnet": (subjects.ResNet(8, widths=(4, 8, 16)), (1, 8, 8, 3)),
}
SUBJECTS = ("mlp", "cnn", "resnet")  # mlp1: for the input-neuron test only
LIMITS = dict(max_inputs=16, max_hidden_layers=8, max_outputs=10)
GRAPH_MODELS = {
    "NG-GNN": gnn.NGGNN(4, hidden=16, num_layers=2, **LIMITS),
    "NG-GNN graph norm": gnn.NGGNN(4, hidden=16, num_layers=2, norm="graph", **LIMITS),
    "NG-T": transformer.NGT(
        4, d_node=16, d_edge=8, d_attn=16, d_node_hidden=16, d_edge_hidden=8, d_out_hidden=16,
        num_layers=2, heads=2, **LIMITS,
    ),
}  # fmt: skip


@functools.cache
def build(name, seed=0):
    """(spec, canonical weights) with random weights (numpy: no per-op compilation); the
    BatchNorm statistics are non-trivial, so to_graph's folding is exercised."""
    module, shape = NETS[name]
    x = jnp.zeros(shape)
    shapes = jax.eval_shape(module.init, jax.random.key(0), x)
    rng = np.random.default_rng(seed)
    v = jax.tree.map(lambda a: 0.5 * rng.standard_normal(a.shape).astype(np.float32), shapes)
    if "batch_stats" in v:
        v["batch_stats"] = jax.tree.map(lambda a: np.abs(a) + 0.5, v["batch_stats"])
    s = spec.spec_from_flax(module, v, x)
    return s, convert.flax_to_canonical(s, v)


BUDGET = (1000, 9000, 4)  # n_node, n_edge, n_graph: one compilation serves most tests


def graph_batch(graphs, n_node=BUDGET[0], n_edge=BUDGET[1], n_graph=BUDGET[2]):
    """Pad to a fixed budget; n_node=None etc. pads minimally."""
    b = jraph.batch(graphs)
    n_node = n_node or int(b.n_node.sum()) + 1
    n_edge = n_edge or int(b.n_edge.sum())
    n_graph = n_graph or len(graphs) + 1
    mask = jnp.arange(n_graph) < len(graphs)
    return {"graph": jraph.pad_with_graphs(b, n_node, n_edge, n_graph), "graph_mask": mask}


@functools.cache
def init(model_name):
    batch = graph_batch([graph.to_graph(*build("cnn"), k_max=K, reverse=True)])
    return jax.jit(GRAPH_MODELS[model_name].init)(jax.random.key(1), batch)


@functools.cache
def apply(model_name):
    return jax.jit(GRAPH_MODELS[model_name].apply)


def run(model_name, batch):
    return np.asarray(apply(model_name)(init(model_name), batch))


@pytest.mark.parametrize("net", SUBJECTS)
@pytest.mark.parametrize("model_name", list(GRAPH_MODELS))
def test_graph_models_are_invariant_to_hidden_permutations(model_name, net):
    s, w = build(net)
    w2 = symmetry.permute(s, w, jax.random.key(3))
    assert not np.allclose(convert.flatten(s, w), convert.flatten(s, w2))
    g1, g2 = (graph.to_graph(s, x, k_max=K, reverse=True) for x in (w, w2))
    y1, y2 = run(model_name, graph_batch([g1])), run(model_name, graph_batch([g2]))
    assert np.abs(y1[0]).max() > 1e-3
    np.testing.assert_allclose(y1, y2, atol=1e-4)


@pytest.mark.parametrize("model_name", list(GRAPH_MODELS))
def test_mixed_batch_and_padding_give_each_graph_its_own_output(model_name):
    g_cnn = graph.to_graph(*build("cnn"), k_max=K)  # forward edges only
    g_res = graph.to_graph(*build("resnet"), k_max=K, reverse=True)
    mixed = run(model_name, graph_batch([g_cnn, g_res]))
    alone_cnn = run(model_name, graph_batch([g_cnn], None, None, None))  # minimal padding
    alone_res = run(model_name, graph_batch([g_res]))
    np.testing.assert_allclose(mixed[0], alone_cnn[0], atol=1e-5)
    np.testing.assert_allclose(mixed[1], alone_res[0], atol=1e-5)
    assert not np.allclose(mixed[0], mixed[1], atol=1e-3)
    np.testing.assert_array_equal(mixed[2:], 0.0)  # padding graphs
    np.testing.assert_array_equal(alone_res[1:], 0.0)
    assert alone_cnn.shape == (2, 4)


@pytest.mark.parametrize("model_name", list(GRAPH_MODELS))
def test_input_and_output_neurons_are_not_interchangeable(model_name):
    s, w = build("mlp1")  # 1 hidden layer: the 2-layer test models see the inputs
    first = dict(w[0])
    first["kernel"] = first["kernel"][jnp.array([1, 0, *range(2, 16)])]  # swap two inputs
    last = dict(w[-1])
    last["kernel"], last["bias"] = last["kernel"][:, ::-1], last["bias"][::-1]  # outputs
    y = run(model_name, graph_batch([graph.to_graph(s, w, k_max=K)]))[0]
    for w2 in ((first, *w[1:]), (*w[:-1], last)):
        y2 = run(model_name, graph_batch([graph.to_graph(s, w2, k_max=K)]))[0]
        assert np.abs(y - y2).max() > 1e-4  # float noise is ~1e-6


@pytest.mark.parametrize("mode", ["node", "graph", "batch"])
def test_node_norm_against_numpy(mode):
    """NodeNorm's three modes against their closed forms; padding nodes (real False) take no
    part in the statistics."""
    rng = np.random.default_rng(0)
    x = (3.0 * rng.standard_normal((7, 5)) + 2.0).astype(np.float32)
    gid, real = np.array([0, 0, 0, 1, 1, 2, 2]), np.array([1, 1, 1, 1, 1, 0, 0], bool)
    norm = gnn.NodeNorm(mode)
    params = norm.init(jax.random.key(0), x, gid, real, 3)
    params = jax.tree.map(lambda a: a + rng.standard_normal(a.shape).astype(np.float32), params)
    y = np.asarray(norm.apply(params, x, gid, real, 3))
    scale, bias = np.asarray(params["params"]["scale"]), np.asarray(params["params"]["bias"])
    if mode == "node":
        want = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-6)
        want = want * scale + bias
        np.testing.assert_allclose(y, want, atol=1e-5)
        ln = jax.nn.standardize(x, axis=-1, epsilon=1e-6) * scale + bias  # flax LayerNorm's
        np.testing.assert_allclose(y, ln, atol=1e-5)
        return
    groups = [[0, 1, 2], [3, 4]] if mode == "graph" else [[0, 1, 2, 3, 4]]
    for rows in groups:
        v = x[rows]
        want = (v - v.mean()) / (v.std() + 1e-5) * scale + bias
        np.testing.assert_allclose(y[rows], want, atol=1e-5)
    assert np.isfinite(y).all()
    # graph 2 holds padding nodes only (as a mixed batch's padding graphs): finite gradients
    g = jax.grad(lambda p, x: jnp.sum(norm.apply(p, x, gid, real, 3) ** 2), argnums=(0, 1))
    assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(g(params, x)))
    with pytest.raises(ValueError, match="unknown norm"):
        gnn.NodeNorm("layer").init(jax.random.key(0), x, gid, real, 3)


def test_batch_norm_mode_mixes_the_networks_of_a_batch():
    """norm='batch' (the reference's PyG call) makes a prediction depend on its batch, the
    other modes do not: the reason 'graph' exists."""
    g_cnn = graph.to_graph(*build("cnn"), k_max=K)
    g_mlp = graph.to_graph(*build("mlp"), k_max=K)
    for mode in ("batch", "graph"):
        m = gnn.NGGNN(4, hidden=8, num_layers=2, norm=mode, **LIMITS)
        params = m.init(jax.random.key(0), graph_batch([g_cnn]))
        alone = np.asarray(m.apply(params, graph_batch([g_cnn])))[0]
        mixed = np.asarray(m.apply(params, graph_batch([g_cnn, g_mlp])))[0]
        if mode == "batch":
            assert np.abs(alone - mixed).max() > 1e-4
        else:
            np.testing.assert_allclose(alone, mixed, atol=1e-5)


def test_mean_pooling_probes_and_dropout():
    model = gnn.NGGNN(
        2, hidden=8, num_layers=2, pooling="mean", num_probes=4, probe_act="relu",
        probe_omega=1.0, dropout=0.5, **LIMITS,
    )  # fmt: skip
    s, w = build("mlp")
    w2 = symmetry.permute(s, w, jax.random.key(5))
    b1, b2 = (graph_batch([graph.to_graph(s, x, k_max=K, reverse=True)]) for x in (w, w2))
    params = jax.jit(model.init)(jax.random.key(0), b1)
    f = jax.jit(model.apply, static_argnames="train")
    np.testing.assert_allclose(f(params, b1), f(params, b2), atol=1e-4)
    y_train = f(params, b1, train=True, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(y_train, f(params, b1), atol=1e-4)


def test_edge_chunking_changes_nothing():
    """NG-GNN runs its edges in chunks (padded to a multiple): outputs and gradients do not
    depend on the chunk size."""
    batch = graph_batch([graph.to_graph(*build("resnet"), k_max=K, reverse=True)], 400, 3000, 2)
    models = [gnn.NGGNN(2, hidden=8, num_layers=2, edge_chunk=c, **LIMITS) for c in (97, 4096)]
    params = jax.jit(models[0].init)(jax.random.key(0), batch)
    grads = [jax.jit(jax.grad(lambda p, m=m: m.apply(p, batch).sum()))(params) for m in models]
    ys = [jax.jit(m.apply)(params, batch) for m in models]
    np.testing.assert_allclose(ys[0], ys[1], rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_pna_aggregators_against_numpy():
    """gnn.aggregate equals per-node numpy mean, min, max, std, var and sum over incoming
    edges, 0 for a node without edges; min/max gradients reach the extreme entries only."""
    rng = np.random.default_rng(0)
    n, d = 5, 3
    receivers = np.array([0, 0, 0, 2, 2, 3, 0, 2])  # nodes 1 and 4 have no edges
    m = rng.normal(size=(len(receivers), d)).astype(np.float32)
    deg = np.bincount(receivers, minlength=n)
    count = jnp.asarray(np.maximum(deg, 1)[:, None], jnp.float32)
    names = ("mean", "min", "max", "std", "var", "sum")
    got = gnn.aggregate(jnp.asarray(m), jnp.asarray(receivers), n, count, names)
    for v in range(n):
        rows = m[receivers == v]
        want = dict.fromkeys(names, np.zeros(d))
        if len(rows):
            want = {
                "mean": rows.mean(0), "min": rows.min(0), "max": rows.max(0),
                "std": np.sqrt(rows.var(0) + 1e-5), "var": rows.var(0), "sum": rows.sum(0),
            }  # fmt: skip
        else:
            want["std"] = np.full(d, np.sqrt(1e-5))
        for k in names:
            np.testing.assert_allclose(got[k][v], want[k], rtol=1e-5, atol=1e-5, err_msg=k)
    g = jax.grad(
        lambda x: sum(
            gnn.aggregate(x, jnp.asarray(receivers), n, count, ("min", "max"))[k].sum()
            for k in ("min", "max")
        )
    )(jnp.asarray(m))
    want = np.zeros_like(m)
    for v in range(n):
        idx = np.flatnonzero(receivers == v)
        for j in range(d):
            if len(idx):
                want[idx[np.argmax(m[idx, j])], j] += 1.0
                want[idx[np.argmin(m[idx, j])], j] += 1.0
    np.testing.assert_allclose(g, want)


def test_probe_activations_run_the_subject_network():
    module = subjects.SIREN()
    x = jnp.zeros((1, 2))
    v = jax.jit(module.init)(jax.random.key(0), x)
    s = spec.spec_from_flax(module, v, x)
    g = graph.to_graph(s, convert.flax_to_canonical(s, v), reverse=True)
    points = jax.random.uniform(jax.random.key(1), (2, 5), minval=-1, maxval=1)
    h = jax.jit(gnn.probe_activations, static_argnums=(2, 3, 4))(g, points, "sin", 30.0, 3)
    expected = module.apply(v, points.T)  # (5, 1)
    np.testing.assert_allclose(h[-1], expected[:, 0], rtol=1e-4, atol=1e-5)


def test_reverse_edge_index():
    g = graph.to_graph(*build("resnet"), k_max=K, reverse=True)
    b = jraph.pad_with_graphs(
        jraph.batch([g, graph.to_graph(*build("mlp"), k_max=K)]), 400, 9000, 3
    )
    idx, found = (np.asarray(a) for a in transformer.reverse_edge_index(b.senders, b.receivers))
    s, r, t = np.asarray(b.senders), np.asarray(b.receivers), np.asarray(g.edges["type"])
    n1 = len(t)
    # every weight edge of the reversed graph has its mirror; residual edges do not
    assert found[:n1][t != graph.EDGE_RESIDUAL].all() and not found[:n1][t == 1].any()
    assert not found[n1 : int(b.n_edge[:2].sum())].any()  # forward-only graph
    np.testing.assert_array_equal(s[idx[found]], r[found])
    np.testing.assert_array_equal(r[idx[found]], s[found])


def test_too_many_inputs_is_a_clear_error():
    model = gnn.NGGNN(2, hidden=8, num_layers=1, max_inputs=2)
    batch = graph_batch([graph.to_graph(*build("mlp"), k_max=K)], None, None, None)
    with pytest.raises(ValueError, match="16 input neurons"):
        model.init(jax.random.key(0), batch)


# --------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("net", SUBJECTS)
def test_statnn_and_deepsets_are_invariant(net):
    s, w = build(net)
    w2 = symmetry.permute(s, w, jax.random.key(3))
    feats = [jax.jit(baselines.statnn_features, static_argnums=0)(s, x) for x in (w, w2)]
    n_arrays = sum(
        len(set(x) & {"kernel", "bias"})
        for x, ly in zip(w, s.layers, strict=True)
        if ly.kind != "norm"
    )
    assert feats[0].shape == (7 * n_arrays,)
    np.testing.assert_allclose(feats[0], feats[1], atol=1e-6)
    stat = baselines.StatNN(3, hidden=(16, 16))
    p = jax.jit(stat.init)(jax.random.key(0), {"stats": feats[0][None]})
    ys = [jax.jit(stat.apply)(p, {"stats": f[None]}) for f in feats]
    np.testing.assert_allclose(ys[0], ys[1], atol=1e-4)

    ds = baselines.DeepSets(3, phi=(16,), rho=(16,))
    els = [jax.jit(baselines.set_elements, static_argnums=0)(s, x) for x in (w, w2)]
    m = els[0].shape[0]
    pad = lambda e: jnp.concatenate([e, jnp.ones((7, 3))])[None]  # 7 padding elements
    batches = [{"elements": pad(e), "element_mask": (jnp.arange(m + 7) < m)[None]} for e in els]
    p = jax.jit(ds.init)(jax.random.key(0), batches[0])
    ys = [jax.jit(ds.apply)(p, b) for b in batches]
    np.testing.assert_allclose(ys[0], ys[1], atol=1e-4)
    unpadded = ds.apply(p, {"elements": els[0][None], "element_mask": jnp.ones((1, m), bool)})
    np.testing.assert_allclose(ys[0], unpadded, atol=1e-5)


def test_statnn_features_values():
    s, w = build("mlp")
    f = np.asarray(baselines.statnn_features(s, w))
    k = np.asarray(w[0]["kernel"]).ravel()
    np.testing.assert_allclose(
        f[:7], [k.mean(), k.var(), *np.quantile(k, [0, 0.25, 0.5, 0.75, 1])], rtol=1e-5
    )


def test_flat_mlp_shapes():
    s, w = build("cnn")
    flat = jnp.stack([convert.flatten(s, w)] * 2)
    model = baselines.MLP(5, hidden=(8,))
    p = model.init(jax.random.key(0), {"flat": flat})
    assert model.apply(p, {"flat": flat}).shape == (2, 5)
