"""Network -> graph (Kofinas et al. 2024, "neural graphs") and back.

Neurons are nodes, weights are edges:

- nodes: the network's input channels (bias feature 0), then the output channels of
  every dense / conv layer in computation order (bias feature = the layer's bias);
  each node keeps its layer index (0 = input), its index within the layer and its
  role (0 input, 1 hidden, 2 output) for positional embeddings.
- edges: one per (input channel, output channel) of every layer; a conv kernel's
  kh x kw values are zero-padded centrally to k_max x k_max and flattened into the
  edge feature, a dense weight sits at the centre (a 1x1 kernel). A dense layer after
  global pooling simply reads the last conv's channel nodes (the conv-to-dense
  transition). Residual links become extra edges carrying an identity kernel (type 1);
  `reverse=True` adds every weight edge backwards too (type 2).
- BatchNorm must be folded first (`wsl.weights.fold.fold_batchnorm`); `to_graph` does it.

The graph's structure (senders, receivers, node ids) depends on the spec only and is
computed once in numpy; its features are computed from the weights with jnp, so
`graph_features` can run under jit (e.g. after a random permutation augmentation).
`from_graph` inverts `to_graph` exactly (for a spec without BatchNorm).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import jraph
import numpy as np

from wsl.weights.convert import check_weights
from wsl.weights.fold import fold_batchnorm
from wsl.weights.spec import NetSpec

EDGE_WEIGHT, EDGE_RESIDUAL, EDGE_REVERSE = 0, 1, 2
ROLE_INPUT, ROLE_HIDDEN, ROLE_OUTPUT = 0, 1, 2


def _linear_layers(spec: NetSpec) -> list[int]:
    bad = [layer.name for layer in spec.layers if layer.kind not in ("dense", "conv")]
    if bad:
        raise ValueError(
            f"neural graphs need a network of dense/conv layers only; fold BatchNorm "
            f"first (fold_batchnorm) — these layers are not supported: {bad}"
        )
    for layer in spec.layers:
        if layer.in_spatial > 1:
            raise ValueError(
                f"layer {layer.name!r} reads a flattened conv output ({layer.in_spatial} "
                "positions); neural graphs support global pooling before the dense layers"
            )
    return list(range(len(spec.layers)))


@functools.lru_cache(maxsize=256)
def structure(spec: NetSpec, k_max: int | None = None, reverse: bool = False) -> dict:
    """Static graph structure of a spec (numpy arrays, cached per spec)."""
    _linear_layers(spec)
    k_max = k_max or max([max(layer.kernel_shape or (1,)) for layer in spec.layers])
    first = spec.layers[0]
    offsets = [0, first.in_features]  # node offset of the input, then of each layer
    for layer in spec.layers:
        offsets.append(offsets[-1] + layer.out_features)
    n_nodes = offsets[-1]
    layer_id = np.zeros(n_nodes, np.int32)
    index = np.zeros(n_nodes, np.int32)
    role = np.full(n_nodes, ROLE_HIDDEN, np.int32)
    index[: first.in_features] = np.arange(first.in_features)
    role[: first.in_features] = ROLE_INPUT
    for i, layer in enumerate(spec.layers):
        sl = slice(offsets[i + 1], offsets[i + 2])
        layer_id[sl] = i + 1
        index[sl] = np.arange(layer.out_features)
    role[offsets[-2] :] = ROLE_OUTPUT

    def node_offset(layer_index: int) -> int:  # nodes a layer's output lives on
        return offsets[layer_index + 1]

    senders, receivers, etype = [], [], []
    for i, layer in enumerate(spec.layers):
        s = node_offset(layer.src) + np.arange(layer.in_features)
        r = node_offset(i) + np.arange(layer.out_features)
        senders.append(np.repeat(s, layer.out_features))
        receivers.append(np.tile(r, layer.in_features))
        etype.append(np.full(layer.in_features * layer.out_features, EDGE_WEIGHT))
    for res in spec.residuals:
        n = spec.layers[res.src].out_features if res.src >= 0 else first.in_features
        senders.append(node_offset(res.src) + np.arange(n))
        receivers.append(node_offset(res.dst) + res.offset + np.arange(n))
        etype.append(np.full(n, EDGE_RESIDUAL))
    senders, receivers, etype = (
        np.concatenate(x).astype(np.int32) for x in (senders, receivers, etype)
    )
    n_weight = int(np.sum(etype == EDGE_WEIGHT))
    if reverse:
        fwd = etype == EDGE_WEIGHT
        senders, receivers = (
            np.concatenate([senders, receivers[fwd]]),
            np.concatenate([receivers, senders[fwd]]),
        )
        etype = np.concatenate([etype, np.full(n_weight, EDGE_REVERSE, np.int32)])
    return {
        "k_max": k_max,
        "offsets": tuple(offsets),
        "n_nodes": n_nodes,
        "layer": layer_id,
        "index": index,
        "role": role,
        "senders": senders,
        "receivers": receivers,
        "type": etype,
        "n_weight_edges": n_weight,
        "reverse": reverse,
    }


def _pad_kernel(kernel, k_max: int):
    """(kh, kw, in, out) or (in, out) -> (in * out, k_max**2), kernel centred."""
    if kernel.ndim == 2:
        kernel = kernel[None, None]
    kh, kw = kernel.shape[:2]
    if kh > k_max or kw > k_max:
        raise ValueError(f"kernel {kh}x{kw} is larger than k_max={k_max}")
    top, left = (k_max - kh) // 2, (k_max - kw) // 2
    k = jnp.pad(kernel, ((top, k_max - kh - top), (left, k_max - kw - left), (0, 0), (0, 0)))
    return jnp.transpose(k, (2, 3, 0, 1)).reshape(-1, k_max * k_max)


def graph_features(spec: NetSpec, weights, k_max: int | None = None, reverse: bool = False):
    """(node bias features (N, 1), edge features (E, k_max**2)) from canonical weights of
    a spec with dense/conv layers only. Traceable (jnp)."""
    st = structure(spec, k_max, reverse)
    k = st["k_max"]
    bias = [jnp.zeros((spec.layers[0].in_features,), jnp.float32)]
    edges = []
    for layer, arrays in zip(spec.layers, weights, strict=True):
        bias.append(arrays.get("bias", jnp.zeros((layer.out_features,), jnp.float32)))
        edges.append(_pad_kernel(jnp.asarray(arrays["kernel"], jnp.float32), k))
    centre = jnp.zeros((k * k,), jnp.float32).at[(k * k) // 2].set(1.0)
    for res in spec.residuals:
        n = spec.layers[res.src].out_features if res.src >= 0 else spec.layers[0].in_features
        edges.append(jnp.broadcast_to(centre, (n, k * k)))
    e = jnp.concatenate(edges)
    if reverse:
        e = jnp.concatenate([e, e[: st["n_weight_edges"]]])
    return jnp.concatenate(bias)[:, None], e


def to_graph(
    spec: NetSpec, weights, k_max: int | None = None, reverse: bool = False, fold: bool = True
) -> jraph.GraphsTuple:
    """A network as one jraph graph. nodes: {'bias', 'layer', 'index', 'role'};
    edges: {'weight', 'type'}. BatchNorm is folded first when `fold`."""
    check_weights(spec, weights)
    if fold and any(layer.kind == "norm" for layer in spec.layers):
        spec, weights = fold_batchnorm(spec, weights)
    st = structure(spec, k_max, reverse)
    bias, edge = graph_features(spec, weights, k_max, reverse)
    return jraph.GraphsTuple(
        nodes={
            "bias": bias,
            "layer": jnp.asarray(st["layer"]),
            "index": jnp.asarray(st["index"]),
            "role": jnp.asarray(st["role"]),
        },
        edges={"weight": edge, "type": jnp.asarray(st["type"])},
        senders=jnp.asarray(st["senders"]),
        receivers=jnp.asarray(st["receivers"]),
        n_node=jnp.asarray([st["n_nodes"]]),
        n_edge=jnp.asarray([len(st["senders"])]),
        globals=None,
    )


def from_graph(spec: NetSpec, graph: jraph.GraphsTuple) -> tuple:
    """Inverse of `to_graph` for a spec of dense/conv layers (no BatchNorm)."""
    k = int(round(graph.edges["weight"].shape[1] ** 0.5))
    st = structure(spec, k, bool(np.any(np.asarray(graph.edges["type"]) == EDGE_REVERSE)))
    bias = graph.nodes["bias"][:, 0]
    edges = graph.edges["weight"]
    out, e0 = [], 0
    offsets = st["offsets"]
    for i, layer in enumerate(spec.layers):
        n = layer.in_features * layer.out_features
        kh, kw = layer.kernel_shape or (1, 1)
        top, left = (k - kh) // 2, (k - kw) // 2
        block = edges[e0 : e0 + n].reshape(layer.in_features, layer.out_features, k, k)
        kern = jnp.transpose(block[:, :, top : top + kh, left : left + kw], (2, 3, 0, 1))
        arrays = {"kernel": kern if layer.kind == "conv" else kern[0, 0]}
        if "bias" in layer.shape_of:
            arrays["bias"] = bias[offsets[i + 1] : offsets[i + 2]]
        out.append(arrays)
        e0 += n
    return tuple(out)
