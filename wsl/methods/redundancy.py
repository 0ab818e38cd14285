"""Redundant blocks: Block Redundancy (BR) and Redundant Blocks Approximation (RBA).

Cannistraci, Rodolà, Rieck, *Detecting and Approximating Redundant Computational Blocks in
Neural Networks* (arXiv 2410.04941). A network built from a sequence of blocks (ResNet
stages' blocks, ViT encoder blocks) is probed on a few hundred inputs; blocks whose output
barely differs from their input are *redundant*; a span of blocks i..j-1 is replaced by one
linear map T fitted in closed form from the span's input to its output.

Blocks are found and replaced **without editing the model's code**: a Flax method
interceptor (`flax.linen.intercept_methods`) sees every submodule call; the blocks are the
submodules whose '/'-joined path fully matches a regular expression (default
`layer\\d+_\\d+|block\\d+`: `subjects.ResNet` and `subjects.ViT`), in call order. Capturing
records each block's input and output; replacing makes the blocks of a span return their
input unchanged (not computing them) and the last one return T(its input). The blocks must
be consecutive (block b's input is block b-1's output; checked on every capture).

Definitions (representations are per sample, shape (*S, C): spatial positions or tokens S,
channels C):

- `adapt(h, shape)`, the **identity across a span**: subsample the spatial axes by their
  integer ratio (`h[:, ::s]`) and zero-pad channels half before, half after, which is
  akamaster's option-A shortcut; the identity when shapes agree.
- **Block Redundancy** of block b with input h_{b-1} and output h_b over the samples D:
  `BR(b) = -E_D ||h_b - adapt(h_{b-1})||^2 / E_D ||adapt(h_{b-1})||^2`. The paper scores a
  block by the (negated) mean squared difference between its output and input
  representations, higher = more redundant; it is divided here by the input's energy so
  that blocks of different stages and scales rank on one scale (0 = the identity). The raw
  per-element MSE is reported beside it (`block_redundancy(...)["mse"]`).
- **T** (`fit_map`): least squares with a bias, `min ||adapt_S(X) W + b - Y||^2` over all
  samples, either one map shared over all positions/tokens (`mode="shared"`, a 1x1
  convolution: (C_in + 1) C_out parameters) or one map per position (`mode="position"`,
  |S| (C_in + 1) C_out parameters); spatial sizes are matched by subsampling as in `adapt`,
  channel counts by T itself. Solved in float64 (`lstsq`: numpy `lstsq`'s minimum-norm
  solution, from the normal equations when they are well conditioned, else from the SVD).
  Fewer samples than C_in + 1 raises ValueError, unless `ridge > 0` asks for the ridge
  solution `(X'X + ridge * tr(X'X)/C_in * I)^-1 X'Y` on centred data. Every span's map is
  fitted on the original network's representations (as in the paper), or, with
  `sequential=True`, on the inputs of the network whose earlier spans are already replaced.
- **Parameters removed** by a replacement: the parameters (`params` collection, not the
  BatchNorm statistics) of the replaced blocks minus those of the maps (and of a re-fitted
  head, whose size does not change).

Baselines: `Identity` (the spans return `adapt` of their input), `Drop+head` (the same,
then the classifier head re-fitted in closed form to the original network's logits on the
fit samples), `Random` (spans of the same lengths at random places, fitted like RBA).
`RBA+head` is RBA followed by the same closed-form head re-fit. `RBA-fit` (ours, not the
paper's) is RBA with the blocks ranked by `linear_redundancy` instead of BR: by how much of
a block's output its own linear map misses on the fit samples, not by how far the output is
from the input (a block may change its input little but non-linearly).

Why RBA loses accuracy (`nonlinearity`, RBA runs): per block, the share of its residual
branch h_b - adapt(h_{b-1}) that its best linear map misses on held-out (test) samples;
results.json gives it per block, its minimum, and its mean over the replaced blocks.

`run(config, workdir)` is the experiment behind results/redundancy.md (see
experiments/redundancy.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import pathlib
import re
import time
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wsl import configs

BLOCKS = r"layer\d+_\d+|block\d+"  # subjects.ResNet's and subjects.ViT's blocks
HEAD = r"linear|head"  # their classifier heads
APPROXIMATIONS = ("Original", "RBA", "RBA+head", "RBA-fit", "Random", "Identity", "Drop+head")
MODES = ("shared", "position")
_GRAM_RCOND = 1e-9  # below this eigenvalue ratio of x'x, fit with the SVD instead


# ----------------------------------------------------------------------------- blocks


@dataclasses.dataclass(frozen=True)
class Blocks:
    """The blocks of a model, in call order (static, hashable). Shapes are per sample."""

    names: tuple[str, ...]
    in_shapes: tuple[tuple[int, ...], ...]
    out_shapes: tuple[tuple[int, ...], ...]
    num_params: tuple[int, ...]
    head: str | None = None  # path of the classifier head (a Dense), if found
    total_params: int = 0

    def __len__(self) -> int:
        return len(self.names)


def _path(context) -> str:
    return "/".join(context.module.path)


def _subtree(tree, path: str):
    for part in path.split("/"):
        tree = tree[part]
    return tree


def _count(tree) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(tree)))


def find_blocks(module, variables, x, pattern: str = BLOCKS, head: str = HEAD) -> Blocks:
    """The submodules of `module` whose path fully matches `pattern`, in call order, with
    their input and output shapes and parameter counts (traced with `jax.eval_shape` on one
    sample of `x`; nothing is computed). `head` names the classifier head (the last call
    matching it), which is never a block."""
    calls, heads = [], []

    def interceptor(f, args, kwargs, context):
        out = f(*args, **kwargs)
        if context.method_name == "__call__" and context.module.path:
            name = _path(context)
            if re.fullmatch(pattern, name):
                calls.append((name, args[0].shape[1:], out.shape[1:]))
            if re.fullmatch(head, name):
                heads.append(name)
        return out

    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda v, x: module.apply(v, x), variables, x[:1])
    names = [c[0] for c in calls]
    if not names:
        raise ValueError(f"no submodule of {type(module).__name__} matches blocks {pattern!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"a block is called more than once (weight sharing): {names}")
    head_name = heads[-1] if heads else None
    if head_name in names:
        raise ValueError(
            f"the block pattern {pattern!r} matches the classifier head {head_name!r}; "
            "the head is not a block and cannot be replaced"
        )
    for b in range(1, len(calls)):
        if calls[b][1] != calls[b - 1][2]:
            raise ValueError(
                f"blocks are not consecutive: {names[b]} reads shape {calls[b][1]} but "
                f"{names[b - 1]} returns {calls[b - 1][2]}"
            )
    params = variables["params"]
    return Blocks(
        names=tuple(names),
        in_shapes=tuple(tuple(c[1]) for c in calls),
        out_shapes=tuple(tuple(c[2]) for c in calls),
        num_params=tuple(_count(_subtree(params, n)) for n in names),
        head=head_name,
        total_params=_count(params),
    )


def check_spans(blocks: Blocks, spans: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Spans as sorted half-open (start, stop) block ranges; ValueError for an empty span,
    one past the last block (the head cannot be replaced) or overlapping spans."""
    out = []
    for span in spans:
        start, stop = (int(s) for s in span)
        if stop <= start:
            raise ValueError(f"span {span} has no blocks (spans are half-open [start, stop))")
        if start < 0 or stop > len(blocks):
            head = f"; the classifier head {blocks.head!r} is not a block" if blocks.head else ""
            raise ValueError(
                f"span {span} is outside the {len(blocks)} blocks 0..{len(blocks) - 1} "
                f"({blocks.names[0]} .. {blocks.names[-1]}){head}"
            )
        out.append((start, stop))
    out.sort()
    for (_, a), (b, _) in zip(out, out[1:], strict=False):
        if b < a:
            raise ValueError(f"spans overlap: {out}")
    return tuple(out)


# ----------------------------------------------------------------------------- maps


def resample(h, spatial: Sequence[int]):
    """Subsample the spatial axes of h (N, *S, C) to `spatial` by integer strides."""
    index = [slice(None)]
    for s_in, s_out in zip(h.shape[1:-1], spatial, strict=True):
        if s_in % s_out:
            raise ValueError(f"cannot subsample spatial size {s_in} to {s_out}")
        index.append(slice(None, None, s_in // s_out))
    return h[tuple(index) + (slice(None),)]


def adapt(h, shape: Sequence[int]):
    """The identity across a span whose output has per-sample `shape`: spatial subsampling
    and centred zero-padding of channels (option-A shortcut); h itself if shapes agree."""
    if tuple(h.shape[1:]) == tuple(shape):
        return h
    h = resample(h, shape[:-1])
    extra = shape[-1] - h.shape[-1]
    if extra < 0:
        raise ValueError(f"identity cannot map {h.shape[-1]} channels to {shape[-1]}")
    xp = jnp if isinstance(h, jax.Array) else np
    pad = [(0, 0)] * (h.ndim - 1) + [(extra // 2, extra - extra // 2)]
    return xp.pad(h, pad)


def apply_map(m: Mapping, h, shape: Sequence[int]):
    """Apply map `m` ({} = identity, else {"weight", "bias"}) to h (N, *S_in, C_in), giving
    per-sample `shape`. weight (C_in, C_out): shared; (P, C_in, C_out): one per position."""
    if not m:
        return adapt(h, shape)
    h = resample(h, shape[:-1])
    w, b = m["weight"], m["bias"]
    if w.ndim == 2:
        return h @ w + b
    n = h.shape[0]
    y = jnp.einsum("npc,pcd->npd", h.reshape(n, -1, h.shape[-1]), w) + b
    return y.reshape(n, *shape)


def map_params(m: Mapping) -> int:
    """Number of parameters of a map (0 for the identity)."""
    return _count(m)


def _moments(x: np.ndarray, y: np.ndarray, chunk: int = 1 << 15):
    """Sums over the sample axis (-2), in float64, reading x and y once in chunks (fast and
    light on memory): x'x, x'y, sum x, sum y."""
    n, d = x.shape[-2:]
    lead, k = x.shape[:-2], y.shape[-1]
    sxx, sxy = np.zeros((*lead, d, d)), np.zeros((*lead, d, k))
    sx, sy = np.zeros((*lead, 1, d)), np.zeros((*lead, 1, k))
    with _one_blas_thread():  # these thin products gain nothing from threads, and their
        for i in range(0, n, chunk):  # spinning costs seconds on a busy machine
            xc = np.asarray(x[..., i : i + chunk, :], np.float64)
            yc = np.asarray(y[..., i : i + chunk, :], np.float64)
            xt = np.swapaxes(xc, -1, -2)
            sxx += xt @ xc
            sxy += xt @ yc
            sx += xc.sum(-2, keepdims=True)
            sy += yc.sum(-2, keepdims=True)
    return sxx, sxy, sx, sy


def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def lstsq(x: np.ndarray, y: np.ndarray, ridge: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form least squares with a bias: (W, b) minimising ||x W + b - y||^2, for
    x (..., n, d_in), y (..., n, d_out) (leading axes: independent problems), in float64.

    numpy lstsq's minimum-norm solution: from the centred normal equations (one pass over
    the data) when they are well conditioned (eigenvalue ratio > 1e-9 once all-zero inputs,
    which get weight 0, are set aside), else from the SVD of the centred data with lstsq's
    cut-off. Raises ValueError for non-finite data or n < d_in + 1 (the fit would be
    underdetermined) unless `ridge > 0`, which solves the ridge problem with penalty
    ridge * tr(x'x) / d_in on W (not on b), x centred."""
    n, d = x.shape[-2:]
    if x.shape[:-1] != y.shape[:-1]:
        raise ValueError(f"x {x.shape} and y {y.shape} have different numbers of samples")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    if n < d + 1 and ridge == 0:
        raise ValueError(
            f"{n} samples for a map with {d} inputs + bias: the least-squares fit is "
            f"underdetermined; capture at least {d + 1} samples (positions count as samples "
            "for mode='shared') or pass ridge > 0 for a ridge-regularised fit"
        )
    sxx, sxy, sx, sy = _moments(x, y)
    if not (np.isfinite(sxx).all() and np.isfinite(sxy).all()):  # NaN and inf propagate
        raise ValueError("the captured representations contain NaN or inf")
    mx, my = sx / n, sy / n
    gram = sxx - n * np.swapaxes(mx, -1, -2) @ mx  # centred x'x and x'y
    xty = sxy - n * np.swapaxes(mx, -1, -2) @ my
    eye = np.eye(d)
    if ridge > 0:
        lam = ridge * np.trace(gram, axis1=-2, axis2=-1)[..., None, None] / d
        w = np.linalg.solve(gram + lam * eye, xty)
    else:
        dead = np.diagonal(sxx, axis1=-2, axis2=-1) == 0  # inputs that are always 0
        scale = np.trace(gram, axis1=-2, axis2=-1)[..., None] / d + 1e-300
        gram = gram + eye * (dead * scale)[..., None, :]
        ev = np.linalg.eigvalsh(gram)
        if np.all(ev.min(-1) > ev.max(-1) * _GRAM_RCOND):
            w = np.linalg.solve(gram, np.where(dead[..., :, None], 0.0, xty))
        else:
            xc = np.asarray(x, np.float64) - mx
            u, s, vt = np.linalg.svd(xc, full_matrices=False)
            cut = np.finfo(np.float64).eps * max(n, d) * s.max(-1, keepdims=True)
            s_inv = np.where(s > cut, 1.0 / np.where(s > cut, s, 1.0), 0.0)
            yc = np.asarray(y, np.float64) - my
            w = np.swapaxes(vt, -1, -2) @ (s_inv[..., :, None] * (np.swapaxes(u, -1, -2) @ yc))
    b = (my - mx @ w)[..., 0, :]
    return w, b


def fit_map(x: np.ndarray, y: np.ndarray, mode: str = "shared", ridge: float = 0.0) -> dict:
    """The linear map T from a span's inputs x (N, *S_in, C_in) to its outputs
    y (N, *S_out, C_out): {"weight", "bias"} as float32 (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"unknown map mode {mode!r}; choose one of {MODES}")
    x = resample(np.asarray(x), y.shape[1:-1])
    c_in, c_out = x.shape[-1], y.shape[-1]
    if mode == "shared":
        w, b = lstsq(x.reshape(-1, c_in), y.reshape(-1, c_out), ridge)
    else:
        n = x.shape[0]
        xs = x.reshape(n, -1, c_in).transpose(1, 0, 2)
        w, b = lstsq(xs, y.reshape(n, -1, c_out).transpose(1, 0, 2), ridge)
    return {"weight": w.astype(np.float32), "bias": b.astype(np.float32)}


# ----------------------------------------------------------------------------- forward


@dataclasses.dataclass
class Capture:
    """Representations on N samples: `reps[0]` is the first block's input, `reps[b + 1]`
    block b's output (None for blocks inside a replaced span but its last); `head_in` the
    classifier head's input; `logits` the network's output."""

    reps: list
    head_in: np.ndarray | None
    logits: np.ndarray | None


def _forward(module, blocks: Blocks, spans, record: bool, keep=None):
    """A jitted (variables, maps, x) -> (logits, recorded) with the spans replaced by the
    maps; `recorded` = {"reps": {index: array}, "head": array, "gap": max |in_b - out_b-1|}.
    With `keep` (representation indices), only those are returned, without the logits, so
    that XLA prunes the computation after the last of them."""
    index = {n: b for b, n in enumerate(blocks.names)}
    owner = {b: s for s, (start, stop) in enumerate(spans) for b in range(start, stop)}

    def forward(variables, maps, x):
        reps, head, gap, prev = {}, [], [], []

        def interceptor(f, args, kwargs, context):
            if context.method_name != "__call__" or not context.module.path:
                return f(*args, **kwargs)
            name = _path(context)
            b = index.get(name)
            if b is None:
                if record and name == blocks.head:
                    head.append(args[0])
                return f(*args, **kwargs)
            h = args[0]
            if record and b == 0:
                reps[0] = h
            if prev and b not in owner:
                gap.append(jnp.max(jnp.abs(h - prev[-1])))
            s = owner.get(b)
            if s is None:
                out = f(*args, **kwargs)
            elif b < spans[s][1] - 1:
                return h  # inside a span: pass the span's input on, compute nothing
            else:
                out = apply_map(maps[s], h, blocks.out_shapes[b])
            if record:
                reps[b + 1] = out
            prev.append(out)
            return out

        with nn.intercept_methods(interceptor):
            logits = module.apply(variables, x)
        if keep is not None:
            return None, {"reps": {i: reps[i] for i in keep}, "head": None, "gap": None}
        gap = jnp.max(jnp.stack(gap)) if gap else jnp.zeros(())
        return logits, {"reps": reps, "head": head[-1] if head else None, "gap": gap}

    return jax.jit(forward)


def _batches(x, batch_size: int):
    for start in range(0, len(x), batch_size):
        yield np.asarray(x[start : start + batch_size])


def capture(
    module, variables, x, blocks: Blocks, spans=(), maps=(), batch_size: int = 250, keep=None
) -> Capture:
    """Run the model on x (with `spans` replaced by `maps`) and return every block's input
    and output (see `Capture`) as float32 numpy arrays; with `keep` (indices into
    `Capture.reps`), only those (the rest is None, and the logits too), computing no more of
    the network than they need."""
    spans = check_spans(blocks, spans)
    if len(maps) != len(spans):
        raise ValueError(f"{len(spans)} spans but {len(maps)} maps")
    keep = None if keep is None else tuple(sorted(set(int(i) for i in keep)))
    fwd = _forward(module, blocks, spans, record=True, keep=keep)
    parts = []
    for xb in _batches(x, batch_size):
        logits, rec = jax.device_get(fwd(variables, tuple(maps), xb))
        if keep is None and rec["gap"] > 1e-5 * (
            1 + max(np.abs(r).max() for r in rec["reps"].values())
        ):
            raise ValueError(
                f"blocks are not consecutive: a block's input differs from the previous "
                f"block's output by {float(rec['gap']):.3g} (something runs between blocks)"
            )
        parts.append((logits, rec))
    reps = [None] * (len(blocks) + 1)
    for i in parts[0][1]["reps"]:
        reps[i] = np.concatenate([p[1]["reps"][i] for p in parts])
    head = parts[0][1]["head"]
    head = None if head is None else np.concatenate([p[1]["head"] for p in parts])
    logits = None if keep is not None else np.concatenate([p[0] for p in parts])
    return Capture(reps, head, logits)


def predict(module, variables, x, blocks: Blocks, spans=(), maps=(), batch_size: int = 500):
    """Logits of the model with `spans` replaced by `maps` (numpy, batched)."""
    spans = check_spans(blocks, spans)
    fwd = _forward(module, blocks, spans, record=False)
    out = [np.asarray(fwd(variables, tuple(maps), xb)[0]) for xb in _batches(x, batch_size)]
    return np.concatenate(out)


def accuracy(module, variables, x, y, blocks: Blocks, spans=(), maps=(), batch_size=500):
    """Top-1 accuracy (in [0, 1]) of the model with `spans` replaced by `maps`."""
    logits = predict(module, variables, x, blocks, spans, maps, batch_size)
    return float(np.mean(np.argmax(logits, -1) == np.asarray(y)))


# ----------------------------------------------------------------------------- redundancy


def block_redundancy(reps: Sequence[np.ndarray]) -> dict:
    """BR per block from `Capture.reps` (see the module docstring): {"br", "mse",
    "ranking"} with `ranking` the block indices from most to least redundant."""
    br, mse = [], []
    for b in range(len(reps) - 1):
        y = np.asarray(reps[b + 1], np.float64)
        x = adapt(np.asarray(reps[b], np.float64), y.shape[1:])
        d = ((y - x) ** 2).reshape(len(y), -1).sum(1).mean()
        br.append(-d / max((x**2).reshape(len(x), -1).sum(1).mean(), 1e-30))
        mse.append(d / np.prod(y.shape[1:]))
    br = np.asarray(br)
    return {"br": br, "mse": np.asarray(mse), "ranking": np.argsort(-br, kind="stable")}


def _miss(m: Mapping, x, y) -> tuple[float, np.ndarray]:
    """(sum ||T(x) - y||^2, adapt(x)) for map m applied to x, in float64."""
    y = np.asarray(y, np.float64)
    err = np.asarray(apply_map(m, x, y.shape[1:]), np.float64) - y
    return float((err**2).sum()), adapt(np.asarray(x, np.float64), y.shape[1:])


def nonlinearity(fit: Sequence[np.ndarray], held: Sequence[np.ndarray], mode: str = "shared"):
    """Per block b, the share of its residual branch that no linear map captures, on
    held-out samples: with T_b fitted (`fit_map`) from block b's input to its output on
    the representations `fit` (`Capture.reps`) and evaluated on `held`,

        E ||T_b(h_{b-1}) - h_b||^2 / E ||h_b - adapt(h_{b-1})||^2.

    0: the block is linear (RBA replaces it exactly); 1: T does no better than the identity
    (skipping the block). Explains how much accuracy a one-block RBA must lose."""
    out = []
    for b in range(len(fit) - 1):
        miss, xa = _miss(fit_map(fit[b], fit[b + 1], mode), held[b], held[b + 1])
        out.append(miss / max(float(((held[b + 1] - xa) ** 2).sum()), 1e-30))
    return np.asarray(out)


def linear_redundancy(reps: Sequence[np.ndarray], mode: str = "shared") -> np.ndarray:
    """Per block b, how well its own linear map replaces it on the samples `reps`
    (`Capture.reps`), on BR's scale: -E ||T_b(h_{b-1}) - h_b||^2 / E ||adapt(h_{b-1})||^2
    (0: exactly linear; BR is the same with the identity in place of T_b). Ranks blocks
    for `RBA-fit`."""
    out = []
    for b in range(len(reps) - 1):
        miss, xa = _miss(fit_map(reps[b], reps[b + 1], mode), reps[b], reps[b + 1])
        out.append(-miss / max(float((xa**2).sum()), 1e-30))
    return np.asarray(out)


def _unit_gram(a: np.ndarray) -> np.ndarray:
    """The Gram matrix of the centred features of a (N, ...), scaled to unit norm."""
    a = np.asarray(a, np.float32).reshape(len(a), -1)
    a = a - a.mean(0)
    g = (a @ a.T).astype(np.float64)
    return g / max(np.linalg.norm(g), 1e-30)


def linear_cka(a: np.ndarray, b: np.ndarray) -> float:
    """Linear CKA between two representations of the same N samples (any feature shapes):
    the cosine between their centred Gram matrices (Kornblith et al. 2019)."""
    return float((_unit_gram(a) * _unit_gram(b)).sum())


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over samples of the cosine between `adapt(a)` and b (a is the earlier
    representation); NaN if a cannot be adapted to b's shape."""
    try:
        a = adapt(np.asarray(a, np.float64), b.shape[1:])
    except ValueError:
        return float("nan")
    a, b = a.reshape(len(a), -1), np.asarray(b, np.float64).reshape(len(b), -1)
    den = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return float(np.mean((a * b).sum(1) / den))


def similarity(reps: Sequence[np.ndarray]) -> dict:
    """Linear CKA and cosine between all pairs of representations (symmetric matrices)."""
    k = len(reps)
    grams = [_unit_gram(r) for r in reps]  # once each; then CKA is an inner product
    cka, cos = np.eye(k), np.eye(k)
    for i in range(k):
        for j in range(i + 1, k):
            cka[i, j] = cka[j, i] = (grams[i] * grams[j]).sum()
            cos[i, j] = cos[j, i] = cosine(reps[i], reps[j])
    return {"cka": cka, "cosine": cos}


def plot_similarity(sim: Mapping, labels: Sequence[str], path, title: str = "") -> None:
    """Heat maps of the CKA and cosine matrices, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, key in zip(axes, ("cka", "cosine"), strict=True):
        im = ax.imshow(np.ma.masked_invalid(sim[key]), vmin=0, vmax=1, cmap="magma")
        ax.set_title(f"{title} linear CKA" if key == "cka" else f"{title} cosine")
        step = max(1, len(labels) // 14)
        ticks = np.arange(0, len(labels), step)
        ax.set_xticks(ticks, [labels[t] for t in ticks], rotation=90, fontsize=7)
        ax.set_yticks(ticks, [labels[t] for t in ticks], fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- spans


def group_spans(indices: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Block indices -> maximal runs of consecutive indices as half-open spans."""
    spans = []
    for i in sorted(set(int(i) for i in indices)):
        if spans and spans[-1][1] == i:
            spans[-1][1] = i + 1
        else:
            spans.append([i, i + 1])
    return tuple(tuple(s) for s in spans)


def select_spans(br: np.ndarray, k: int) -> tuple[tuple[int, int], ...]:
    """The k blocks with the highest BR, grouped into spans of consecutive blocks."""
    if not 0 <= k <= len(br):
        raise ValueError(f"cannot select {k} of {len(br)} blocks")
    return group_spans(np.argsort(-np.asarray(br), kind="stable")[:k])


def random_spans(key, lengths: Sequence[int], num_blocks: int) -> tuple[tuple[int, int], ...]:
    """Non-overlapping spans with the given lengths at uniformly random places."""
    lengths = [int(n) for n in lengths]
    free = num_blocks - sum(lengths)
    if free < 0:
        raise ValueError(f"spans of lengths {lengths} do not fit in {num_blocks} blocks")
    korder, kpos = jax.random.split(key)
    order = np.asarray(jax.random.permutation(korder, len(lengths)))
    slots = np.sort(np.asarray(jax.random.permutation(kpos, free + len(lengths)))[: len(lengths)])
    spans, used = [], 0
    for i, (slot, n) in enumerate(zip(slots, [lengths[o] for o in order], strict=True)):
        start = int(slot) - i + used
        spans.append((start, start + n))
        used += n
    return tuple(spans)


def fit_spans(
    module,
    variables,
    x,
    blocks: Blocks,
    spans,
    mode: str = "shared",
    ridge: float = 0.0,
    sequential: bool = False,
    original: Capture | None = None,
    batch_size: int = 250,
) -> list[dict]:
    """Fit one map per span on the samples x. The target is always the original network's
    output of the span's last block; the input is the span's input in the original network
    (`sequential=False`, the paper's: every map fitted independently) or in the network
    whose earlier spans are already replaced by their fitted maps (`sequential=True`: later
    maps see, and partly undo, earlier maps' errors; one partial forward pass per span)."""
    spans = check_spans(blocks, spans)
    if original is None:
        original = capture(module, variables, x, blocks, batch_size=batch_size)
    maps = []
    for s, (start, stop) in enumerate(spans):
        inputs = original
        if sequential and s > 0:
            inputs = capture(
                module, variables, x, blocks, spans[:s], maps, batch_size, keep=[start]
            )
        maps.append(fit_map(inputs.reps[start], original.reps[stop], mode, ridge))
    return maps


def refit_head(module, variables, x, blocks: Blocks, spans, maps, original: Capture):
    """Variables with the classifier head (a Dense) re-fitted in closed form so that the
    modified network's logits match the original's on the samples x."""
    if blocks.head is None:
        raise ValueError("no classifier head found (pass head= to find_blocks)")
    cap = capture(module, variables, x, blocks, spans, maps)
    w, b = lstsq(cap.head_in.reshape(len(x), -1), original.logits)
    head = dict(_subtree(variables["params"], blocks.head))
    if head["kernel"].shape != w.shape:
        raise ValueError(f"head {blocks.head!r} is not a Dense on its input")
    head.update(kernel=jnp.asarray(w, jnp.float32), bias=jnp.asarray(b, jnp.float32))
    params = dict(variables["params"])
    *parents, last = blocks.head.split("/")
    node = params
    for p in parents:
        node[p] = dict(node[p])
        node = node[p]
    node[last] = head
    return {**variables, "params": params}


def params_removed(blocks: Blocks, spans, maps) -> int:
    """Parameters of the replaced blocks minus the parameters of their maps."""
    spans = check_spans(blocks, spans)
    removed = sum(sum(blocks.num_params[a:b]) for a, b in spans)
    return removed - sum(map_params(m) for m in maps)


# ----------------------------------------------------------------------------- experiment


def load_model(config):
    """(module, variables, preprocess scheme, data set name, info) for config.model."""
    name = config.model
    if name.startswith("resnet"):
        from wsl.data import pretrained

        module, variables, _ = pretrained.resnet_cifar10_flax(int(name[len("resnet") :]))
        return module, variables, "cifar", "cifar10", {}
    if name == "vit":
        from wsl.methods import classify
        from wsl.train import checkpoint

        vit_dir = pathlib.Path(config.vit.workdir)
        results = vit_dir / classify.RESULTS_FILE
        vit_config = configs.load(config.vit.config, config.vit.variant)
        if not results.exists():
            classify.run(vit_config, vit_dir)
        _, state = checkpoint.load(vit_dir)
        module = classify.make_model(vit_config.model)
        variables = {"params": jax.tree.map(jnp.asarray, state["params"])}
        info = json.loads(results.read_text())
        info = {
            "vit_test_accuracy": info.get("test_accuracy"),
            "vit_train_wall_s": info.get("wall_s"),
            "vit_steps": info.get("step"),
            "vit_config": f"{config.vit.config}:{config.vit.variant}",
        }
        return module, variables, vit_config.data.preprocess, vit_config.data.name, info
    from wsl.train.loop import UserError

    raise UserError(f"unknown config.model {name!r}; choose resnet20/32/44/56 or vit")


def replacement(
    approx: str, k: int, score, module, variables, x, blocks, original, config, key
) -> tuple[tuple, list, dict]:
    """(spans, maps, variables) of approximation `approx` with the k blocks of highest
    `score` (BR, or `linear_redundancy` for RBA-fit) replaced."""
    if approx == "Original" or k == 0:
        return (), [], variables
    spans = select_spans(score, k)
    if approx == "Random":
        spans = check_spans(blocks, random_spans(key, [b - a for a, b in spans], len(blocks)))
    if approx in ("RBA", "RBA+head", "RBA-fit", "Random"):
        maps = fit_spans(
            module, variables, x, blocks, spans, config.mode, config.ridge,
            config.sequential, original,
        )  # fmt: skip
    else:
        maps = [{} for _ in spans]
    if approx.endswith("+head"):
        variables = refit_head(module, variables, x, blocks, spans, maps, original)
    return spans, maps, variables


CURVES = "redundancy_curves"  # results_dir/CURVES.json + CURVES_<variant>.{md,png}


def record_curve(results: dict, config, results_dir) -> None:
    """Add this run's curve to results_dir/redundancy_curves.json (replacing the entry of
    the same variant, model, approximation and seed) and redraw the table and the plot of
    accuracy vs fraction of blocks replaced, redundancy_curves_<variant>.{md,png}, from all
    entries of this variant."""
    results_dir = pathlib.Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{CURVES}.json"
    entry = {
        "variant": config.get("variant", ""),
        "seed": int(config.seed),
        **{k: results[k] for k in ("model", "dataset", "approx", "mode", "num_test")},
        **{k: results[k] for k in ("original_accuracy", "num_blocks", "total_params", "curve")},
    }
    key = lambda e: (e["variant"], e["model"], e["approx"], e["seed"])  # noqa: E731
    entries = json.loads(path.read_text()) if path.exists() else []
    entries = [e for e in entries if key(e) != key(entry)] + [entry]
    entries.sort(key=lambda e: (e["variant"], e["model"], APPROXIMATIONS.index(e["approx"]),
                                e["seed"]))  # fmt: skip
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries, indent=1) + "\n")
    tmp.replace(path)
    mine = [e for e in entries if e["variant"] == entry["variant"]]
    name = f"{CURVES}_{entry['variant']}" if entry["variant"] else CURVES
    (results_dir / f"{name}.md").write_text(curves_markdown(mine))
    plot_curves(mine, results_dir / f"{name}.png", config.target_fraction)


def curves_markdown(entries: Sequence[dict]) -> str:
    """One row per (model, approximation, seed, k): blocks and parameters replaced."""
    lines = [
        "# Redundant blocks: accuracy vs blocks replaced and parameters removed",
        "",
        "| model | approx | seed | blocks replaced | spans | params removed | test acc | drop "
        "(points) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        for c in e["curve"]:
            spans = " ".join(f"{a}-{b - 1}" for a, b in c["spans"]) or "-"
            lines.append(
                f"| {e['model']} | {e['approx']} | {e['seed']} | {c['k']}/{e['num_blocks']} "
                f"({100 * c['fraction']:.0f} %) | {spans} | {c['params_removed']} "
                f"({100 * c['params_removed_frac']:.1f} %) | {100 * c['test_accuracy']:.2f} | "
                f"{100 * c['accuracy_drop']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def plot_curves(entries: Sequence[dict], path, target_fraction: float = 0.2) -> None:
    """Test accuracy vs fraction of blocks replaced, one panel per model, one line per
    approximation (mean and spread over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(e["model"] for e in entries))
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        mine = [e for e in entries if e["model"] == model]
        base = 100 * mine[0]["original_accuracy"]
        for approx in APPROXIMATIONS[1:]:
            runs = [e for e in mine if e["approx"] == approx]
            if not runs:
                continue
            ks = sorted({c["k"] for e in runs for c in e["curve"]})
            acc = [[100 * c["test_accuracy"] for e in runs for c in e["curve"] if c["k"] == k]
                   for k in ks]  # fmt: skip
            fr = [0.0] + [k / runs[0]["num_blocks"] for k in ks]
            mean = [base] + [float(np.mean(a)) for a in acc]
            std = [0.0] + [float(np.std(a)) for a in acc]
            ax.errorbar(fr, mean, yerr=std, marker="o", ms=3, capsize=2, label=approx)
        ax.axhline(base - 1, color="grey", ls=":", lw=1, label="original - 1 point")
        ax.axvline(target_fraction, color="grey", ls="--", lw=0.8)
        ax.set_title(f"{model} ({mine[0]['dataset']}, {mine[0]['num_test']} test images)")
        ax.set_xlabel("fraction of blocks replaced")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config, workdir) -> dict:
    """Block redundancy and one approximation (config.approx) of config.model: the test
    accuracy with k blocks replaced for k at config.fractions of the blocks. Writes
    workdir/results.json ("test_accuracy" etc. at config.target_fraction, the curve, the
    BR scores and ranking), adds the curve to config.results_dir/redundancy_curves.*, and
    for RBA draws the similarity heat map (workdir and config.results_dir)."""
    from wsl.data import images
    from wsl.train.loop import UserError

    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if config.approx not in APPROXIMATIONS:
        raise UserError(f"unknown config.approx {config.approx!r}; choose one of {APPROXIMATIONS}")
    if config.mode not in MODES:
        raise UserError(f"unknown config.mode {config.mode!r}; choose one of {MODES}")
    module, variables, scheme, dataset, info = load_model(config)
    data = images.load(dataset)
    key = jax.random.key(config.seed)
    pick = np.asarray(jax.random.permutation(key, len(data.train_x))[: config.num_samples])
    x_fit = images.preprocess(data.train_x[pick], scheme)
    test = images.subset(len(data.test_x), config.eval_size)  # a fixed random subset
    n_test = len(test)
    x_test, y_test = images.preprocess(data.test_x[test], scheme), data.test_y[test]
    blocks = find_blocks(module, variables, x_fit)

    t0 = time.perf_counter()
    original = capture(module, variables, x_fit, blocks)
    t_capture = time.perf_counter() - t0
    red = block_redundancy(original.reps)
    score = red["br"]
    if config.approx == "RBA-fit":
        score = linear_redundancy(original.reps, config.mode)
    base = accuracy(module, variables, x_test, y_test, blocks)
    ks = sorted({math.ceil(f * len(blocks) - 1e-9) for f in config.fractions})
    k_target = math.ceil(config.target_fraction * len(blocks) - 1e-9)
    ks = sorted(set(ks) | {k_target})
    curve = []
    for k in ks if config.approx != "Original" else [0]:
        t0 = time.perf_counter()
        spans, maps, v = replacement(
            config.approx, k, score, module, variables, x_fit, blocks, original, config,
            jax.random.fold_in(key, k),
        )  # fmt: skip
        t_fit = time.perf_counter() - t0
        acc = accuracy(module, v, x_test, y_test, blocks, spans, maps) if spans else base
        removed = params_removed(blocks, spans, maps)
        curve.append(
            {
                "k": k,
                "fraction": k / len(blocks),
                "spans": [list(s) for s in spans],
                "replaced": [blocks.names[b] for a, c in spans for b in range(a, c)],
                "test_accuracy": acc,
                "accuracy_drop": base - acc,
                "params_removed": removed,
                "params_removed_frac": removed / blocks.total_params,
                "fit_s": t_fit,
            }
        )
        print(
            f"{config.model} {config.approx}: k={k} spans={list(spans)} acc={acc:.4f} "
            f"(drop {100 * (base - acc):.2f} points) params removed {removed}",
            flush=True,
        )
    at = next((c for c in curve if c["k"] == k_target), curve[-1])
    results = {
        "model": config.model,
        "dataset": dataset,
        "approx": config.approx,
        "mode": config.mode,
        "num_samples": int(config.num_samples),
        "num_test": int(n_test),
        "num_blocks": len(blocks),
        "blocks": list(blocks.names),
        "block_params": list(blocks.num_params),
        "total_params": blocks.total_params,
        "original_accuracy": base,
        "test_accuracy": at["test_accuracy"],
        "accuracy_drop": at["accuracy_drop"],
        "blocks_replaced": at["k"],
        "blocks_replaced_frac": at["fraction"],
        "params_removed": at["params_removed"],
        "params_removed_frac": at["params_removed_frac"],
        "br": red["br"].tolist(),
        "mse": red["mse"].tolist(),
        "ranking": [blocks.names[i] for i in red["ranking"]],
        "capture_s": t_capture,
        "curve": curve,
        **info,
    }
    if config.approx == "RBA":
        held = capture(module, variables, x_test[: config.similarity_samples], blocks)
        nl = nonlinearity(original.reps, held.reps, config.mode)
        chosen = [blocks.names.index(n) for n in at["replaced"]]
        results["nonlinearity"] = nl.tolist()
        results["nonlinearity_min"] = float(nl.min())
        results["nonlinearity_replaced"] = float(nl[chosen].mean()) if chosen else 0.0
        labels = ["input"] + list(blocks.names)
        sim = similarity([r[: config.similarity_samples] for r in original.reps])
        results["similarity"] = {k: v.tolist() for k, v in sim.items()}
        for folder in {workdir, pathlib.Path(config.results_dir)}:
            folder.mkdir(parents=True, exist_ok=True)
            plot_similarity(sim, labels, folder / f"redundancy_similarity_{config.model}.png",
                            config.model)  # fmt: skip
    (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    record_curve(results, config, config.results_dir)
    return results
