"""Pad and chunk (SNE, Andreis et al. 2024): a network's weights as a fixed-size set of
c-sized chunks, and back.

Layout (choices the paper leaves open are marked *):

1. Every layer of the spec (dense, conv, norm, layernorm and `other`) becomes a matrix
   with **one row per output neuron** (*):
   - dense: row j = [kernel[:, j], bias[j]]                            (out, in + 1)
   - conv:  row o = [kernel[:, :, 0, o].ravel(), ..., kernel[:, :, in-1, o].ravel(),
     bias[o]]: the kernel is flattened along its kernel dimensions (kh, kw) innermost,
     input channel next (torch's (out, in, kh, kw) order), bias last  (out, in*kh*kw + 1)
   - norm (BatchNorm): row f = [scale[f], bias[f], mean[f], var[f]]     (features, 4)
   - layernorm: row f = [scale[f], bias[f]]                             (features, 2)
   - other (e.g. attention projections, class token): one row, the arrays raveled in
     spec order (no neuron structure is assumed).
   Layers without a bias simply have no bias column (arrays in `layer.shapes` order).
   With this layout a hidden-neuron permutation moves *whole rows* of the layer that
   writes the channel (a neuron keeps its bias and its BatchNorm statistics) and moves
   contiguous column blocks (one conv kernel per input channel) of the layer that reads
   it, so the logit-invariance regulariser penalises a change of prediction under a
   transformation that is a structured re-arrangement of the chunk contents.
2. The matrix is raveled row-major and zero-padded at its end to a multiple of c (*:
   per layer, not per row: at most c - 1 padding entries per layer, so memory stays
   ~ the parameter count for any c; a chunk may hold the end of one neuron's row and the
   start of the next).
3. The layer is split into c-sized chunks; layers follow each other in spec
   (computation) order; the network is padded with empty chunks to `budget` chunks and
   to `max_layers` layer slots, so networks of different architectures stack into one
   batch with one compiled encoder.

`chunk` returns a dict of arrays (one network; `chunk_batch` vmaps it over networks of
one spec, `stack_chunks` stacks dicts of different specs):

| key          | shape            | meaning                                              |
|--------------|------------------|------------------------------------------------------|
| `values`     | (budget, c) f32  | chunk entries, 0 on padding                          |
| `mask`       | (budget, c) bool | entry is a real weight                               |
| `chunk_mask` | (budget,) bool   | chunk holds at least one real weight                 |
| `layer_type` | (budget,) i32    | `LAYER_TYPES[kind]`, 0 on padding chunks             |
| `layer_pos`  | (budget,) i32    | the layer's index in computation order, 0 on padding |
| `chunk_pos`  | (budget,) i32    | the chunk's index inside its layer, 0 on padding     |
| `layer_id`   | (budget,) i32    | layer slot for grouping (== layer_pos), -1 on padding|
| `layer_mask` | (max_layers,) bool | layer slot is used                                 |

`layer_pos` and `layer_id` coincide for chunks of one network; they are kept apart
because `layer_id` is a grouping index (padding = -1, never a valid slot) while
`layer_pos` is the number fed to a positional encoding.

Everything is a pure jnp function of (static spec, weights, c, budget, max_layers):
usable under jit/vmap. `unchunk` inverts `chunk` exactly (also with leading batch axes).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from wsl.weights.convert import check_weights
from wsl.weights.spec import Layer, NetSpec

LAYER_TYPES = {"dense": 1, "conv": 2, "norm": 3, "layernorm": 4, "other": 5}  # 0: padding
NUM_LAYER_TYPES = 6
KEYS = ("values", "mask", "chunk_mask", "layer_type", "layer_pos", "chunk_pos", "layer_id")


def _rows(layer: Layer) -> tuple[int, int]:
    """(rows, row length) of a layer's matrix."""
    shapes = layer.shape_of
    if layer.kind in ("dense", "conv"):
        k = shapes["kernel"]
        return k[-1], int(np.prod(k[:-1])) + ("bias" in shapes)
    if layer.kind in ("norm", "layernorm"):
        return layer.out_features, len(layer.shapes)
    return 1, layer.num_params


def layer_matrix(layer: Layer, arrays: dict) -> jax.Array:
    """One layer's canonical arrays -> its (rows, row length) matrix (module docstring)."""
    if layer.kind in ("dense", "conv"):
        k = jnp.asarray(arrays["kernel"])
        # (..., in, out) or (kh, kw, in, out) -> (out, in, kh, kw) -> (out, in * kh * kw)
        k = jnp.moveaxis(k, (-1, -2), (0, 1)).reshape(k.shape[-1], -1)
        cols = [k] + ([jnp.asarray(arrays["bias"])[:, None]] if "bias" in arrays else [])
        return jnp.concatenate(cols, axis=1)
    if layer.kind in ("norm", "layernorm"):
        return jnp.stack([jnp.asarray(arrays[role]) for role, _ in layer.shapes], axis=-1)
    return jnp.concatenate([jnp.ravel(jnp.asarray(arrays[role])) for role, _ in layer.shapes])[None]


def matrix_to_arrays(layer: Layer, m: jax.Array) -> dict:
    """Inverse of `layer_matrix`; `m` may have leading batch axes: (..., rows, len)."""
    lead = m.shape[:-2]
    shapes = layer.shape_of
    if layer.kind in ("dense", "conv"):
        k = shapes["kernel"]
        n_in = int(np.prod(k[:-1]))
        kern = m[..., :n_in].reshape(*lead, k[-1], k[-2], *k[:-2])  # (..., out, in, kh, kw)
        nd = len(lead)
        kern = jnp.moveaxis(kern, (nd, nd + 1), (-1, -2))
        out = {"kernel": kern}
        if "bias" in shapes:
            out["bias"] = m[..., n_in]
        return {role: out[role] for role, _ in layer.shapes}
    if layer.kind in ("norm", "layernorm"):
        return {role: m[..., i] for i, (role, _) in enumerate(layer.shapes)}
    flat, out, pos = m[..., 0, :], {}, 0
    for role, shape in layer.shapes:
        n = int(np.prod(shape))
        out[role] = flat[..., pos : pos + n].reshape(*lead, *shape)
        pos += n
    return out


@functools.lru_cache(maxsize=512)
def layout(spec: NetSpec, c: int) -> tuple[tuple[int, int, int], ...]:
    """Per layer: (real entries, chunks, first chunk index). Static, cached per spec."""
    out, start = [], 0
    for layer in spec.layers:
        r, n = _rows(layer)
        size = r * n
        k = -(-size // c)
        out.append((size, k, start))
        start += k
    return tuple(out)


def num_chunks(spec: NetSpec, c: int) -> int:
    """The smallest budget that holds this network."""
    return sum(k for _, k, _ in layout(spec, c))


def budget_for(specs: Sequence[NetSpec], c: int) -> tuple[int, int]:
    """(budget, max_layers) that hold every spec of a (mixed-architecture) data set."""
    return max(num_chunks(s, c) for s in specs), max(len(s.layers) for s in specs)


def max_layer_chunks(specs: Sequence[NetSpec], c: int) -> int:
    """The largest number of chunks of one layer: the exact attention `window` of the
    chunk-level SAB in `wsl.nn.sne` for these networks."""
    return max(k for s in specs for _, k, _ in layout(s, c))


@functools.lru_cache(maxsize=512)
def _metadata(spec: NetSpec, c: int, budget: int, max_layers: int) -> dict[str, np.ndarray]:
    lay = layout(spec, c)
    need = num_chunks(spec, c)
    if budget < need:
        raise ValueError(f"chunk budget {budget} is too small: this network needs {need} chunks")
    if max_layers < len(spec.layers):
        raise ValueError(f"max_layers {max_layers} < the network's {len(spec.layers)} layers")
    meta = {
        "mask": np.zeros((budget, c), bool),
        "layer_type": np.zeros(budget, np.int32),
        "layer_pos": np.zeros(budget, np.int32),
        "chunk_pos": np.zeros(budget, np.int32),
        "layer_id": np.full(budget, -1, np.int32),
        "layer_mask": np.arange(max_layers) < len(spec.layers),
    }
    for i, (layer, (size, k, start)) in enumerate(zip(spec.layers, lay, strict=True)):
        sl = slice(start, start + k)
        meta["mask"].reshape(-1)[start * c : start * c + size] = True
        meta["layer_type"][sl] = LAYER_TYPES[layer.kind]
        meta["layer_pos"][sl] = i
        meta["chunk_pos"][sl] = np.arange(k)
        meta["layer_id"][sl] = i
    meta["chunk_mask"] = meta["mask"].any(axis=1)
    return meta


def chunk(
    spec: NetSpec, weights, c: int, budget: int | None = None, max_layers: int | None = None
) -> dict[str, jax.Array]:
    """Canonical weights of one network -> chunk dict (module docstring). `budget`
    defaults to `num_chunks(spec, c)`, `max_layers` to the number of layers."""
    check_weights(spec, weights)
    budget = num_chunks(spec, c) if budget is None else budget
    max_layers = len(spec.layers) if max_layers is None else max_layers
    meta = _metadata(spec, c, budget, max_layers)
    parts = []
    for layer, arrays, (size, k, _) in zip(spec.layers, weights, layout(spec, c), strict=True):
        flat = layer_matrix(layer, arrays).reshape(-1).astype(jnp.float32)
        parts.append(jnp.pad(flat, (0, k * c - size)))
    flat = jnp.concatenate(parts)
    values = jnp.pad(flat, (0, budget * c - flat.shape[0])).reshape(budget, c)
    return {"values": values, **{k: jnp.asarray(v) for k, v in meta.items()}}


def chunk_batch(spec: NetSpec, weights, c: int, budget=None, max_layers=None) -> dict:
    """`chunk` over a batch of networks of one spec (every array with a leading axis)."""
    return jax.vmap(lambda w: chunk(spec, w, c, budget, max_layers))(weights)


def stack_chunks(dicts: Sequence[dict]) -> dict[str, jax.Array]:
    """Stack chunk dicts (of any architectures, made with one c, budget and max_layers)
    along a new leading axis; dicts that already have a batch axis are concatenated."""
    shapes = {(np.shape(d["values"])[-2:], np.shape(d["layer_mask"])[-1]) for d in dicts}
    if len(shapes) != 1:
        raise ValueError(
            f"chunk dicts differ in (budget, c) or max_layers: {sorted(shapes)}; chunk "
            "every network with the same c, budget and max_layers (see budget_for)"
        )
    batched = [
        d if np.ndim(d["values"]) == 3 else jax.tree.map(lambda x: x[None], d) for d in dicts
    ]
    return {k: jnp.concatenate([d[k] for d in batched]) for k in batched[0]}


def unchunk(spec: NetSpec, chunks, c: int) -> tuple:
    """Chunk dict (or its `values` array) -> canonical weights, exactly. Leading batch
    axes of `values` (..., budget, c) are kept on every array."""
    values = chunks["values"] if isinstance(chunks, dict) else chunks
    values = jnp.asarray(values)
    if values.shape[-1] != c or values.shape[-2] < num_chunks(spec, c):
        raise ValueError(
            f"values of shape {values.shape} do not hold this network with c={c} "
            f"({num_chunks(spec, c)} chunks needed)"
        )
    lead = values.shape[:-2]
    flat = values.reshape(*lead, -1)
    out = []
    for layer, (size, _, start) in zip(spec.layers, layout(spec, c), strict=True):
        r, n = _rows(layer)
        m = flat[..., start * c : start * c + size].reshape(*lead, r, n)
        out.append(matrix_to_arrays(layer, m))
    return tuple(out)
