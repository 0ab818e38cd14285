"""Property prediction from weights: the harness of the neural-graph and SNE tables.

A data set of networks of one architecture (a Small CNN Zoo: regress each network's test
accuracy; an INR set: classify the image each SIREN represents) is fed to any encoder of
`wsl.nn` through one training loop (`wsl.train.loop`). The batch holds the networks'
canonical weights (`wsl.weights.convert`), so weight-space augmentations run inside the
jitted step, and each encoder's input is built there from the weights:

| encoder    | module                    | input (built per step from the weights)          |
|------------|---------------------------|--------------------------------------------------|
| `MLP`      | `baselines.MLP`           | flat vector                                      |
| `StatNN`   | `baselines.StatNN`        | per-layer statistics, standardised (train set)   |
| `DeepSets` | `baselines.DeepSets`      | (value, layer position, is-bias) elements        |
| `NG-GNN`   | `gnn.NGGNN`               | neural graph (`wsl.weights.graph`), one per net  |
| `NG-T`     | `transformer.NGT`         | neural graph                                     |
| `SNE`      | `sne.SNE`                 | chunk set (`wsl.weights.chunk`)                  |

Weights are standardised per (layer, kernel/bias) with training-set statistics (a scalar
shift and scale per array: hidden-neuron permutations commute with it), unless
`inputs.standardise` is False (raw weights, as the neural-graphs reference feeds CNN zoos).
The positional embedding sizes of the graph encoders (`max_inputs`, ...) and PNA's average
log degree are taken from the architecture unless the config sets them.

Losses: accuracy regression with 'bce' (sigmoid output, binary cross-entropy against the
accuracy, as the neural-graphs reference's NG-T runs; its NG-GNN runs use 'mse') or 'mse';
classification with cross-entropy.
`invariance_weight > 0` adds the logit-invariance term (SNE, Andreis et al. 2024):
mean (f(w) - f(pi w))^2 with pi a random hidden-neuron permutation of each network. Unset
(None), it is the encoder's own (`INVARIANCE_WEIGHTS`): 1.0 for SNE, whose method the
regulariser is part of (the paper learns SNE's invariance with it instead of weight tying;
its weight is not given there, 1.0 is ours), 0 for the others; on a heterogeneous zoo, where
networks of different architectures cannot be permuted as one batch, unset means 0.
Augmentations (`augment.*`, training only, applied to the raw weights, then standardised):
a random hidden-neuron permutation; for INRs the image translated, rotated and rescaled
through the first layer (`translate`, `rotate`, `input_scale`: `augment_inr`); Gaussian
weight noise (std `noise` times the network's own std of that array, so unchanged by the
standardisation; single values, e.g. a 1-unit output bias, get none), weight dropout
(rate `dropout`, survivors scaled by 1 / (1 - rate)): the neural-graphs reference's
(mkofinas/neural-graphs `CNNDataset._augment`; its CNN-zoo runs use noise 0.1, dropout 0.01).

Metrics (results.json): regression — Kendall tau, R^2 and RMSE on val and test;
classification — accuracy and loss; both — `test_invariance_gap`, the mean |f(w) - f(pi w)|
over test networks (0 for an invariant encoder up to float rounding).

`data.test_path` (optional) evaluates on a second data set of the same architecture
(cross-dataset transfer: train on one zoo, test on another); its metrics are reported
with the prefix `transfer_`.

Config (see experiments/ng_cnn_generalization.py):
    seed
    data.{kind: 'cnn_zoo' | 'inr_set', path, test_path, step, target, split, max_networks}
    encoder.{name, kwargs}
    inputs.{k_max, reverse, chunk_size}
    augment.{permute, noise, dropout}
    loss, invariance_weight
    optimizer.{...}                                      # classify.make_optimizer
    train.{num_steps, batch_size, eval_batch_size, ...}  # plus the loop's keys
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import jraph
import ml_collections
import numpy as np
import optax
import scipy.stats

from wsl.data import inr as inr_data
from wsl.data import splits
from wsl.data import zoo as zoo_data
from wsl.methods import classify
from wsl.nn import baselines, gnn, sne, transformer
from wsl.train import loop, parallel
from wsl.weights import chunk as chunking
from wsl.weights import graph as wgraph
from wsl.weights.spec import NetSpec

RESULTS_FILE = "results.json"
ENCODERS = {
    "MLP": (baselines.MLP, "flat"),
    "StatNN": (baselines.StatNN, "stats"),
    "DeepSets": (baselines.DeepSets, "elements"),
    "NG-GNN": (gnn.NGGNN, "graph"),
    "NG-T": (transformer.NGT, "graph"),
    "SNE": (sne.SNE, "chunks"),
}
KINDS = ("cnn_zoo", "inr_set", "hetero_zoo")
# Architecture families of a heterogeneous zoo (experiments/zoo_hetero.py,
# wsl.data.zoo.family_of), for cross-architecture transfer: base CNNs (<= 3 layers, 3x3
# kernels, widths <= 32, no residual link) and one family per changed property.
FAMILIES = {"all_cnn": lambda a: a["kind"] == "cnn"} | {
    name: functools.partial(lambda a, n: zoo_data.family_of(a) == n, n=name)
    for name in zoo_data.FAMILIES
}
MIXED_ENCODERS = ("NG-GNN", "NG-T", "SNE")
# the logit-invariance weight of an encoder when config.invariance_weight is unset
INVARIANCE_WEIGHTS = {"SNE": 1.0}
LOSSES = ("bce", "mse")


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass
class WeightData:
    """Networks of one architecture: `weights` canonical (tuple of per-layer dicts of
    stacked (N, ...) arrays), `target` (N,) float accuracy or int class, `splits`
    {'train', 'val', 'test'} -> row indices, `num_classes` (0: regression).
    Mixed architectures (a heterogeneous zoo): `spec` None, `specs` (N,) NetSpecs and
    `weights` a list of N canonical weight tuples."""

    spec: NetSpec | None
    weights: tuple | list
    target: np.ndarray
    splits: dict
    num_classes: int
    source: str
    specs: list | None = None

    def __len__(self) -> int:
        return len(self.target)

    @property
    def mixed(self) -> bool:
        return self.spec is None


def _finite_rows(weights) -> np.ndarray:
    ok = None
    for arrays in weights:
        for a in arrays.values():
            f = np.isfinite(a.reshape(len(a), -1)).all(1)
            ok = f if ok is None else ok & f
    return ok


def _take(weights, rows) -> tuple:
    return tuple({k: np.ascontiguousarray(v[rows]) for k, v in a.items()} for a in weights)


def _subsample(rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    if not n or n >= len(rows):
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, n, replace=False))


def load_data(data_config, seed: int, path=None) -> WeightData:
    """A CNN zoo (target: a metrics column, default test accuracy) or an INR set (target:
    the image label). Rows with non-finite weights or targets are dropped."""
    kind = data_config.kind
    if kind not in KINDS:
        raise loop.UserError(f"unknown data.kind {kind!r}; choose one of {KINDS}")
    path = pathlib.Path(os.path.expanduser(str(path or data_config.path)))
    if not path.exists():
        script = "make_zoo.py" if kind == "cnn_zoo" else "fit_inrs.py"
        raise loop.UserError(
            f"data.path {str(path)!r} does not exist; generate it with scripts/{script} "
            "(see README: Model zoos and INR sets) or point data.path at it"
        )
    sizes = tuple(data_config.get("split", (0.7, 0.1, 0.2)))
    max_n = data_config.get("max_networks", 0)
    try:
        if kind == "hetero_zoo":
            return _load_hetero(data_config, seed, path, sizes, max_n)
        if kind == "cnn_zoo":
            z = zoo_data.load_small_cnn_zoo(path, step=data_config.get("step", "last"))
            target_name = data_config.get("target", "test_accuracy")
            if target_name not in z.metrics:
                raise loop.UserError(
                    f"data.target {target_name!r} is not a column of {path}/metrics; "
                    f"choose one of {sorted(z.metrics)}"
                )
            weights = tuple(
                {k: np.asarray(v, np.float32) for k, v in a.items()} for a in z.canonical()
            )
            target = np.asarray(z.metrics[target_name], np.float32)
            spec, num_classes = z.spec, 0
            ok = _finite_rows(weights) & np.isfinite(target)
            rows = _subsample(np.nonzero(ok)[0], max_n, seed)
            parts = splits.random_split(len(rows), sizes, seed)
            split_rows = {k: rows[v] for k, v in parts.items()}
        else:
            s = inr_data.load_inr_set(path)
            spec = s.spec
            flat = np.asarray(s.flat, np.float32)
            weights = _unflatten_rows(spec, flat)
            target = np.asarray(s.label, np.int32)
            num_classes = int(target.max()) + 1 if len(target) else 0
            ok = _finite_rows(weights)
            train_rows = _subsample(np.nonzero(ok & (s.split == 0))[0], max_n, seed)
            test_rows = np.nonzero(ok & (s.split == 1))[0]
            val_frac = sizes[1] / max(sizes[0] + sizes[1], 1e-9)
            cut = splits.random_split(
                len(train_rows), (1 - val_frac, val_frac), seed, ("train", "val")
            )
            split_rows = {k: train_rows[v] for k, v in cut.items()} | {"test": test_rows}
    except (FileNotFoundError, ValueError) as e:
        raise loop.UserError(f"data.path: {e}") from None
    if min(len(v) for v in split_rows.values()) == 0:
        raise loop.UserError(
            f"{path}: a split is empty ({ {k: len(v) for k, v in split_rows.items()} }); "
            "use a larger data set or other data.split fractions"
        )
    return WeightData(spec, weights, target, split_rows, num_classes, str(path))


def _family(name: str):
    if name not in FAMILIES:
        raise loop.UserError(
            f"unknown architecture family {name!r}; choose one of {sorted(FAMILIES)}"
        )
    return FAMILIES[name]


def _load_hetero(data_config, seed, path, sizes, max_n) -> WeightData:
    """A heterogeneous zoo's last-epoch rows of family `data.family` (splits by seed)."""
    z = zoo_data.load_hetero_zoo(path)
    steps = np.asarray(z.metrics["step"]).astype(np.int64)
    target_name = data_config.get("target", "test_accuracy")
    target = np.asarray(z.metrics[target_name], np.float32)
    fam = _family(data_config.get("family", "all_cnn"))
    ok = (steps == steps.max()) & np.isfinite(target)
    ok &= np.asarray([fam(a) for a in z.archs])
    rows = _subsample(np.nonzero(ok)[0], max_n, seed)
    rows = np.asarray(
        [r for r in rows if np.all(np.isfinite(z.flat[z.offsets[r] : z.offsets[r + 1]]))], np.int64
    )
    family = data_config.get("family", "all_cnn")
    if len(rows) == 0:
        raise loop.UserError(f"{path} has no trained networks of family {family!r}")
    specs = [z.spec(int(r)) for r in rows]
    weights = [z.weights(int(r)) for r in rows]
    parts = splits.random_split(len(rows), sizes, seed)
    if sizes[0] > 0 and min(len(v) for v in parts.values()) == 0:
        raise loop.UserError(
            f"{path}: family {family!r} has {len(rows)} networks, too few for data.split {sizes}"
        )
    return WeightData(
        None,
        weights,
        target[rows],
        parts,
        0,
        f"{path} ({data_config.get('family', 'all_cnn')})",
        specs,
    )


def _unflatten_rows(spec: NetSpec, flat: np.ndarray) -> tuple:
    """(N, P) canonical flat rows -> canonical weights with a leading (N,) axis."""
    out, pos = [], 0
    for layer in spec.layers:
        arrays = {}
        for role, shape in layer.shapes:
            size = int(np.prod(shape))
            arrays[role] = flat[:, pos : pos + size].reshape(len(flat), *shape)
            pos += size
        out.append(arrays)
    if pos != flat.shape[1]:
        raise ValueError(f"rows have {flat.shape[1]} values, the spec {pos}")
    return tuple(out)


def weight_stats(weights, rows) -> tuple:
    """Per (layer, role): (mean, std) over the given rows, as Python floats."""
    return tuple(
        {k: (float(v[rows].mean()), float(v[rows].std()) or 1.0) for k, v in a.items()}
        for a in weights
    )


def standardise(weights, stats, inverse: bool = False) -> tuple:
    """Per (layer, array) (w - mean) / std with `stats` (`weight_stats`); or back."""
    if inverse:
        f = lambda v, m, sd: v * sd + m  # noqa: E731
    else:
        f = lambda v, m, sd: (v - m) / sd  # noqa: E731
    return tuple({k: f(v, *stats[i][k]) for k, v in a.items()} for i, a in enumerate(weights))


# ----------------------------------------------------------------------------- inputs


def graph_batch(spec: NetSpec, weights, k_max: int, reverse: bool) -> dict:
    """A batch of networks of one spec (leading axis B) -> {'graph', 'graph_mask'}: B
    copies of the spec's neural graph, concatenated (no padding graphs: every graph has
    the same size). Traceable."""
    st = wgraph.structure(spec, k_max, reverse)
    bias, edges = jax.vmap(lambda w: wgraph.graph_features(spec, w, k_max, reverse))(weights)
    b, n, e = bias.shape[0], st["n_nodes"], len(st["senders"])
    offset = (jnp.arange(b, dtype=jnp.int32) * n)[:, None]
    tile = lambda a: jnp.tile(jnp.asarray(a), b)
    g = jraph.GraphsTuple(
        nodes={
            "bias": bias.reshape(b * n, 1),
            "layer": tile(st["layer"]),
            "index": tile(st["index"]),
            "role": tile(st["role"]),
        },
        edges={"weight": edges.reshape(b * e, -1), "type": tile(st["type"])},
        senders=(jnp.asarray(st["senders"])[None] + offset).reshape(-1),
        receivers=(jnp.asarray(st["receivers"])[None] + offset).reshape(-1),
        n_node=jnp.full((b,), n, jnp.int32),
        n_edge=jnp.full((b,), e, jnp.int32),
        globals=None,
    )
    return {"graph": g, "graph_mask": jnp.ones((b,), bool)}


@dataclasses.dataclass(frozen=True)
class Inputs:
    """How to turn a batch of standardised weights into an encoder's input."""

    spec: NetSpec
    kind: str  # flat | stats | elements | graph | chunks
    k_max: int
    reverse: bool
    chunk_size: int
    stats_mean: tuple = ()
    stats_std: tuple = ()

    def __call__(self, weights) -> dict:
        spec = self.spec
        if self.kind == "flat":
            # each layer's arrays in sorted role order, the order jit gives dicts, so that
            # jitted and eager calls (and canonical dicts in any key order) agree
            flat = [a[r].reshape(a[r].shape[0], -1) for a in weights for r in sorted(a)]
            return {"flat": jnp.concatenate(flat, axis=1)}
        if self.kind == "stats":
            s = jax.vmap(lambda w: baselines.statnn_features(spec, w))(weights)
            return {"stats": (s - jnp.asarray(self.stats_mean)) / jnp.asarray(self.stats_std)}
        if self.kind == "elements":
            el = jax.vmap(lambda w: baselines.set_elements(spec, w))(weights)
            return {"elements": el, "element_mask": jnp.ones(el.shape[:2], bool)}
        if self.kind == "graph":
            return graph_batch(spec, weights, self.k_max, self.reverse)
        return chunking.chunk_batch(spec, weights, self.chunk_size)


def graph_slots(specs, weights, k_max: int, reverse: bool, n_slot: int, e_slot: int) -> dict:
    """Neural graphs of networks of any architectures, each padded to a slot of `n_slot`
    nodes and `e_slot` edges (numpy, leading axis N): per slot a real graph and a
    padding graph (at least one node) that holds the padding edges."""
    out = {k: [] for k in ("bias", "layer", "index", "role", "weight", "type", "senders",
                           "receivers", "n_node", "n_edge")}  # fmt: skip
    for spec, w in zip(specs, weights, strict=True):
        st = wgraph.structure(spec, k_max, reverse)
        bias, edges = (np.asarray(a) for a in wgraph.graph_features(spec, w, k_max, reverse))
        n, e = st["n_nodes"], len(st["senders"])
        pn, pe = n_slot - n, e_slot - e
        out["bias"].append(np.pad(bias, ((0, pn), (0, 0))))
        for k in ("layer", "index", "role"):
            out[k].append(np.pad(st[k], (0, pn)))
        out["weight"].append(np.pad(edges, ((0, pe), (0, 0))))
        out["type"].append(np.pad(st["type"], (0, pe)))
        out["senders"].append(np.concatenate([st["senders"], np.full(pe, n)]).astype(np.int32))
        out["receivers"].append(np.concatenate([st["receivers"], np.full(pe, n)]).astype(np.int32))
        out["n_node"].append(np.asarray([n, pn], np.int32))
        out["n_edge"].append(np.asarray([e, pe], np.int32))
    return {k: np.stack(v) for k, v in out.items()}


def slots_to_graph(s: dict) -> dict:
    """`graph_slots` arrays (batch B) -> {'graph', 'graph_mask'} with 2B graphs (real,
    padding, real, ...); the encoder's rows [::2] are the real graphs'. Traceable."""
    b, ns = s["bias"].shape[:2]
    offset = (jnp.arange(b, dtype=jnp.int32) * ns)[:, None]
    flat = lambda a: a.reshape(-1, *a.shape[2:])
    g = jraph.GraphsTuple(
        nodes={"bias": flat(s["bias"]), "layer": flat(s["layer"]), "index": flat(s["index"]),
               "role": flat(s["role"])},
        edges={"weight": flat(s["weight"]), "type": flat(s["type"])},
        senders=(s["senders"] + offset).reshape(-1),
        receivers=(s["receivers"] + offset).reshape(-1),
        n_node=s["n_node"].reshape(-1),
        n_edge=s["n_edge"].reshape(-1),
        globals=None,
    )  # fmt: skip
    return {"graph": g, "graph_mask": jnp.tile(jnp.asarray([True, False]), b)}


def mixed_inputs(kind: str, sets, k_max: int, reverse: bool, chunk_size: int, scale: float):
    """Precomputed encoder inputs (numpy, one leading row per network) of each WeightData
    in `sets`. Each set gets the smallest slot size / chunk budget that holds its own
    networks (the encoders' outputs do not depend on padding): training on a zoo's small
    networks does not pay for the largest networks of a transfer set (one compilation per
    set instead)."""
    out = []
    for d in sets:
        scaled = [jax.tree.map(lambda a: np.asarray(a) / scale, w) for w in d.weights]
        if kind == "graph":
            sts = [wgraph.structure(sp, k_max, reverse) for sp in d.specs]
            n_slot = max(st["n_nodes"] for st in sts) + 1
            e_slot = max(len(st["senders"]) for st in sts)
            out.append(graph_slots(d.specs, scaled, k_max, reverse, n_slot, e_slot))
            continue
        budget, max_layers = chunking.budget_for(d.specs, chunk_size)
        dicts = [
            chunking.chunk(sp, w, chunk_size, budget, max_layers)
            for sp, w in zip(d.specs, scaled, strict=True)
        ]
        out.append({k: np.asarray(v) for k, v in chunking.stack_chunks(dicts).items()})
    return out


def graph_defaults(specs, k_max: int) -> dict:
    """Positional-embedding sizes and PNA's average log degree covering the (distinct)
    architectures `specs`. The degree is that of the forward graph even when reverse edges
    are added (config.inputs.reverse), as mkofinas/neural-graphs computes its PNA degree
    histogram from the layer layout (2.247 for a 2-32-32-1 SIREN; 3.539 counting the reverse
    edges)."""
    specs = list(dict.fromkeys(specs))
    logs = []
    for spec in specs:
        st = wgraph.structure(spec, k_max, False)
        logs.append(np.log(np.bincount(st["receivers"], minlength=st["n_nodes"]) + 1.0))
    return {
        "max_inputs": max(sp.layers[0].in_features for sp in specs),
        "max_hidden_layers": max(max(len(sp.layers) - 1, 1) for sp in specs),
        "max_outputs": max(sp.layers[-1].out_features for sp in specs),
        "avg_log_degree": float(np.mean(np.concatenate(logs))),
    }


def make_encoder(enc_config, specs, out_dim: int, inputs_config, table=None):
    """(flax module, input kind, whether it takes `train`) from config.encoder; its kwargs
    are `encoder.kwargs`, or `table[name]` (config.encoders) when those are empty."""
    if enc_config.name not in ENCODERS:
        raise loop.UserError(
            f"unknown encoder {enc_config.name!r} (config.encoder.name); choose one of "
            f"{sorted(ENCODERS)}"
        )
    cls, kind = ENCODERS[enc_config.name]
    kwargs = enc_config.get("kwargs") or {}
    if not kwargs and enc_config.name in (table or {}):
        kwargs = table[enc_config.name]
    kwargs = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in (kwargs.to_dict() if hasattr(kwargs, "to_dict") else dict(kwargs)).items()
    }
    if kind == "graph":
        defaults = graph_defaults(specs, inputs_config.k_max)
        if enc_config.name == "NG-T":
            defaults.pop("avg_log_degree")
        kwargs = defaults | kwargs
    if kind == "chunks":  # exact attention within layers: O(chunks x window) memory
        distinct = list(dict.fromkeys(specs))
        window = chunking.max_layer_chunks(distinct, inputs_config.chunk_size)
        kwargs = {"window": window} | kwargs
        if len(distinct) == 1:  # one architecture: each layer's static chunk run
            lay = chunking.layout(distinct[0], inputs_config.chunk_size)
            kwargs = {"segments": tuple((start, k) for _, k, start in lay)} | kwargs
    try:
        module = cls(out_dim=out_dim, **kwargs)
    except TypeError as e:
        raise loop.UserError(f"config.encoder.kwargs: {e}") from None
    return module, kind, enc_config.name != "SNE"


# ----------------------------------------------------------------------------- task


INR_AUGMENTS = ("translate", "rotate", "input_scale")


def augment(spec: NetSpec, weights, key, aug) -> tuple:
    """Training-time augmentations of a batch of raw weights (module docstring)."""
    kp, kn, kd, ki = jax.random.split(key, 4)
    if aug.get("permute", False):
        weights = sne.permute_batch(spec, weights, kp)
    if any(aug.get(k, 0.0) for k in INR_AUGMENTS):
        weights = augment_inr(weights, ki, aug)
    leaves, tree = jax.tree.flatten(weights)
    noise, p = aug.get("noise", 0.0), aug.get("dropout", 0.0)
    nkeys = jax.random.split(kn, len(leaves))
    dkeys = jax.random.split(kd, len(leaves))
    out = []
    for v, k1, k2 in zip(leaves, nkeys, dkeys, strict=True):
        if noise:  # relative to each network's own spread of this array (0 for one value)
            own = jnp.std(v, axis=tuple(range(1, v.ndim)), keepdims=True)
            v = v + noise * own * jax.random.normal(k1, v.shape)
        if p:
            v = v * jax.random.bernoulli(k2, 1 - p, v.shape) / (1 - p)
        out.append(v)
    return jax.tree.unflatten(tree, out)


def augment_inr(weights, key, aug) -> tuple:
    """The neural-graphs reference's INR augmentations (`INRDataset._augment`), per network
    of an MLP batch whose first layer reads the image coordinates (dense kernels (B, in,
    out)): `translate` s: t ~ U(-s, s)^in times the first k kernels (k uniform in 1..L-1)
    added to the k-th bias (k = 1: the image shifted by -t, exactly); `rotate` d degrees: the
    first kernel's two input rows rotated by an angle ~ U(-d, d) (the image rotated);
    `input_scale` s: the first kernel times 1 + U(-s, s) (the image rescaled)."""
    weights = [dict(a) for a in weights]
    w0 = weights[0]["kernel"]
    b, n_in = w0.shape[0], w0.shape[1]
    kt, ko, kr, ks = jax.random.split(key, 4)
    if s := aug.get("translate", 0.0):
        shift = jax.random.uniform(kt, (b, 1, n_in), minval=-s, maxval=s)
        order = jax.random.randint(ko, (b,), 1, len(weights))
        for k in range(1, len(weights)):
            shift = shift @ weights[k - 1]["kernel"]  # (B, 1, out of layer k - 1)
            on = (order == k)[:, None]
            weights[k - 1]["bias"] = weights[k - 1]["bias"] + jnp.where(on, shift[:, 0], 0.0)
    if d := aug.get("rotate", 0.0):
        if n_in != 2:
            raise ValueError(f"augment.rotate needs 2 input coordinates, not {n_in}")
        a = jnp.deg2rad(jax.random.uniform(kr, (b,), minval=-d, maxval=d))
        rot = jnp.stack([jnp.cos(a), -jnp.sin(a), jnp.sin(a), jnp.cos(a)], -1).reshape(b, 2, 2)
        weights[0]["kernel"] = rot @ weights[0]["kernel"]
    if s := aug.get("input_scale", 0.0):
        scale = 1.0 + jax.random.uniform(ks, (b, 1, 1), minval=-s, maxval=s)
        weights[0]["kernel"] = weights[0]["kernel"] * scale
    return tuple(weights)


def regression_metrics(pred: np.ndarray, y: np.ndarray) -> dict:
    tau = scipy.stats.kendalltau(pred, y).statistic if np.std(pred) > 0 else 0.0
    ss_res = float(np.sum((pred - y) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2)) or 1.0
    return {
        "kendall_tau": float(tau),
        "r2": 1.0 - ss_res / ss_tot,
        "rmse": float(np.sqrt(np.mean((pred - y) ** 2))),
    }


def invariance_weight(config, mixed: bool) -> float:
    """config.invariance_weight, or if unset the encoder's own (`INVARIANCE_WEIGHTS`; 0 on a
    heterogeneous zoo, whose networks cannot be permuted as one batch)."""
    weight = config.get("invariance_weight")
    if weight is None:
        weight = 0.0 if mixed else INVARIANCE_WEIGHTS.get(config.encoder.name, 0.0)
    return float(weight)


def build(config, data: WeightData, mesh, extra_eval: dict | None = None):
    """(loop.Task, encoder module) for `data`; `extra_eval` {prefix: WeightData} are
    evaluated too (same architecture, or any for mixed data)."""
    train_rows = data.splits["train"]
    inp_cfg = config.inputs
    regression = data.num_classes == 0
    out_dim = 1 if regression else data.num_classes
    extra_eval = extra_eval or {}
    all_sets = [data, *extra_eval.values()]
    specs = [data.spec] if not data.mixed else [sp for d in all_sets for sp in d.specs]
    # edge features hold k_max x k_max kernels: at least the largest kernel of the data
    k_max = max(
        [inp_cfg.k_max] + [max(ly.kernel_shape or (1,)) for sp in set(specs) for ly in sp.layers]
    )
    inp_cfg = ml_collections.ConfigDict(inp_cfg.to_dict() | {"k_max": k_max})
    model, kind, takes_train = make_encoder(
        config.encoder, specs, out_dim, inp_cfg, config.get("encoders")
    )
    augmenting = any(config.augment.get(k) for k in ("permute", "noise", "dropout", *INR_AUGMENTS))
    if not data.mixed and any(config.augment.get(k) for k in INR_AUGMENTS):
        if data.spec.layers[0].kind != "dense":
            raise loop.UserError(
                f"augment.{'/'.join(INR_AUGMENTS)} transform an INR's input coordinates: the "
                f"first layer must be dense, not {data.spec.layers[0].kind!r} (set them to 0)"
            )
    if data.mixed:
        if config.encoder.name not in MIXED_ENCODERS:
            raise loop.UserError(
                f"encoder {config.encoder.name!r} needs networks of one architecture; on a "
                f"heterogeneous zoo use one of {MIXED_ENCODERS}"
            )
        if augmenting or config.get("invariance_weight"):
            raise loop.UserError(
                "augment.* and invariance_weight need networks of one architecture; set "
                "them to 0 / False for a heterogeneous zoo"
            )
        train_w = [np.concatenate([v.ravel() for a in data.weights[r] for v in a.values()])
                   for r in train_rows[:512]]  # fmt: skip
        scale = float(np.std(np.concatenate(train_w))) or 1.0  # one global weight scale
        xs = mixed_inputs(kind, all_sets, inp_cfg.k_max, inp_cfg.reverse, inp_cfg.chunk_size, scale)
        pre = {id(d): x for d, x in zip(all_sets, xs, strict=True)}
        fetch = lambda d, rows: jax.tree.map(lambda a: a[rows], pre[id(d)])
        encode = slots_to_graph if kind == "graph" else (lambda x: x)
    else:
        stats = weight_stats(data.weights, train_rows)
        if not inp_cfg.get("standardise", True):  # raw weights (the reference's on CNN zoos)
            stats = tuple({k: (0.0, 1.0) for k in a} for a in stats)
        norm = lambda w: standardise(w, stats)
        fetch = lambda d, rows: norm(_take(d.weights, rows))
        encode = Inputs(data.spec, kind, inp_cfg.k_max, inp_cfg.reverse, inp_cfg.chunk_size)
        if kind == "stats":  # standardise the statistics with the training set's
            w = fetch(data, train_rows[:4096])
            feats = jax.jit(jax.vmap(lambda x: baselines.statnn_features(data.spec, x)))(w)
            feats = np.asarray(feats)
            sd = feats.std(0)
            encode = dataclasses.replace(
                encode,
                stats_mean=tuple(feats.mean(0).tolist()),
                stats_std=tuple(np.where(sd > 0, sd, 1.0).tolist()),
            )
    loss_name = config.get("loss", "bce")
    if regression and loss_name not in LOSSES:
        raise loop.UserError(f"unknown loss {loss_name!r} (config.loss); choose one of {LOSSES}")
    inv_weight = invariance_weight(config, data.mixed)
    tx = classify.make_optimizer(config.optimizer, config.train.num_steps)
    batch_size = config.train.batch_size

    def apply(params, payload, train=False, key=None):
        x = encode(payload)
        if takes_train:
            rngs = {"dropout": key} if key is not None else None
            out = model.apply({"params": params}, x, train=train, rngs=rngs)
        else:
            out = model.apply({"params": params}, x)
        return out[::2] if data.mixed and kind == "graph" else out  # drop padding graphs

    def predict(params, weights):
        """Predictions on the target's scale: accuracy (regression) or class logits."""
        out = apply(params, weights)
        if regression:
            out = out[:, 0]
            return jax.nn.sigmoid(out) if loss_name == "bce" else out
        return out

    def task_loss(out, y):
        if not regression:
            return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
        out = out[:, 0]
        if loss_name == "bce":
            return optax.sigmoid_binary_cross_entropy(out, y).mean()
        return jnp.mean((out - y) ** 2)

    def init(key):
        pkey, dkey, skey = jax.random.split(key, 3)
        x = encode(fetch(data, train_rows[:2]))
        if takes_train:
            params = model.init({"params": pkey, "dropout": dkey}, x, train=False)["params"]
        else:
            params = model.init({"params": pkey}, x)["params"]
        return loop.new_state(params, tx.init(params), skey)

    def train_step(state, batch, key):
        akey, dkey, pkey = jax.random.split(key, 3)
        w = batch["x"]
        if not data.mixed and augmenting:  # on the raw weights, as the reference does
            raw = standardise(w, stats, inverse=True)
            w = norm(augment(data.spec, raw, akey, config.augment))

        def loss_fn(params):
            out = apply(params, w, True, dkey)
            loss = task_loss(out, batch["y"])
            if inv_weight:
                out_pi = apply(params, sne.permute_batch(data.spec, w, pkey), True, dkey)
                loss = loss + inv_weight * jnp.mean((out - out_pi) ** 2)
            return loss, out

        (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss}
        if not regression:
            metrics["accuracy"] = jnp.mean(jnp.argmax(out, -1) == batch["y"])
        return state.replace(params=params, opt_state=opt_state), metrics

    def eval_fn(state, batch):
        w = batch["x"]
        y = predict(state.params, w)
        if data.mixed:  # (the gap needs one architecture to permute)
            return {"pred": y, "gap": jnp.zeros(len(y))}
        y_pi = predict(state.params, sne.permute_batch(data.spec, w, jax.random.key(123)))
        return {"pred": y, "gap": jnp.abs(y - y_pi).reshape(len(y), -1).mean(1)}

    eval_jit = parallel.jit_eval(eval_fn, mesh)
    eval_bs = -(-config.train.eval_batch_size // mesh.devices.size) * mesh.devices.size
    mine = parallel.process_slice(eval_bs)

    def predictions(state, d: WeightData, rows):
        preds, gaps = [], []
        for start in range(0, len(rows), eval_bs):
            idx = rows[start : start + eval_bs]
            idx = np.concatenate([idx, np.full(eval_bs - len(idx), idx[0])])
            out = eval_jit(state, parallel.shard_batch({"x": fetch(d, idx[mine])}, mesh))
            n = min(eval_bs, len(rows) - start)
            preds.append(np.asarray(out["pred"])[:n])
            gaps.append(np.asarray(out["gap"])[:n])
        return np.concatenate(preds), np.concatenate(gaps)

    sets = {k: (data, data.splits[k]) for k in ("val", "test")}
    for prefix, d in extra_eval.items():
        sets[prefix] = (d, np.arange(len(d)))

    def evaluate(state):
        out = {}
        for name, (d, rows) in sets.items():
            pred, gap = predictions(state, d, rows)
            y = d.target[rows]
            if regression:
                out |= {f"{name}_{k}": v for k, v in regression_metrics(pred, y).items()}
            else:
                ce = optax.softmax_cross_entropy_with_integer_labels(pred, y)
                out[f"{name}_accuracy"] = float(np.mean(np.argmax(pred, -1) == y))
                out[f"{name}_loss"] = float(np.mean(ce))
            if not data.mixed:
                out[f"{name}_invariance_gap"] = float(np.mean(gap))
        return out

    mine_train = parallel.process_slice(batch_size)
    if len(train_rows) < batch_size:
        raise loop.UserError(
            f"config.train.batch_size {batch_size} exceeds the {len(train_rows)} training "
            "networks; lower it or use a larger data set"
        )

    def batch(step):
        idx = train_rows[loop.batch_indices(len(train_rows), batch_size, config.seed, step)]
        idx = idx[mine_train]
        return {"x": fetch(data, idx), "y": data.target[idx]}

    return loop.Task(init, train_step, batch, batch_size, evaluate), model


def run(config, workdir) -> dict:
    """Train config.encoder on config.data; write and return workdir/results.json."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = parallel.make_mesh()
    data = load_data(config.data, config.seed)
    extra = {}
    if config.data.get("test_path", ""):
        other = load_data(config.data, config.seed, path=config.data.test_path)
        if data.mixed or other.spec.layers != data.spec.layers:
            raise loop.UserError(
                f"data.test_path {config.data.test_path!r} must hold the architecture of "
                f"data.path {config.data.path!r} (a Small CNN Zoo or INR set)"
            )
        extra["transfer"] = _rows_only(other, other.splits["test"])
    for family in config.data.get("test_families", ()) if data.mixed else ():
        fam_cfg = ml_collections.ConfigDict(config.data.to_dict() | {"family": family})
        fam_cfg.split, fam_cfg.max_networks = (0.0, 0.0, 1.0), 0
        other = load_data(fam_cfg, config.seed)
        extra[f"transfer_{family}"] = _rows_only(other, other.splits["test"])
    task, model = build(config, data, mesh, extra)
    t0 = time.perf_counter()
    state, final = loop.train(task, config, workdir, mesh=mesh)
    wall = time.perf_counter() - t0
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    results = {
        **final,
        "step": int(state.step),
        "encoder": config.encoder.name,
        "data": data.source,
        "num_networks": {k: int(len(v)) for k, v in data.splits.items()},
        "num_params": n_params,
        "wall_s": wall,
    }
    if jax.process_index() == 0:
        (workdir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
        keys = [k for k in results if k.startswith(("test_", "transfer_"))]
        print(" ".join(f"{k}={results[k]:.4f}" for k in keys))
    return results


def _rows_only(d: WeightData, rows) -> WeightData:
    """`d` restricted to `rows` (all of them form its 'test' split)."""
    if d.mixed:
        weights, specs = [d.weights[r] for r in rows], [d.specs[r] for r in rows]
    else:
        weights, specs = _take(d.weights, rows), None
    return WeightData(
        d.spec, weights, d.target[rows], {"test": np.arange(len(rows))}, d.num_classes,
        d.source, specs,
    )  # fmt: skip
