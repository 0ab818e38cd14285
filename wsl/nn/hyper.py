"""An INR that generates network weights from coordinates (NeuMeta, Yang & Wang, ECCV 2024;
full-network extension: HTTY, Sommariva et al. 2025).

One query per (layer, input channel, output channel) of every generated kernel and one per
output channel of every bias. Its raw coordinates are

    (layer index l, input index i, output index o, number of layers L, input size I,
     output size O)

(a bias has i = 0, I = 1), normalised as NeuMeta's reference code does:
(l / L, i / I, o / O, L / N, I / N, O / N) with a constant N (`norm`, 64). Training adds
uniform noise U(-s/2, s/2) to the raw coordinates (`noise` = s). The normalised vector goes
through Fourier features [x, sin(2^k pi x), cos(2^k pi x)], k < `num_freqs`, then a residual
MLP (Dense + ReLU, then `num_layers - 1` blocks h + a_j * ReLU(Dense(h)) with learnable
scalars a_j initialised to `scalar`), then one linear head per parameter kind:

    conv   k x k values: the kernel at every position (a smaller kernel takes the centre)
    dense  1 value
    bias   1 value

A kernel's values are divided by its input size I (its fan-in over channels; the reference
divides by the same), so that a layer's output keeps its scale when its width changes.

One INR, or one per block (HTTY's full-network setting): a `Plan` may assign every generated
layer to one of `num_inrs` INRs (`Plan.blocks`). Their parameters are stacked along a leading
axis (`init_params`), and `apply` runs them in one vmapped call per group of INRs with equally
many queries (no padding; ResNet56's 27 blocks form 5 groups), the outputs put back in the
flat query order.

`Plan` fixes which layers of a (largest) architecture are generated; a `Shape` (group sizes,
layer indices, number of layers: arrays, so a jitted function may sample them) picks one
configuration inside it. `generate` makes every weight of that configuration in one call of
the INR over all queries, as arrays of the largest shapes whose entries outside the
configuration are zero: a network run with them computes exactly what the smaller network
computes (a zero channel stays zero through ReLU and adds nothing downstream), so one
compiled function serves every width and depth. `crop` cuts them to the true shapes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wsl.weights.spec import NetSpec


def fourier_features(x: jax.Array, num_freqs: int) -> jax.Array:
    """[x, sin(2^k pi x), cos(2^k pi x) for k < num_freqs] along the last axis."""
    freqs = (2.0 ** jnp.arange(num_freqs)) * jnp.pi
    angles = (x[..., :, None] * freqs).reshape(*x.shape[:-1], -1)
    return jnp.concatenate([x, jnp.sin(angles), jnp.cos(angles)], axis=-1)


def gaussian_features(x: jax.Array, num: int, scale: float, seed: int = 0) -> jax.Array:
    """[x, sin(2 pi x B), cos(2 pi x B)] with a fixed B (d, num) ~ N(0, scale^2) drawn from
    `seed` (Tancik et al. 2020): every feature mixes all coordinates, so a table over
    (input, output channel) is fitted by far fewer steps than with per-axis features."""
    b = jax.random.normal(jax.random.key(seed), (x.shape[-1], num), jnp.float32) * scale
    angles = 2.0 * jnp.pi * (x @ b)
    return jnp.concatenate([x, jnp.sin(angles), jnp.cos(angles)], axis=-1)


class INR(nn.Module):
    """Fourier features -> residual MLP -> one head per parameter kind (module docstring).
    Input (..., 6) normalised coordinates; output {"conv": (..., k*k), "dense": (...,),
    "bias": (...,)}."""

    hidden: int = 256
    num_layers: int = 4
    num_freqs: int = 16
    kernel_size: int = 3
    scalar: float = 0.1
    # axis: NeuMeta's per-coordinate frequencies 2^k pi; gaussian: `gaussian_features` with
    # 6 * num_freqs random frequencies of std `gaussian_scale` (ours); gaussian_positions:
    # gaussian over (l/L, i/I, o/O), per-axis over the sizes (ours)
    encoding: str = "axis"
    gaussian_scale: float = 10.0
    # False (ours): the INR does not see the layer sizes (I / N, O / N set to 0), so every
    # width samples one function of (l / L, i / I, o / O) and a never-trained width is an
    # interpolation of the positions rather than an extrapolation of the sizes
    size_coords: bool = True

    @nn.compact
    def __call__(self, coords: jax.Array) -> dict[str, jax.Array]:
        if not self.size_coords:
            coords = coords.at[..., 4:].set(0.0)
        if self.encoding == "gaussian":
            feats = gaussian_features(
                coords, coords.shape[-1] * self.num_freqs, self.gaussian_scale
            )
        elif self.encoding == "gaussian_positions":  # the sizes (L, I, O) / N per axis
            pos = gaussian_features(coords[..., :3], 3 * self.num_freqs, self.gaussian_scale)
            feats = jnp.concatenate([pos, fourier_features(coords[..., 3:], self.num_freqs)], -1)
        elif self.encoding == "axis":
            feats = fourier_features(coords, self.num_freqs)
        else:
            raise ValueError(
                f"unknown INR encoding {self.encoding!r} (inr.encoding); choose axis, "
                "gaussian or gaussian_positions"
            )
        h = nn.relu(nn.Dense(self.hidden, name="input")(feats))
        for j in range(self.num_layers - 1):
            a = self.param(f"scalar{j}", nn.initializers.constant(self.scalar), ())
            h = h + a * nn.relu(nn.Dense(self.hidden, name=f"block{j}")(h))
        k2 = self.kernel_size**2
        return {
            "conv": nn.Dense(k2, name="head_conv")(h),
            "dense": nn.Dense(1, name="head_dense")(h)[..., 0],
            "bias": nn.Dense(1, name="head_bias")(h)[..., 0],
        }


# ----------------------------------------------------------------------------- plans


@dataclasses.dataclass(frozen=True)
class Plan:
    """The generated layers of an architecture family, described on its largest member's
    (BatchNorm-folded) spec: static and hashable. Per generated layer: its index in that
    spec, kind (conv | dense), kernel shape, input/output channel groups and largest
    sizes. `group_sizes` are the largest size of every group of the spec."""

    layers: tuple[int, ...]
    kinds: tuple[str, ...]
    kernel_shapes: tuple[tuple[int, ...], ...]
    in_groups: tuple[int, ...]
    out_groups: tuple[int, ...]
    max_in: tuple[int, ...]
    max_out: tuple[int, ...]
    has_bias: tuple[bool, ...]
    group_sizes: tuple[int, ...]
    num_layers: int  # layers of the largest network (the default L coordinate)
    blocks: tuple[int, ...] = ()  # the INR of every generated layer (empty: one unstacked INR)

    @property
    def num_inrs(self) -> int:
        return max(self.blocks) + 1 if self.blocks else 1

    @property
    def num_queries(self) -> int:
        return sum(
            i * o + (o if b else 0)
            for i, o, b in zip(self.max_in, self.max_out, self.has_bias, strict=True)
        )

    @property
    def num_generated(self) -> int:
        """Weights generated at the largest configuration."""
        return sum(
            int(np.prod(k)) * i * o + (o if b else 0)
            for k, i, o, b in zip(
                self.kernel_shapes, self.max_in, self.max_out, self.has_bias, strict=True
            )
        )


def make_plan(spec: NetSpec, layers: Sequence[int], blocks: Sequence[int] | None = None) -> Plan:
    """A Plan generating `layers` (indices into `spec`, dense or conv, channel groups
    known) of the largest network `spec`; `blocks` (one per layer, 0 .. n - 1, each used)
    gives each layer its own INR among n, with stacked parameters even for n = 1 (default:
    one INR for all, unstacked)."""
    chosen = [spec.layers[i] for i in layers]
    if blocks is not None:
        blocks = tuple(int(b) for b in blocks)
        if len(blocks) != len(layers) or sorted(set(blocks)) != list(range(max(blocks) + 1)):
            raise ValueError(f"blocks {blocks} must number the {len(layers)} layers 0 .. n - 1")
    for i, layer in zip(layers, chosen, strict=True):
        if layer.kind not in ("dense", "conv") or layer.in_group < 0 or layer.out_group < 0:
            raise ValueError(f"layer {i} ({layer.name!r}, {layer.kind}) cannot be generated")
        if layer.in_spatial != 1:
            raise ValueError(f"layer {i} ({layer.name!r}) reads a flattened activation")
    return Plan(
        layers=tuple(layers),
        kinds=tuple(layer.kind for layer in chosen),
        kernel_shapes=tuple(tuple(layer.kernel_shape) for layer in chosen),
        in_groups=tuple(layer.in_group for layer in chosen),
        out_groups=tuple(layer.out_group for layer in chosen),
        max_in=tuple(layer.in_features for layer in chosen),
        max_out=tuple(layer.out_features for layer in chosen),
        has_bias=tuple("bias" in layer.shape_of for layer in chosen),
        group_sizes=tuple(g.size for g in spec.groups),
        num_layers=len([layer for layer in spec.layers if layer.kind in ("dense", "conv")]),
        blocks=() if blocks is None else blocks,
    )


def first_inrs(plan: Plan, n: int) -> tuple[Plan, tuple[int, ...]]:
    """The part of a per-block plan that its INRs 0 .. n - 1 generate: (that Plan, whose
    INR parameters are the first n rows of the stacked ones, and the indices of its layers
    in `plan`). HTTY generates only the blocks added so far with it."""
    if not plan.blocks or not 1 <= n <= plan.num_inrs:
        raise ValueError(f"first_inrs needs a per-block plan and 1 <= n <= {plan.num_inrs}")
    js = tuple(j for j, b in enumerate(plan.blocks) if b < n)
    pick = lambda xs: tuple(xs[j] for j in js)  # noqa: E731
    fields = ("layers", "kinds", "kernel_shapes", "in_groups", "out_groups", "max_in", "max_out")
    fields += ("has_bias", "blocks")
    return dataclasses.replace(plan, **{f: pick(getattr(plan, f)) for f in fields}), js


@functools.lru_cache(maxsize=16)
def _queries(plan: Plan) -> dict[str, np.ndarray]:
    """Static query table: for each query its generated layer p, input and output index,
    and whether it is a bias. Kernels come first (i-major), then their bias, per layer."""
    p, i, o, bias = [], [], [], []
    for k, (n_in, n_out, b) in enumerate(
        zip(plan.max_in, plan.max_out, plan.has_bias, strict=True)
    ):
        ii, oo = np.meshgrid(np.arange(n_in), np.arange(n_out), indexing="ij")
        p.append(np.full(n_in * n_out, k))
        i.append(ii.ravel())
        o.append(oo.ravel())
        bias.append(np.zeros(n_in * n_out, bool))
        if b:
            p.append(np.full(n_out, k))
            i.append(np.zeros(n_out, np.int64))
            o.append(np.arange(n_out))
            bias.append(np.ones(n_out, bool))
    cat = lambda xs: np.concatenate(xs)  # noqa: E731
    return {
        "p": cat(p).astype(np.int32),
        "i": cat(i).astype(np.int32),
        "o": cat(o).astype(np.int32),
        "bias": cat(bias),
    }


@functools.lru_cache(maxsize=16)
def _groups(plan: Plan) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Static layout of the queries of a per-block plan: the INRs grouped by their number
    of queries, per group (its INR indices (n,), the query indices of each (n, count)).
    One vmapped call per group: no padding (ResNet56's 27 blocks form 5 groups)."""
    block = np.asarray(plan.blocks, np.int64)[_queries(plan)["p"]]
    members = [np.nonzero(block == b)[0] for b in range(plan.num_inrs)]
    by_count: dict[int, list[int]] = {}
    for b, m in enumerate(members):
        by_count.setdefault(len(m), []).append(b)
    return tuple(
        (np.asarray(bs, np.int32), np.stack([members[b] for b in bs]).astype(np.int32))
        for bs in by_count.values()
    )


def init_params(inr: INR, key: jax.Array, plan: Plan):
    """The INR's parameters for `plan`: one INR's, or for a per-block plan `plan.num_inrs`
    independently initialised INRs' stacked along a leading axis."""
    x = jnp.zeros((1, 6))
    if not plan.blocks:
        return inr.init(key, x)["params"]
    keys = jax.random.split(key, plan.num_inrs)
    return jax.vmap(lambda k: inr.init(k, x)["params"])(keys)


def apply(inr: INR, params, plan: Plan, x: jax.Array) -> dict[str, jax.Array]:
    """The INR outputs for the queries `x` (Q, 6) of `plan`: with several INRs, each query
    is answered by its layer's INR, one vmapped call per group of INRs with equally many
    queries (`_groups`), the outputs put back in query order."""
    if not plan.blocks:
        return inr.apply({"params": params}, x)
    groups = _groups(plan)
    outs = [_apply_group(inr, params, members, x[gather]) for members, gather in groups]
    back = jnp.asarray(np.argsort(np.concatenate([g.ravel() for _, g in groups])))
    return jax.tree.map(lambda *a: jnp.concatenate(a)[back], *outs)


def _apply_group(inr: INR, params, members, x: jax.Array) -> dict[str, jax.Array]:
    """The stacked INRs `members` (n,) on their queries `x` (n, count, 6), one vmapped
    call; outputs flattened to (n * count, ...) in that order."""
    p = jax.tree.map(lambda a: a[members], params)
    out = jax.vmap(lambda p, r: inr.apply({"params": p}, r))(p, x)
    return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), out)


def apply_sampled(inr: INR, params, plan: Plan, x: jax.Array, key: jax.Array, fraction: float):
    """The INR outputs for a random `fraction` of the queries `x` (Q, 6) of `plan`: with
    several INRs the same fraction of every INR's queries (the same positions for the INRs
    of a `_groups` group, redrawn per group). Returns (outputs with a leading axis S, their
    query indices (S,), each one's inverse sampling rate (S,)): the rate-weighted sum of a
    per-query quantity over the sample is an unbiased estimate of its sum over all queries
    (a stochastic reconstruction step costs `fraction` of a full one)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction {fraction} must be in (0, 1]")
    if not plan.blocks:
        count = x.shape[0]
        m = max(1, int(round(fraction * count)))
        q = jax.random.permutation(key, count)[:m]
        return inr.apply({"params": params}, x[q]), q, jnp.full((m,), count / m)
    outs, idx, inv = [], [], []
    for g, (members, gather) in enumerate(_groups(plan)):
        count = gather.shape[1]
        m = max(1, int(round(fraction * count)))
        cols = jax.random.permutation(jax.random.fold_in(key, g), count)[:m]
        q = jnp.asarray(gather)[:, cols]
        outs.append(_apply_group(inr, params, members, x[q]))
        idx.append(q.ravel())
        inv.append(jnp.full((q.size,), count / m))
    cat = lambda *a: jnp.concatenate(a)  # noqa: E731
    return jax.tree.map(cat, *outs), cat(*idx), cat(*inv)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Shape:
    """One configuration inside a Plan: `sizes` (num_groups,) the size of every channel
    group; `layer_ids` (num_generated_layers,) each generated layer's index coordinate, < 0
    for a layer absent from this configuration (its weights are zero); `num_layers` the
    L coordinate. Arrays: a jitted function may sample them."""

    sizes: jax.Array
    layer_ids: jax.Array
    num_layers: jax.Array


def full_shape(plan: Plan) -> Shape:
    """The largest configuration: every group at full size, layers at their spec index."""
    return shape_for(plan, plan.group_sizes)


def shape_for(plan: Plan, sizes, layer_ids=None, num_layers=None) -> Shape:
    """A Shape with these group sizes (and optionally layer indices / L)."""
    ids = plan.layers if layer_ids is None else layer_ids
    return Shape(
        jnp.asarray(sizes, jnp.int32),
        jnp.asarray(ids, jnp.int32),
        jnp.asarray(plan.num_layers if num_layers is None else num_layers, jnp.float32),
    )


def coordinates(
    plan: Plan, shape: Shape, key: jax.Array | None = None, noise: float = 0.0, norm: float = 64.0
):
    """(normalised coordinates (Q, 6), mask (Q,), input sizes (Q,)) of every query of
    `plan` in configuration `shape`; with `key` and `noise` > 0 the raw coordinates get
    U(-noise/2, noise/2) noise."""
    q = _queries(plan)
    p = jnp.asarray(q["p"])
    is_bias = jnp.asarray(q["bias"])
    sizes = shape.sizes.astype(jnp.float32)
    in_size = jnp.where(is_bias, 1.0, sizes[jnp.asarray(plan.in_groups)][p])
    out_size = sizes[jnp.asarray(plan.out_groups)][p]
    lid = shape.layer_ids[p].astype(jnp.float32)
    i = jnp.asarray(q["i"], jnp.float32)
    o = jnp.asarray(q["o"], jnp.float32)
    mask = (i < in_size) & (o < out_size) & (lid >= 0)
    raw = jnp.stack(
        [lid, i, o, jnp.broadcast_to(shape.num_layers, lid.shape), in_size, out_size], -1
    )
    if key is not None and noise > 0:
        raw = raw + (jax.random.uniform(key, raw.shape) - 0.5) * noise
    x = jnp.concatenate([raw[:, :3] / raw[:, 3:], raw[:, 3:] / norm], axis=-1)
    return x, mask, in_size


def _centre(values: jax.Array, kmax: int, kernel_shape: tuple[int, ...]) -> jax.Array:
    """(n, kmax*kmax) head outputs -> (n, kh, kw): the centre kh x kw window."""
    kh, kw = kernel_shape
    v = values.reshape(-1, kmax, kmax)
    top, left = (kmax - kh) // 2, (kmax - kw) // 2
    return v[:, top : top + kh, left : left + kw]


def assemble(plan: Plan, out: dict[str, jax.Array], mask, in_size, kernel_size: int = 3) -> tuple:
    """INR outputs for all queries -> one dict {kernel, bias} per generated layer, at the
    largest shapes (canonical layout), zero outside the configuration."""
    result, start = [], 0
    for k in range(len(plan.layers)):
        n_in, n_out = plan.max_in[k], plan.max_out[k]
        n = n_in * n_out
        sl = slice(start, start + n)
        scale = jnp.where(mask[sl], 1.0 / in_size[sl], 0.0)
        if plan.kinds[k] == "conv":
            v = _centre(out["conv"][sl], kernel_size, plan.kernel_shapes[k]) * scale[:, None, None]
            kernel = v.reshape(n_in, n_out, *plan.kernel_shapes[k]).transpose(2, 3, 0, 1)
        else:
            kernel = (out["dense"][sl] * scale).reshape(n_in, n_out)
        arrays = {"kernel": kernel}
        start += n
        if plan.has_bias[k]:
            sl = slice(start, start + n_out)
            arrays["bias"] = jnp.where(mask[sl], out["bias"][sl], 0.0)
            start += n_out
        result.append(arrays)
    return tuple(result)


def generate(
    inr: INR,
    params,
    plan: Plan,
    shape: Shape,
    key: jax.Array | None = None,
    noise: float = 0.0,
    norm: float = 64.0,
) -> tuple:
    """Every generated layer's weights for configuration `shape`, from one call of the INR
    over all queries (largest shapes, zero outside the configuration; see `crop`).
    Deterministic given `key` (no key: no coordinate noise)."""
    x, mask, in_size = coordinates(plan, shape, key, noise, norm)
    out = apply(inr, params, plan, x)
    return assemble(plan, out, mask, in_size, inr.kernel_size)


def generate_mean(
    inr: INR, params, plan: Plan, shape: Shape, key, k: int, noise: float, norm: float = 64.0
):
    """NeuMeta's evaluation: the average of `k` generations, the first without noise, the
    others with noisy coordinates (keys split from `key`); vmapped, one call."""
    keys = jax.random.split(key, k)
    x0, mask, in_size = coordinates(plan, shape, None, 0.0, norm)
    xs = jax.vmap(lambda kk: coordinates(plan, shape, kk, noise, norm)[0])(keys)
    xs = xs.at[0].set(x0)
    outs = jax.vmap(lambda x: apply(inr, params, plan, x))(xs)
    mean = jax.tree.map(lambda a: a.mean(0), outs)
    return assemble(plan, mean, mask, in_size, inr.kernel_size)


def crop(plan: Plan, arrays: tuple, sizes: Sequence[int]) -> tuple:
    """Generated arrays (largest shapes) -> the true shapes of the configuration whose
    group sizes are `sizes` (python ints): the leading channels of every group."""
    out = []
    for k, a in enumerate(arrays):
        n_in, n_out = int(sizes[plan.in_groups[k]]), int(sizes[plan.out_groups[k]])
        new = {"kernel": a["kernel"][..., :n_in, :n_out]}
        if "bias" in a:
            new["bias"] = a["bias"][:n_out]
        out.append(new)
    return tuple(out)


def num_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
