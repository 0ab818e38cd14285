"""INR sets: one SIREN fitted per image, many at once with `vmap`, written in resumable
shards, read back as canonical weights.

**The SIREN variant, exactly** (`wsl.nn.subjects.SIREN`, the defaults below):

- Architecture 2 -> 32 -> 32 -> C (C = 1 grey, 3 RGB): two hidden layers
  `sin(omega_0 * (x W + b))` with **omega_0 = 30 in both** (first and hidden), and a
  **linear** last layer. 1,185 parameters for C = 1.
- Initialisation: first layer W ~ U(-1/in, 1/in) (= U(-1/2, 1/2)); later layers (the
  hidden sine layer and the linear output layer) W ~ U(-sqrt(6/in)/30, sqrt(6/in)/30);
  **every bias ~ U(-1/sqrt(in), 1/sqrt(in))** (PyTorch `nn.Linear`'s default, as in
  Sitzmann's reference code).
- **No output offset**: the network output is the pixel value itself. Targets are
  pixels / 255, i.e. in [0, 1] (no centring). (DWSNets' INRs differ: no first-layer
  init (both sine layers U(-sqrt(6/in)/30, +)), zero biases in the sine layers,
  `nn.Linear` default init for the last layer, and `+ 0.5` added to the output; see
  `wsl.data.published`. Made that way our INRs reach only ~21-24 dB; StatNN classifies
  them better than the Sitzmann-style ones, NG-GNN at smoke budget no better: issue 5.
  The config keys `siren_variant = "dwsnets"` and `output_offset = 0.5` make sets that way,
  e.g. `experiments/inr_mnist_dws.py`; `INRSet.module()` then includes the offset.)
- Coordinates: pixel (row r, column c) of an H x W image is the point
  (x, y) = (linspace(-1, 1, W)[c], linspace(-1, 1, H)[r]) (x = column, as DWSNets'
  `make_coordinates`), pixels in row-major order.
- The fitter evaluates sin with `fast_sin` (a polynomial, < 2e-7 from float32 sin):
  the weights are plain SIREN weights for `jnp.sin`.
- Fitting: full batch (all H*W pixels every step), mean squared error over pixels and
  channels, Adam (optax defaults b1 .9, b2 .999, eps 1e-8) at a constant learning rate,
  `steps` steps; PSNR = 10 log10(1 / MSE) of the final network on its own image.

**Files**: `weights.npy` (N x P float32, canonical flat order of `spec`: per layer
kernel (in, out) then bias), `layout.csv` (flax names), `index.npz` (`label`, `split`
0 = train / 1 = test image, `image_index` into that split, `psnr`) and `config.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wsl.data import images
from wsl.data.zoo import _atomic_save_npy, _atomic_save_npz, _atomic_write, _jsonable
from wsl.nn import subjects
from wsl.weights import convert
from wsl.weights import spec as wspec


def coordinates(height: int, width: int) -> jax.Array:
    """(H*W, 2) pixel coordinates (x = column, y = row), each in [-1, 1], row-major."""
    ys, xs = jnp.meshgrid(jnp.linspace(-1, 1, height), jnp.linspace(-1, 1, width), indexing="ij")
    return jnp.stack([xs.reshape(-1), ys.reshape(-1)], axis=-1)


def siren_module(
    out_features: int = 1,
    hidden=(32, 32),
    omega_0: float = 30.0,
    variant: str = "sitzmann",
    offset: float = 0.0,
):
    """The flax SIREN of an INR set (`variant`: its initialisation, `offset`: added to the
    output; see `subjects.SIREN`)."""
    return subjects.SIREN(
        hidden=tuple(hidden),
        out_features=out_features,
        omega_0=omega_0,
        variant=variant,
        offset=float(offset),
    )


def siren_from_config(cfg: Mapping, out_features: int):
    """`siren_module` of an INR-set config (`hidden`, `omega_0`, `siren_variant`,
    `output_offset`; the last two default to Sitzmann's SIREN without offset)."""
    return siren_module(
        out_features,
        tuple(cfg.get("hidden", (32, 32))),
        cfg.get("omega_0", 30.0),
        cfg.get("siren_variant", "sitzmann"),
        cfg.get("output_offset", 0.0),
    )


@functools.lru_cache(maxsize=16)
def siren_spec(out_features: int = 1, hidden=(32, 32), omega_0: float = 30.0) -> wspec.NetSpec:
    module = siren_module(out_features, hidden, omega_0)
    x = jnp.zeros((1, 2))
    return wspec.spec_from_flax(module, module.init(jax.random.key(0), x), x)


# sin / cos on [-pi, pi] after Cody-Waite reduction by 2 pi: odd degree-13 and even
# degree-14 polynomials fitted (near-minimax) to float64 sin / cos; max abs error < 2e-7
# in float32 for |x| < 1e4. XLA:CPU's sin is ~25x slower than a multiply and was the
# SIREN fitter's bottleneck; this one vectorises and fuses with the matmul epilogue.
_SIN = (
    9.99999994e-01,
    -1.66666646e-01,
    8.33331045e-03,
    -1.98401578e-04,
    2.75294978e-06,
    -2.46773309e-08,
    1.34526188e-10,
)
_COS = (
    9.99999999e-01,
    -4.99999998e-01,
    4.16666631e-02,
    -1.38888607e-03,
    2.48004788e-05,
    -2.75335303e-07,
    2.05927786e-09,
    -9.68673170e-12,
)
_INV_2PI, _C1, _C2 = 0.15915494309189535, 6.28125, 0.0019353071795864769


def _reduce(x):
    k = jnp.round(x * _INV_2PI)
    return (x - k * _C1) - k * _C2


def _horner(coeffs, z):
    out = jnp.full_like(z, coeffs[-1])
    for c in coeffs[-2::-1]:
        out = out * z + c
    return out


def fast_cos(x):
    """cos(x) to < 2e-7 absolute (float32), vectorisable (see `fast_sin`)."""
    r = _reduce(x)
    return _horner(_COS, r * r)


@jax.custom_jvp
def fast_sin(x):
    """sin(x) to < 2e-7 absolute (float32): reduction by 2 pi, then a polynomial."""
    r = _reduce(x)
    return r * _horner(_SIN, r * r)


@fast_sin.defjvp
def _fast_sin_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return fast_sin(x), fast_cos(x) * t


def siren_apply(params, coords, omega_0: float = 30.0):
    """`wsl.nn.subjects.SIREN.apply` as a function of its params (`dense0`, `dense1`,
    ...), with `fast_sin`: same weights, same function to ~1e-6."""
    n = len(params)
    h = coords
    for i in range(n):
        h = jnp.dot(h, params[f"dense{i}"]["kernel"]) + params[f"dense{i}"]["bias"]
        if i < n - 1:
            h = fast_sin(omega_0 * h)
    return h


def psnr(mse):
    return -10.0 * jnp.log10(mse)


@functools.partial(jax.jit, static_argnames=("module", "steps", "lr", "unroll", "target_psnr"))
def fit_sirens(
    keys,
    targets,
    coords,
    *,
    module,
    steps: int,
    lr: float,
    unroll: int = 1,
    target_psnr: float = 0.0,
):
    """Fit one SIREN per target image, all at once: `targets` (K, H*W, C), `keys` (K,).
    Returns (params stacked over K, final PSNR (K,)). Each INR's result depends only on
    its key and image (vmap over INRs; a scan over steps). `target_psnr` > 0: early
    stopping, as the DWSNets sets were made: an INR whose PSNR has reached it takes no
    further step."""
    init = jax.vmap(lambda k: module.init(k, coords[:1])["params"])(keys)
    tx = optax.adam(lr)

    def loss_fn(p, t):
        return jnp.mean(jnp.square(siren_apply(p, coords, module.omega_0) + module.offset - t))

    def one_step(p, o, t):
        loss, g = jax.value_and_grad(loss_fn)(p, t)
        upd, o_new = tx.update(g, o, p)
        p_new = optax.apply_updates(p, upd)
        if target_psnr <= 0:
            return p_new, o_new
        done = psnr(loss) >= target_psnr  # reached: keep this INR as it is
        return jax.tree.map(lambda a, b: jnp.where(done, a, b), (p, o), (p_new, o_new))

    step = jax.vmap(one_step)

    def body(carry, _):
        p, o = carry
        return step(p, o, targets), None

    (params, _), _ = jax.lax.scan(
        body, (init, jax.vmap(tx.init)(init)), None, length=steps, unroll=unroll
    )
    mse = jax.vmap(loss_fn)(params, targets)
    return params, psnr(mse)


def inr_key(seed: int, index: int) -> jax.Array:
    """Key of INR number `index` (position in the set) of a set with seed `seed`."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 3), index)


def plan(num_train: int, num_test: int, train_size: int, test_size: int) -> np.ndarray:
    """(N, 2) rows (split, image_index): the first `num_train` training images, then the
    first `num_test` test images."""
    if num_train > train_size or num_test > test_size:
        raise ValueError(
            f"asked for {num_train}/{num_test} INRs but the data set has "
            f"{train_size}/{test_size} images"
        )
    return np.concatenate(
        [
            np.stack([np.zeros(num_train, int), np.arange(num_train)], 1),
            np.stack([np.ones(num_test, int), np.arange(num_test)], 1),
        ]
    )


def _shard_path(out, i: int) -> pathlib.Path:
    return pathlib.Path(out) / "shards" / f"shard_{i:05d}.npz"


def _images(name: str):
    d = images.load(name)
    return (d.train_x, d.train_y), (d.test_x, d.test_y)


def _fit_in_programs(keys, targets, coords, module, cfg: Mapping):
    """`fit_sirens` over a shard in programs of `inrs_per_program` INRs (the last one
    padded to the full size, so one program is compiled): small programs keep a step's
    activations in cache. Measured (128 Fashion-MNIST INRs, 200 steps, one process):
    21.3 s in one program of 128, 7.9 s in programs of 8, 5.9 s of 4, 5.7 s of 2, 6.2 s
    of 1. Each INR's result depends only on its key and image: the grouping changes
    nothing (same PSNRs)."""
    n, size = len(keys), int(cfg.get("inrs_per_program") or len(keys))
    parts, psnrs = [], []
    for a in range(0, n, size):
        kk, tt = keys[a : a + size], targets[a : a + size]
        if len(kk) < size:
            pad = size - len(kk)
            kk = jnp.concatenate([kk, jnp.repeat(kk[:1], pad, 0)])
            tt = jnp.concatenate([tt, jnp.repeat(tt[:1], pad, 0)])
        params, p = fit_sirens(
            kk,
            tt,
            coords,
            module=module,
            steps=cfg["steps"],
            lr=cfg["learning_rate"],
            target_psnr=cfg.get("target_psnr", 0.0),
        )
        parts.append(params)
        psnrs.append(p)
    params = jax.tree.map(lambda *a: jnp.concatenate(a)[:n], *parts)
    return params, jnp.concatenate(psnrs)[:n]


def generate_inr_set(
    cfg: Mapping, out, *, worker: int = 0, num_workers: int = 1, log: Callable[[str], None] = print
) -> bool:
    """Fit the shards of an INR-set config owned by this worker that are not written yet
    (each shard written atomically when done, so a killed run resumes). True when every
    shard exists."""
    from tqdm import tqdm

    out = pathlib.Path(out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    (tx, ty), (vx, vy) = _images(cfg["dataset"])
    rows = plan(cfg["num_train"], cfg["num_test"], len(tx), len(vx))
    k = cfg["inrs_per_shard"]
    n_shards = -(-len(rows) // k)
    todo = [
        i for i in range(n_shards) if i % num_workers == worker and not _shard_path(out, i).exists()
    ]
    h, w, c = tx.shape[1:]
    module = siren_from_config(cfg, c)
    coords = coordinates(h, w)
    log(f"worker {worker}/{num_workers}: {len(todo)} of {n_shards} shards to fit")
    bar = tqdm(total=sum(len(rows[i * k : (i + 1) * k]) for i in todo), unit="INR", mininterval=5)
    spec = siren_spec(c, tuple(cfg["hidden"]), cfg["omega_0"])
    for i in todo:
        sel = rows[i * k : (i + 1) * k]
        imgs = np.stack([(tx if s == 0 else vx)[j] for s, j in sel])
        labels = np.asarray([(ty if s == 0 else vy)[j] for s, j in sel])
        targets = jnp.asarray(images.preprocess(imgs, "unit").reshape(len(sel), h * w, c))
        keys = jnp.stack([inr_key(cfg["seed"], i * k + j) for j in range(len(sel))])
        params, p = _fit_in_programs(keys, targets, coords, module, cfg)
        flat = np.stack(
            [
                convert.flatten(
                    spec,
                    convert.flax_to_canonical(
                        spec, {"params": jax.tree.map(lambda a, j=j: np.asarray(a[j]), params)}
                    ),
                )
                for j in range(len(sel))
            ]
        ).astype(np.float32)
        _atomic_save_npz(
            _shard_path(out, i),
            weights=flat,
            label=labels,
            split=sel[:, 0],
            image_index=sel[:, 1],
            psnr=np.asarray(p)[: len(sel)],
        )
        bar.update(len(sel))
    bar.close()
    return all(_shard_path(out, i).exists() for i in range(n_shards))


def assemble_inr_set(cfg: Mapping, out, extra: Mapping | None = None) -> dict:
    """Join the shards into weights.npy, index.npz, layout.csv, config.json. Returns
    PSNR statistics."""
    out = pathlib.Path(out)
    (tx, _), (vx, _) = _images(cfg["dataset"])
    rows = plan(cfg["num_train"], cfg["num_test"], len(tx), len(vx))
    k = cfg["inrs_per_shard"]
    parts = []
    for i in range(-(-len(rows) // k)):
        with np.load(_shard_path(out, i)) as z:
            parts.append({n: z[n] for n in z.files})
    cat = {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}
    _atomic_save_npy(out / "weights.npy", cat.pop("weights"))
    _atomic_save_npz(out / "index.npz", **cat)
    spec = siren_spec(tx.shape[-1], tuple(cfg["hidden"]), cfg["omega_0"])
    _atomic_write(out / "layout.csv", convert.write_layout(spec).encode())
    stats = {
        "psnr_mean": float(cat["psnr"].mean()),
        "psnr_min": float(cat["psnr"].min()),
        "psnr_max": float(cat["psnr"].max()),
        "n": int(len(cat["psnr"])),
    }
    meta = {"config": _jsonable(cfg), "psnr": stats, "siren": SIREN_DESCRIPTION, **(extra or {})}
    _atomic_write(out / "config.json", json.dumps(meta, indent=1).encode())
    return stats


SIREN_DESCRIPTION = (
    "SIREN 2-32-32-C: sin(30 (xW+b)) x2, linear output, no output offset; first W ~ "
    "U(-1/in, 1/in), later W ~ U(-sqrt(6/in)/30, sqrt(6/in)/30), all biases ~ "
    "U(-1/sqrt(in), 1/sqrt(in)); targets pixels/255 in [0,1]; coords (x=col, y=row) in "
    "[-1,1], row-major; full-batch MSE, Adam."
)


@dataclasses.dataclass
class INRSet:
    """An INR set: `flat` (N, P) canonical flat rows of `spec`; `label`, `split`
    (0 train / 1 test image), `image_index`, `psnr` (N,) arrays."""

    flat: np.ndarray
    label: np.ndarray
    split: np.ndarray
    image_index: np.ndarray
    psnr: np.ndarray
    spec: wspec.NetSpec
    config: dict | None

    def __len__(self) -> int:
        return len(self.flat)

    def weights(self, i: int) -> tuple:
        return convert.unflatten(self.spec, self.flat[i])

    def variables(self, i: int) -> dict:
        return convert.canonical_to_flax(self.spec, self.weights(i))

    def module(self):
        """The flax SIREN these weights belong to."""
        hidden = tuple(layer.out_features for layer in self.spec.layers[:-1])
        cfg = {**(self.config or {}).get("config", {}), "hidden": hidden}
        return siren_from_config(cfg, self.spec.layers[-1].out_features)


def load_inr_set(path) -> INRSet:
    """Read an INR set folder written by `assemble_inr_set`."""
    root = pathlib.Path(path)
    for f in ("weights.npy", "index.npz", "config.json"):
        if not (root / f).exists():
            raise FileNotFoundError(f"{root} is not an INR set folder: no {f}")
    meta = json.loads((root / "config.json").read_text())
    cfg = meta["config"]
    flat = np.load(root / "weights.npy", mmap_mode="r")
    with np.load(root / "index.npz") as z:
        idx = {n: z[n] for n in z.files}
    channels = 3 if cfg["dataset"] == "cifar10" else 1
    spec = siren_spec(channels, tuple(cfg["hidden"]), cfg["omega_0"])
    if flat.shape[1] != spec.num_params:
        raise ValueError(
            f"{root}/weights.npy rows have {flat.shape[1]} values, the SIREN "
            f"of config.json has {spec.num_params}"
        )
    return INRSet(flat, idx["label"], idx["split"], idx["image_index"], idx["psnr"], spec, meta)


def siren_macs(pixels: int = 784, hidden=(32, 32), out_features: int = 1) -> int:
    """Multiply-accumulates of one SIREN forward pass over `pixels` coordinates."""
    dims = [2, *hidden, out_features]
    return pixels * sum(a * b for a, b in zip(dims[:-1], dims[1:], strict=True))
