"""Set Transformer blocks (Lee et al. 2019): MAB, SAB, ISAB and PMA, with masks and
*segments*, as pure flax.linen modules.

Sets are padded to fixed sizes. Instead of a boolean mask, every element carries a
segment id (`seg`, int): elements with the same id >= 0 form one set, -1 marks padding.
A plain masked set is `seg = where(mask, 0, -1)` (boolean masks are accepted and
converted this way). Segments let one call process many sets at once, e.g. the chunks
of every layer of a network (SNE), without padding every set to the largest one.

Attention patterns (all exact, masked keys get weight 0, padded queries output 0):

- `masked_attention`: query i attends key j iff seg_q[i] == seg_k[j] >= 0. Queries are
  processed in blocks of `block` (lax.map + remat) so memory is O(block * N_k), not
  O(N_q * N_k) -- forward and backward. With `window` (segments are contiguous runs of
  at most `window` elements, as the chunks of a layer are), a query block only reads
  the keys within reach: compute O(N * (block + 2 window)) instead of O(N^2).
- `segment_attention`: the segments are static (start, size) runs, the same for every
  set (e.g. the layers of one architecture's chunks): each segment's dense attention,
  no masks; segments of equal size in one batched call. Compute and memory O(sum of
  size^2): SNE's training step on a Small CNN Zoo is ~2x faster than with
  `masked_attention` (results/bench_sne_step.json).
- `pool_attention`: per-segment queries (S, k) attend the keys of their segment:
  a segment softmax (jax.ops.segment_*), memory O(N_k * k).
- `gather_attention`: query i attends the m keys of segment seg_q[i]: (S, m) keys.

MAB follows the Set Transformer reference code: H = Q' + Attention(Q', K', V') with Q'
the projected query (so input and model widths may differ), O = H + relu(Dense(H)),
with optional LayerNorm after each residual (on by default here; off in Lee et al.'s
code, on in their paper's equations).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

NEG = -1e30


def as_seg(mask_or_seg: jax.Array) -> jax.Array:
    """Boolean mask -> segment ids (0 real, -1 padding); int ids are returned as they are."""
    x = jnp.asarray(mask_or_seg)
    return jnp.where(x, 0, -1).astype(jnp.int32) if x.dtype == jnp.bool_ else x


def _batched(fn, lead: int):
    """vmap `fn` over `lead` leading axes of every argument."""
    for _ in range(lead):
        fn = jax.vmap(fn)
    return fn


def _softmax_apply(s, m, v):
    """Masked softmax of scores s (..., q, k) (heads leading), applied to v (k, H, D)."""
    s = jnp.where(m, s, NEG)
    p = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True)) * m
    den = jnp.sum(p, axis=-1, keepdims=True)
    return p / jnp.where(den > 0, den, 1.0)


def _in_blocks(core, q, q_seg, block: int | None):
    """core(q_block, q_seg_block, start) over blocks of `block` queries (lax.map, each
    block rematerialised in the backward pass); core(q, q_seg, None) without blocks."""
    n = q.shape[0]
    if block is None or n <= block:
        return core(q, q_seg, None)
    nb = -(-n // block)
    pad = nb * block - n
    qb = jnp.pad(q, ((0, pad), (0, 0), (0, 0))).reshape(nb, block, *q.shape[1:])
    sb = jnp.pad(q_seg, (0, pad), constant_values=-1).reshape(nb, block)
    starts = jnp.arange(nb) * block
    out = jax.lax.map(jax.checkpoint(lambda a: core(*a)), (qb, sb, starts))
    return out.reshape(nb * block, *q.shape[1:])[:n]


def segments_fit(seg: jax.Array, window: int) -> jax.Array:
    """True iff every segment (id >= 0) is one contiguous run of at most `window`
    elements (what `masked_attention(..., window=window)` needs to be exact)."""
    valid = seg >= 0
    counts = jax.ops.segment_sum(valid.astype(jnp.int32), jnp.where(valid, seg, -1), seg.shape[0])
    starts = valid & (seg != jnp.concatenate([jnp.full((1,), -2, seg.dtype), seg[:-1]]))
    return (jnp.max(counts) <= window) & (jnp.sum(starts) == jnp.sum(counts > 0))


def masked_attention(q, k, v, q_seg, k_seg, block: int | None = None, window: int | None = None):
    """q (Nq, H, D), k/v (Nk, H, D), q_seg (Nq,), k_seg (Nk,) -> (Nq, H, D).

    `window` (self-attention only: queries and keys are the same elements, in the same
    order): every segment is a contiguous run of at most `window` elements, so a block
    of queries only needs the keys within `window - 1` of it: compute O(N * (block +
    2 window)) instead of O(N^2). If the segments do not fit, the output is NaN (loud,
    never silently wrong)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    n, halo = k.shape[0], 0 if window is None else window - 1
    if window is not None and block is not None and block + 2 * halo >= n:
        block = None  # a block would read every key: one unblocked pass computes less

    def core(q, q_seg, start):
        kk, vv, ks = k, v, k_seg
        if window is not None and start is not None:
            # keys [start - halo, start + block + halo) clipped to [0, n): a slice of
            # `size` < n keys that covers them
            size = q.shape[0] + 2 * halo
            lo = jnp.clip(start - halo, 0, n - size)
            kk = jax.lax.dynamic_slice_in_dim(k, lo, size)
            vv = jax.lax.dynamic_slice_in_dim(v, lo, size)
            ks = jax.lax.dynamic_slice_in_dim(k_seg, lo, size)
        s = jnp.einsum("qhd,khd->hqk", q, kk) * scale
        m = (q_seg[:, None] == ks[None, :]) & (ks[None, :] >= 0)
        p = _softmax_apply(s, m[None], vv)
        return jnp.einsum("hqk,khd->qhd", p, vv)

    out = _in_blocks(core, q, q_seg, block)
    if window is not None and block is not None and q.shape[0] > block:
        out = jnp.where(segments_fit(k_seg, window), out, jnp.nan)
    return out


def segment_attention(q, k, v, seg, segments):
    """q/k/v (N, H, D): element i attends the elements of its segment, given statically as
    `segments` ((start, size), ...) (disjoint, in order) -> (N, H, D), 0 outside every
    segment. `seg` (N,) must be the segment ids these runs mean (run j has id j, -1 outside):
    otherwise the output is NaN (loud, never silently wrong)."""
    ends = [0] + [start + size for start, size in segments]
    if any(size < 1 or start < end for (start, size), end in zip(segments, ends, strict=False)):
        raise ValueError(f"segments {segments} must be disjoint (start, size > 0) runs in order")
    if ends[-1] > q.shape[0]:
        raise ValueError(f"segments {segments} run past the {q.shape[0]} elements")
    scale = 1.0 / math.sqrt(q.shape[-1])
    groups: dict[int, list[int]] = {}
    for start, size in segments:
        groups.setdefault(size, []).append(start)
    pieces = {}
    for size, starts in groups.items():  # one batched attention per segment size
        stack = lambda t: jnp.stack([t[s : s + size] for s in starts])  # noqa: B023
        s = jnp.einsum("gqhd,gkhd->ghqk", stack(q), stack(k)) * scale
        o = jnp.einsum("ghqk,gkhd->gqhd", jax.nn.softmax(s, axis=-1), stack(v))
        pieces |= {start: o[j] for j, start in enumerate(starts)}
    out, pos = [], 0
    for start in sorted(pieces):
        out += [jnp.zeros((start - pos, *q.shape[1:]), q.dtype), pieces[start]]
        pos = start + pieces[start].shape[0]
    out = jnp.concatenate([*out, jnp.zeros((q.shape[0] - pos, *q.shape[1:]), q.dtype)])
    expected = [-1] * q.shape[0]
    for j, (start, size) in enumerate(segments):
        expected[start : start + size] = [j] * size
    return jnp.where(jnp.all(seg == jnp.asarray(expected, seg.dtype)), out, jnp.nan)


def pool_attention(q, k, v, k_seg):
    """Per-segment queries q (S, kq, H, D) attend the keys of their segment:
    k/v (Nk, H, D), k_seg (Nk,) in [-1, S) -> (S, kq, H, D) (0 for empty segments)."""
    n_seg = q.shape[0]
    valid = k_seg >= 0
    seg = jnp.where(valid, k_seg, n_seg)  # out of range: dropped by the segment ops
    qk = q[jnp.clip(k_seg, 0, n_seg - 1)]  # (Nk, kq, H, D): each key's segment queries
    s = jnp.einsum("nihd,nhd->nih", qk, k) / math.sqrt(q.shape[-1])
    mx = jax.ops.segment_max(jnp.where(valid[:, None, None], s, NEG), seg, n_seg + 1)
    vm = valid[:, None, None]  # padding keys: exp(0) then 0 (not exp(s - NEG) * 0 = nan,
    p = jnp.where(vm, jnp.exp(jnp.where(vm, s - mx[seg], 0.0)), 0.0)  # whose gradient is nan)
    den = jax.ops.segment_sum(p, seg, n_seg + 1)[:n_seg]
    num = jax.ops.segment_sum(p[..., None] * v[:, None], seg, n_seg + 1)[:n_seg]
    return num / jnp.where(den > 0, den, 1.0)[..., None]


def gather_attention(q, k, v, q_seg, block: int | None = None):
    """q (Nq, H, D) attends the m keys of its segment: k/v (S, m, H, D), q_seg (Nq,)
    -> (Nq, H, D), 0 where q_seg < 0."""
    scale = 1.0 / math.sqrt(q.shape[-1])

    def core(q, q_seg, _):
        idx = jnp.clip(q_seg, 0, k.shape[0] - 1)
        s = jnp.einsum("qhd,qmhd->qhm", q, k[idx]) * scale
        p = jax.nn.softmax(s, axis=-1)
        return jnp.einsum("qhm,qmhd->qhd", p, v[idx]) * (q_seg >= 0)[:, None, None]

    return _in_blocks(core, q, q_seg, block)


class MAB(nn.Module):
    """Multihead attention block MAB(X, Y) with a segment pattern (module docstring).

    pattern 'mask':   x (..., Nq, d), y (..., Nk, d), x_seg (..., Nq), y_seg (..., Nk)
    pattern 'pool':   x (..., S, kq, d) per-segment queries, y (..., Nk, d),
                      x_seg (..., S) (-1: unused segment), y_seg (..., Nk)
    pattern 'gather': x (..., Nq, d), y (..., S, m, d), x_seg (..., Nq), y_seg unused
    Outputs have x's shape with width `dim`; rows with x_seg < 0 are 0.
    """

    dim: int
    heads: int = 4
    layer_norm: bool = True
    block: int | None = None
    window: int | None = None  # 'mask' self-attention only, see masked_attention
    # 'mask' self-attention only: static segments ((start, size), ...), see segment_attention
    segments: tuple | None = None

    @nn.compact
    def __call__(self, x, y, x_seg, y_seg=None, pattern: str = "mask"):
        if self.dim % self.heads:
            raise ValueError(f"MAB dim {self.dim} is not divisible by heads {self.heads}")
        x_seg = as_seg(x_seg)
        y_seg = as_seg(y_seg) if y_seg is not None else None
        h, dh = self.heads, self.dim // self.heads
        q = nn.Dense(self.dim, name="q")(x)
        k = nn.Dense(self.dim, name="k")(y)
        v = nn.Dense(self.dim, name="v")(y)
        split = lambda t: t.reshape(*t.shape[:-1], h, dh)
        lead = x_seg.ndim - 1
        if pattern == "mask" and self.segments is not None:
            fn = lambda q, k, v, qs: segment_attention(q, k, v, qs, self.segments)
            o = _batched(fn, lead)(split(q), split(k), split(v), x_seg)
        elif pattern == "mask":
            fn = lambda q, k, v, qs, ks: masked_attention(q, k, v, qs, ks, self.block, self.window)
            o = _batched(fn, lead)(split(q), split(k), split(v), x_seg, y_seg)
        elif pattern == "pool":
            o = _batched(pool_attention, lead)(split(q), split(k), split(v), y_seg)
        elif pattern == "gather":
            fn = lambda q, k, v, qs: gather_attention(q, k, v, qs, self.block)
            o = _batched(fn, lead)(split(q), split(k), split(v), x_seg)
        else:
            raise ValueError(f"unknown attention pattern {pattern!r}: mask, pool or gather")
        o = q + o.reshape(q.shape)
        if self.layer_norm:
            o = nn.LayerNorm(name="ln0")(o)
        o = o + nn.relu(nn.Dense(self.dim, name="ff")(o))
        if self.layer_norm:
            o = nn.LayerNorm(name="ln1")(o)
        keep = (x_seg >= 0).reshape(*x_seg.shape, *([1] * (o.ndim - x_seg.ndim)))
        return o * keep


class SAB(nn.Module):
    """Set attention block SAB(X) = MAB(X, X): self-attention inside each segment.
    `block`/`window`: see `masked_attention` (memory and compute bounds, exact);
    `segments`: static segments, see `segment_attention`."""

    dim: int
    heads: int = 4
    layer_norm: bool = True
    block: int | None = None
    window: int | None = None
    segments: tuple | None = None

    @nn.compact
    def __call__(self, x, seg):
        mab = MAB(
            self.dim,
            self.heads,
            self.layer_norm,
            self.block,
            self.window,
            self.segments,
            name="mab",
        )
        return mab(x, x, seg, seg)


class ISAB(nn.Module):
    """Induced set attention block: H = MAB(I, X) per segment (m learned inducing
    points), then MAB(X, H). Linear in the set size. `num_segments` (static) bounds the
    segment ids."""

    dim: int
    num_inducing: int = 16
    heads: int = 4
    layer_norm: bool = True
    block: int | None = None

    @nn.compact
    def __call__(self, x, seg, num_segments: int = 1):
        seg = as_seg(seg)
        ind = self.param(
            "inducing", nn.initializers.xavier_uniform(), (self.num_inducing, self.dim)
        )
        lead = seg.shape[:-1]
        ind = jnp.broadcast_to(ind, (*lead, num_segments, self.num_inducing, self.dim))
        used = jnp.broadcast_to(jnp.arange(num_segments), (*lead, num_segments))
        kw = dict(dim=self.dim, heads=self.heads, layer_norm=self.layer_norm, block=self.block)
        hid = MAB(**kw, name="mab0")(ind, x, used, seg, pattern="pool")
        return MAB(**kw, name="mab1")(x, hid, seg, pattern="gather")


class PMA(nn.Module):
    """Pooling by multihead attention: k learned seeds attend each segment's elements
    (after a row-wise rFF, as in Lee et al.). x (..., N, d), seg (..., N) ->
    (..., num_segments, k, dim); rows of segments with `seg_mask` False are 0."""

    dim: int
    num_seeds: int = 1
    heads: int = 4
    layer_norm: bool = True

    @nn.compact
    def __call__(self, x, seg, num_segments: int = 1, seg_mask=None):
        seg = as_seg(seg)
        seeds = self.param("seeds", nn.initializers.xavier_uniform(), (self.num_seeds, self.dim))
        lead = seg.shape[:-1]
        seeds = jnp.broadcast_to(seeds, (*lead, num_segments, self.num_seeds, self.dim))
        used = jnp.arange(num_segments)
        if seg_mask is not None:
            used = jnp.where(seg_mask, used, -1)
        used = jnp.broadcast_to(used, (*lead, num_segments))
        x = nn.relu(nn.Dense(self.dim, name="rff")(x))
        return MAB(self.dim, self.heads, self.layer_norm, name="mab")(
            seeds, x, used, seg, pattern="pool"
        )
