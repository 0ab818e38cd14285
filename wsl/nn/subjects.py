"""Subject networks: the networks whose weights wsl studies, as pure flax.linen modules.

Every module takes NHWC images (or (N, 2) coordinates for SIREN) and returns logits.
Submodule names mirror the reference implementations' parameter names, so that the
converters in `wsl.weights.convert` map them by position and shape, not by hand.

- `SmallCNN`: the Small CNN Zoo network of Unterthiner et al. 2020 (Keras 'valid'
  padding, stride 2, activation inside the conv, optional dropout, global average pool).
- `SIREN`: Sitzmann et al. 2020. omega_0 = 30; first layer W ~ U(-1/in, 1/in), later
  layers W ~ U(-sqrt(6/in)/omega_0, sqrt(6/in)/omega_0); biases ~ U(-1/sqrt(in),
  1/sqrt(in)) (PyTorch's nn.Linear default, as in Sitzmann's reference code); the last
  layer is linear with the same init as the hidden layers and **no output offset**
  (pixel values are fitted as they are given, e.g. in [0, 1] or [-1, 1]).
- `MLP`: flattens its input, Dense + activation, Dense logits.
- `ResNet`: akamaster's CIFAR ResNet (He et al. 2016) with option-A shortcuts, any depth
  6n + 2 and any stage widths.
- `ViT`: a small vision transformer (patch embedding, class token, pre-norm blocks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "sin": jnp.sin,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "identity": lambda x: x,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function called `name`; a clear error lists the valid ones."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class SmallCNN(nn.Module):
    """Unterthiner et al. 2020: `num_layers` x Conv(16, 3x3, stride 2, 'valid') + act
    (+ dropout), global average pooling, Dense(num_classes). 4,970 parameters for
    1-channel input with the defaults."""

    features: int = 16
    num_layers: int = 3
    kernel_size: int = 3
    num_classes: int = 10
    act: str = "relu"
    dropout: float = 0.0
    kernel_init: Callable = nn.initializers.glorot_uniform()
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x, train: bool = False):
        f = activation(self.act)
        k = (self.kernel_size, self.kernel_size)
        for i in range(self.num_layers):
            x = nn.Conv(
                self.features,
                k,
                strides=2,
                padding="VALID",
                name=f"conv{i}",
                kernel_init=self.kernel_init,
                bias_init=self.bias_init,
            )(x)
            x = f(x)
            if self.dropout > 0:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(
            self.num_classes, name="dense", kernel_init=self.kernel_init, bias_init=self.bias_init
        )(x)


def siren_init(omega_0: float, first: bool):
    """SIREN's weight initialiser (kernel in canonical (in, out) layout)."""

    def init(key, shape, dtype=jnp.float32):
        fan_in = shape[0]
        bound = 1.0 / fan_in if first else (6.0 / fan_in) ** 0.5 / omega_0
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_bias_init(fan_in: int):
    """PyTorch nn.Linear's default bias init U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (also its
    default weight init: kaiming_uniform with a = sqrt(5) has the same bound)."""

    def init(key, shape, dtype=jnp.float32):
        bound = 1.0 / fan_in**0.5
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


SIREN_VARIANTS = ("sitzmann", "dwsnets")


class SIREN(nn.Module):
    """sin(omega_0 * (W x + b)) hidden layers, linear output (see module docstring).

    `variant` sets the initialisation only (the function is the same): "sitzmann" (the
    module docstring's), or "dwsnets" (AvivNavon/DWSNets nn/inr.py: every sine layer W ~
    U(-sqrt(6/in)/omega_0, +), first layer included, zero sine-layer biases, the last layer
    PyTorch's nn.Linear default U(-1/sqrt(in), 1/sqrt(in)) for W and b). `offset` is added
    to the output (DWSNets: 0.5)."""

    hidden: Sequence[int] = (32, 32)
    out_features: int = 1
    omega_0: float = 30.0
    in_features: int = 2
    variant: str = "sitzmann"
    offset: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.variant not in SIREN_VARIANTS:
            raise ValueError(f"unknown SIREN variant {self.variant!r}; choose {SIREN_VARIANTS}")
        dws = self.variant == "dwsnets"
        fan_in = self.in_features
        for i, h in enumerate(self.hidden):
            x = nn.Dense(
                h,
                name=f"dense{i}",
                kernel_init=siren_init(self.omega_0, i == 0 and not dws),
                bias_init=nn.initializers.zeros if dws else torch_bias_init(fan_in),
            )(x)
            x = jnp.sin(self.omega_0 * x)
            fan_in = h
        out = nn.Dense(
            self.out_features,
            name=f"dense{len(self.hidden)}",
            kernel_init=torch_bias_init(fan_in) if dws else siren_init(self.omega_0, False),
            bias_init=torch_bias_init(fan_in),
        )(x)
        return out + self.offset if self.offset else out


class MLP(nn.Module):
    """Flatten, then Dense + activation for each hidden width, then Dense logits."""

    hidden: Sequence[int] = (64, 64)
    num_classes: int = 10
    act: str = "relu"

    @nn.compact
    def __call__(self, x, train: bool = False):
        f = activation(self.act)
        x = x.reshape(x.shape[0], -1)
        for i, h in enumerate(self.hidden):
            x = f(nn.Dense(h, name=f"dense{i}")(x))
        return nn.Dense(self.num_classes, name=f"dense{len(self.hidden)}")(x)


def option_a_shortcut(x: jax.Array, out_channels: int, stride: int) -> jax.Array:
    """akamaster's option-A shortcut: subsample by `stride`, zero-pad channels on both
    sides ((out - in) // 2 before, the rest after; planes // 4 each side when doubling)."""
    if stride != 1:
        x = x[:, ::stride, ::stride, :]
    extra = out_channels - x.shape[-1]
    if extra:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    return x


def _bn(norm: bool, train: bool, name: str):
    """BatchNorm as akamaster's (momentum 0.1 in torch terms, eps 1e-5), or the identity
    for a network whose BatchNorm has been folded into its convs (`norm=False`)."""
    if not norm:
        return lambda x: x
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class BasicBlock(nn.Module):
    planes: int
    stride: int = 1
    norm: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        bn = lambda name: _bn(self.norm, train, name)
        conv = lambda name, s: nn.Conv(
            self.planes,
            (3, 3),
            strides=s,
            padding=((1, 1), (1, 1)),
            use_bias=not self.norm,
            name=name,
        )
        out = nn.relu(bn("bn1")(conv("conv1", self.stride)(x)))
        out = bn("bn2")(conv("conv2", 1)(out))
        if self.stride != 1 or x.shape[-1] != self.planes:
            x = option_a_shortcut(x, self.planes, self.stride)
        return nn.relu(out + x)


class ResNet(nn.Module):
    """CIFAR ResNet (akamaster/pytorch_resnet_cifar10): depth = 6n + 2, stages of
    `widths` channels (default 16/32/64), option-A shortcuts, global average pool,
    Dense(num_classes) named `linear`. Width multipliers: pass other `widths`.
    `norm=False` builds the BatchNorm-folded form: convs with biases, no BatchNorm.

    Split runs (static ints, residual blocks numbered 0 .. 3n - 1 in order): `stop=k`
    returns the activation entering block k (the stem's output when k = 0); `start=k`
    takes that activation as `x` and runs the rest (default None: `x` is the image).
    `apply(v, apply(v, x, stop=k), start=k)` equals `apply(v, x)`: a frozen prefix can be
    computed once (`wsl.methods.metamorph.cache_prefix`)."""

    depth: int = 20
    widths: Sequence[int] = (16, 32, 64)
    num_classes: int = 10
    norm: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False, start: int | None = None, stop: int | None = None):
        if (self.depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n + 2 (20, 32, 44, 56, ...), got {self.depth}")
        n = (self.depth - 2) // 6
        first, last = 0 if start is None else start, 3 * n if stop is None else stop
        if not 0 <= first <= last <= 3 * n:
            raise ValueError(f"need 0 <= start <= stop <= {3 * n} blocks, got {start}, {stop}")
        if start is None:
            x = nn.Conv(
                self.widths[0],
                (3, 3),
                padding=((1, 1), (1, 1)),
                use_bias=not self.norm,
                name="conv1",
            )(x)
            x = nn.relu(_bn(self.norm, train, "bn1")(x))
        for s, planes in enumerate(self.widths):
            for b in range(n):
                if not first <= s * n + b < last:
                    continue
                stride = 2 if (s > 0 and b == 0) else 1
                x = BasicBlock(planes, stride, self.norm, name=f"layer{s + 1}_{b}")(x, train)
        if stop is not None:
            return x
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="linear")(x)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + MHA(LN(x)); x + MLP(LN(x))."""

    dim: int
    heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = nn.LayerNorm(name="ln1")(x)
        x = x + nn.MultiHeadDotProductAttention(self.heads, name="attn")(y, y)
        y = nn.LayerNorm(name="ln2")(x)
        y = nn.Dense(self.mlp_dim, name="mlp1")(y)
        return x + nn.Dense(self.dim, name="mlp2")(nn.gelu(y))


class ViT(nn.Module):
    """A small ViT: patch embedding conv, class token, learned positions, `depth`
    pre-norm encoder blocks (named `block{i}`), final LayerNorm, Dense head."""

    patch: int = 4
    dim: int = 64
    depth: int = 6
    heads: int = 4
    mlp_dim: int = 128
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(
            self.dim, (self.patch, self.patch), strides=self.patch, padding="VALID", name="embed"
        )(x)
        n, h, w, c = x.shape
        x = x.reshape(n, h * w, c)
        cls = self.param("cls", nn.initializers.zeros, (1, 1, c))
        x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, c)), x], axis=1)
        x = x + self.param("pos", nn.initializers.normal(0.02), (1, h * w + 1, c))
        for i in range(self.depth):
            x = EncoderBlock(self.dim, self.heads, self.mlp_dim, name=f"block{i}")(x, train)
        x = nn.LayerNorm(name="ln")(x[:, 0])
        return nn.Dense(self.num_classes, name="head")(x)


SUBJECTS = {"SmallCNN": SmallCNN, "SIREN": SIREN, "MLP": MLP, "ResNet": ResNet, "ViT": ViT}


def make(name: str, **kwargs) -> nn.Module:
    """Build subject network `name` with keyword arguments; clear error if unknown."""
    if name not in SUBJECTS:
        raise ValueError(f"unknown subject network {name!r}; choose one of {sorted(SUBJECTS)}")
    return SUBJECTS[name](**kwargs)
