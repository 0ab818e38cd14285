"""NG-GNN: a PNA graph network over neural graphs (Kofinas et al., ICLR 2024).

Interface (shared by `wsl.nn.transformer.NGT`):

    model = NGGNN(out_dim=10, max_inputs=2, max_hidden_layers=2, max_outputs=1)
    y = model.apply(params, {"graph": g, "graph_mask": m}, train=False)   # (n_graph, out_dim)

`g` is a padded `jraph.GraphsTuple` as built by `wsl.weights.graph.to_graph` + `jraph.batch`
+ `jraph.pad_with_graphs` (nodes: 'bias' (N, 1), 'layer', 'index', 'role'; edges: 'weight'
(E, k*k), 'type'); `m` (n_graph,) is True for real graphs. Rows of padding graphs are 0.
Padding edges must connect padding nodes only (as `jraph.pad_with_graphs` makes them), so
real graphs never see padding and every graph's output is what it would be alone.

Input encodings (`GraphInput`, as the reference's graph constructor):
- scalars -> random Fourier features [cos 2pi Bv, sin 2pi Bv], B ~ N(0, sigma^2) of shape
  (fourier_dim, d_in), then two linear maps. B is *not* a parameter: it is drawn from the
  fixed key `jax.random.key(fourier_seed)` at every call (a constant under jit), so the
  params pytree holds only trainable arrays. Edge input is [w * forward, w * reverse, w]
  (the reference's [e_ij, e_ji, e_ij + e_ji]); a learned edge-type embedding (weight /
  residual / reverse) is added after the first linear map.
- learned positional embeddings: one per input neuron index (`max_inputs`), one per output
  neuron index (`max_outputs`), one shared by all neurons of hidden layer l
  (`max_hidden_layers`); only hidden-neuron permutations remain a symmetry.
- optional probe features (`num_probes > 0`, dense networks only): learned input points are
  run through the subject network *on the graph* (h_v = act(omega * (b_v + sum_u w_uv h_u)),
  output layer linear, residual edges add), and each node's activations are mapped to the
  node width by a per-layer linear map + LayerNorm and added to the node features. Conv
  edges contribute their kernel's centre value only, so for CNNs this is not the real
  activation; use it for MLPs / INRs.

PNA layer (x_i: receiver, x_j: sender, e_ij: edge): m_ij = s_ij * (W [x_i, x_j] + b) + t_ij
with (s_ij, t_ij) = Linear(e_ij) (FiLM); aggregators mean / min / max / std over incoming
edges (std = sqrt(var + 1e-5); empty neighbourhoods give 0, std sqrt(1e-5)); degree
scalers identity / amplification log(d + 1) / delta / attenuation delta / log(d + 1) with
d clipped to >= 1, where delta = `avg_log_degree` is a constant of the training set
(`average_log_degree`); x_i <- Linear(Linear([x_i, aggs])).
Between layers: LayerNorm (`norm`: over each node's channels by default; over each graph,
or over the whole batch as the reference's PyG call does: `NodeNorm`), SiLU, dropout, then
the edge update
e_ij <- Linear(SiLU(Linear(e_ij) + Linear(x_j) + Linear(x_i))) (no update after the last layer,
whose edges are unused).

Speed (the same function as the reference, fewer FLOPs and memory passes): the message map
W [x_i, x_j] is applied per node before the gathers; consecutive linear maps on edges are
multiplied before they touch the (E, d) features (`LazyEdges`: the edge features are never
formed, the FiLM and edge-update projections of a layer are one product); each layer makes
one pass over chunks of edges (Fourier features or edge update, projection, FiLM message),
recomputed in the backward pass, so that only the messages and the next layer's edge
pre-activations reach memory (`map_rows`); the Fourier features use a polynomial sin/cos
(`cos_sin_2pi`).

Readout: 'cat' (reference default) concatenates the features of output neurons 0 ..
max_outputs - 1 (zeros where a network has fewer); 'mean' concatenates the mean over output
neurons and the mean over all neurons (one vector whatever the output count). Then
Linear-ReLU-Linear-ReLU-Linear to `out_dim`.

Defaults follow the reference configs (mkofinas/neural-graphs): INR classification
d=32, 4 layers, aggregators mean/min/max/std, scalers identity/amplification, Fourier
sigma 3 and 128 frequencies (92k parameters with 10 classes); CNN-zoo generalisation d=256
(5.6M; ours 5.46M: the reference's separate projection for dense-layer edges inside CNNs
is not reproduced). Weight/bias normalisation by data-set statistics is the data
pipeline's job.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from wsl.weights.graph import EDGE_REVERSE, ROLE_HIDDEN, ROLE_INPUT, ROLE_OUTPUT

ACTS = {"sin": jnp.sin, "relu": nn.relu, "tanh": jnp.tanh, "identity": lambda x: x}


# --------------------------------------------------------------------------------------
# Graph helpers
# --------------------------------------------------------------------------------------


def node_graph_ids(graph: jraph.GraphsTuple) -> jax.Array:
    """(N,) index of the graph each node belongs to."""
    n = graph.nodes["bias"].shape[0]
    g = graph.n_node.shape[0]
    return jnp.repeat(jnp.arange(g), graph.n_node, total_repeat_length=n)


def average_log_degree(graphs: Sequence[jraph.GraphsTuple]) -> float:
    """PNA's delta: the mean of log(in-degree + 1) over all nodes of (unpadded) graphs,
    e.g. one graph per architecture of the training set."""
    logs = []
    for g in graphs:
        deg = np.bincount(np.asarray(g.receivers), minlength=int(np.sum(g.n_node)))
        logs.append(np.log(deg + 1.0))
    return float(np.mean(np.concatenate(logs)))


class NodeNorm(nn.Module):
    """LayerNorm of node features in one of three modes, then a per-channel affine map:
    'node' normalises each node over its channels; 'graph' each graph over all its nodes
    and channels (PyG LayerNorm(mode='graph') given the batch vector); 'batch' the whole
    batch over all real nodes and channels at once (PyG's graph mode called without a batch
    vector, as mkofinas/neural-graphs' PNA does: a prediction then depends on the other
    networks of its batch). 'graph' and 'batch' divide by std + eps (1e-5), as PyG does; padding
    nodes (`real` False) take no part in the statistics and are normalised to 0 (then the
    affine map), so a graph of padding nodes alone keeps the gradients finite."""

    mode: str = "node"
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x, gid, real, n_graph: int):
        if self.mode == "node":
            xc = x - jnp.mean(x, -1, keepdims=True)
            y = xc * jax.lax.rsqrt(jnp.mean(xc * xc, -1, keepdims=True) + 1e-6)  # flax's eps
        elif self.mode in ("graph", "batch"):
            seg, n_seg = (gid, n_graph) if self.mode == "graph" else (jnp.zeros_like(gid), 1)
            w = real.astype(x.dtype)[:, None]
            count = jnp.maximum(jraph.segment_sum(w[:, 0], seg, n_seg) * x.shape[-1], 1.0)
            mean = jraph.segment_sum(jnp.sum(x * w, -1), seg, n_seg) / count
            xc = x - mean[seg][:, None]
            var = jraph.segment_sum(jnp.sum(xc * xc * w, -1), seg, n_seg) / count
            # a graph of padding nodes only has var 0: sqrt's gradient there is inf, and
            # inf * 0 would turn every gradient NaN; padding nodes output 0 before the affine
            sd = jnp.sqrt(jnp.where(var > 0, var, 1.0)) * (var > 0)
            y = jnp.where(real[:, None], xc / (sd[seg][:, None] + self.eps), 0.0)
        else:
            raise ValueError(f"unknown norm {self.mode!r}; choose 'node', 'graph' or 'batch'")
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        return y * scale + self.param("bias", nn.initializers.zeros, (x.shape[-1],))


def _concrete(x):
    try:
        return np.asarray(x)
    except jax.errors.TracerArrayConversionError:
        return None


def check_limits(graph, graph_mask, max_inputs: int, max_hidden_layers: int, max_outputs: int):
    """Raise a clear error if a (concrete) graph has more input/output neurons or hidden
    layers than the model's embedding tables. Silent under jit (indices are clipped)."""
    role, index, layer = (_concrete(graph.nodes[k]) for k in ("role", "index", "layer"))
    mask = _concrete(graph_mask)
    if role is None or index is None or layer is None or mask is None:
        return
    real = np.asarray(mask)[np.repeat(np.arange(len(graph.n_node)), np.asarray(graph.n_node))]
    real = np.concatenate([real, np.zeros(len(role) - len(real), bool)])
    for what, sel, value, limit in (
        ("input neurons", role == ROLE_INPUT, index + 1, max_inputs),
        ("output neurons", role == ROLE_OUTPUT, index + 1, max_outputs),
        ("hidden layers", role == ROLE_HIDDEN, layer, max_hidden_layers),
    ):
        sel = sel & real
        if sel.any() and value[sel].max() > limit:
            raise ValueError(
                f"a graph has {int(value[sel].max())} {what} but the model allows "
                f"{limit}; raise the model's max_{what.replace(' neurons', 's').replace(' ', '_')}"
            )


def fourier_frequencies(num: int, d_in: int, sigma: float, seed: int) -> jax.Array:
    """B ~ N(0, sigma^2) of shape (num, d_in), drawn from the fixed key `key(seed)`."""
    return sigma * jax.random.normal(jax.random.key(seed), (num, d_in), jnp.float32)


class FourierInput(NamedTuple):
    """Rows [cos 2pi xB^T, sin 2pi xB^T, extra] (random Fourier features of x, then the
    `extra` columns), kept unevaluated: `fourier_dense` computes them chunk by chunk."""

    x: jax.Array
    freqs: jax.Array
    extra: jax.Array | None = None

    def features(self) -> jax.Array:
        f = cos_sin_2pi(self.x @ self.freqs.T)
        return f if self.extra is None else jnp.concatenate([f, self.extra], axis=-1)


def map_rows(fn, chunk: int, arrays, save_dots: bool = False):
    """fn(*row_chunks) over row chunks of arrays with equal leading size (None entries pass
    through as None) with `lax.map`; each chunk is recomputed in the backward pass (except
    its matrix products if `save_dots`), so its intermediates stay in the cache. Returns
    fn's outputs for all rows."""
    n = next(a.shape[0] for a in arrays if a is not None)
    chunk = min(chunk, n)
    pad = -n % chunk

    def split(a):
        if a is None:
            return None
        a = jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1))
        return a.reshape(-1, chunk, *a.shape[1:])

    policy = jax.checkpoint_policies.dots_saveable if save_dots else None
    out = jax.lax.map(jax.checkpoint(lambda c: fn(*c), policy=policy), tuple(map(split, arrays)))
    return jax.tree.map(lambda o: o.reshape(-1, *o.shape[2:])[:n], out)


def fourier_dense(inp: FourierInput, kernel, bias, chunk: int = 1024):
    """inp.features() @ kernel + bias, by row chunks (`map_rows`): the (rows, 2 * num)
    features, the widest tensor of the model, never leave the cache."""
    f = lambda x, extra: FourierInput(x, inp.freqs, extra).features() @ kernel
    return map_rows(f, chunk, (inp.x, inp.extra)) + bias


def cos_sin_2pi(u: jax.Array) -> jax.Array:
    """[cos 2pi u, sin 2pi u] by range reduction and Taylor polynomials (abs. error < 1e-6
    in float32): plain multiply-adds that XLA vectorises, ~5x faster than jnp.cos/sin on
    CPU, where they dominated the input encoding."""
    r = u - jnp.round(u)  # [-1/2, 1/2] turns
    t = 2.0 * jnp.pi * r
    t2 = t * t
    c, s = jnp.ones_like(t), jnp.ones_like(t)
    for k in range(10, 0, -1):  # Horner in t^2
        c = 1.0 - t2 * c * (1.0 / ((2 * k - 1) * (2 * k)))
        s = 1.0 - t2 * s * (1.0 / ((2 * k) * (2 * k + 1)))
    return jnp.concatenate([c, t * s], axis=-1)


def segment_extreme(x: jax.Array, segments: jax.Array, n: int, sign: float = 1.0):
    """Segment max (sign=1) or min (sign=-1), 0 for empty segments. Its gradient goes to the
    elements equal to their segment's extreme (to every one of them on exact ties), which is
    cheaper than jax's default on CPU."""
    return sign * _segment_max0(sign * x, segments, n)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _segment_max0(x, segments, n):
    out = jax.ops.segment_max(x, segments, n)
    return jnp.where(jnp.isfinite(out), out, 0.0)


def _segment_max0_fwd(x, segments, n):
    out = _segment_max0(x, segments, n)
    return out, (x, segments, out)


def _segment_max0_bwd(n, res, g):
    x, segments, out = res
    return jnp.where(x == out[segments], g[segments], 0.0), None


_segment_max0.defvjp(_segment_max0_fwd, _segment_max0_bwd)


def aggregate(m, receivers, n: int, count, names: Sequence[str]) -> dict[str, jax.Array]:
    """PNA's aggregators `names` (mean, min, max, std, var, sum) of the rows of m (E, d)
    over the edges into each of n nodes; count (n, 1): in-degree clipped to >= 1. Empty
    neighbourhoods give 0, but std = sqrt(var + 1e-5) (PyG's), sqrt(1e-5) there. (One
    scatter per statistic: sharing one over [m, m*m] and one over [m, -m] was measured
    slower and heavier in bench_gnn's steps: issue 5's notes.)"""
    aggs = {}
    if {"mean", "std", "var"} & set(names):
        mean = jraph.segment_sum(m, receivers, n) / count
        var = jax.nn.relu(jraph.segment_sum(m * m, receivers, n) / count - mean**2)
        aggs.update(mean=mean, var=var, std=jnp.sqrt(var + 1e-5))
    if "max" in names:
        aggs["max"] = segment_extreme(m, receivers, n, 1.0)
    if "min" in names:
        aggs["min"] = segment_extreme(m, receivers, n, -1.0)
    if "sum" in names:
        aggs["sum"] = jraph.segment_sum(m, receivers, n)
    return aggs


class Affine(nn.Module):
    """The parameters of a Dense layer (same names and init as nn.Dense), returned
    instead of applied, so that consecutive linear maps can be multiplied first."""

    d_in: int
    features: int

    @nn.compact
    def __call__(self):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (self.d_in, self.features))
        return kernel, self.param("bias", nn.initializers.zeros, (self.features,))


class LazyEdges(NamedTuple):
    """Edge features e = f @ w + b, never formed in memory: f is the Fourier features of
    `source` (a `FourierInput`: the input encoding) or SiLU(source) (an (E, d) array: after
    an NG-GNN edge update). A linear map of e is computed as f @ (w @ kernel) +
    (b @ kernel + bias) when that is cheaper, by row chunks that stay in the cache."""

    source: FourierInput | jax.Array
    w: jax.Array
    b: jax.Array

    def rows(self) -> tuple:
        """The per-edge arrays that `features` reads, chunk by chunk."""
        if isinstance(self.source, FourierInput):
            return (self.source.x, self.source.extra)
        return (self.source, None)

    def features(self, rows) -> jax.Array:
        if isinstance(self.source, FourierInput):
            return FourierInput(rows[0], self.source.freqs, rows[1]).features()
        return nn.silu(rows[0])

    def projection(self, kernel, bias):
        """A function of a chunk's rows returning e @ kernel + bias; w and kernel are
        multiplied first (once, outside the chunks) when that is cheaper per edge."""
        (k, m), n = self.w.shape, kernel.shape[1]
        if k * n <= m * (k + n):
            w, b = self.w @ kernel, self.b @ kernel + bias
            return lambda rows: self.features(rows) @ w + b
        return lambda rows: (self.features(rows) @ self.w + self.b) @ kernel + bias

    def dense(self, kernel=None, bias=None, chunk: int = 1024):
        """(E, features) = e @ kernel + bias (e itself without a kernel)."""
        if kernel is None:
            kernel, bias = jnp.eye(self.w.shape[1]), jnp.zeros(self.w.shape[1])
        project = self.projection(kernel, bias)
        return map_rows(lambda *rows: project(rows), chunk, self.rows())


# --------------------------------------------------------------------------------------
# Input encodings
# --------------------------------------------------------------------------------------


class GraphInput(nn.Module):
    """Node features (N, d_node) and `LazyEdges` (`e.dense()` evaluates them to
    (E, d_edge)) of a neural graph (see the module docstring)."""

    d_node: int
    d_edge: int
    max_inputs: int
    max_hidden_layers: int
    max_outputs: int
    fourier_dim: int = 128
    fourier_sigma: float = 3.0
    fourier_seed: int = 0
    num_probes: int = 0
    probe_act: str = "sin"
    probe_omega: float = 30.0

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple):
        nodes, edges = graph.nodes, graph.edges
        role, index, layer = nodes["role"], nodes["index"], nodes["layer"]
        bias = nodes["bias"].astype(jnp.float32)
        w = edges["weight"].astype(jnp.float32)
        rev = (edges["type"] == EDGE_REVERSE)[:, None]
        e_in = jnp.concatenate([jnp.where(rev, 0.0, w), jnp.where(rev, w, 0.0), w], axis=-1)

        # Linear(Linear(Fourier features)): the two maps are multiplied first
        n_f = 2 * self.fourier_dim
        w1, b1 = Affine(n_f, self.d_node, name="bias_proj")()
        w2, b2 = Affine(self.d_node, self.d_node, name="node_in")()
        freqs = fourier_frequencies(self.fourier_dim, 1, self.fourier_sigma, self.fourier_seed)
        x = fourier_dense(FourierInput(bias, freqs), w1 @ w2, b1 @ w2 + b2)
        if self.num_probes:
            x = x + self.probe_features(graph) @ w2
        # edges: the type embedding (weight / residual / reverse) enters as one-hot columns
        w1, b1 = Affine(n_f, self.d_edge, name="weight_proj")()
        emb = self.param("edge_type", nn.initializers.normal(1.0), (3, self.d_edge))
        w2, b2 = Affine(self.d_edge, self.d_edge, name="edge_in")()
        freqs = fourier_frequencies(
            self.fourier_dim, e_in.shape[-1], self.fourier_sigma, self.fourier_seed + 1
        )
        one_hot = jax.nn.one_hot(edges["type"], 3, dtype=jnp.float32)
        e = LazyEdges(
            FourierInput(e_in, freqs, one_hot), jnp.concatenate([w1, emb]) @ w2, b1 @ w2 + b2
        )

        init = nn.initializers.normal(1.0)
        pos_in = self.param("pos_input", init, (self.max_inputs, self.d_node))
        pos_hid = self.param("pos_hidden", init, (self.max_hidden_layers, self.d_node))
        pos_out = self.param("pos_output", init, (self.max_outputs, self.d_node))
        pos = jnp.where(
            (role == ROLE_INPUT)[:, None],
            pos_in[jnp.clip(index, 0, self.max_inputs - 1)],
            jnp.where(
                (role == ROLE_OUTPUT)[:, None],
                pos_out[jnp.clip(index, 0, self.max_outputs - 1)],
                pos_hid[jnp.clip(layer - 1, 0, self.max_hidden_layers - 1)],
            ),
        )
        return x + pos, e

    def probe_features(self, graph: jraph.GraphsTuple) -> jax.Array:
        """Probe activations mapped per layer to the node width, LayerNorm (N, d_node)."""
        points = self.param(
            "probe_inputs",
            lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0),
            (self.max_inputs, self.num_probes),
        )
        h = probe_activations(
            graph, points, self.probe_act, self.probe_omega, self.max_hidden_layers + 1
        )
        n_layers = self.max_hidden_layers + 2
        kernel = self.param(
            "probe_kernel",
            nn.initializers.lecun_normal(batch_axis=(0,)),
            (n_layers, self.num_probes, self.d_node),
        )
        bias = self.param("probe_bias", nn.initializers.zeros, (n_layers, self.d_node))
        layer = jnp.clip(graph.nodes["layer"], 0, n_layers - 1)
        per_layer = jnp.einsum("np,lpd->nld", h, kernel)
        out = jnp.take_along_axis(per_layer, layer[:, None, None], axis=1)[:, 0] + bias[layer]
        return nn.LayerNorm(name="probe_norm")(out)


def probe_activations(
    graph: jraph.GraphsTuple, points: jax.Array, act: str, omega: float, depth: int
) -> jax.Array:
    """(N, P) activations of every neuron when the subject network is run on P probe inputs
    (`points`: (max_inputs, P), row j feeds input neuron j), by `depth` rounds of message
    passing over the forward and residual edges: h_v = act(omega * (b_v + sum_u w_uv h_u)),
    linear for output neurons. Exact for MLPs whose depth is at most `depth` (conv edges
    contribute their kernel's centre value only)."""
    nodes, edges = graph.nodes, graph.edges
    role, n, k2 = nodes["role"], nodes["bias"].shape[0], edges["weight"].shape[1]
    is_in, is_out = (role == ROLE_INPUT)[:, None], (role == ROLE_OUTPUT)[:, None]
    h0 = jnp.where(is_in, points[jnp.clip(nodes["index"], 0, points.shape[0] - 1)], 0.0)
    w = jnp.where(edges["type"] == EDGE_REVERSE, 0.0, edges["weight"][:, k2 // 2])
    f = ACTS[act]

    def step(h, _):
        pre = jraph.segment_sum(w[:, None] * h[graph.senders], graph.receivers, n)
        pre = pre + nodes["bias"]
        return jnp.where(is_in, h0, jnp.where(is_out, pre, f(omega * pre))), None

    return jax.lax.scan(step, h0, None, length=depth)[0]


# --------------------------------------------------------------------------------------
# Readout
# --------------------------------------------------------------------------------------


def embed_graph(m: nn.Module, batch, d_node: int, d_edge: int):
    """The shared start of the neural-graph encoders (NGGNN, NGT): check the batch against
    encoder `m`'s size limits, then its `GraphInput` (submodule "input", built from `m`'s
    max_* / fourier_* / probe fields). Call inside the encoder's compact method; returns
    (graph, graph_mask, node features, edge features)."""
    graph, graph_mask = batch["graph"], batch["graph_mask"]
    check_limits(graph, graph_mask, m.max_inputs, m.max_hidden_layers, m.max_outputs)
    x, e = GraphInput(
        d_node,
        d_edge,
        m.max_inputs,
        m.max_hidden_layers,
        m.max_outputs,
        m.fourier_dim,
        m.fourier_sigma,
        m.fourier_seed,
        m.num_probes,
        m.probe_act,
        m.probe_omega,
        name="input",
    )(graph)
    return graph, graph_mask, x, e


class Readout(nn.Module):
    """Pool output-neuron (and all-neuron) features per graph, then an MLP."""

    out_dim: int
    max_outputs: int
    hidden: Sequence[int]
    pooling: str = "cat"  # 'cat' | 'mean'

    @nn.compact
    def __call__(self, x, graph, graph_mask):
        n_graph = graph.n_node.shape[0]
        gid = node_graph_ids(graph)
        real = graph_mask[gid]
        is_out = (graph.nodes["role"] == ROLE_OUTPUT) & real
        if self.pooling == "cat":
            size = n_graph * self.max_outputs
            slot = gid * self.max_outputs + graph.nodes["index"]
            # other nodes go out of range and are dropped (-1 would wrap to the last slot)
            slot = jnp.where(is_out & (graph.nodes["index"] < self.max_outputs), slot, size)
            h = jnp.zeros((size, x.shape[-1]), x.dtype)
            h = h.at[slot].add(x, mode="drop").reshape(n_graph, -1)
        elif self.pooling == "mean":

            def mean(sel):
                s = jraph.segment_sum(jnp.where(sel[:, None], x, 0.0), gid, n_graph)
                c = jraph.segment_sum(sel.astype(x.dtype), gid, n_graph)
                return s / jnp.maximum(c, 1.0)[:, None]

            h = jnp.concatenate([mean(is_out), mean(real)], axis=-1)
        else:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose 'cat' or 'mean'")
        for d in self.hidden:
            h = nn.relu(nn.Dense(d)(h))
        return nn.Dense(self.out_dim)(h) * graph_mask[:, None]


# --------------------------------------------------------------------------------------
# PNA with FiLM messages and edge updates
# --------------------------------------------------------------------------------------


class PNALayer(nn.Module):
    """One NG-GNN layer: the PNA convolution with FiLM messages, then (unless `last`)
    LayerNorm, SiLU, dropout and the edge update. Edges in and out are `LazyEdges`; one pass
    over edge chunks computes their FiLM and edge-update projections (one product) and the
    messages, then the messages are aggregated."""

    dim: int
    avg_log_degree: float
    aggregators: Sequence[str] = ("mean", "min", "max", "std")
    scalers: Sequence[str] = ("identity", "amplification")
    dropout: float = 0.0
    last: bool = False
    chunk: int = 1024
    norm: str = "node"

    @nn.compact
    def __call__(self, x, e: LazyEdges, senders, receivers, count, log_deg, nodes, train=False):
        """count: (N, 1) in-degree clipped to >= 1; log_deg = log(count + 1); nodes:
        (graph id, real, number of graphs) of every node, for `NodeNorm`."""
        n, d, width = x.shape[0], self.dim, e.w.shape[1]
        kernel, bias = Affine(width, 2 * d, name="film")()
        if not self.last:
            k_edge, b_edge = Affine(width, d, name="edge")()
            kernel, bias = jnp.concatenate([kernel, k_edge], 1), jnp.concatenate([bias, b_edge])
        # message Linear([x_i, x_j]) as two per-node maps, gathered: m = s * h + t
        h = nn.Dense(d, name="msg_dst")(x)[receivers]
        h = h + nn.Dense(d, use_bias=False, name="msg_src")(x)[senders]

        project = e.projection(kernel, bias)

        def edge_chunk(h, *rows):
            scale, shift, pre = jnp.split(project(rows), [d, 2 * d], axis=1)  # not slices:
            return scale * h + shift, (None if self.last else pre)  # backward concatenates

        # wide layers are FLOP-bound: keep their products for the backward pass
        m, pre = map_rows(edge_chunk, self.chunk, (h, *e.rows()), d >= 128)

        aggs = aggregate(m, receivers, n, count, self.aggregators)
        agg = jnp.concatenate([aggs[a] for a in self.aggregators], axis=-1)
        amp = log_deg / self.avg_log_degree
        factor = {"identity": 1.0, "amplification": amp, "attenuation": 1.0 / amp}
        agg = jnp.concatenate([agg * factor[s] for s in self.scalers], axis=-1)
        x = nn.Dense(d, name="post")(jnp.concatenate([x, agg], axis=-1))
        x = nn.Dense(d, name="out")(x)
        if self.last:
            return x, None

        x = nn.silu(NodeNorm(self.norm, name="norm")(x, *nodes))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        # edge update e_ij <- Linear(SiLU(Linear(e_ij) + Linear(x_j) + Linear(x_i))), lazily
        pre = pre + nn.Dense(d, name="src")(x)[senders] + nn.Dense(d, name="dst")(x)[receivers]
        return x, LazyEdges(pre, *Affine(d, d, name="edge_out")())


class NGGNN(nn.Module):
    """Neural-graph PNA network: batch {'graph', 'graph_mask'} -> (n_graph, out_dim)."""

    out_dim: int
    hidden: int = 32
    num_layers: int = 4
    max_inputs: int = 3
    max_hidden_layers: int = 8
    max_outputs: int = 10
    avg_log_degree: float = 2.0
    aggregators: Sequence[str] = ("mean", "min", "max", "std")
    scalers: Sequence[str] = ("identity", "amplification")
    dropout: float = 0.0
    norm: str = "node"  # NodeNorm mode: 'node' | 'graph' | 'batch' (the reference's)
    pooling: str = "cat"
    fourier_dim: int = 128
    fourier_sigma: float = 3.0
    fourier_seed: int = 0
    num_probes: int = 0
    probe_act: str = "sin"
    probe_omega: float = 30.0
    # edges per chunk of the fused edge passes; None: max(1024, 2**17 // hidden), a chunk of
    # (rows x hidden) ~ 512 KB: fewer loop iterations for narrow models (d=32: 4096 rows,
    # 0.84 -> 0.60-0.62 s per SIREN step of 128; d=256 CNN steps equal at 1024 and 2048)
    edge_chunk: int | None = None

    @nn.compact
    def __call__(self, batch, train: bool = False):
        graph, graph_mask, x, e = embed_graph(self, batch, self.hidden, self.hidden)
        s, r, n = graph.senders, graph.receivers, x.shape[0]
        count = jnp.maximum(jraph.segment_sum(jnp.ones_like(r, jnp.float32), r, n), 1.0)[:, None]
        log_deg = jnp.log(count + 1.0)
        gid = node_graph_ids(graph)
        nodes = (gid, graph_mask[gid], graph.n_node.shape[0])
        for i in range(self.num_layers):
            x, e = PNALayer(
                self.hidden,
                self.avg_log_degree,
                self.aggregators,
                self.scalers,
                self.dropout,
                last=i == self.num_layers - 1,
                chunk=self.edge_chunk or max(1024, 2**17 // self.hidden),
                norm=self.norm,
                name=f"layer{i}",
            )(x, e, s, r, count, log_deg, nodes, train)
        return Readout(
            self.out_dim, self.max_outputs, (self.hidden, self.hidden), self.pooling, name="readout"
        )(x, graph, graph_mask)
