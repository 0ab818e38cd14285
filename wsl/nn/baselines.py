"""Weight-space baselines with the encoders' interface: `model.apply(params, batch, train)`
-> (B, out_dim).

| model       | reads                                          | invariant to hidden perms |
|-------------|------------------------------------------------|---------------------------|
| `MLP`       | `batch["flat"]` (B, P): `convert.flatten`      | no                        |
| `StatNN`    | `batch["stats"]` (B, F): `statnn_features`     | yes                       |
| `DeepSets`  | `batch["elements"]` (B, M, C) with             | yes                       |
|             | `batch["element_mask"]` (B, M): `set_elements` |                           |

StatNN (Unterthiner et al. 2020): per layer, the mean, variance and 0/25/50/75/100 %
quantiles of the kernel and of the bias, then an MLP (the NFN/neural-graphs reference uses
hidden 1000, 1000). DeepSets (Zaheer et al. 2017): each scalar weight is an element
[value, layer position, is-bias]; phi MLP, masked sum or mean, rho MLP.
Standardising the inputs (e.g. with training-set statistics) is the data pipeline's job.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from wsl.weights.spec import NetSpec

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
STATS = ("mean", "var", *(f"q{int(q * 100)}" for q in QUANTILES))


def _arrays(spec: NetSpec, weights):
    """(layer index, is_bias, array) for every kernel and bias of the dense/conv layers."""
    for i, (layer, arrays) in enumerate(zip(spec.layers, weights, strict=True)):
        if layer.kind not in ("dense", "conv"):
            continue
        for role in ("kernel", "bias"):
            if role in arrays:
                yield i, role == "bias", jnp.ravel(jnp.asarray(arrays[role], jnp.float32))


def statnn_features(spec: NetSpec, weights) -> jnp.ndarray:
    """(7 * number of kernels and biases,) statistics of one network's canonical weights,
    in layer order, kernel then bias, each [mean, var, q0, q25, q50, q75, q100]. Traceable;
    `jax.vmap` over stacked weights for a batch."""
    feats = []
    for _, _, a in _arrays(spec, weights):
        feats += [jnp.mean(a)[None], jnp.var(a)[None], jnp.quantile(a, jnp.asarray(QUANTILES))]
    return jnp.concatenate(feats)


def set_elements(spec: NetSpec, weights) -> jnp.ndarray:
    """(P, 3) DeepSets elements of one network: [value, layer position in [0, 1], is_bias]
    for every kernel and bias entry of its dense/conv layers."""
    layers = [i for i, layer in enumerate(spec.layers) if layer.kind in ("dense", "conv")]
    pos = {i: k / max(len(layers) - 1, 1) for k, i in enumerate(layers)}
    rows = [
        jnp.stack([a, jnp.full_like(a, pos[i]), jnp.full_like(a, float(is_bias))], -1)
        for i, is_bias, a in _arrays(spec, weights)
    ]
    return jnp.concatenate(rows)


class Head(nn.Module):
    """Dense-ReLU(-dropout) stack, then a linear output."""

    hidden: Sequence[int]
    out_dim: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        for d in self.hidden:
            x = nn.relu(nn.Dense(d)(x))
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.out_dim)(x)


class MLP(nn.Module):
    """An MLP on the flattened weight vector (not permutation invariant)."""

    out_dim: int
    hidden: Sequence[int] = (256, 256, 256)
    dropout: float = 0.0

    @nn.compact
    def __call__(self, batch, train: bool = False):
        return Head(self.hidden, self.out_dim, self.dropout, name="mlp")(batch["flat"], train)


class StatNN(nn.Module):
    """Unterthiner et al. 2020: an MLP on `statnn_features`."""

    out_dim: int
    hidden: Sequence[int] = (1000, 1000)
    dropout: float = 0.0
    sigmoid: bool = False  # squash to (0, 1), e.g. for accuracy prediction

    @nn.compact
    def __call__(self, batch, train: bool = False):
        y = Head(self.hidden, self.out_dim, self.dropout, name="mlp")(batch["stats"], train)
        return nn.sigmoid(y) if self.sigmoid else y


class DeepSets(nn.Module):
    """rho(pool_m phi(element_m)) over the masked elements of each network."""

    out_dim: int
    phi: Sequence[int] = (64, 64)
    rho: Sequence[int] = (64,)
    pooling: str = "mean"  # 'mean' | 'sum'

    @nn.compact
    def __call__(self, batch, train: bool = False):
        x, mask = batch["elements"], batch["element_mask"]
        h = x
        for d in self.phi:
            h = nn.relu(nn.Dense(d)(h))
        m = mask[..., None].astype(h.dtype)
        pooled = jnp.sum(h * m, axis=-2)
        if self.pooling == "mean":
            pooled = pooled / jnp.maximum(jnp.sum(m, axis=-2), 1.0)
        elif self.pooling != "sum":
            raise ValueError(f"unknown pooling {self.pooling!r}; choose 'mean' or 'sum'")
        return Head(self.rho, self.out_dim, name="rho")(pooled, train)
