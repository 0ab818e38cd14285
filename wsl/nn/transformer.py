"""NG-T: a relational transformer over neural graphs (Kofinas et al., ICLR 2024).

Same interface, input encodings (`wsl.nn.gnn.GraphInput`) and readout as `NGGNN`:

    model = NGT(out_dim=10, max_inputs=2, max_hidden_layers=2, max_outputs=1)
    y = model.apply(params, {"graph": g, "graph_mask": m}, train=False)   # (n_graph, out_dim)

Attention is sparse: node i attends over the senders j of its incoming edges (a segment
softmax over receivers), with edge features entering queries, keys and values:
q_ij = Wq x_i + Wq' e_ij, k_ij = Wk x_j + Wk' e_ij, v_ij = (Wv x_j) * (Wv' e_ij) + Wv'' e_ij,
logits scaled by 1 / sqrt(d_attn) as in the reference. Node update (post-norm):
x <- LN(x + Linear(attn)); x <- LN(x + MLP(x)). Edge update (all layers but the last):
e_ij <- LN(e_ij + Linear(GELU(Linear([e_ij, e_ji]) + Linear(x_i) + Linear(x_j))));
e <- LN(e + MLP(e)), where e_ji is the feature of the reverse edge j -> i, found from the
graph structure (`reverse_edge_index`), and 0 where the graph has no such edge.

Defaults follow the reference INR-classification config: d_node 64, d_edge 32, d_attn 128,
node / edge MLP hidden 128 / 64, readout hidden 128, 4 layers, 8 heads, Fourier sigma 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from wsl.nn.gnn import Readout, embed_graph

_xavier = nn.initializers.xavier_uniform()


def _dense(features: int, use_bias: bool = True, name: str | None = None) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, kernel_init=_xavier, name=name)


def reverse_edge_index(senders: jax.Array, receivers: jax.Array):
    """For every edge s -> r, the index of an edge r -> s and whether one exists. Sorts the
    edges together with the reversed queries (jittable, any number of nodes)."""
    n_e = senders.shape[0]
    a = jnp.concatenate([senders, receivers])  # edges (s, r) then queries (r, s)
    b = jnp.concatenate([receivers, senders])
    is_query = jnp.concatenate([jnp.zeros(n_e, jnp.int32), jnp.ones(n_e, jnp.int32)])
    order = jnp.lexsort((is_query, b, a))  # a query right after its matching edge
    sa, sb, sq = a[order], b[order], is_query[order]
    prev = jnp.roll(order, 1)
    found = (sq == 1) & (jnp.roll(sq, 1) == 0) & (a[prev] == sa) & (b[prev] == sb)
    found = found & (jnp.arange(2 * n_e) > 0)
    query_id = jnp.where(sq == 1, order - n_e, n_e)  # n_e: dropped
    index = jnp.zeros(n_e, jnp.int32).at[query_id].set(prev.astype(jnp.int32), mode="drop")
    exists = jnp.zeros(n_e, bool).at[query_id].set(found, mode="drop")
    return jnp.where(exists, index, 0), exists


def segment_softmax(logits: jax.Array, segments: jax.Array, n: int) -> jax.Array:
    """Softmax of (E, H) logits over the edges of each segment."""
    m = jax.lax.stop_gradient(jax.ops.segment_max(logits, segments, n))
    z = jnp.exp(logits - m[segments])
    return z / (jraph.segment_sum(z, segments, n)[segments] + 1e-16)


class RTLayer(nn.Module):
    d_node: int
    d_edge: int
    d_attn: int
    d_node_hidden: int
    d_edge_hidden: int
    heads: int
    dropout: float = 0.0
    update_edges: bool = True

    @nn.compact
    def __call__(self, x, e, senders, receivers, rev_index, rev_exists, train: bool):
        n, hd = x.shape[0], self.d_attn // self.heads
        drop = lambda y: nn.Dropout(self.dropout, deterministic=not train)(y)
        qn, kn, vn = jnp.split(_dense(3 * self.d_attn, False, "qkv_node")(x), 3, axis=-1)
        qe, ke, ve_add, ve_mul = jnp.split(_dense(4 * self.d_attn, False, "qkv_edge")(e), 4, -1)
        q = (qn[receivers] + qe).reshape(-1, self.heads, hd)
        k = (kn[senders] + ke).reshape(-1, self.heads, hd)
        v = (vn[senders] * ve_mul + ve_add).reshape(-1, self.heads, hd)
        attn = segment_softmax(jnp.sum(q * k, -1) * self.d_attn**-0.5, receivers, n)
        out = jraph.segment_sum(attn[..., None] * v, receivers, n).reshape(n, self.d_attn)
        out = _dense(self.d_node, name="attn_out")(out)
        x = nn.LayerNorm(name="node_ln0")(x + drop(_dense(self.d_node, name="lin0")(out)))
        h = nn.gelu(_dense(self.d_node_hidden, False, "node_mlp0")(x), approximate=False)
        x = nn.LayerNorm(name="node_ln1")(x + drop(_dense(self.d_node, name="node_mlp1")(h)))
        if not self.update_edges:
            return x, e

        e_rev = jnp.where(rev_exists[:, None], e[rev_index], 0.0)
        h = _dense(self.d_edge_hidden, name="edge_e")(jnp.concatenate([e, e_rev], -1))
        h = h + _dense(self.d_edge_hidden, name="edge_src")(x)[senders]
        h = h + _dense(self.d_edge_hidden, name="edge_dst")(x)[receivers]
        h = _dense(self.d_edge, name="edge_out")(nn.gelu(h, approximate=False))
        e = nn.LayerNorm(name="edge_ln0")(e + drop(h))
        h = nn.gelu(_dense(self.d_edge_hidden, False, "edge_mlp0")(e), approximate=False)
        e = nn.LayerNorm(name="edge_ln1")(e + drop(_dense(self.d_edge, name="edge_mlp1")(h)))
        return x, e


class NGT(nn.Module):
    """Neural-graph relational transformer: batch {'graph', 'graph_mask'} -> (n_graph, out_dim)."""

    out_dim: int
    d_node: int = 64
    d_edge: int = 32
    d_attn: int = 128
    d_node_hidden: int = 128
    d_edge_hidden: int = 64
    d_out_hidden: int = 128
    num_layers: int = 4
    heads: int = 8
    max_inputs: int = 3
    max_hidden_layers: int = 8
    max_outputs: int = 10
    dropout: float = 0.0
    pooling: str = "cat"
    fourier_dim: int = 128
    fourier_sigma: float = 1.0
    fourier_seed: int = 0
    num_probes: int = 0
    probe_act: str = "sin"
    probe_omega: float = 30.0
    readout_hidden: Sequence[int] | None = None  # default (d_out_hidden,)

    @nn.compact
    def __call__(self, batch, train: bool = False):
        graph, graph_mask, x, e = embed_graph(self, batch, self.d_node, self.d_edge)
        s, r = graph.senders, graph.receivers
        e = e.dense()  # (E, d_edge)
        rev_index, rev_exists = reverse_edge_index(s, r)
        for i in range(self.num_layers):
            x, e = RTLayer(
                self.d_node,
                self.d_edge,
                self.d_attn,
                self.d_node_hidden,
                self.d_edge_hidden,
                self.heads,
                self.dropout,
                update_edges=i < self.num_layers - 1,
                name=f"layer{i}",
            )(x, e, s, r, rev_index, rev_exists, train)
        hidden = self.readout_hidden if self.readout_hidden is not None else (self.d_out_hidden,)
        return Readout(self.out_dim, self.max_outputs, tuple(hidden), self.pooling, name="readout")(
            x, graph, graph_mask
        )
