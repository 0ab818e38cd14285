"""Image symmetry groups and canonicalisation networks (pure flax.linen modules).

Groups act on NHWC images, or on any array whose axes (-3, -2) are (height, width):

- ``C4``: rotations by multiples of 90 degrees, ``jnp.rot90``: exact (a pixel permutation).
- ``D4``: C4 and the horizontal flip (the W axis reversed): exact. Element ``k + 4 f`` is
  ``rot90^k o flip^f`` (flip first).
- ``C8``: rotations by multiples of 45 degrees. Odd multiples rotate by 45 degrees with
  bilinear interpolation about the image centre (edge values fill the corners), then by
  ``rot90``: **inexact**, so e.g. two 45-degree rotations only approximate one of 90
  degrees and a C8 orbit is only approximately closed. Even multiples are exact.

Element 0 is always the identity. Rotations turn counter-clockwise as displayed (row 0 on
top), the same sense as ``jnp.rot90``.

Both canonicalisers score **poses**: ``scores[:, k]`` is how likely it is that x is the
canonical image moved by element ``g_k``; they evaluate ``candidates(group, x)``, the
images ``g_k^{-1} x``, one per pose. Canonicalising x is choosing the best pose g* and
returning ``g*^{-1} x`` (= candidate k*). With exact groups, rotating the input by u maps
pose g to ``u g`` (``scores(u x)[:, k] == scores(x)[:, index of u^{-1} g_k]``), so the
chosen canonical image, and anything computed from it, is invariant.

- :class:`OptimizedCanonicalizer` (Panigrahi & Mondal 2024): any non-equivariant network
  embeds every candidate; the score is the cosine similarity to a fixed random reference
  vector (collection ``constants``, not trained).
- :class:`GroupCNN` (the Kaba et al. 2023 baseline): a group-lifted CNN (Cohen & Welling's
  G-CNN) that is exactly equivariant by construction. It is computed in *local frames*:
  the feature map of group element g is kept un-rotated (``Phi[g] = g^{-1} F[g]``), so an
  input transformation only permutes the group axis. The lifting layer is the first conv
  applied to every candidate ``g^{-1} x``; a group convolution layer computes
  ``Phi_out[g] = conv(concat_h h Phi[g h], W)``, which equals the textbook
  ``F_out[g] = sum_h conv(F[h], g W[g^{-1} h])`` with rotated filters, but sees bitwise
  the same numbers for a rotated input, so its scores permute exactly.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

GROUPS = ("C4", "D4", "C8")


@dataclasses.dataclass(frozen=True)
class Group:
    """A finite group of image transformations: ``rotations`` rotations by 360/rotations
    degrees, times the horizontal flip if ``flips``. Element index ``k + rotations * f``
    is ``rot^k o flip^f``. Hashable, so it can be a module attribute or a static arg."""

    name: str
    rotations: int
    flips: bool = False

    @property
    def order(self) -> int:
        return self.rotations * (2 if self.flips else 1)

    @property
    def exact(self) -> bool:
        """True when every element is a pixel permutation (rotations by 90-degree steps)."""
        return 4 % self.rotations == 0

    def element(self, g: int) -> tuple[int, int]:
        """(k, f): element g is rot^k o flip^f."""
        return g % self.rotations, g // self.rotations

    def index(self, k: int, f: int) -> int:
        return k % self.rotations + self.rotations * f

    @functools.cached_property
    def table(self) -> np.ndarray:
        """Cayley table: ``table[a, b]`` is the index of ``g_a g_b`` (apply b first).
        r^a s^f r^b s^e = r^(a + (-1)^f b) s^(f + e), with s the flip."""
        t = np.zeros((self.order, self.order), np.int32)
        for a in range(self.order):
            ka, fa = self.element(a)
            for b in range(self.order):
                kb, fb = self.element(b)
                t[a, b] = self.index(ka + (-1) ** fa * kb, (fa + fb) % 2)
        return t

    @functools.cached_property
    def inverses(self) -> np.ndarray:
        """``inverses[g]`` is the index of g^{-1}."""
        return np.argmax(self.table == 0, axis=1).astype(np.int32)


def group(name: str) -> Group:
    """The group called `name` (one of GROUPS); a clear error lists the valid ones."""
    if name == "C4":
        return Group("C4", 4)
    if name == "D4":
        return Group("D4", 4, flips=True)
    if name == "C8":
        return Group("C8", 8)
    raise ValueError(f"unknown group {name!r}; choose one of {list(GROUPS)}")


def compose(grp: Group, a, b):
    """Index of g_a g_b (b applied first); ints or integer arrays."""
    return jnp.asarray(grp.table)[a, b]


def inverse(grp: Group, g):
    """Index of g^{-1}; an int or an integer array."""
    return jnp.asarray(grp.inverses)[g]


# --------------------------------------------------------------------------- the action


@functools.lru_cache(maxsize=32)
def _bilinear(h: int, w: int, degrees: float):
    """Static gather indices and weights of a rotation by `degrees` about the centre
    (output pixel p samples the input at R^{-1}(p - c) + c, edge values beyond)."""
    t = np.deg2rad(degrees)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    yy, xx = np.meshgrid(np.arange(h) - cy, np.arange(w) - cx, indexing="ij")
    sy = np.clip(np.cos(t) * yy + np.sin(t) * xx + cy, 0, h - 1)
    sx = np.clip(-np.sin(t) * yy + np.cos(t) * xx + cx, 0, w - 1)
    y0, x0 = (
        np.minimum(np.floor(sy).astype(np.int32), h - 2),
        np.minimum(np.floor(sx).astype(np.int32), w - 2),
    )
    wy, wx = (sy - y0).astype(np.float32), (sx - x0).astype(np.float32)
    return y0, x0, wy[..., None], wx[..., None]


def rotate(x: jax.Array, degrees: float) -> jax.Array:
    """Rotate the (-3, -2) axes by `degrees` counter-clockwise with bilinear interpolation
    (inexact: used for C8's odd elements; rot90 is used for multiples of 90)."""
    y0, x0, wy, wx = _bilinear(x.shape[-3], x.shape[-2], float(degrees))
    top = x[..., y0, x0, :] * (1 - wx) + x[..., y0, x0 + 1, :] * wx
    bottom = x[..., y0 + 1, x0, :] * (1 - wx) + x[..., y0 + 1, x0 + 1, :] * wx
    return (top * (1 - wy) + bottom * wy).astype(x.dtype)


def transform(grp: Group, x: jax.Array, g: int) -> jax.Array:
    """Apply element `g` (a Python int) to the (-3, -2) = (H, W) axes of `x`."""
    k, f = grp.element(int(g))
    if f:
        x = jnp.flip(x, axis=-2)
    steps = 4 * k / grp.rotations  # in quarter turns
    quarter, rest = int(steps), steps - int(steps)
    if rest:
        x = rotate(x, 90.0 * rest)
    return jnp.rot90(x, quarter, axes=(-3, -2)) if quarter % 4 else x


def orbit(grp: Group, x: jax.Array) -> jax.Array:
    """(B, ...) -> (B, |G|, ...): ``orbit[:, k] = g_k x``."""
    return jnp.stack([transform(grp, x, g) for g in range(grp.order)], axis=1)


def candidates(grp: Group, x: jax.Array) -> jax.Array:
    """(B, ...) -> (B, |G|, ...): ``candidates[:, k] = g_k^{-1} x``, the canonical image
    if x has pose g_k."""
    return jnp.stack([transform(grp, x, int(grp.inverses[g])) for g in range(grp.order)], 1)


def apply(grp: Group, x: jax.Array, g: jax.Array) -> jax.Array:
    """Apply element ``g[i]`` to image ``x[i]`` (g: an integer array of shape (B,)); exact
    (a selection, no arithmetic), at the cost of computing every element's transform."""
    out = jnp.zeros_like(x)
    mask = lambda k: (g == k).reshape(-1, *([1] * (x.ndim - 1)))
    for k in range(grp.order):
        out = jnp.where(mask(k), transform(grp, x, k), out)
    return out


def invert(grp: Group, x: jax.Array, g: jax.Array) -> jax.Array:
    """Undo `apply`: apply ``g[i]^{-1}`` to ``x[i]``."""
    return apply(grp, x, inverse(grp, g))


def random_elements(key: jax.Array, grp: Group, n: int) -> jax.Array:
    """n group elements drawn uniformly (int32)."""
    return jax.random.randint(key, (n,), 0, grp.order, jnp.int32)


# --------------------------------------------------------------------------- canonicalisers


def cosine(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Cosine similarity over the last axis."""
    na = jnp.sqrt(jnp.sum(a * a, -1))
    nb = jnp.sqrt(jnp.sum(b * b, -1))
    return jnp.sum(a * b, -1) / jnp.maximum(na * nb, eps)


def _flat(fn, x):
    """Apply `fn` to (B, G, ...) by flattening the first two axes."""
    b, g = x.shape[:2]
    y = fn(x.reshape(b * g, *x.shape[2:]))
    return y.reshape(b, g, *y.shape[1:])


class OptimizedCanonicalizer(nn.Module):
    """Panigrahi & Mondal 2024: ``network`` (any Flax module mapping (N, H, W, C) images
    to (N, D) vectors, not equivariant) embeds every candidate ``g_k^{-1} x``; the score of
    pose k is ``scale`` times the cosine between that embedding and a fixed reference
    vector drawn from N(0, I) at init (variable ``constants/reference``, not a parameter).
    The reference code uses scale 1; a larger scale (an inverse temperature, as in CLIP)
    lets the prior's cross-entropy saturate on well-ranked examples.

    Returns ``(scores (B, |G|), embeddings (B, |G|, D), candidates (B, |G|, H, W, C))``."""

    network: nn.Module
    group: Group
    scale: float = 1.0

    @nn.compact
    def __call__(self, x):
        cands = candidates(self.group, x)
        emb = _flat(self.network, cands)
        ref = self.variable(
            "constants",
            "reference",
            lambda: jax.random.normal(self.make_rng("params"), emb.shape[-1:], jnp.float32),
        ).value
        return self.scale * cosine(emb, ref), emb, cands


def regroup(grp: Group, phi: jax.Array) -> jax.Array:
    """The input of a group convolution in local frames: (B, G, H, W, F) ->
    (B, G, H, W, G F) with ``out[:, g] = concat_h (h phi[:, g h])`` (channels ordered by h)."""
    parts = []
    for h in range(grp.order):
        perm = grp.table[:, h]  # g -> g h
        parts.append(transform(grp, phi[:, perm], h))
    return jnp.concatenate(parts, axis=-1)


class GroupCNN(nn.Module):
    """Kaba et al. 2023's baseline: an exactly equivariant canonicaliser, a group-lifted
    CNN (see the module docstring for the local-frame computation). Layer widths
    ``features``: a lifting conv, then group convs; each conv is (kernel_size x
    kernel_size, stride ``strides``, 'VALID') + ReLU; then a spatial mean and a Dense
    score shared by all group elements.

    Returns ``(scores (B, |G|), None, candidates (B, |G|, H, W, C))``."""

    group: Group
    features: Sequence[int] = (16, 16, 16)
    kernel_size: int = 3
    strides: int = 2

    @nn.compact
    def __call__(self, x):
        cands = candidates(self.group, x)
        k = (self.kernel_size, self.kernel_size)
        conv = lambda f, name: nn.Conv(f, k, strides=self.strides, padding="VALID", name=name)
        phi = nn.relu(_flat(conv(self.features[0], "lift"), cands))
        for i, f in enumerate(self.features[1:]):
            phi = nn.relu(_flat(conv(f, f"gconv{i + 1}"), regroup(self.group, phi)))
        scores = nn.Dense(1, name="score")(jnp.mean(phi, axis=(2, 3)))[..., 0]
        return scores, None, cands
