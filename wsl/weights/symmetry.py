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
