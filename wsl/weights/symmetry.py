"""Weight-space symmetries: transformations of a network's weights that leave the
function it computes unchanged. They are the library's property tests and its
augmentations.

A transformation acts on every permutable channel space (a `Group` of the spec) by a
permutation `perm` and a per-channel scale `d`: new channel i = d[i] * old channel
perm[i]. Layers that *write* the channel space (a dense/conv layer's outputs, or the
BatchNorm after a conv, whose affine part then carries the scale) are permuted and
scaled; layers that *read* it (a kernel's input axis) are permuted and divided by d.
A conv whose output goes straight into a BatchNorm is only permuted (BatchNorm's eps
would make a scale inexact there). Zero-padded shortcuts tie a padded group to its
source (`Embed`): the source's channels keep their own transformation, the padding
channels permute among themselves.

Which scalings are exact comes from the spec (`Group.scaling`): 'positive' (ReLU,
max-pooling: d > 0), 'sign' (tanh, sin: d = +-1), 'any' (linear), 'none'.

All functions are pure and traceable: `spec` is static, keys are jax PRNG keys, and the
arrays may be numpy or jax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from wsl.weights.convert import check_weights
from wsl.weights.spec import NetSpec


def _require_groups(spec: NetSpec) -> None:
    if not spec.has_symmetry:
        raise ValueError(
            "this spec has no symmetry information (it was read from a state dict or a "
            "layout.csv); derive it with spec_from_flax(module, variables, x) and convert "
            "the weights with torch_to_canonical(state_dict, spec) or transfer(...)"
        )


def _topological(spec: NetSpec) -> list[int]:
    """Group ids with every embedding's source before its destination."""
    dst_of = {e.dst: e for e in spec.embeds}
    order, seen = [], set()

    def visit(g):
        if g in seen:
            return
        if g in dst_of:
            visit(dst_of[g].src)
        seen.add(g)
        order.append(g)

    for g in range(len(spec.groups)):
        visit(g)
    return order


def random_transform(
    spec: NetSpec,
    key: jax.Array,
    permute: bool = True,
    scale: str | None = None,
    low: float = 0.5,
    high: float = 2.0,
) -> tuple[tuple[jax.Array, jax.Array] | None, ...]:
    """Sample one (perm, d) per group; None for groups that are not permutable.

    `scale`: None (d = 1), 'positive' (d ~ logU(low, high), where the group allows it),
    'sign' (d = +-1 where the group allows it) or 'max' (the largest class each group
    allows: 'positive' for ReLU groups, 'sign' for odd ones, both for linear ones).
    """
    _require_groups(spec)
    out: list = [None] * len(spec.groups)
    dst_of = {e.dst: e for e in spec.embeds}
    keys = jax.random.split(key, len(spec.groups))
    for g in _topological(spec):
        group = spec.groups[g]
        if not group.permutable:
            continue
        kp, kd, ks = jax.random.split(keys[g], 3)
        n = group.size
        perm = jax.random.permutation(kp, n) if permute else jnp.arange(n)
        d = _sample_scale(group.scaling, scale, kd, ks, n, low, high)
        e = dst_of.get(g)
        if e is not None and out[e.src] is not None:
            src_perm, src_d = out[e.src]
            m = spec.groups[e.src].size
            mid = jnp.arange(e.offset, e.offset + m)
            pads = jnp.concatenate([jnp.arange(e.offset), jnp.arange(e.offset + m, n)])
            pad_perm = pads[jax.random.permutation(kp, pads.shape[0])] if permute else pads
            perm = jnp.zeros(n, jnp.int32).at[pads].set(pad_perm).at[mid].set(e.offset + src_perm)
            d = d.at[mid].set(src_d)
        out[g] = (perm.astype(jnp.int32), d)
    return tuple(out)


def _sample_scale(allowed: str, want: str | None, kd, ks, n: int, low: float, high: float):
    ones = jnp.ones(n, jnp.float32)
    if want is None or allowed == "none":
        return ones
    kinds = {"positive": ("positive",), "sign": ("sign",), "max": ("positive", "sign")}
    if want not in kinds:
        raise ValueError(f"unknown scale {want!r}; choose None, 'positive', 'sign' or 'max'")
    d = ones
    if "positive" in kinds[want] and allowed in ("positive", "any"):
        d = d * jnp.exp(jax.random.uniform(kd, (n,), minval=jnp.log(low), maxval=jnp.log(high)))
    if "sign" in kinds[want] and allowed in ("sign", "any"):
        d = d * jnp.where(jax.random.bernoulli(ks, 0.5, (n,)), -1.0, 1.0)
    return d


def _writers(spec: NetSpec) -> set[int]:
    """Layers whose outputs carry a group's scale: every dense/conv/norm layer except a
    dense/conv that feeds a BatchNorm (the BatchNorm carries it)."""
    fed_norm = {layer.src for layer in spec.layers if layer.kind == "norm"}
    return {
        i
        for i, layer in enumerate(spec.layers)
        if layer.kind in ("dense", "conv", "norm", "layernorm") and i not in fed_norm
    }


def apply_transform(spec: NetSpec, weights, transform) -> tuple:
    """Apply per-group (perm, d) from `random_transform` to canonical weights."""
    _require_groups(spec)
    check_weights(spec, weights)
    writers = _writers(spec)
    out = []
    for i, (layer, arrays) in enumerate(zip(spec.layers, weights, strict=True)):
        new = dict(arrays)
        t_out = transform[layer.out_group] if layer.out_group >= 0 else None
        t_in = transform[layer.in_group] if layer.in_group >= 0 else None
        if layer.kind in ("dense", "conv"):
            k = new["kernel"]
            if t_in is not None:
                perm, d = t_in
                if layer.in_spatial > 1:  # (spatial * channels) in-axis, channel innermost
                    s = layer.in_spatial
                    k = k.reshape(s, -1, k.shape[-1])
                    k = jnp.take(k, perm, axis=1) / d[None, :, None]
                    k = k.reshape(-1, k.shape[-1])
                else:
                    ax = k.ndim - 2
                    shape = [1] * k.ndim
                    shape[ax] = -1
                    k = jnp.take(k, perm, axis=ax) / d.reshape(shape)
            if t_out is not None:
                perm, d = t_out
                k = jnp.take(k, perm, axis=-1)
                if i in writers:
                    k = k * d
            new["kernel"] = k
            if "bias" in new and t_out is not None:
                perm, d = t_out
                b = jnp.take(new["bias"], perm, axis=-1)
                new["bias"] = b * d if i in writers else b
        elif layer.kind in ("norm", "layernorm") and t_out is not None:
            perm, d = t_out
            for role in new:
                new[role] = jnp.take(new[role], perm, axis=-1)
                if role in ("scale", "bias") and i in writers:
                    new[role] = new[role] * d
        out.append(new)
    return tuple(out)


def permute(spec: NetSpec, weights, key: jax.Array) -> tuple:
    """A random hidden-neuron permutation of every permutable channel space."""
    return apply_transform(spec, weights, random_transform(spec, key))


def rescale(spec: NetSpec, weights, key: jax.Array, low: float = 0.5, high: float = 2.0):
    """Random positive per-channel rescaling where the activations allow it (ReLU)."""
    t = random_transform(spec, key, permute=False, scale="positive", low=low, high=high)
    return apply_transform(spec, weights, t)


def sign_flip(spec: NetSpec, weights, key: jax.Array) -> tuple:
    """Random per-channel sign flips where the activations are odd (tanh, sin)."""
    return apply_transform(spec, weights, random_transform(spec, key, permute=False, scale="sign"))


def random_symmetry(spec: NetSpec, weights, key: jax.Array) -> tuple:
    """Permutation plus every scaling the spec allows: the full augmentation."""
    return apply_transform(spec, weights, random_transform(spec, key, scale="max"))


# --------------------------------------------------------------------------------------
# Permutation smoothing (NeuMeta, Yang & Wang 2024): order each channel space so that
# neighbouring channels carry similar weights, without changing the function.
# --------------------------------------------------------------------------------------


def channel_features(spec: NetSpec, weights, group: int):
    """(n, f) numpy array: every weight that touches channel c of `group`, one row per
    channel: the rows (output side) of the layers that write the group, the columns
    (input side) of the layers that read it, biases and norm statistics. Each array's
    block is divided by its RMS so that every layer weighs the same."""
    blocks = []
    for layer, arrays in zip(spec.layers, weights, strict=True):
        for role, x in arrays.items():
            x = np.asarray(x, np.float64)
            if layer.kind not in ("dense", "conv", "norm", "layernorm"):
                continue
            rows = []
            if layer.out_group == group:
                rows.append(np.moveaxis(x, -1, 0).reshape(x.shape[-1], -1))
            if role == "kernel" and layer.in_group == group:
                if layer.in_spatial > 1:
                    k = x.reshape(layer.in_spatial, -1, x.shape[-1])
                    rows.append(np.moveaxis(k, 1, 0).reshape(k.shape[1], -1))
                else:
                    rows.append(np.moveaxis(x, x.ndim - 2, 0).reshape(x.shape[-2], -1))
            for r in rows:
                blocks.append(r / (np.sqrt(np.mean(r**2)) + 1e-12))
    size = spec.groups[group].size
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((size, 0))


def _distances(feats):
    sq = np.sum(feats**2, axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * feats @ feats.T
    return np.sqrt(np.maximum(d2, 0.0))


def path_length(dist, order) -> float:
    """Length of the open path visiting `order` under distance matrix `dist`."""
    order = np.asarray(order)
    return float(np.sum(dist[order[:-1], order[1:]])) if len(order) > 1 else 0.0


def shortest_path(dist, max_iter: int = 10_000):
    """A short open Hamiltonian path through all nodes of symmetric `dist` (n, n):
    nearest neighbour from every start node (the best kept), then 2-opt (the best
    segment reversal, repeated until none shortens the path). Deterministic. Returns the
    node order as an int array."""
    dist = np.asarray(dist, np.float64)
    n = dist.shape[0]
    if n <= 2:
        return np.arange(n)
    best, best_len = None, np.inf
    for start in range(n):
        seen = np.zeros(n, bool)
        order = [start]
        seen[start] = True
        for _ in range(n - 1):
            d = np.where(seen, np.inf, dist[order[-1]])
            nxt = int(np.argmin(d))
            order.append(nxt)
            seen[nxt] = True
        length = path_length(dist, order)
        if length < best_len - 1e-12:
            best, best_len = np.asarray(order), length
    # 2-opt on the open path: a dummy node at distance 0 from all closes it into a cycle
    d = np.zeros((n + 1, n + 1))
    d[:n, :n] = dist
    p = np.concatenate([[n], best, [n]])
    i, j = np.triu_indices(n + 1, 1)  # reverse p[i..j] for 1 <= i < j <= n
    keep = i >= 1
    i, j = i[keep], j[keep]
    for _ in range(max_iter):
        a, b, c, e = p[i - 1], p[i], p[j], p[j + 1]
        delta = d[a, c] + d[b, e] - d[a, b] - d[c, e]
        k = int(np.argmin(delta))
        if delta[k] >= -1e-10:
            break
        p[i[k] : j[k] + 1] = p[i[k] : j[k] + 1][::-1].copy()
    return p[1:-1].astype(np.int64)


def smoothing_transform(spec: NetSpec, weights) -> tuple:
    """Per-group (perm, d = 1) for `apply_transform` that orders every permutable
    channel space along a short Hamiltonian path of its channels' weights
    (`channel_features`, Euclidean distance, `shortest_path`): total variation between
    neighbouring channels goes down, the function does not change. Non-permutable groups
    (the network's input and output channels) are left alone (None). A group that a
    zero-padded shortcut embeds another into (`Embed`) keeps the source's order on the
    embedded channels and orders only its padding channels."""
    _require_groups(spec)
    check_weights(spec, weights)
    out: list = [None] * len(spec.groups)
    dst_of = {e.dst: e for e in spec.embeds}
    for g in _topological(spec):
        group = spec.groups[g]
        if not group.permutable:
            continue
        n = group.size
        feats = channel_features(spec, weights, g)
        e = dst_of.get(g)
        if e is not None and out[e.src] is not None:
            m = spec.groups[e.src].size
            src_perm = np.asarray(out[e.src][0])
            pads = np.concatenate([np.arange(e.offset), np.arange(e.offset + m, n)])
            order = pads[shortest_path(_distances(feats[pads]))] if len(pads) else pads
            perm = np.zeros(n, np.int64)
            perm[pads] = order
            perm[e.offset : e.offset + m] = e.offset + src_perm
        else:
            perm = shortest_path(_distances(feats))
        out[g] = (jnp.asarray(perm, jnp.int32), jnp.ones(n, jnp.float32))
    return tuple(out)


def smooth(spec: NetSpec, weights) -> tuple:
    """Permutation smoothing: `apply_transform(spec, weights, smoothing_transform(...))`."""
    return apply_transform(spec, weights, smoothing_transform(spec, weights))


def total_variation(spec: NetSpec, weights) -> float:
    """Sum over permutable groups of the distances between neighbouring channels'
    features (`channel_features`): what `smooth` lowers."""
    total = 0.0
    for g, group in enumerate(spec.groups):
        if group.permutable:
            total += path_length(
                _distances(channel_features(spec, weights, g)), np.arange(group.size)
            )
    return total
