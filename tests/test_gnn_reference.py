"""NG-GNN (`wsl.nn.gnn`) against a naive float64 numpy re-implementation written from the math,
reading the same (randomised: no zero biases, no unit LayerNorm scales) flax params.

Checked conventions (those of gnn.py and of mkofinas/neural-graphs' PNAConv / EdgeMLP):
- `cos_sin_2pi(u)` = [cos 2pi u, sin 2pi u] (all cos columns, then all sin columns) within
  1e-6 for |u| up to 1e4, negative u included.
- `LazyEdges(source, w, b).dense(kernel, bias)` = (feat(source) @ w + b) @ kernel + bias, feat =
  SiLU for an array source, [cos 2pi xB^T, sin 2pi xB^T, extra] for a `FourierInput`; both
  of `projection`'s paths (w @ kernel multiplied first, or not) and chunks with padding.
- one PNA layer, for edge j -> i (sender j, receiver i), edge features e_ij:
  h_ij = [x_i, x_j] @ [W_dst; W_src] + b_dst; (s, t) = e_ij @ W_film + b_film (s first);
  m_ij = s * h_ij + t; over the in-edges of i (count c_i = max(in-degree, 1)): mean, min, max,
  sum, var (population), std = sqrt(var + 1e-5); all 0 for an empty neighbourhood except
  std = sqrt(1e-5); scalers identity, amplification log(c_i + 1) / delta, attenuation
  delta / log(c_i + 1), concatenated scaler-major ([all aggregators x 1, all x amp, ...]);
  x_i' = Dense_out(Dense_post([x_i, aggs])); unless last: x'' = SiLU(LayerNorm(x')) (eps 1e-6,
  affine), and the new edges SiLU(e_ij @ W_edge + b_edge + Dense_src(x''_j) + Dense_dst(x''_i))
  @ W_edge_out + b_edge_out (edge update reads the *old* e_ij and the *new* node features).
  The layer's graph has in-degrees 0 (an isolated receiver), 1, 2, 3 and 4 (with a self-loop).
- the whole `NGGNN` forward on two hand-made graphs (in-degrees 0..4, weight, residual and
  reverse edges, 4-wide edge weights), padded and batched: input encoding
  (node Fourier features of the bias -> bias_proj -> node_in + positional embedding by role;
  edge input [w * forward, w * reverse, w] -> Fourier features -> weight_proj + type
  embedding -> edge_in), 3 PNA layers (`norm` node / graph / batch), 'cat' readout MLP;
  layer 0 takes projection's unfused path, layers 1-2 the fused one; padding rows are 0.
"""

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from wsl.nn import gnn

# ------------------------------------------------------------------ numpy reference


def silu(x):
    return x / (1.0 + np.exp(-x))


def dense(p, x):
    return x @ p["kernel"] + (p["bias"] if "bias" in p else 0.0)


def fourier(x, freqs):
    u = x @ freqs.T
    return np.concatenate([np.cos(2 * np.pi * u), np.sin(2 * np.pi * u)], axis=-1)


def layer_norm(x, p, mode, gid):
    """NodeNorm: per node over channels (eps 1e-6 inside the sqrt), or per graph / per batch
    over nodes and channels (eps 1e-5 added to the std)."""
    if mode == "node":
        xc = x - x.mean(-1, keepdims=True)
        y = xc / np.sqrt((xc * xc).mean(-1, keepdims=True) + 1e-6)
    else:
        seg = gid if mode == "graph" else np.zeros_like(gid)
        y = np.empty_like(x)
        for g in np.unique(seg):
            xs = x[seg == g]
            y[seg == g] = (xs - xs.mean()) / (xs.std() + 1e-5)
    return y * p["scale"] + p["bias"]


def ref_pna_layer(p, x, e, senders, receivers, delta, aggregators, scalers, last, norm, gid):
    """One NG-GNN layer, edge by edge and node by node. x (N, d), e (E, d_e) materialised."""
    n, d = x.shape
    w_msg = np.concatenate([p["msg_dst"]["kernel"], p["msg_src"]["kernel"]])
    incoming = [[] for _ in range(n)]
    for k, (j, i) in enumerate(zip(senders, receivers, strict=True)):
        h = np.concatenate([x[i], x[j]]) @ w_msg + p["msg_dst"]["bias"]
        film = dense(p["film"], e[k])
        incoming[i].append(film[:d] * h + film[d:])
    rows = []
    for i in range(n):
        m = np.array(incoming[i]).reshape(-1, d)
        stats = {name: np.zeros(d) for name in ("mean", "min", "max", "sum", "var")}
        if len(m):
            stats = dict(mean=m.mean(0), min=m.min(0), max=m.max(0), sum=m.sum(0), var=m.var(0))
        stats["std"] = np.sqrt(stats["var"] + 1e-5)
        agg = np.concatenate([stats[a] for a in aggregators])
        amp = np.log(max(len(m), 1) + 1.0) / delta
        factor = {"identity": 1.0, "amplification": amp, "attenuation": 1.0 / amp}
        rows.append(np.concatenate([x[i]] + [agg * factor[s] for s in scalers]))
    x_new = dense(p["out"], dense(p["post"], np.array(rows)))
    if last:
        return x_new, None
    x_new = silu(layer_norm(x_new, p["norm"], norm, gid))
    e_new = np.array(
        [
            dense(
                p["edge_out"],
                silu(
                    dense(p["edge"], e[k]) + dense(p["src"], x_new[j]) + dense(p["dst"], x_new[i])
                ),
            )
            for k, (j, i) in enumerate(zip(senders, receivers, strict=True))
        ]
    )
    return x_new, e_new


def ref_nggnn(p, g, model, n_graph):
    """The full forward on an unpadded batch `g` of `n_graph` graphs: (n_graph, out_dim)."""
    nodes, edges = g.nodes, g.edges
    pi = p["input"]
    seed, sigma, nf = model.fourier_seed, model.fourier_sigma, model.fourier_dim
    bias = np.asarray(nodes["bias"], np.float64)
    w, etype = np.asarray(edges["weight"], np.float64), np.asarray(edges["type"])
    freqs_n = np.asarray(sigma * jax.random.normal(jax.random.key(seed), (nf, 1)), np.float64)
    freqs_e = np.asarray(
        sigma * jax.random.normal(jax.random.key(seed + 1), (nf, 3 * w.shape[1])), np.float64
    )
    x = dense(pi["node_in"], dense(pi["bias_proj"], fourier(bias, freqs_n)))
    role, index, layer = (np.asarray(nodes[k]) for k in ("role", "index", "layer"))
    for v in range(len(x)):
        table, row = {0: ("pos_input", index[v]), 1: ("pos_hidden", layer[v] - 1)}.get(
            int(role[v]), ("pos_output", index[v])
        )
        x[v] += pi[table][row]
    rev = (etype == 2)[:, None]
    e_in = np.concatenate([w * ~rev, w * rev, w], axis=-1)
    e = dense(pi["weight_proj"], fourier(e_in, freqs_e)) + pi["edge_type"][etype]
    e = dense(pi["edge_in"], e)
    s, r = np.asarray(g.senders), np.asarray(g.receivers)
    gid = np.repeat(np.arange(n_graph), np.asarray(g.n_node))
    for i in range(model.num_layers):
        last = i == model.num_layers - 1
        x, e = ref_pna_layer(
            p[f"layer{i}"], x, e, s, r, model.avg_log_degree, model.aggregators,
            model.scalers, last, model.norm, gid,
        )  # fmt: skip
    out = []
    for gi in range(n_graph):
        h = np.zeros((model.max_outputs, x.shape[1]))
        for v in np.flatnonzero((gid == gi) & (role == 2)):
            h[index[v]] = x[v]
        pr = p["readout"]
        h = np.maximum(dense(pr["Dense_0"], h.reshape(-1)), 0.0)
        h = np.maximum(dense(pr["Dense_1"], h), 0.0)
        out.append(dense(pr["Dense_2"], h))
    return np.array(out)


# ------------------------------------------------------------------ helpers

TOL = dict(rtol=1e-4, atol=1e-4)


def randomise(params, seed):
    """Every leaf of a params (shape) tree random (kernels ~ N(0, 1/fan_in), vectors
    ~ N(0, 0.5^2)), float32: zero biases or unit scales would hide bugs."""
    rng = np.random.default_rng(seed)

    def draw(a):
        std = 1.0 / np.sqrt(a.shape[0]) if a.ndim == 2 else 0.5
        return (std * rng.standard_normal(a.shape)).astype(np.float32)

    return jax.tree.map(draw, params)


def f64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


# a layer's graph: in-degrees 0 (node 0), 1, 2, 3, 4 (with a self-loop), 1
EDGES = [(0, 1), (0, 2), (3, 2), (1, 3), (2, 3), (5, 3), (0, 4), (1, 4), (2, 4), (4, 4), (4, 5)]
SENDERS, RECEIVERS = (np.array(c) for c in zip(*EDGES, strict=True))
N_NODES = 6


# ------------------------------------------------------------------ tests


def test_cos_sin_2pi_matches_numpy():
    rng = np.random.default_rng(0)
    u = np.concatenate(
        [
            np.linspace(-3, 3, 6001),
            np.linspace(-1e4, 1e4, 20001),
            100 * rng.standard_normal(6000),
            np.arange(-8, 8.25, 0.25),  # integers, halves and quarters exactly
        ]
    ).astype(np.float32)
    u = u[: len(u) // 3 * 3].reshape(-1, 3)  # (n, 3) -> (n, 6): [cos x3, sin x3]
    got = np.asarray(jax.jit(gnn.cos_sin_2pi)(jnp.asarray(u)), np.float64)
    t = 2 * np.pi * u.astype(np.float64)
    np.testing.assert_allclose(got, np.concatenate([np.cos(t), np.sin(t)], -1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("source", ["array", "fourier"])
@pytest.mark.parametrize("fused", [True, False])
def test_lazy_edges_dense(source, fused):
    rng = np.random.default_rng(1)
    n_edge, m = 7, 5
    # projection multiplies w @ kernel first iff k * n <= m * (k + n)
    k, n = (4, 6) if fused else (30, 12)
    if source == "array":
        src = rng.standard_normal((n_edge, k)).astype(np.float32)
        lazy_src, feat = jnp.asarray(src), silu(src.astype(np.float64))
    else:
        x = rng.standard_normal((n_edge, 2)).astype(np.float32)
        extra = rng.standard_normal((n_edge, 2)).astype(np.float32)
        freqs = (1.5 * rng.standard_normal(((k - 2) // 2, 2))).astype(np.float32)
        lazy_src = gnn.FourierInput(jnp.asarray(x), jnp.asarray(freqs), jnp.asarray(extra))
        feat = np.concatenate([fourier(x.astype(np.float64), freqs), extra], -1)
    assert (k * n <= m * (k + n)) == fused and feat.shape[1] == k
    w, b = rng.standard_normal((k, m)) / np.sqrt(k), rng.standard_normal(m)
    kernel, bias = rng.standard_normal((m, n)) / np.sqrt(m), rng.standard_normal(n)
    e = gnn.LazyEdges(lazy_src, jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32))
    got = e.dense(jnp.asarray(kernel, jnp.float32), jnp.asarray(bias, jnp.float32), chunk=3)
    np.testing.assert_allclose(np.asarray(got), (feat @ w + b) @ kernel + bias, **TOL)
    np.testing.assert_allclose(np.asarray(e.dense(chunk=3)), feat @ w + b, **TOL)


@pytest.mark.parametrize(
    "fused,last", [(True, False), (False, False), (True, True), (False, True)]
)  # fmt: skip
def test_pna_layer_matches_reference(fused, last):
    d, m = 5, 4
    # the layer's edge projection is n = 2d (last) or 3d wide: fused iff k * n <= m * (k + n)
    k = 3 if fused else 40
    n = (2 if last else 3) * d
    assert (k * n <= m * (k + n)) == fused
    rng = np.random.default_rng(2)
    x = rng.standard_normal((N_NODES, d)).astype(np.float32)
    src = rng.standard_normal((len(EDGES), k)).astype(np.float32)
    w = (rng.standard_normal((k, m)) / np.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    e = gnn.LazyEdges(jnp.asarray(src), jnp.asarray(w), jnp.asarray(b))
    count = np.maximum(np.bincount(RECEIVERS, minlength=N_NODES), 1)[:, None].astype(np.float32)
    nodes = (jnp.zeros(N_NODES, int), jnp.ones(N_NODES, bool), 1)
    args = (jnp.asarray(x), e, SENDERS, RECEIVERS, count, np.log(count + 1.0), nodes)
    aggregators = ("mean", "min", "max", "std", "var", "sum")
    scalers = ("identity", "amplification", "attenuation")
    layer = gnn.PNALayer(d, 0.8, aggregators, scalers, last=last, chunk=4)
    params = randomise(jax.eval_shape(layer.init, jax.random.key(0), *args)["params"], 3)
    x_got, e_got = jax.jit(lambda p: layer.apply({"params": p}, *args))(params)

    e_ref = silu(src.astype(np.float64)) @ w + b
    x_ref, e_new_ref = ref_pna_layer(
        f64(params), x.astype(np.float64), e_ref, SENDERS, RECEIVERS, 0.8, aggregators, scalers,
        last, "node", np.zeros(N_NODES, int),
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(x_got), x_ref, **TOL)
    if last:
        assert e_got is None
    else:
        np.testing.assert_allclose(np.asarray(e_got.dense(chunk=4)), e_new_ref, **TOL)


def make_graph(bias, layer, index, role, edges, k2, rng):
    s, r, t = (np.array(c) for c in zip(*edges, strict=True))
    return jraph.GraphsTuple(
        nodes={
            "bias": np.asarray(bias, np.float32)[:, None],
            "layer": np.array(layer),
            "index": np.array(index),
            "role": np.array(role),
        },
        edges={"weight": rng.standard_normal((len(s), k2)).astype(np.float32), "type": t},
        senders=s,
        receivers=r,
        n_node=np.array([len(bias)]),
        n_edge=np.array([len(s)]),
        globals=None,
    )


@pytest.mark.parametrize("norm", ["node", "graph", "batch"])
def test_nggnn_forward_matches_reference(norm):
    rng = np.random.default_rng(4)
    # inputs 0, 1; hidden 2, 3, 4; outputs 5, 6 (of max_outputs 3: one zero slot);
    # in-degrees 0, 0, 2, 3, 2, 4, 1; edge type 0 weight, 1 residual, 2 reverse
    g1 = make_graph(
        rng.standard_normal(7), [0, 0, 1, 1, 1, 2, 2], [0, 1, 0, 1, 2, 0, 1], [0, 0, 1, 1, 1, 2, 2],
        [(0, 2, 0), (0, 3, 0), (1, 3, 0), (1, 4, 0), (0, 4, 0), (2, 5, 0), (3, 5, 0), (4, 5, 0),
         (3, 6, 0), (0, 5, 1), (5, 2, 2), (6, 3, 2)],
        4, rng,
    )  # fmt: skip
    g2 = make_graph(
        rng.standard_normal(4), [0, 1, 2, 3], [0, 0, 0, 0], [0, 1, 1, 2],
        [(0, 1, 0), (1, 2, 0), (2, 3, 0), (1, 3, 1), (3, 2, 2)],
        4, rng,
    )  # fmt: skip
    g = jraph.batch([g1, g2])
    padded = jraph.pad_with_graphs(g, n_node=14, n_edge=20, n_graph=3)
    batch = {"graph": padded, "graph_mask": np.array([True, True, False])}
    model = gnn.NGGNN(
        3, hidden=8, num_layers=3, max_inputs=2, max_hidden_layers=2, max_outputs=3,
        avg_log_degree=0.8, norm=norm, fourier_dim=8, fourier_sigma=1.5, edge_chunk=5,
    )  # fmt: skip
    params = randomise(jax.eval_shape(model.init, jax.random.key(0), batch)["params"], 5)
    got = np.asarray(jax.jit(model.apply)({"params": params}, batch))
    np.testing.assert_allclose(got[:2], ref_nggnn(f64(params), g, model, 2), **TOL)
    np.testing.assert_array_equal(got[2], 0.0)
