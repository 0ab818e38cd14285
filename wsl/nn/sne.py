"""SNE: Set-based Neural network Encoder (Andreis et al., "Set-based Neural Network
Encoding Without Weight Tying", NeurIPS 2024, arXiv 2305.16625), and its logit
invariance regulariser.

Input: a chunk dict from `wsl.weights.chunk` with a leading batch axis (B networks,
any mix of architectures chunked with one c, budget and max_layers). Output (B, out_dim).
The encoder is hierarchical:

1. chunk level: each chunk (its c values and its c-entry mask, concatenated) is
   embedded by a Dense layer, plus a learned layer-type embedding and a sinusoidal
   encoding of the layer position (and, if `chunk_pos_encoding`, of the chunk's position
   inside its layer); `depth` set-to-set blocks (SAB, or ISAB with `chunk_block='isab'`)
   mix the chunks *of the same layer* (segments = layers); PMA pools each layer's chunks
   into one layer vector.
2. layer level: the layer vectors get a second learned layer-type embedding and a second
   sinusoidal layer-position encoding; `depth` SABs over the layers of a network; PMA
   pools them into the network vector (`SNEEncoder` stops here).
3. property head: MLP (Dense, ReLU, Dense) -> out_dim (`SNE`).

Choices the paper leaves open (ours; the paper's code is not public):

- The chunk layout (one row per output neuron, [incoming weights, bias], padding per
  layer) is described in `wsl.weights.chunk`.
- Encodings are injected at both levels (the paper adds them to build layer encodings
  that keep the computational order). Layer type: learned embedding (a small fixed
  vocabulary, `chunk.LAYER_TYPES`). Positions: sinusoidal (Vaswani et al.), so depths
  never seen in training still get an encoding. Chunk positions are *not* encoded by
  default: the chunks of a layer are a set, as in the paper's set-to-set view; turn on
  `chunk_pos_encoding` for an order-aware chunk level.
- Each chunk is fed with its mask so that real zeros and padding differ.
- Set blocks: Set Transformer MAB with LayerNorm, ReLU rFF, `heads` heads, 1 PMA seed.
- Memory: chunk-level attention runs over query blocks of `block` chunks (exact, remat
  per block), so its memory is O(block * chunks); PMA is a segment softmax, O(chunks).
  A layer's chunks are contiguous, so with `window = chunk.max_layer_chunks(specs, c)`
  a query block reads only the keys within reach: compute O(chunks * (block + 2 window))
  instead of O(chunks^2), still exact (NaN output, never a silent error, if a layer
  has more chunks than `window`). When every network has one architecture, `segments`
  (its layers' static (start, size) chunk runs, `chunk.layout`) replaces the masks by one
  dense attention per layer (`set.segment_attention`: O(sum of layers' chunks^2); ~2x
  faster training steps on Small CNN Zoo networks, results/bench_sne_step.json). With
  `chunk_block='isab'` (m inducing points per layer) compute is linear in the number of
  chunks.
- Padding chunks and unused layer slots never act as keys and their outputs are zeroed,
  so a larger budget or max_layers gives the same prediction (up to float rounding).

Logit invariance (Moskalev et al. 2023, as used by SNE): with pi a random hidden-neuron
permutation of the *input network* (`wsl.weights.symmetry.permute`, function
preserving), penalise ||f(w) - f(pi w)||^2 (mean over networks and outputs), gradients
through both terms; the training loss is task + `weight` * this term. Part of the method:
`wsl.methods.predict` trains SNE with it unless `invariance_weight` is set (weight 1.0,
ours: the paper does not state it; its effect on our MNIST zoo: results/sne_ablation.md,
SNE vs SNE-nologitinv), with a fresh pi per network at every step.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsl.nn.set import ISAB, PMA, SAB
from wsl.weights import chunk as chunking
from wsl.weights.spec import NetSpec
from wsl.weights.symmetry import permute


def sinusoidal(pos: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal encoding of integer positions (...,) -> (..., dim)."""
    half = dim // 2
    freq = jnp.exp(-jnp.log(max_period) * jnp.arange(half) / max(half, 1))
    ang = pos[..., None].astype(jnp.float32) * freq
    enc = jnp.concatenate([jnp.sin(ang), jnp.cos(ang)], axis=-1)
    return jnp.pad(enc, [(0, 0)] * (enc.ndim - 1) + [(0, dim - 2 * half)])


class SNEEncoder(nn.Module):
    """Chunk dict (batched) -> network vectors (B, dim). See the module docstring."""

    dim: int = 64
    heads: int = 4
    depth: int = 1
    chunk_block: str = "sab"  # 'sab' (paper) or 'isab' (linear in the number of chunks)
    num_inducing: int = 16
    block: int | None = 512
    window: int | None = None
    chunk_pos_encoding: bool = False
    layer_encoding: bool = True  # False: no layer-type / layer-position encodings (ablation)
    segments: tuple | None = None  # static ((start, size), ...) of every layer's chunks

    @nn.compact
    def __call__(self, chunks: dict) -> jax.Array:
        values, mask = chunks["values"], chunks["mask"].astype(jnp.float32)
        n_layers = chunks["layer_mask"].shape[-1]
        seg = jnp.where(chunks["chunk_mask"], chunks["layer_id"], -1)

        x = nn.Dense(self.dim, name="embed")(jnp.concatenate([values * mask, mask], axis=-1))
        if self.layer_encoding:
            x = x + nn.Embed(chunking.NUM_LAYER_TYPES, self.dim, name="chunk_type")(
                chunks["layer_type"]
            )
            x = x + sinusoidal(chunks["layer_pos"], self.dim)
        if self.chunk_pos_encoding:
            x = x + sinusoidal(chunks["chunk_pos"], self.dim)
        for i in range(self.depth):
            if self.chunk_block == "sab":
                x = SAB(
                    self.dim,
                    self.heads,
                    block=self.block,
                    window=self.window,
                    segments=self.segments,
                    name=f"chunk_sab{i}",
                )(x, seg)
            elif self.chunk_block == "isab":
                x = ISAB(
                    self.dim, self.num_inducing, self.heads, block=self.block, name=f"chunk_isab{i}"
                )(x, seg, n_layers)
            else:
                raise ValueError(f"unknown chunk_block {self.chunk_block!r}: 'sab' or 'isab'")
        lmask = chunks["layer_mask"]
        z = PMA(self.dim, heads=self.heads, name="chunk_pma")(x, seg, n_layers, lmask)[..., 0, :]

        # per-layer type and position, read off the chunks (-1 ids are dropped)
        per_layer = lambda t, i: jax.ops.segment_max(t, i, n_layers)
        lead = seg.ndim - 1
        for _ in range(lead):
            per_layer = jax.vmap(per_layer)
        ltype = jnp.where(lmask, per_layer(chunks["layer_type"], seg), 0)
        lpos = jnp.where(lmask, per_layer(chunks["layer_pos"], seg), 0)
        if self.layer_encoding:
            z = z + nn.Embed(chunking.NUM_LAYER_TYPES, self.dim, name="layer_type")(ltype)
            z = z + sinusoidal(lpos, self.dim)
        z = z * lmask[..., None]
        for i in range(self.depth):
            z = SAB(self.dim, self.heads, name=f"layer_sab{i}")(z, lmask)
        return PMA(self.dim, heads=self.heads, name="layer_pma")(z, lmask)[..., 0, 0, :]


class SNE(nn.Module):
    """SNE encoder + property head: chunk dict (batched) -> (B, out_dim)."""

    out_dim: int = 1
    dim: int = 64
    hidden: int = 64
    heads: int = 4
    depth: int = 1
    chunk_block: str = "sab"
    num_inducing: int = 16
    block: int | None = 512
    window: int | None = None
    chunk_pos_encoding: bool = False
    layer_encoding: bool = True
    segments: tuple | None = None

    @nn.compact
    def __call__(self, chunks: dict) -> jax.Array:
        z = SNEEncoder(
            self.dim,
            self.heads,
            self.depth,
            self.chunk_block,
            self.num_inducing,
            self.block,
            self.window,
            self.chunk_pos_encoding,
            self.layer_encoding,
            self.segments,
            name="encoder",
        )(chunks)
        z = nn.relu(nn.Dense(self.hidden, name="head0")(z))
        return nn.Dense(self.out_dim, name="head1")(z)


# --------------------------------------------------------------------------------------
# Logit invariance
# --------------------------------------------------------------------------------------

ApplyFn = Callable[[object, dict], jax.Array]  # (params, batched chunk dict) -> (B, out)


def _batch(spec: NetSpec, weights) -> tuple[tuple, bool]:
    """Add a leading batch axis to a single network's weights."""
    layer, arrays = spec.layers[0], weights[0]
    role, shape = layer.shapes[0]
    if jnp.ndim(arrays[role]) == len(shape):
        return jax.tree.map(lambda a: jnp.asarray(a)[None], weights), False
    return weights, True


def permute_batch(spec: NetSpec, weights, key: jax.Array) -> tuple:
    """An independent random hidden-neuron permutation of each network of a batch."""
    keys = jax.random.split(key, jax.tree.leaves(weights)[0].shape[0])
    return jax.vmap(lambda w, k: permute(spec, w, k))(weights, keys)


def _outputs(apply_fn, params, spec, weights, key, c, budget, max_layers):
    weights, _ = _batch(spec, weights)
    w_pi = permute_batch(spec, weights, key)
    f = lambda w: apply_fn(params, chunking.chunk_batch(spec, w, c, budget, max_layers))
    return f(weights), f(w_pi)


def logit_invariance_loss(
    apply_fn: ApplyFn,
    params,
    spec: NetSpec,
    weights,
    key: jax.Array,
    c: int,
    budget: int | None = None,
    max_layers: int | None = None,
    weight: float = 1.0,
) -> jax.Array:
    """weight * mean (f(w) - f(pi w))^2 over networks and outputs, pi a random
    hidden-neuron permutation per network. `weights`: canonical weights of one network
    or of a batch of networks of `spec` (leading axis). Mixed-architecture batches: call
    once per spec (group the batch by spec). Jittable with spec, c, budget static."""
    y, y_pi = _outputs(apply_fn, params, spec, weights, key, c, budget, max_layers)
    return weight * jnp.mean((y - y_pi) ** 2)


def invariance_gap(
    apply_fn: ApplyFn,
    params,
    spec: NetSpec,
    weights,
    key: jax.Array,
    c: int,
    budget: int | None = None,
    max_layers: int | None = None,
) -> jax.Array:
    """mean |f(w) - f(pi w)| over a set of networks of `spec` (and their outputs): how
    far a model is from invariance to hidden-neuron permutations (for reporting)."""
    y, y_pi = _outputs(apply_fn, params, spec, weights, key, c, budget, max_layers)
    return jnp.mean(jnp.abs(y - y_pi))
