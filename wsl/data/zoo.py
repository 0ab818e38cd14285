"""Model zoos: generate the Small CNN Zoo (Unterthiner et al. 2020) and a heterogeneous
CNN/MLP zoo, and read them (ours and the published files) back.

**The Small CNN Zoo recipe** (`dnn_predict_accuracy/train_network.py`): Keras
`Sequential` of `num_layers` x `Conv2D(16, 3x3, stride 2, 'valid', activation)` (+
`Dropout`), `GlobalAveragePooling2D`, `Dense(10)` logits; images `/255`, scaled to
[-1, 1], grey as the channel mean. Per model we sample (ranges live in the config):
activation, optimizer (Keras `sgd`/`adam`/`rmsprop`: plain SGD; Adam b1 .9 b2 .999
eps 1e-7 with Keras' bias-corrected step size; RMSprop rho .9 eps 1e-7, no momentum),
learning rate, l2 (`kernel_regularizer=l2(l2reg)` on conv and dense kernels, i.e.
`l2reg * sum(w**2)` added to the loss), dropout, weight initialiser (`w_init`; `init_std`
sets the std of `RandomNormal`/`TruncatedNormal` only), bias initialiser (zeros) and
train fraction (the model trains on the first `int(n * f)` examples of its own random
permutation of the training set; batches drop the remainder). Training/test metrics are
Keras' `evaluate`: mean cross-entropy **plus the l2 penalty** (as Keras reports it) and
accuracy, recorded "at epoch e" = after e epochs of training (0 = at initialisation).
Deviations, recorded in each zoo's `config.json`: every model has its own random seed
(the published zoo used 42 for all), the epoch count and the recorded epochs are
shortened for a CPU, and train metrics use at most `train_eval_size` examples of the
model's training subset. A step whose update is not finite is skipped (the published
zoo stopped such runs and dropped them); the count is the `nonfinite_steps` column.

**Files** (exactly the published layout, plus our extras):

- `weights.npy` (rows x 4970 float32): one row per (model, recorded epoch), model-major;
  each row is the TF flat vector: per layer **bias then kernel** (the published
  `layout.csv` order), kernels in TF/canonical layout (conv HWIO, dense (in, out)).
- `layout.csv`: `,varname,start_idx,end_idx,size,shape` with Keras names
  (`sequential/conv2d/bias:0`, `sequential/conv2d/kernel:0`, ..., `sequential/dense/...`).
- `metrics.csv.gz`: an unnamed index column (checkpoint path), the published columns
  `config.*`, `modeldir`, `step` (the epoch), `test_accuracy`, `test_loss`,
  `train_accuracy`, `train_loss`, and `nonfinite_steps`.
- `config.json`: the generating config (the recipe actually used), command, wall time.

:func:`load_small_cnn_zoo` reads ours and the published CIFAR10-GS / MNIST /
Fashion-MNIST / SVHN zoos (`weights.npy` or `all_weights.npy`) into canonical arrays.

**Training formulation** (measured on a 2-core CPU, see `scripts/bench_zoo.py` and
README): models are independent, so a chunk of K models with the same train fraction is
trained together. `vmap` + `linen.Conv` lowers to a grouped convolution that XLA:CPU runs
~70x slower, so the default writes each 3x3/stride-2 conv as 9 strided slices and one
matmul (`conv="im2col"`) and vmaps the whole step over the K models
(`formulation="vmap"`); `formulation="loop"` runs one jitted step per model (any conv).
Both compute the same function; tests check that K models trained together equal each
trained alone.

**Heterogeneous zoo**: :class:`HeteroCNN` (2-5 'SAME' convs of any widths and kernel
sizes, strides, one activation, optional residual links in the CNN Wild Park convention)
and :class:`HeteroMLP`; weights stored ragged (`weights.npy` = all flat vectors
concatenated, `offsets.npy` row starts) with each row's architecture in `metrics.csv.gz`
(`config.arch`, JSON). :func:`load_hetero_zoo` returns per-row NetSpecs and weights.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import gzip
import io
import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wsl.data import images
from wsl.nn import subjects
from wsl.weights import spec as wspec

OPTIMIZERS = ("sgd", "adam", "rmsprop")
ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid", "leaky_relu")
W_INITS = (
    "glorot_uniform",
    "glorot_normal",
    "he_normal",
    "orthogonal",
    "RandomNormal",
    "TruncatedNormal",
)
B_INITS = ("zeros",)
METRICS = ("test_accuracy", "test_loss", "train_accuracy", "train_loss")
ADAM_B1, ADAM_B2, RMS_RHO, KERAS_EPS = 0.9, 0.999, 0.9, 1e-7


# ======================================================================================
# Hyper-parameters
# ======================================================================================


def _choice(key, options: Sequence, n: int) -> list:
    idx = np.asarray(jax.random.randint(key, (n,), 0, len(options)))
    return [options[i] for i in idx]


def _loguniform(key, lo: float, hi: float, n: int) -> np.ndarray:
    u = jax.random.uniform(key, (n,), minval=math.log(lo), maxval=math.log(hi))
    return np.exp(np.asarray(u, np.float64))


def sample_hyper(hyper: Mapping, n: int, seed: int) -> list[dict]:
    """`n` per-model hyper-parameter dicts drawn from the ranges in `hyper` (keys:
    activation, optimizer, w_init, b_init, train_fraction: options to choose from;
    learning_rate, l2reg, init_std: (lo, hi) log-uniform; dropout: (lo, hi) uniform).
    Model i's draw depends only on (seed, i), so zoos of different sizes share models."""
    for name, options, allowed in (
        ("activation", hyper["activation"], ACTIVATIONS),
        ("optimizer", hyper["optimizer"], OPTIMIZERS),
        ("w_init", hyper["w_init"], W_INITS),
        ("b_init", hyper["b_init"], B_INITS),
    ):
        bad = [o for o in options if o not in allowed]
        if bad:
            raise ValueError(f"unknown {name} {bad}; choose from {allowed}")
    keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), 0), 9)

    def per_model(k, draw):
        return [draw(jax.random.fold_in(k, i)) for i in range(n)]

    def one(k, opts):
        return per_model(k, lambda kk: _choice(kk, opts, 1)[0])

    def logu(k, lohi):
        return per_model(k, lambda kk: float(_loguniform(kk, lohi[0], lohi[1], 1)[0]))

    lo, hi = hyper["dropout"]
    cols = {
        "activation": one(keys[0], list(hyper["activation"])),
        "optimizer": one(keys[1], list(hyper["optimizer"])),
        "w_init": one(keys[2], list(hyper["w_init"])),
        "b_init": one(keys[3], list(hyper["b_init"])),
        "train_fraction": one(keys[4], [float(f) for f in hyper["train_fraction"]]),
        "learning_rate": logu(keys[5], hyper["learning_rate"]),
        "dropout": per_model(
            keys[6], lambda kk: float(jax.random.uniform(kk, (), minval=lo, maxval=hi))
        ),
        "l2reg": logu(keys[7], hyper["l2reg"]),
        "init_std": logu(keys[8], hyper["init_std"]),
    }
    return [dict(model_id=i, **{k: v[i] for k, v in cols.items()}) for i in range(n)]


def model_key(seed: int, model_id: int) -> jax.Array:
    """The PRNG key of model `model_id` of a zoo with seed `seed` (init, data, dropout)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), model_id)


@dataclasses.dataclass(frozen=True)
class Hyper:
    """Per-model training hyper-parameters as arrays (leading axis = models)."""

    act: jax.Array  # int32 index into ACTIVATIONS
    opt: jax.Array  # int32 index into OPTIMIZERS
    lr: jax.Array
    l2: jax.Array
    dropout: jax.Array
    w_init: jax.Array  # int32 index into W_INITS
    init_std: jax.Array


jax.tree_util.register_dataclass(
    Hyper, data_fields=["act", "opt", "lr", "l2", "dropout", "w_init", "init_std"], meta_fields=[]
)


def hyper_arrays(models: Sequence[Mapping]) -> Hyper:
    """Stack per-model hyper-parameter dicts into a `Hyper` of arrays."""
    f32 = lambda k: jnp.asarray([m[k] for m in models], jnp.float32)
    i32 = lambda k, opts: jnp.asarray([opts.index(m[k]) for m in models], jnp.int32)
    return Hyper(
        i32("activation", ACTIVATIONS),
        i32("optimizer", OPTIMIZERS),
        f32("learning_rate"),
        f32("l2reg"),
        f32("dropout"),
        i32("w_init", W_INITS),
        f32("init_std"),
    )


# ======================================================================================
# The Small CNN as pure functions (params = SmallCNN's flax `params` dict)
# ======================================================================================

_EXTRA_ACTS = {"sigmoid": jax.nn.sigmoid, "leaky_relu": jax.nn.leaky_relu}


def activation_fn(name: str) -> Callable:
    return subjects.ACTIVATIONS.get(name) or _EXTRA_ACTS[name]


def apply_activation(x, act):
    """Activation by index into ACTIVATIONS: static int, or a traced scalar (all
    candidates are computed and one is selected)."""
    fns = [activation_fn(a) for a in ACTIVATIONS]
    if isinstance(act, int):
        return fns[act](x)
    out = fns[0](x)
    for i in range(1, len(fns)):
        out = jnp.where(act == i, fns[i](x), out)
    return out


def conv_lax(x, kernel, stride: int, padding="VALID"):
    """`linen.Conv` (NHWC, HWIO, no bias)."""
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def conv_im2col(x, kernel, stride: int):
    """'valid' conv as kh*kw strided slices concatenated on the channel axis, then one
    matmul with the (kh*kw*C, O) kernel. Same function as `conv_lax`; vmaps to batched
    matmuls instead of a grouped convolution."""
    kh, kw, c, o = kernel.shape
    n, h, w, _ = x.shape
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    cols = [
        x[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride, :]
        for i in range(kh)
        for j in range(kw)
    ]
    patches = jnp.concatenate(cols, axis=-1)  # (n, ho, wo, kh*kw*c), order (i, j, c)
    return jnp.dot(patches, kernel.reshape(kh * kw * c, o))


CONVS = {"lax": conv_lax, "im2col": conv_im2col}


def hash_uniform(seed, shape, salt: int = 0):
    """Uniform [0, 1) floats from a murmur3-finalizer hash of (seed, element index, salt):
    a cheap counter-based generator for dropout masks (threefry bits for every
    activation cost more than the network itself on a CPU). `seed` is a uint32 drawn
    from a jax.random key, so every mask still derives from the model's key."""
    i = jnp.arange(int(np.prod(shape)), dtype=jnp.uint32).reshape(shape)
    h = i * jnp.uint32(0x9E3779B1) + (seed ^ jnp.uint32((salt * 0x85EBCA77) & 0xFFFFFFFF))
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    h = h ^ (h >> 16)
    return (h >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


def cnn_forward(params, x, act, dropout=0.0, seed=None, conv: str = "lax", stride: int = 2):
    """Small CNN logits. `params` has SmallCNN's structure (`conv0`.., `dense`); a uint32
    `seed` enables (inverted) dropout with rate `dropout` after each conv, as Keras and
    flax apply it (kept units scaled by 1 / (1 - rate))."""
    conv_fn = CONVS[conv]
    i = 0
    while f"conv{i}" in params:
        p = params[f"conv{i}"]
        x = apply_activation(conv_fn(x, p["kernel"], stride) + p["bias"], act)
        if seed is not None:
            keep = hash_uniform(seed, x.shape, i) >= dropout
            x = jnp.where(keep, x / (1.0 - dropout), 0.0)
        i += 1
    x = jnp.mean(x, axis=(1, 2))
    return jnp.dot(x, params["dense"]["kernel"]) + params["dense"]["bias"]


def l2_penalty(params, l2):
    """Keras `l2(l2reg)` on every kernel: l2 * sum(w**2)."""
    return l2 * sum(jnp.sum(jnp.square(p["kernel"])) for p in params.values())


def cross_entropy(logits, y):
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


# ======================================================================================
# Keras optimizers (per-model choice as an index, so one program serves all three)
# ======================================================================================


def opt_init(params):
    """Keras optimizer state: first and second moments (distinct buffers) and the step."""
    return {
        "m": jax.tree.map(jnp.zeros_like, params),
        "v": jax.tree.map(jnp.zeros_like, params),
        "t": jnp.zeros((), jnp.int32),
    }


def opt_update(params, state, grads, opt, lr):
    """One step of Keras SGD (0) / Adam (1) / RMSprop (2), chosen by `opt` (any pytree;
    the Small CNN trainer passes one flat vector, so this is one fused loop)."""
    t = state["t"] + 1
    beta2 = jnp.where(opt == 1, ADAM_B2, RMS_RHO)
    m = jax.tree.map(lambda m, g: ADAM_B1 * m + (1 - ADAM_B1) * g, state["m"], grads)
    v = jax.tree.map(lambda v, g: beta2 * v + (1 - beta2) * g * g, state["v"], grads)
    tf = t.astype(jnp.float32)
    lr_adam = lr * jnp.sqrt(1 - ADAM_B2**tf) / (1 - ADAM_B1**tf)

    def step(p, g, m, v):
        upd = jnp.where(
            opt == 1,
            lr_adam * m / (jnp.sqrt(v) + KERAS_EPS),
            jnp.where(opt == 2, lr * g / (jnp.sqrt(v) + KERAS_EPS), lr * g),
        )
        return p - upd

    new = jax.tree.map(step, params, grads, m, v)
    return new, {"m": m, "v": v, "t": t}


def _finite(tree):
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


# ======================================================================================
# Training many Small CNNs
# ======================================================================================


def unflatten_cnn(flat, layout):
    """One published-layout row -> SmallCNN params dict (slices and reshapes)."""
    params, pos = {}, 0
    for _, layer, role, shape in layout:
        n = int(np.prod(shape))
        params.setdefault(layer, {})[role] = flat[pos : pos + n].reshape(shape)
        pos += n
    return params


def _kernel_mask(layout) -> np.ndarray:
    return np.concatenate(
        [np.full(int(np.prod(shape)), role == "kernel", np.float32) for _, _, role, shape in layout]
    )


def cnn_train_step(
    flat, opt, hyp: Hyper, key, step, x_all, y_all, idx, act=0, conv="im2col", layout=None
):
    """One training step of one model (weights as one published-layout row `flat`) on
    examples `idx` of (x_all, y_all); `act` is the (static) activation index. A step
    whose result is not finite is skipped (counted in `opt['bad']`)."""
    layout = layout or tuple(keras_layout())
    x, y = x_all[idx], y_all[idx]
    seed = jax.random.bits(jax.random.fold_in(key, step), (), jnp.uint32)
    mask = jnp.asarray(_kernel_mask(layout))

    def loss_fn(f):
        logits = cnn_forward(unflatten_cnn(f, layout), x, act, hyp.dropout, seed, conv)
        return cross_entropy(logits, y) + hyp.l2 * jnp.sum(mask * f * f)

    grads = jax.grad(loss_fn)(flat)
    state = {k_: opt[k_] for k_ in ("m", "v", "t")}
    new_f, new_o = opt_update(flat, state, grads, hyp.opt, hyp.lr)
    ok = jnp.all(jnp.isfinite(new_f))
    new_f = jnp.where(ok, new_f, flat)
    new_o = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_o, state)
    new_o["bad"] = opt["bad"] + (~ok).astype(jnp.int32)
    return new_f, new_o


def epoch_indices(key, epoch, n_total: int, n_sub: int, batch_size: int):
    """(steps_per_epoch, batch) example indices of one model's epoch: its training subset
    is the first `n_sub` of its permutation of `n_total` examples, reshuffled every epoch;
    the last incomplete batch is dropped (tf.data `drop_remainder=True`)."""
    subset = jax.random.permutation(jax.random.fold_in(key, 1 << 20), n_total)[:n_sub]
    order = jax.random.permutation(jax.random.fold_in(key, epoch), n_sub)
    spe = n_sub // batch_size
    return subset[order][: spe * batch_size].reshape(spe, batch_size)


def train_subset(key, n_total: int, n_sub: int):
    """The model's training subset (same permutation as `epoch_indices`)."""
    return jax.random.permutation(jax.random.fold_in(key, 1 << 20), n_total)[:n_sub]


@functools.partial(jax.jit, static_argnames=("act", "conv", "chunk", "layout"))
def evaluate_cnns(params, l2, x, y, n=None, act=0, conv="im2col", chunk=1000, layout=None):
    """Keras-style (loss incl. l2 penalty, accuracy) of K stacked models with activation
    index `act`. `params`: stacked SmallCNN params or (K, P) published-layout rows.
    `x`, `y`: one set shared by all models ((N, H, W, C), (N,)) or one per model
    ((K, N, H, W, C), (K, N)); only the first `n` examples count (default all), so
    padded sets share one compiled program. `layout`: the rows' `keras_layout` (default
    the published 3-layer one). Returns two (K,) arrays."""
    if not isinstance(params, Mapping):
        layout = tuple(keras_layout()) if layout is None else layout
        params = jax.vmap(lambda f: unflatten_cnn(f, layout))(params)
    shared = y.ndim == 1
    total = y.shape[-1]
    n = total if n is None else n
    nb = -(-total // chunk)
    pad = nb * chunk - total

    def batches(x, y):
        xs = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
        return xs.reshape(nb, chunk, *x.shape[1:]), jnp.pad(y, (0, pad)).reshape(nb, chunk)

    valid = (jnp.arange(nb * chunk) < n).reshape(nb, chunk)

    def per_model(p, xs, ys):
        def body(carry, b):
            xb, yb, vb = b
            logits = cnn_forward(p, xb, act, conv=conv)
            logp = jax.nn.log_softmax(logits)
            nll = -jnp.take_along_axis(logp, yb[:, None], axis=1)[:, 0]
            hit = jnp.argmax(logits, -1) == yb
            return (
                carry[0] + jnp.sum(jnp.where(vb, nll, 0.0)),
                carry[1] + jnp.sum(jnp.where(vb, hit, False)),
            ), None

        (nll, hits), _ = jax.lax.scan(
            body, (jnp.zeros(()), jnp.zeros((), jnp.int32)), (xs, ys, valid)
        )
        return nll / n, hits.astype(jnp.float32) / n

    if shared:
        xs, ys = batches(x, y)
        nll, acc = jax.vmap(per_model, in_axes=(0, None, None))(params, xs, ys)
    else:
        xs, ys = jax.vmap(batches)(x, y)
        nll, acc = jax.vmap(per_model)(params, xs, ys)
    loss = nll + jax.vmap(l2_penalty)(params, l2)
    return loss, acc


@dataclasses.dataclass
class ImageSet:
    """Preprocessed training and test images on the device."""

    train_x: jax.Array
    train_y: jax.Array
    test_x: jax.Array
    test_y: jax.Array
    name: str


def load_images(
    name: str,
    scheme: str = "unterthiner",
    max_train: int | None = None,
    max_test: int | None = None,
) -> ImageSet:
    """`wsl.data.images.load(name)` preprocessed with `scheme`, optionally truncated."""
    d = images.load(name)
    tx, ty, vx, vy = d.train_x, d.train_y, d.test_x, d.test_y
    if max_train:
        tx, ty = tx[:max_train], ty[:max_train]
    if max_test:
        vx, vy = vx[:max_test], vy[:max_test]
    return ImageSet(
        jnp.asarray(images.preprocess(tx, scheme)),
        jnp.asarray(ty, jnp.int32),
        jnp.asarray(images.preprocess(vx, scheme)),
        jnp.asarray(vy, jnp.int32),
        name,
    )


@functools.partial(jax.jit, static_argnums=(1,))
def _draws(keys, n: int):
    """Per key: n uniforms in [-1, 1), n standard normals, n normals truncated at +-2."""

    def one(k):
        a, b, c = jax.random.split(k, 3)
        return (
            jax.random.uniform(a, (n,), minval=-1.0, maxval=1.0),
            jax.random.normal(b, (n,)),
            jax.random.truncated_normal(c, -2.0, 2.0, (n,)),
        )

    return jax.vmap(one)(keys)


def _bucket(n: int) -> int:
    return 1 << max(10, (n - 1).bit_length())


_TRUNC_STD = 0.87962566103423978  # std of a unit normal truncated at +-2


def keras_kernel(name: str, shape, std: float, u, z, t) -> np.ndarray:
    """A kernel by Keras initialiser `name` from pre-drawn uniforms `u`, normals `z` and
    2-sigma truncated normals `t` (numpy, at least prod(shape) each). Fans include the
    receptive field; `std` is used by RandomNormal / TruncatedNormal only; orthogonal is
    Keras' QR of a normal matrix with the sign of diag(R)."""
    n = int(np.prod(shape))
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    if name == "glorot_uniform":
        return (u[:n] * np.sqrt(6.0 / (fan_in + fan_out))).reshape(shape)
    if name == "glorot_normal":
        return (t[:n] * np.sqrt(2.0 / (fan_in + fan_out)) / _TRUNC_STD).reshape(shape)
    if name == "he_normal":
        return (t[:n] * np.sqrt(2.0 / fan_in) / _TRUNC_STD).reshape(shape)
    if name == "lecun_normal":
        return (t[:n] * np.sqrt(1.0 / fan_in) / _TRUNC_STD).reshape(shape)
    if name == "RandomNormal":
        return (z[:n] * std).reshape(shape)
    if name == "TruncatedNormal":
        return (t[:n] * std).reshape(shape)
    if name == "orthogonal":
        rows, cols = n // shape[-1], shape[-1]
        a = z[:n].reshape(max(rows, cols), min(rows, cols)).astype(np.float64)
        q, r = np.linalg.qr(a)
        q = q * np.sign(np.diag(r))
        return (q.T if rows < cols else q).reshape(shape)
    raise ValueError(f"unknown initialiser {name!r}; choose one of {W_INITS}")


def init_rows(models, keys, cin, features, num_layers):
    """Initial published-layout rows of K models: one jitted draw per model key, then the
    Keras initialisers in numpy (compiling a jax initialiser per shape costs seconds)."""
    lay = keras_layout(num_layers, cin, features)
    biggest = max(int(np.prod(shape)) for *_, shape in lay)
    u, z, t = (
        np.asarray(a)
        for a in _draws(
            jax.vmap(lambda k: jax.random.fold_in(k, 7))(keys), _bucket(biggest * len(lay))
        )
    )
    rows = []
    for j, m in enumerate(models):
        parts, pos = [], 0
        for _, _, role, shape in lay:
            n = int(np.prod(shape))
            if role == "kernel":
                parts.append(
                    keras_kernel(
                        m["w_init"], shape, m["init_std"], u[j, pos:], z[j, pos:], t[j, pos:]
                    ).reshape(-1)
                )
            else:
                parts.append(np.zeros(n))
            pos += n
        rows.append(np.concatenate(parts))
    return jnp.asarray(np.stack(rows), jnp.float32)


_batches = jax.jit(
    jax.vmap(epoch_indices, in_axes=(0, None, None, None, None)), static_argnums=(2, 3, 4)
)


@functools.lru_cache(maxsize=64)
def make_cnn_stepper(formulation: str, conv: str, act: int, layout=None):
    """A function (rows, opt, hyp, keys, step, X, Y, idx) -> (rows, opt) over K stacked
    models. 'vmap': one jitted program for all K; 'loop': one jitted step per model,
    called in a Python loop."""
    step = functools.partial(
        cnn_train_step, act=act, conv=conv, layout=tuple(layout or keras_layout())
    )
    if formulation == "vmap":
        return jax.jit(
            jax.vmap(step, in_axes=(0, 0, 0, 0, None, None, None, 0)), donate_argnums=(0, 1)
        )
    if formulation == "unroll":  # K independent per-model steps in one program

        def unrolled(params, opt, hyp, keys, gstep, X, Y, idx):
            outs = [
                step(
                    *jax.tree.map(lambda a, i=i: a[i], (params, opt, hyp, keys)),
                    gstep,
                    X,
                    Y,
                    idx[i],
                )
                for i in range(idx.shape[0])
            ]
            return (
                jnp.stack([o[0] for o in outs]),
                jax.tree.map(lambda *a: jnp.stack(a), *[o[1] for o in outs]),
            )

        return jax.jit(unrolled, donate_argnums=(0, 1))
    if formulation == "loop":
        one = jax.jit(step, donate_argnums=(0, 1))

        def looped(params, opt, hyp, keys, gstep, X, Y, idx):
            k = idx.shape[0]
            outs = [
                one(
                    *jax.tree.map(lambda a, i=i: a[i], (params, opt, hyp, keys)),
                    gstep,
                    X,
                    Y,
                    idx[i],
                )
                for i in range(k)
            ]
            return jax.tree.map(lambda *a: jnp.stack(a), *[o[0] for o in outs]), jax.tree.map(
                lambda *a: jnp.stack(a), *[o[1] for o in outs]
            )

        return looped
    raise ValueError(f"unknown formulation {formulation!r}; choose 'vmap', 'unroll' or 'loop'")


def train_cnn_chunk(
    models: Sequence[Mapping],
    data: ImageSet,
    *,
    seed: int,
    epochs: int,
    record_epochs: Sequence[int],
    batch_size: int = 32,
    train_eval_size: int = 10000,
    formulation: str = "vmap",
    conv: str = "im2col",
    num_layers: int = 3,
    features: int = 16,
    pad_to: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Train K Small CNNs that share a train fraction; evaluate at `record_epochs`.

    Returns {'weights': (K, C, P) flat published-layout rows, 'metrics': (K, C, 4) in
    METRICS order, 'steps': (C,), 'nonfinite_steps': (K,)}. Each model's result depends
    only on (seed, its model_id, its hyper-parameters), not on K or the formulation."""
    fracs = {m["train_fraction"] for m in models}
    acts = {m["activation"] for m in models}
    if len(fracs) != 1 or len(acts) != 1:
        raise ValueError(
            f"a chunk must share one train_fraction and activation, got "
            f"{sorted(fracs)} and {sorted(acts)}"
        )
    act = ACTIVATIONS.index(acts.pop())
    n_total = int(data.train_x.shape[0])
    n_sub = int(n_total * fracs.pop())
    if n_sub < batch_size:
        raise ValueError(f"training subset of {n_sub} examples < batch size {batch_size}")
    n_models = len(models)
    if pad_to and pad_to > n_models:  # same K for every chunk: one compiled program
        models = list(models) + [models[-1]] * (pad_to - n_models)
    hyp = hyper_arrays(models)
    keys = jnp.stack([model_key(seed, m["model_id"]) for m in models])
    cin = int(data.train_x.shape[-1])
    layout = tuple(keras_layout(num_layers, cin, features))
    params = init_rows(models, keys, cin, features, num_layers)
    opt = jax.vmap(opt_init)(params)
    opt["bad"] = jnp.zeros((len(models),), jnp.int32)
    stepper = make_cnn_stepper(formulation, conv, act, layout)
    batches = _batches
    n_eval = min(n_sub, train_eval_size)
    eval_idx = jax.vmap(lambda k: train_subset(k, n_total, n_sub)[:n_eval])(keys)
    # pad every model's train-eval set to train_eval_size rows (masked): one program
    eval_idx = jnp.pad(eval_idx, ((0, 0), (0, max(0, min(train_eval_size, n_total) - n_eval))))
    record = sorted(set(int(e) for e in record_epochs if 0 <= e <= epochs))
    rows, mets = [], []

    def evaluate(params):
        te_loss, te_acc = evaluate_cnns(
            params, hyp.l2, data.test_x, data.test_y, act=act, conv=conv, layout=layout
        )
        # train metrics: each model on (the start of) its own training subset
        tr_loss, tr_acc = evaluate_cnns(
            params,
            hyp.l2,
            data.train_x[eval_idx],
            data.train_y[eval_idx],
            n_eval,
            act=act,
            conv=conv,
            layout=layout,
        )
        return np.stack(
            [np.asarray(te_acc), np.asarray(te_loss), np.asarray(tr_acc), np.asarray(tr_loss)],
            axis=1,
        )

    gstep = 0
    for epoch in range(epochs + 1):
        if epoch in record:
            rows.append(np.asarray(params))
            mets.append(evaluate(params))
        if epoch == epochs:
            break
        idx = batches(keys, epoch, n_total, n_sub, batch_size)
        for s in range(idx.shape[1]):
            params, opt = stepper(
                params, opt, hyp, keys, jnp.int32(gstep), data.train_x, data.train_y, idx[:, s]
            )
            gstep += 1
        if progress is not None:
            progress(int(idx.shape[1]) * n_models)
    return {
        "weights": np.stack(rows, 1).astype(np.float32)[:n_models],
        "metrics": np.stack(mets, 1)[:n_models],
        "steps": np.asarray(record, np.int64),
        "nonfinite_steps": np.asarray(opt["bad"], np.int64)[:n_models],
    }


# ======================================================================================
# Published layout: names, flat rows, layout.csv, metrics.csv.gz
# ======================================================================================


def keras_layout(
    num_layers: int = 3,
    in_channels: int = 1,
    features: int = 16,
    kernel_size: int = 3,
    num_classes: int = 10,
) -> list[tuple[str, str, str, tuple]]:
    """(varname, flax layer, role, shape) of the Small CNN's flat TF vector, in the
    published order: per layer bias, then kernel."""
    out, cin = [], in_channels
    for i in range(num_layers):
        tf = "conv2d" if i == 0 else f"conv2d_{i}"
        out.append((f"sequential/{tf}/bias:0", f"conv{i}", "bias", (features,)))
        out.append(
            (
                f"sequential/{tf}/kernel:0",
                f"conv{i}",
                "kernel",
                (kernel_size, kernel_size, cin, features),
            )
        )
        cin = features
    out.append(("sequential/dense/bias:0", "dense", "bias", (num_classes,)))
    out.append(("sequential/dense/kernel:0", "dense", "kernel", (cin, num_classes)))
    return out


def _layout_of(params) -> list:
    n = 0
    while f"conv{n}" in params:
        n += 1
    k = params["conv0"]["kernel"]
    return keras_layout(
        n, k.shape[-2], k.shape[-1], k.shape[-4], params["dense"]["kernel"].shape[-1]
    )


def flat_rows(params) -> jax.Array:
    """Stacked SmallCNN params (leading model axis) -> (K, P) published-layout rows."""
    lay = _layout_of(params)
    k = params["dense"]["bias"].shape[0]
    return jnp.concatenate(
        [params[layer][role].reshape(k, -1) for _, layer, role, _ in lay], axis=1
    )


def layout_csv(layout: Sequence[tuple]) -> str:
    """layout.csv text as published: pandas index column, varname, start_idx, end_idx,
    size, shape (a Python tuple)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["", "varname", "start_idx", "end_idx", "size", "shape"])
    pos = 0
    for i, (name, _, _, shape) in enumerate(layout):
        n = int(np.prod(shape))
        w.writerow([i, name, pos, pos + n, n, str(tuple(shape))])
        pos += n
    return buf.getvalue()


CONFIG_COLUMNS = (
    "config.activation",
    "config.b_init",
    "config.dataset",
    "config.dnn_architecture",
    "config.dropout",
    "config.epochs",
    "config.epochs_between_checkpoints",
    "config.init_std",
    "config.l2reg",
    "config.learning_rate",
    "config.num_layers",
    "config.num_units",
    "config.optimizer",
    "config.random_seed",
    "config.train_fraction",
    "config.w_init",
)


def write_csv_gz(path, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    """Write a gzipped CSV atomically (gzip mtime 0: same content, same bytes)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    _atomic_write(path, gzip.compress(buf.getvalue().encode(), mtime=0))


def read_csv_gz(path) -> dict[str, np.ndarray]:
    """Columns of a (gzipped if .gz) CSV: numeric columns as float64 arrays (int64 if all
    integral), others as str arrays; an unnamed leading column is kept as ''."""
    path = pathlib.Path(path)
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode()
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise ValueError(f"{path} is empty")
    header, body = rows[0], rows[1:]
    cols = {}
    for j, name in enumerate(header):
        vals = [r[j] if j < len(r) else "" for r in body]
        try:
            arr = np.asarray([float(v) if v != "" else np.nan for v in vals], np.float64)
            if (
                len(arr)
                and np.all(np.isfinite(arr))
                and np.all(arr == np.round(arr))
                and not any("." in v or "e" in v.lower() for v in vals)
            ):
                arr = arr.astype(np.int64)
        except ValueError:
            arr = np.asarray(vals, dtype=str)
        cols[name] = arr
    return cols


def _atomic_write(path, data: bytes) -> None:
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_save_npz(path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _atomic_write(path, buf.getvalue())


def _atomic_save_npy(path, array) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    _atomic_write(path, buf.getvalue())


# ======================================================================================
# Reading Small CNN Zoos (ours and published)
# ======================================================================================


@dataclasses.dataclass
class SmallCNNZoo:
    """A Small CNN Zoo in canonical form. `params` has flax SmallCNN's structure with a
    leading row axis (`params['conv0']['kernel']` is (N, 3, 3, 1, 16)); `flat` holds the
    rows as stored; `metrics` maps column name -> (N,) array; `spec` is the NetSpec of
    `SmallCNN` (flax source); `config` is our config.json (None for published zoos)."""

    params: dict
    flat: np.ndarray
    metrics: dict
    layout: list
    spec: wspec.NetSpec
    config: dict | None

    def __len__(self) -> int:
        return len(self.flat)

    def variables(self, i: int) -> dict:
        """Flax variables of row i, for `SmallCNN(act=...).apply`."""
        return {"params": jax.tree.map(lambda a: a[i], self.params)}

    def canonical(self) -> tuple:
        """Canonical weights (tuple of per-layer dicts, stacked rows) in `spec` order."""
        return tuple(
            {role: self.params[layer.name][role] for role, _ in layer.params}
            for layer in self.spec.layers
        )

    def module(self, i: int) -> subjects.SmallCNN:
        act = str(self.metrics["config.activation"][i])
        return subjects.SmallCNN(
            features=self.params["conv0"]["kernel"].shape[-1],
            num_layers=sum(k.startswith("conv") for k in self.params),
            act=act if act in subjects.ACTIVATIONS else "relu",
        )


def _parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in str(text).strip().strip("()[]").split(",") if v.strip())


def load_small_cnn_zoo(path, step: int | str | None = None) -> SmallCNNZoo:
    """Read a Small CNN Zoo folder: ours, or a published one (CIFAR10-GS, MNIST,
    Fashion-MNIST, SVHN-GS after extracting the `.tar.xz`). Needs `weights.npy` (or
    `all_weights.npy`), `layout.csv` and `metrics.csv.gz` (or `all_metrics.csv`).
    Variables are sliced by `layout.csv`'s start/end indices, whatever their order.
    `step`: None keeps every row, an int keeps rows of that epoch, 'last' keeps each
    model's last recorded row."""
    root = pathlib.Path(path)
    wfile = next(
        (root / f for f in ("weights.npy", "all_weights.npy") if (root / f).exists()), None
    )
    mfile = next(
        (
            root / f
            for f in ("metrics.csv.gz", "all_metrics.csv.gz", "all_metrics.csv", "metrics.csv")
            if (root / f).exists()
        ),
        None,
    )
    if wfile is None or mfile is None or not (root / "layout.csv").exists():
        raise FileNotFoundError(
            f"{root} is not a Small CNN Zoo folder: need weights.npy, "
            f"layout.csv and metrics.csv.gz (found "
            f"{sorted(p.name for p in root.glob('*'))[:10]})"
        )
    flat = np.load(wfile, mmap_mode="r")
    metrics = read_csv_gz(mfile)
    if len(next(iter(metrics.values()))) != flat.shape[0]:
        raise ValueError(
            f"{wfile} has {flat.shape[0]} rows but {mfile} has {len(next(iter(metrics.values())))}"
        )
    with open(root / "layout.csv") as f:
        layout_rows = list(csv.DictReader(f))
    rows = np.arange(flat.shape[0])
    if step is not None:
        steps = metrics["step"].astype(np.int64)
        if step == "last":
            key = metrics.get("modeldir", metrics.get("", None))
            if key is None:
                raise ValueError("step='last' needs a modeldir column")
            last = {}
            for r, (m, s) in enumerate(zip(key, steps, strict=True)):
                if m not in last or s > steps[last[m]]:
                    last[m] = r
            rows = np.asarray(sorted(last.values()))
        else:
            rows = np.nonzero(steps == int(step))[0]
    flat = np.asarray(flat[rows], np.float32)
    metrics = {k: v[rows] for k, v in metrics.items()}
    params: dict = {}
    tf_to_flax = {}
    convs = sorted(
        {
            r["varname"].split("/")[1]
            for r in layout_rows
            if r["varname"].split("/")[1].startswith("conv2d")
        },
        key=lambda s: int(s.split("_")[1]) if "_" in s else 0,
    )
    for i, c in enumerate(convs):
        tf_to_flax[c] = f"conv{i}"
    tf_to_flax["dense"] = "dense"
    for r in layout_rows:
        _, tf_layer, leaf = r["varname"].split("/")
        if tf_layer not in tf_to_flax:
            raise ValueError(f"layout.csv: unexpected variable {r['varname']!r}")
        start, end, shape = int(r["start_idx"]), int(r["end_idx"]), _parse_shape(r["shape"])
        if end - start != int(np.prod(shape)) or end > flat.shape[1]:
            raise ValueError(
                f"layout.csv row {r['varname']}: [{start}, {end}) does not fit "
                f"shape {shape} in rows of {flat.shape[1]}"
            )
        role = leaf.split(":")[0]
        params.setdefault(tf_to_flax[tf_layer], {})[role] = flat[:, start:end].reshape(
            len(flat), *shape
        )
    k0 = params["conv0"]["kernel"]
    module = subjects.SmallCNN(
        features=k0.shape[-1],
        num_layers=len(convs),
        kernel_size=k0.shape[1],
        num_classes=params["dense"]["kernel"].shape[-1],
    )
    example = jnp.zeros((1, 28, 28, k0.shape[-2]))
    spec = wspec.spec_from_flax(module, {"params": jax.tree.map(lambda a: a[0], params)}, example)
    cfg_file = root / "config.json"
    config = json.loads(cfg_file.read_text()) if cfg_file.exists() else None
    return SmallCNNZoo(params, flat, metrics, layout_rows, spec, config)


# ======================================================================================
# Generating a Small CNN Zoo: shards, resume, assembly
# ======================================================================================


def plan_shards(models: Sequence[Mapping], models_per_shard: int) -> list[list[dict]]:
    """Group models by (train fraction, activation) (a chunk trains together in one
    program), then cut into shards of at most `models_per_shard`, in model-id order
    within each group. Deterministic."""
    groups: dict[tuple, list] = {}
    for m in models:
        groups.setdefault((m["train_fraction"], m["activation"]), []).append(m)
    shards = []
    for f in sorted(groups):
        g = groups[f]
        shards += [g[i : i + models_per_shard] for i in range(0, len(g), models_per_shard)]
    return shards


def _shard_path(out, i: int) -> pathlib.Path:
    return pathlib.Path(out) / "shards" / f"shard_{i:05d}.npz"


def generate_cnn_zoo(
    cfg: Mapping, out, *, worker: int = 0, num_workers: int = 1, log: Callable[[str], None] = print
) -> bool:
    """Train the shards of a Small CNN Zoo config that this worker owns (shard i goes to
    worker i % num_workers) and are not written yet; each shard is written atomically as
    soon as it is done, so a killed run resumes where it stopped. Returns True when every
    shard exists (then `assemble_cnn_zoo` can run)."""
    from tqdm import tqdm

    out = pathlib.Path(out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    models = sample_hyper(cfg["hyper"], cfg["num_models"], cfg["seed"])
    shards = plan_shards(models, cfg["trainer"]["models_per_shard"])
    todo = [
        i
        for i in range(len(shards))
        if i % num_workers == worker and not _shard_path(out, i).exists()
    ]
    data = load_images(cfg["dataset"], max_train=cfg.get("max_train"), max_test=cfg.get("max_test"))
    n_total = int(data.train_x.shape[0])
    work = sum(
        len(shards[i])
        * (int(n_total * shards[i][0]["train_fraction"]) // cfg["batch_size"])
        * cfg["epochs"]
        for i in todo
    )
    log(
        f"worker {worker}/{num_workers}: {len(todo)} of {len(shards)} shards to train "
        f"({work} model-steps)"
    )
    bar = tqdm(total=work, unit="model-step", smoothing=0.05, mininterval=5, disable=work == 0)
    for i in todo:
        res = train_cnn_chunk(
            shards[i],
            data,
            seed=cfg["seed"],
            epochs=cfg["epochs"],
            record_epochs=cfg["record_epochs"],
            batch_size=cfg["batch_size"],
            train_eval_size=cfg["train_eval_size"],
            formulation=cfg["trainer"]["formulation"],
            conv=cfg["trainer"]["conv"],
            num_layers=cfg.get("num_layers", 3),
            features=cfg.get("features", 16),
            pad_to=cfg["trainer"]["models_per_shard"],
            progress=bar.update,
        )
        _atomic_save_npz(
            _shard_path(out, i), model_ids=np.asarray([m["model_id"] for m in shards[i]]), **res
        )
    bar.close()
    return all(_shard_path(out, i).exists() for i in range(len(shards)))


def assemble_cnn_zoo(cfg: Mapping, out, extra: Mapping | None = None) -> dict:
    """Join the shards into weights.npy, metrics.csv.gz, layout.csv and config.json.
    Returns the test-accuracy spread of the last recorded epoch."""
    out = pathlib.Path(out)
    models = sample_hyper(cfg["hyper"], cfg["num_models"], cfg["seed"])
    shards = plan_shards(models, cfg["trainer"]["models_per_shard"])
    by_id: dict[int, tuple] = {}
    for i in range(len(shards)):
        with np.load(_shard_path(out, i)) as z:
            for j, mid in enumerate(z["model_ids"]):
                by_id[int(mid)] = (
                    z["weights"][j],
                    z["metrics"][j],
                    z["steps"],
                    int(z["nonfinite_steps"][j]),
                )
    weights, rows = [], []
    rec = list(cfg["record_epochs"])
    between = rec[-1] - rec[-2] if len(rec) > 1 else cfg["epochs"]
    for m in models:
        w, met, steps, bad = by_id[m["model_id"]]
        modeldir = f"model_{m['model_id']:06d}"
        for c, s in enumerate(steps):
            weights.append(w[c])
            conf = [
                m["activation"],
                m["b_init"],
                cfg["dataset"],
                "cnn",
                m["dropout"],
                cfg["epochs"],
                between,
                m["init_std"],
                m["l2reg"],
                m["learning_rate"],
                cfg.get("num_layers", 3),
                cfg.get("features", 16),
                m["optimizer"],
                cfg["seed"],
                m["train_fraction"],
                m["w_init"],
            ]
            rows.append(
                [
                    f"{modeldir}/permanent_ckpt-{int(s)}",
                    *conf,
                    modeldir,
                    int(s),
                    *[float(v) for v in met[c]],
                    bad,
                ]
            )
    _atomic_save_npy(out / "weights.npy", np.stack(weights).astype(np.float32))
    write_csv_gz(
        out / "metrics.csv.gz",
        ["", *CONFIG_COLUMNS, "modeldir", "step", *METRICS, "nonfinite_steps"],
        rows,
    )
    cin = 1  # the Unterthiner preprocessing is greyscale
    layout = keras_layout(cfg.get("num_layers", 3), cin, cfg.get("features", 16))
    _atomic_write(out / "layout.csv", layout_csv(layout).encode())
    final = [r[-5] for r in rows if r[len(CONFIG_COLUMNS) + 2] == rec[-1]]
    return _write_zoo_config(out, cfg, final, extra)


def _write_zoo_config(out: pathlib.Path, cfg, final_test_accuracy, extra) -> dict:
    """config.json (the config, the spread of last-epoch test accuracy, `extra`); returns
    the spread."""
    final = np.asarray(final_test_accuracy)
    spread = {
        "test_accuracy_min": float(final.min()),
        "median": float(np.median(final)),
        "max": float(final.max()),
        "n": int(len(final)),
    }
    meta = {"config": _jsonable(cfg), "test_accuracy_spread_last_epoch": spread, **(extra or {})}
    _atomic_write(out / "config.json", json.dumps(meta, indent=1).encode())
    return spread


def _jsonable(cfg):
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    return json.loads(
        json.dumps(cfg, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
    )


# ======================================================================================
# Heterogeneous zoo: CNNs of varying depth / width / kernel / residual links, and MLPs
# ======================================================================================


class HeteroCNN(nn.Module):
    """Conv stack in the spirit of CNN Wild Park: layer i is Conv(widths[i],
    kernel_sizes[i], strides[i], 'SAME') + bias; `residual[i] = j >= 0` adds the output of
    layer j (after its activation) to layer i's pre-activation on the first
    min(channels) channels (j < i - 1, same spatial size); then the activation. Global
    average pooling and a Dense head named `dense`."""

    widths: Sequence[int]
    kernel_sizes: Sequence[int]
    strides: Sequence[int]
    residual: Sequence[int]
    act: str = "relu"
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        f = activation_fn(self.act)
        outs = []
        for i, (w, k, s) in enumerate(
            zip(self.widths, self.kernel_sizes, self.strides, strict=True)
        ):
            x = nn.Conv(w, (k, k), strides=s, padding="SAME", name=f"conv{i}")(x)
            j = self.residual[i]
            if j >= 0:
                r = outs[j]
                c = min(r.shape[-1], x.shape[-1])
                x = x + jnp.pad(r[..., :c], ((0, 0),) * 3 + ((0, x.shape[-1] - c),))
            x = f(x)
            outs.append(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="dense")(x)


class HeteroMLP(nn.Module):
    """Flatten, Dense + activation per hidden width (`dense{i}`), Dense logits: like
    `wsl.nn.subjects.MLP`, with every activation of `ACTIVATIONS`."""

    hidden: Sequence[int]
    act: str = "relu"
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        f = activation_fn(self.act)
        x = x.reshape(x.shape[0], -1)
        for i, h in enumerate(self.hidden):
            x = f(nn.Dense(h, name=f"dense{i}")(x))
        return nn.Dense(self.num_classes, name=f"dense{len(self.hidden)}")(x)


# Architecture families of the heterogeneous zoo (cross-architecture transfer): `base`
# CNNs have <= FAMILY_MAX_DEPTH layers, 3x3 kernels, widths <= FAMILY_MAX_WIDTH, no
# residual link; each other family changes one of these (`family_of`).
FAMILY_MAX_DEPTH, FAMILY_MAX_WIDTH = 3, 32
FAMILIES = ("base", "deeper", "wider", "kernels", "residual")


def family_of(arch: Mapping) -> str | None:
    """The family of an architecture dict (FAMILIES), 'mlp', or None for a CNN that
    changes more than one property of `base` (it belongs to no family). A residual link
    needs an earlier layer of the same size, i.e. depth >= 4 with the zoo's strides:
    'residual' CNNs are deeper by construction and count as one change."""
    if arch["kind"] != "cnn":
        return "mlp"
    res = max(arch["residual"]) >= 0
    changes = [
        name
        for name, changed in (
            ("deeper", len(arch["widths"]) > FAMILY_MAX_DEPTH and not res),
            ("wider", max(arch["widths"]) > FAMILY_MAX_WIDTH),
            ("kernels", set(arch["kernel_sizes"]) != {3}),
            ("residual", res),
        )
        if changed
    ]
    return "base" if not changes else changes[0] if len(changes) == 1 else None


def _cnn_arch(
    k, hetero, depth, widths, kernel, act, image_size, residual_prob, need_residual=False
):
    """A CNN architecture dict; residual links from an earlier same-size layer, each with
    probability `residual_prob` (at least one if `need_residual` and one is possible)."""
    strides = [int(s) for s in list(hetero["strides"])[:depth]]
    strides += [1] * (depth - len(strides))
    size = [image_size]
    for s in strides:
        size.append(-(-size[-1] // s))
    residual = [-1] * depth
    options = []
    for li in range(2, depth):  # from an earlier same-size layer, not the preceding
        cands = [j for j in range(li - 1) if size[j + 1] == size[li + 1]]
        options += [(li, j) for j in cands]
        u = float(jax.random.uniform(jax.random.fold_in(k[5], li)))
        if cands and u < residual_prob:
            residual[li] = cands[
                int(jax.random.randint(jax.random.fold_in(k[6], li), (), 0, len(cands)))
            ]
    if need_residual and options and max(residual) < 0:
        li, j = options[int(jax.random.randint(k[7], (), 0, len(options)))]
        residual[li] = j
    return {
        "kind": "cnn",
        "widths": [int(w) for w in widths],
        "kernel_sizes": [int(kernel)] * depth,
        "strides": strides,
        "residual": residual,
        "act": act,
    }


def _family_arch(k, hetero, family: str, act: str, image_size: int) -> dict:
    """A CNN of `family` (FAMILIES): `base`'s draw with exactly that property changed."""
    depths = [int(d) for d in hetero["cnn_depths"]]
    shallow = [d for d in depths if d <= FAMILY_MAX_DEPTH]
    deep = [d for d in depths if d > FAMILY_MAX_DEPTH]
    widths = [int(w) for w in hetero["cnn_widths"] if w <= FAMILY_MAX_WIDTH]
    wide = [int(w) for w in hetero.get("wide_widths", ()) if w > FAMILY_MAX_WIDTH]
    others = [int(s) for s in hetero["kernel_sizes"] if s != 3]
    if not shallow or not widths or 3 not in hetero["kernel_sizes"]:
        raise ValueError(
            "hetero.families needs cnn_depths <= 3, cnn_widths <= 32 and kernel size 3 "
            f"for the base family; got {depths}, {list(hetero['cnn_widths'])}, "
            f"{list(hetero['kernel_sizes'])}"
        )
    need = {"deeper": deep, "wider": wide, "kernels": others, "residual": deep}
    if family in need and not need[family]:
        raise ValueError(
            f"hetero.families has {family!r} but the options allow none: set cnn_depths > 3 "
            "(deeper, residual), wide_widths > 32 (wider) or kernel sizes other than 3"
        )
    depth = int(_choice(k[2], deep if family in ("deeper", "residual") else shallow, 1)[0])
    ws = [int(w) for w in _choice(k[3], widths + wide if family == "wider" else widths, depth)]
    if family == "wider":  # one or more layers wide
        if max(ws) <= FAMILY_MAX_WIDTH:
            ws[int(jax.random.randint(k[4], (), 0, depth))] = int(_choice(k[4], wide, 1)[0])
    kernel = int(_choice(k[4], others, 1)[0]) if family == "kernels" else 3
    res = hetero["residual_prob"] if family == "residual" else 0.0
    return _cnn_arch(k, hetero, depth, ws, kernel, act, image_size, res, family == "residual")


def sample_archs(hetero: Mapping, n: int, seed: int, image_size: int = 28) -> list[dict]:
    """`n` architecture dicts: {'kind': 'cnn', widths, kernel_sizes, strides, residual,
    act} or {'kind': 'mlp', hidden, act}, drawn from the options in `hetero`
    (mlp_fraction, cnn_depths, cnn_widths, kernel_sizes, per_layer_width, strides
    (per-layer list for the first layers, 1 after), residual_prob, mlp_depths,
    mlp_widths, activations; optional num_archs: draw that many architectures and give
    model i architecture i % num_archs, so that a CPU compiles each one once).

    With `families` ({family: fraction}, FAMILIES and optionally 'mlp'), each
    architecture first draws its family, then a CNN of exactly that family (`family_of`;
    `wide_widths` > 32 for 'wider'); otherwise every option is drawn independently and
    a CNN may change several properties of `base` at once."""
    pool = hetero.get("num_archs") or 0
    if pool and pool < n:
        archs = sample_archs({**hetero, "num_archs": 0}, pool, seed, image_size)
        return [archs[i % pool] for i in range(n)]
    families = dict(hetero.get("families") or {})
    weights = np.asarray(list(families.values()), np.float64)
    if families and (set(families) - {*FAMILIES, "mlp"} or weights.min() < 0 or weights.sum() <= 0):
        raise ValueError(
            f"hetero.families {families}: names in {FAMILIES} or 'mlp', fractions >= 0 "
            "with a positive sum"
        )
    cdf = np.cumsum(weights) / max(weights.sum(), 1e-12)
    out = []
    base = jax.random.fold_in(jax.random.key(seed), 2)
    for i in range(n):
        k = jax.random.split(jax.random.fold_in(base, i), 8)
        act = _choice(k[0], list(hetero["activations"]), 1)[0]
        if families:
            u = float(jax.random.uniform(k[1]))
            family = list(families)[min(int(np.searchsorted(cdf, u)), len(cdf) - 1)]
        else:
            family = "mlp" if float(jax.random.uniform(k[1])) < hetero["mlp_fraction"] else None
        if family == "mlp":
            depth = _choice(k[2], list(hetero["mlp_depths"]), 1)[0]
            hidden = _choice(k[3], list(hetero["mlp_widths"]), depth)
            out.append({"kind": "mlp", "hidden": [int(h) for h in hidden], "act": act})
            continue
        if family is not None:
            out.append(_family_arch(k, hetero, family, act, image_size))
            continue
        depth = int(_choice(k[2], list(hetero["cnn_depths"]), 1)[0])
        if hetero["per_layer_width"]:
            widths = _choice(k[3], list(hetero["cnn_widths"]), depth)
        else:
            widths = [_choice(k[3], list(hetero["cnn_widths"]), 1)[0]] * depth
        kernel = _choice(k[4], list(hetero["kernel_sizes"]), 1)[0]
        out.append(
            _cnn_arch(k, hetero, depth, widths, kernel, act, image_size, hetero["residual_prob"])
        )
    return out


def arch_module(arch: Mapping, num_classes: int = 10) -> nn.Module:
    """The flax module of an architecture dict from `sample_archs`."""
    if arch["kind"] == "cnn":
        return HeteroCNN(
            tuple(arch["widths"]),
            tuple(arch["kernel_sizes"]),
            tuple(arch["strides"]),
            tuple(arch["residual"]),
            arch["act"],
            num_classes,
        )
    if arch["kind"] == "mlp":
        return HeteroMLP(tuple(arch["hidden"]), arch["act"], num_classes)
    raise ValueError(f"unknown architecture kind {arch['kind']!r}")


def _module_train_step(module, params, opt, x, y, lr, opt_id, l2):
    def loss_fn(p):
        logits = module.apply({"params": p}, x)
        reg = l2 * sum(jnp.sum(jnp.square(v["kernel"])) for v in p.values())
        return cross_entropy(logits, y) + reg

    grads = jax.grad(loss_fn)(params)
    new_p, new_o = opt_update(params, opt, grads, opt_id, lr)
    ok = _finite(new_p)
    return (
        jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_p, params),
        jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_o, opt),
    )


def init_flax_default(module, x, key):
    """Flax's default init of a module of Dense/Conv layers (kernels lecun_normal, biases
    zero) from one jitted draw: `module.init` would compile once per architecture."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), x)["params"]
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    total = sum(int(np.prod(v.shape)) for _, v in leaves)
    u, z, t = (np.asarray(a[0]) for a in _draws(key[None], _bucket(total)))
    out, pos = [], 0
    for path, v in leaves:
        n = int(np.prod(v.shape))
        if str(getattr(path[-1], "key", path[-1])) == "kernel":
            out.append(keras_kernel("lecun_normal", v.shape, 0.0, u[pos:], z[pos:], t[pos:]))
        else:
            out.append(np.zeros(v.shape))
        pos += n
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a, jnp.float32) for a in out])


@functools.lru_cache(maxsize=512)
def _module_fns(module):
    step = jax.jit(functools.partial(_module_train_step, module), donate_argnums=(0, 1))

    @jax.jit
    def evaluate(params, x, y):
        logits = module.apply({"params": params}, x)
        logp = jax.nn.log_softmax(logits)
        nll = -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))
        return nll, jnp.mean(jnp.argmax(logits, -1) == y)

    return step, evaluate


def _eval_module(evaluate, params, x, y, chunk=2000):
    tot_nll, tot_acc, n = 0.0, 0.0, x.shape[0]
    for s in range(0, n, chunk):
        nll, acc = evaluate(params, x[s : s + chunk], y[s : s + chunk])
        m = min(chunk, n - s)
        tot_nll += float(nll) * m
        tot_acc += float(acc) * m
    return tot_nll / n, tot_acc / n


def train_hetero_model(
    arch: Mapping,
    hyper: Mapping,
    data: ImageSet,
    *,
    seed: int,
    model_id: int,
    epochs: int,
    record_epochs: Sequence[int],
    batch_size: int,
    train_eval_size: int,
) -> dict:
    """Train one heterogeneous-zoo model (flax init, Keras optimizer). Returns flat
    canonical weights per recorded epoch ((C, P)), metrics (C, 4) and steps."""
    module = arch_module(arch)
    key = model_key(seed, model_id)
    params = init_flax_default(module, data.train_x[:1], jax.random.fold_in(key, 7))
    opt = opt_init(params)
    step, evaluate = _module_fns(module)
    n_total = int(data.train_x.shape[0])
    n_sub = int(n_total * hyper["train_fraction"])
    sub = train_subset(key, n_total, n_sub)[: min(n_sub, train_eval_size)]
    lr, opt_id = (
        jnp.float32(hyper["learning_rate"]),
        jnp.int32(OPTIMIZERS.index(hyper["optimizer"])),
    )
    l2 = jnp.float32(hyper["l2reg"])
    spec = spec_of(arch)
    rows, mets, record = [], [], sorted(set(int(e) for e in record_epochs if 0 <= e <= epochs))
    for epoch in range(epochs + 1):
        if epoch in record:
            rows.append(flatten_params(spec, params))
            reg = float(l2 * sum(jnp.sum(jnp.square(v["kernel"])) for v in params.values()))
            te = _eval_module(evaluate, params, data.test_x, data.test_y)
            tr = _eval_module(evaluate, params, data.train_x[sub], data.train_y[sub])
            mets.append([te[1], te[0] + reg, tr[1], tr[0] + reg])
        if epoch == epochs:
            break
        idx = np.asarray(epoch_indices(key, epoch, n_total, n_sub, batch_size))
        for s in range(idx.shape[0]):
            params, opt = step(
                params, opt, data.train_x[idx[s]], data.train_y[idx[s]], lr, opt_id, l2
            )
    return {
        "weights": np.stack(rows),
        "metrics": np.asarray(mets, np.float64),
        "steps": np.asarray(record, np.int64),
    }


@functools.lru_cache(maxsize=1024)
def _spec_cached(arch_json: str, in_shape: tuple) -> wspec.NetSpec:
    arch = json.loads(arch_json)
    module = arch_module(arch)
    x = jnp.zeros((1, *in_shape))
    variables = module.init(jax.random.key(0), x)
    return wspec.spec_from_flax(module, variables, x)


def spec_of(arch: Mapping, in_shape: tuple = (28, 28, 1)) -> wspec.NetSpec:
    """NetSpec of an architecture dict (derived from its flax module)."""
    return _spec_cached(json.dumps(dict(arch), sort_keys=True), tuple(in_shape))


def flatten_params(spec: wspec.NetSpec, params) -> np.ndarray:
    """Flax params -> one canonical flat vector (layer by layer, kernel then bias)."""
    from wsl.weights import convert

    return convert.flatten(spec, convert.flax_to_canonical(spec, {"params": params})).astype(
        np.float32
    )


def hetero_shards(archs: Sequence[Mapping], per_shard: int) -> list[list[int]]:
    """Model ids grouped so that identical architectures (one compile) sit together."""
    order = sorted(range(len(archs)), key=lambda i: (json.dumps(archs[i], sort_keys=True), i))
    return [order[i : i + per_shard] for i in range(0, len(order), per_shard)]


def generate_hetero_zoo(
    cfg: Mapping, out, *, worker: int = 0, num_workers: int = 1, log: Callable[[str], None] = print
) -> bool:
    """Like `generate_cnn_zoo` for the heterogeneous zoo (one model at a time)."""
    from tqdm import tqdm

    out = pathlib.Path(out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    archs = sample_archs(cfg["hetero"], cfg["num_models"], cfg["seed"])
    hyps = sample_hyper(cfg["hyper"], cfg["num_models"], cfg["seed"])
    shards = hetero_shards(archs, cfg["trainer"]["models_per_shard"])
    todo = [
        i
        for i in range(len(shards))
        if i % num_workers == worker and not _shard_path(out, i).exists()
    ]
    data = load_images(cfg["dataset"], max_train=cfg.get("max_train"), max_test=cfg.get("max_test"))
    log(f"worker {worker}/{num_workers}: {len(todo)} of {len(shards)} shards to train")
    bar = tqdm(total=sum(len(shards[i]) for i in todo), unit="model", mininterval=5)
    for i in todo:
        res = []
        for mid in shards[i]:
            res.append(
                train_hetero_model(
                    archs[mid],
                    hyps[mid],
                    data,
                    seed=cfg["seed"],
                    model_id=mid,
                    epochs=cfg["epochs"],
                    record_epochs=cfg["record_epochs"],
                    batch_size=cfg["batch_size"],
                    train_eval_size=cfg["train_eval_size"],
                )
            )
            bar.update(1)
        sizes = [r["weights"].shape[1] for r in res]
        _atomic_save_npz(
            _shard_path(out, i),
            model_ids=np.asarray(shards[i]),
            sizes=np.asarray(sizes),
            weights=np.concatenate([r["weights"].reshape(-1) for r in res]),
            metrics=np.stack([r["metrics"] for r in res]),
            steps=res[0]["steps"],
        )
    bar.close()
    return all(_shard_path(out, i).exists() for i in range(len(shards)))


HETERO_COLUMNS = (
    "config.arch",
    "config.kind",
    "config.activation",
    "config.dataset",
    "config.epochs",
    "config.learning_rate",
    "config.l2reg",
    "config.optimizer",
    "config.random_seed",
    "config.train_fraction",
    "config.num_params",
)


def assemble_hetero_zoo(cfg: Mapping, out, extra: Mapping | None = None) -> dict:
    """Join heterogeneous shards: weights.npy (all rows' flat vectors concatenated),
    offsets.npy (row starts, N+1), metrics.csv.gz (config.arch is the architecture as
    JSON), config.json."""
    out = pathlib.Path(out)
    archs = sample_archs(cfg["hetero"], cfg["num_models"], cfg["seed"])
    hyps = sample_hyper(cfg["hyper"], cfg["num_models"], cfg["seed"])
    shards = hetero_shards(archs, cfg["trainer"]["models_per_shard"])
    by_id = {}
    for i in range(len(shards)):
        with np.load(_shard_path(out, i)) as z:
            pos, steps = 0, z["steps"]
            for j, mid in enumerate(z["model_ids"]):
                p, c = int(z["sizes"][j]), len(steps)
                by_id[int(mid)] = (
                    z["weights"][pos : pos + p * c].reshape(c, p),
                    z["metrics"][j],
                    steps,
                )
                pos += p * c
    flat, offsets, rows = [], [0], []
    for mid, (arch, h) in enumerate(zip(archs, hyps, strict=True)):
        w, met, steps = by_id[mid]
        modeldir = f"model_{mid:06d}"
        for c, s in enumerate(steps):
            flat.append(w[c])
            offsets.append(offsets[-1] + w.shape[1])
            rows.append(
                [
                    f"{modeldir}/permanent_ckpt-{int(s)}",
                    json.dumps(arch, sort_keys=True),
                    arch["kind"],
                    arch["act"],
                    cfg["dataset"],
                    cfg["epochs"],
                    h["learning_rate"],
                    h["l2reg"],
                    h["optimizer"],
                    cfg["seed"],
                    h["train_fraction"],
                    w.shape[1],
                    modeldir,
                    int(s),
                    *[float(v) for v in met[c]],
                ]
            )
    _atomic_save_npy(out / "weights.npy", np.concatenate(flat).astype(np.float32))
    _atomic_save_npy(out / "offsets.npy", np.asarray(offsets, np.int64))
    write_csv_gz(out / "metrics.csv.gz", ["", *HETERO_COLUMNS, "modeldir", "step", *METRICS], rows)
    last = max(cfg["record_epochs"])
    final = [r[-4] for r in rows if r[len(HETERO_COLUMNS) + 2] == last]
    return _write_zoo_config(out, cfg, final, extra)


@dataclasses.dataclass
class HeteroZoo:
    """A heterogeneous zoo: row i has architecture `archs[i]`, flat canonical weights
    `flat[offsets[i]:offsets[i+1]]` (layer by layer, kernel then bias, canonical axis
    order) and metrics columns `metrics[name][i]`."""

    flat: np.ndarray
    offsets: np.ndarray
    archs: list
    metrics: dict
    config: dict | None

    def __len__(self) -> int:
        return len(self.archs)

    def spec(self, i: int) -> wspec.NetSpec:
        return spec_of(self.archs[i])

    def weights(self, i: int) -> tuple:
        """Canonical weights of row i (tuple of per-layer dicts)."""
        from wsl.weights import convert

        return convert.unflatten(self.spec(i), self.flat[self.offsets[i] : self.offsets[i + 1]])

    def variables(self, i: int) -> dict:
        from wsl.weights import convert

        return convert.canonical_to_flax(self.spec(i), self.weights(i))

    def module(self, i: int) -> nn.Module:
        return arch_module(self.archs[i])


def load_hetero_zoo(path) -> HeteroZoo:
    """Read a heterogeneous zoo folder written by `assemble_hetero_zoo`."""
    root = pathlib.Path(path)
    for f in ("weights.npy", "offsets.npy", "metrics.csv.gz"):
        if not (root / f).exists():
            raise FileNotFoundError(f"{root} is not a heterogeneous zoo folder: no {f}")
    flat = np.load(root / "weights.npy", mmap_mode="r")
    offsets = np.load(root / "offsets.npy")
    metrics = read_csv_gz(root / "metrics.csv.gz")
    archs = [json.loads(a) for a in metrics["config.arch"]]
    if len(offsets) != len(archs) + 1 or offsets[-1] != flat.shape[0]:
        raise ValueError(f"{root}: offsets.npy does not match weights.npy / metrics rows")
    cfg_file = root / "config.json"
    config = json.loads(cfg_file.read_text()) if cfg_file.exists() else None
    return HeteroZoo(flat, offsets, archs, metrics, config)


# ======================================================================================
# FLOP counting (for the benchmark)
# ======================================================================================


def small_cnn_macs(
    image_size: int = 28,
    in_channels: int = 1,
    features: int = 16,
    num_layers: int = 3,
    kernel_size: int = 3,
    num_classes: int = 10,
) -> int:
    """Multiply-accumulates of one Small CNN forward pass on one image (convs + dense)."""
    macs, h, c = 0, image_size, in_channels
    for _ in range(num_layers):
        h = (h - kernel_size) // 2 + 1
        macs += h * h * features * kernel_size * kernel_size * c
        c = features
    return macs + c * num_classes


def now() -> float:
    return time.perf_counter()


# ======================================================================================
# Worker processes (one single-threaded XLA process per core measured fastest for many
# small models; see README)
# ======================================================================================

SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn_workers(argv: Sequence[str], num_workers: int, log_dir=None) -> None:
    """Run `argv + ['--worker_index=i', '--num_workers=n']` for i < n as child processes
    (single-threaded XLA each, killed with the parent), and wait; raise if any fails."""
    import subprocess
    import sys

    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + SINGLE_THREAD_XLA).strip()
    procs = []
    for i in range(num_workers):
        out = None
        if log_dir is not None:
            out = open(pathlib.Path(log_dir) / f"worker{i}.log", "ab")  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                [sys.executable, *argv, f"--worker_index={i}", f"--num_workers={num_workers}"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
                preexec_fn=_die_with_parent,
            )
        )
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"worker exit codes {codes}; see the worker logs")


def run_generation(
    generate: Callable,
    assemble: Callable,
    cfg,
    out,
    argv: Sequence[str],
    workers: int = 1,
    worker_index: int | None = None,
    num_workers: int = 1,
):
    """The driver of scripts/make_zoo.py and scripts/fit_inrs.py: `generate(cfg, out,
    worker=, num_workers=)` writes shards (resumable) and returns whether all exist;
    `assemble(cfg, out, extra=)` joins them. As a worker child (`worker_index` given) only
    generate; else spawn `workers` children running `argv` (the script's command line),
    check the shards, add this run's wall time to out/wall_seconds.txt and assemble.
    Returns assemble's summary (None in a child); exits with a message if shards are
    missing."""
    import sys

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # workers and reruns share compiles
        jax.config.update("jax_compilation_cache_dir", str((out / ".jax_cache").absolute()))
    if worker_index is not None:
        generate(cfg, out, worker=worker_index, num_workers=num_workers)
        return None
    t0 = time.time()
    if workers > 1:
        internal = ("--workers", "--worker_index", "--num_workers")
        spawn_workers([a for a in argv if not a.startswith(internal)], workers, log_dir=out)
    done = generate(cfg, out, worker=0, num_workers=1)  # after workers: checks the shards
    if not done:
        sys.exit("some shards are missing; rerun to continue")
    prev = out / "wall_seconds.txt"
    total = time.time() - t0 + (float(prev.read_text()) if prev.exists() else 0.0)
    prev.write_text(f"{total:.1f}")
    extra = {
        "command": " ".join(["python", *argv]),
        "wall_seconds_total": total,
        "machine": f"{os.cpu_count()} CPUs",
    }
    return assemble(cfg, out, extra=extra)
