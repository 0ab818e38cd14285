r"""Neural metamorphosis: one INR generates a ResNet's weights at any width.

NeuMeta (Yang & Wang, "Neural Metamorphosis", ECCV 2024, arXiv 2410.11878): start from a
pretrained CIFAR-10 ResNet20, fold its BatchNorm into the convs (`fold`), smooth its channel
order (`symmetry.smooth`: a short Hamiltonian path per channel space, function unchanged),
and train an INR (`wsl.nn.hyper`) to generate some of its conv layers at any width:

    every step: sample a width h, generate the layers at width h from coordinates with
    U(-s/2, s/2) noise, run the network on a batch;
    loss = CE + lambda_1 * recon + lambda_2 * sum_l ||W_l||_2
    recon = mean over arrays of mean(|W*| / max|W*| * (W - W*)^2) against the smoothed,
            folded pretrained weights W*, on the steps where h is the full width
            (the reference's weighted regression loss);
    evaluation: the average of K generations (one noiseless, K - 1 with noisy coordinates),
    with the EMA of the INR's parameters.

Which layers are generated (`config.model.generate`, a regex on layer names) and which
groups are metamorphic (the outputs of `config.model.hidden`) is configuration. The table's
default is NeuMeta's own ResNet20 setting (its `BasicBlock_Resize` and
`learnable_parameter`): the last block of the last stage, whose *inner* width (conv1's
outputs, conv2's inputs) varies; the residual stream keeps 64 channels, so akamaster's
option-A shortcuts are untouched. `generate=r"layer3_\d+/conv[12]"`,
`hidden=r"layer3_\d+/conv1"` makes the whole last stage metamorphic. Compression c gives
inner width round(64 (1 - c)): 64 / 48 / 32 / 16 for c = 0 / 25 / 50 / 75 %; training
samples h in [32, 64] (c <= 50 %), 16 is never trained.

A network of inner width h is run as the full-width network whose channels >= h are zero
(`hyper.generate` zeroes them; `channel_mask` for the baselines): a zero channel stays zero
through ReLU and adds nothing downstream, so this computes exactly what the narrow network
computes, with one compiled function for all widths (`hyper.crop` gives the true shapes).

Modes (`config.mode`), each writing `results.json` with `acc_c{0,25,50,75}` (test accuracy
at each compression) and more:
    neumeta     train the INR as above (the loop in `wsl.train.loop`); also the relative
                reconstruction error at full width and the noiseless generated net's
                accuracy beside the pretrained net's.
    sliced      the smoothed, folded pretrained net with its inner channels >= h cut.
    individual  a ResNet20 of inner width h (BatchNorm, from scratch) per compression,
                trained with `wsl.methods.classify`'s task (masked, see `MaskedModel`).
    htty        HTTY (Sommariva et al. 2025, full-network ResNet56): not implemented; the
                preparation it needs is (`fold.reparameterize_batchnorm`, `symmetry.smooth`,
                `hyper.Shape.layer_ids` for dropped blocks), its training recipe is not.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from wsl.data import pretrained
from wsl.methods import classify
from wsl.nn import hyper, subjects
from wsl.train import loop, parallel
from wsl.weights import convert, fold, symmetry
from wsl.weights.spec import NetSpec, spec_from_flax

MODES = ("neumeta", "sliced", "individual", "htty")
RESULTS_FILE = "results.json"


# ----------------------------------------------------------------------------- preparation


@dataclasses.dataclass(frozen=True)
class Subject:
    """The folded, smoothed pretrained network: module (`ResNet(norm=False)`), spec,
    canonical weights, and the generated part (`plan`: the layers the INR makes,
    `groups`: the metamorphic channel groups)."""

    module: subjects.ResNet
    spec: NetSpec
    weights: tuple
    plan: hyper.Plan
    groups: tuple[int, ...]


def prepare(depth: int, generate: str, hidden: str, smooth: bool = True) -> Subject:
    """akamaster's pretrained ResNet-`depth` as a Subject (`make_subject`)."""
    _, variables, spec = pretrained.resnet_cifar10_flax(depth)
    module = subjects.ResNet(depth, norm=False)
    return make_subject(
        module, spec, convert.flax_to_canonical(spec, variables), generate, hidden, smooth
    )


def make_subject(module, spec: NetSpec, weights, generate: str, hidden: str, smooth: bool = True):
    """Fold BatchNorm (`fold.reparameterize_batchnorm`), smooth (`symmetry.smooth`); the
    layers whose names fully match regex `generate` are generated, the output groups of
    those matching `hidden` are metamorphic. `module` is the folded architecture."""
    spec, weights = fold.reparameterize_batchnorm(spec, weights)
    if smooth:
        weights = symmetry.smooth(spec, weights)
    weights = jax.tree.map(jnp.asarray, weights)
    gen = [i for i, layer in enumerate(spec.layers) if re.fullmatch(generate, layer.name)]
    groups = sorted({layer.out_group for layer in spec.layers if re.fullmatch(hidden, layer.name)})
    if not gen or not groups:
        raise loop.UserError(
            f"config.model.generate={generate!r} / hidden={hidden!r} match no layer of "
            f"{[layer.name for layer in spec.layers]}"
        )
    return Subject(module, spec, weights, hyper.make_plan(spec, gen), tuple(groups))


def preparation_error(depth: int, subject: Subject, x) -> float:
    """max |logits| difference between akamaster's ResNet-`depth` (with BatchNorm) and the
    folded, smoothed subject on images `x` (should be < 1e-4)."""
    module, variables, _ = pretrained.resnet_cifar10_flax(depth)
    ref = module.apply(variables, x)
    out = subject.module.apply(convert.canonical_to_flax(subject.spec, subject.weights), x)
    return float(jnp.max(jnp.abs(ref - out)))


def widths_for(subject_or_sizes, groups, compression: float) -> np.ndarray:
    """Group sizes at `compression`: metamorphic groups at round(size * (1 - c))."""
    sizes = np.asarray(subject_or_sizes, np.int32).copy()
    for g in groups:
        sizes[g] = max(1, int(round(sizes[g] * (1.0 - compression))))
    return sizes


def channel_mask(spec: NetSpec, sizes) -> tuple:
    """Canonical weights of 0/1: 1 on the entries of the network whose groups have
    `sizes` (channels >= size of a group are cut): multiply to run the narrow network
    inside the full one. Norm layers' scale and bias are masked too (so a BatchNorm of a
    cut channel outputs zero)."""
    out = []
    for layer in spec.layers:
        arrays = {}
        n_in = sizes[layer.in_group] if layer.in_group >= 0 else layer.in_features
        n_out = sizes[layer.out_group] if layer.out_group >= 0 else layer.out_features
        for role, shape in layer.shapes:
            m = np.ones(shape, np.float32)
            if layer.kind in ("dense", "conv") and role == "kernel":
                m[..., n_in:, :] = 0.0
                m[..., n_out:] = 0.0
            elif role in ("bias", "scale"):
                m[..., n_out:] = 0.0
            arrays[role] = m
        out.append(arrays)
    return tuple(out)


def insert(subject: Subject, generated: tuple) -> tuple:
    """The subject's weights with the generated layers replaced."""
    weights = list(subject.weights)
    for i, arrays in zip(subject.plan.layers, generated, strict=True):
        weights[i] = arrays
    return tuple(weights)


def recon_loss(generated: tuple, targets: tuple) -> jax.Array:
    """NeuMeta's weighted regression: mean over arrays of mean(|t|/max|t| * (w - t)^2)."""
    losses = []
    for g, t in zip(generated, targets, strict=True):
        for role in g:
            w = jnp.abs(t[role]) + 1e-6
            losses.append(jnp.mean(w / jnp.max(w) * (g[role] - t[role]) ** 2))
    return jnp.mean(jnp.stack(losses))


def relative_error(generated: tuple, targets: tuple) -> float:
    """||W - W*|| / ||W*|| over all generated arrays."""
    num = sum(
        float(jnp.sum((g[r] - t[r]) ** 2))
        for g, t in zip(generated, targets, strict=True)
        for r in g
    )
    den = sum(float(jnp.sum(t[r] ** 2)) for t in targets for r in t)
    return (num / den) ** 0.5


# ----------------------------------------------------------------------------- data


def load_data(config) -> dict:
    """classify.load_data, then `data.train_size` / `data.test_size` examples (0: all) drawn
    once with a fixed seed (the files are ordered by class), the same for every run."""
    data = classify.load_data(config.data, config.seed)
    for split, key in (("train", "train_size"), ("test", "test_size")):
        n = config.data.get(key, 0)
        if n:
            idx = np.sort(np.random.default_rng(1234).permutation(len(data[split][0]))[:n])
            data[split] = tuple(a[idx] for a in data[split])
    return data


def accuracy(module, spec: NetSpec, weights, x, y, batch_size: int = 500) -> float:
    """Test accuracy of `module` with canonical `weights`."""
    variables = convert.canonical_to_flax(spec, weights)
    apply = jax.jit(lambda v, xb: jnp.argmax(module.apply(v, xb), -1))
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int(
            np.sum(np.asarray(apply(variables, x[i : i + batch_size])) == y[i : i + batch_size])
        )
    return correct / len(x)


# ----------------------------------------------------------------------------- NeuMeta


def make_inr(config) -> hyper.INR:
    c = config.inr
    return hyper.INR(c.hidden, c.num_layers, c.num_freqs, 3, c.scalar)


def make_neumeta_task(subject: Subject, inr: hyper.INR, tx, data, config, mesh) -> loop.Task:
    """The loop's Task: INR params in `state.params`, their EMA in `state.model_state`."""
    plan, spec, module = subject.plan, subject.spec, subject.module
    targets = tuple(subject.weights[i] for i in plan.layers)
    full = np.asarray(plan.group_sizes, np.int32)
    lo = widths_for(full, subject.groups, config.widths.train_max_compression)
    metamorphic = np.zeros(len(full), bool)
    metamorphic[list(subject.groups)] = True
    ref = int(full[subject.groups[0]])
    h_lo = int(lo[subject.groups[0]])
    train_x, train_y = data["train"]
    c = config.loss

    def sample_sizes(key):
        k1, k2 = jax.random.split(key)
        h = jax.random.randint(k1, (), h_lo, ref + 1)
        h = jnp.where(jax.random.uniform(k2) < config.widths.full_prob, ref, h)
        scaled = jnp.maximum(1, jnp.round(full * h / ref)).astype(jnp.int32)
        return jnp.where(metamorphic, scaled, full), h == ref

    def init(key):
        pkey, skey = jax.random.split(key)
        params = inr.init(pkey, jnp.zeros((1, 6)))["params"]
        return loop.new_state(params, tx.init(params), skey, model_state={"ema": params})

    warmup = config.train.get("recon_steps", 0)

    def train_step(state, batch, key):
        k_size, k_noise = jax.random.split(key)
        sizes, is_full = sample_sizes(k_size)
        warm = state.step < warmup  # reconstruction only, at full width, no network run
        sizes = jnp.where(warm, full, sizes)
        is_full = is_full | warm
        shape = hyper.shape_for(plan, sizes)

        def loss_fn(params):
            gen = hyper.generate(inr, params, plan, shape, k_noise, config.noise, config.inr.norm)
            recon = jnp.where(is_full, recon_loss(gen, targets), 0.0)
            l2 = sum(jnp.sqrt(jnp.sum(a[r] ** 2)) for a in gen for r in a)

            def task_loss(gen):
                variables = convert.canonical_to_flax(spec, insert(subject, gen))
                logits = module.apply(variables, batch["x"])
                ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
                return ce, logits

            def skip(gen):
                return jnp.zeros(()), jnp.zeros((batch["x"].shape[0], module.num_classes))

            ce, logits = jax.lax.cond(warm, skip, task_loss, gen)
            loss = jnp.where(warm, c.recon * recon, c.ce * ce + c.recon * recon + c.l2 * l2)
            return loss, (logits, ce, recon, l2)

        (loss, (logits, ce, recon, l2)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        d = config.train.ema
        ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, state.model_state["ema"], params)
        acc = jnp.mean(jnp.argmax(logits, -1) == batch["y"])
        new = state.replace(params=params, opt_state=opt_state, model_state={"ema": ema})
        return new, {
            "loss": loss,
            "ce": ce,
            "recon": recon,
            "l2": l2,
            "accuracy": acc,
            "width": sizes[subject.groups[0]],
        }

    def evaluate(state):
        return evaluate_neumeta(subject, inr, state.model_state["ema"], data["test"], config)

    mine = parallel.process_slice(config.train.batch_size)

    def batch(step):
        idx = loop.batch_indices(len(train_x), config.train.batch_size, config.seed, step)[mine]
        return {"x": train_x[idx], "y": train_y[idx]}

    return loop.Task(init, train_step, batch, config.train.batch_size, evaluate)


def generate_at(
    subject: Subject, inr, params, compression: float, key, k: int, noise: float, norm: float
):
    """Generated layers at `compression`: the mean of `k` samples (k = 1: noiseless)."""
    sizes = widths_for(subject.plan.group_sizes, subject.groups, compression)
    shape = hyper.shape_for(subject.plan, sizes)
    if k <= 1:
        return hyper.generate(inr, params, subject.plan, shape), sizes
    return hyper.generate_mean(inr, params, subject.plan, shape, key, k, noise, norm), sizes


def evaluate_neumeta(subject: Subject, inr, params, test, config) -> dict:
    """Test accuracy at every evaluation compression (K-sample average), and at full
    width the reconstruction error of the generated weights and the accuracy of both."""
    x, y = test
    out = {}
    key = jax.random.key(config.seed + 1)
    for c in config.widths.eval:
        gen, _ = generate_at(
            subject, inr, params, c, key, config.eval.k_samples, config.noise, config.inr.norm
        )
        out[f"acc_c{round(100 * c)}"] = accuracy(
            subject.module, subject.spec, insert(subject, gen), x, y
        )
    gen, _ = generate_at(subject, inr, params, 0.0, key, 1, 0.0, config.inr.norm)
    targets = tuple(subject.weights[i] for i in subject.plan.layers)
    out["recon_rel_error"] = relative_error(gen, targets)
    out["recon_loss"] = float(recon_loss(gen, targets))
    out["acc_full_noiseless"] = accuracy(subject.module, subject.spec, insert(subject, gen), x, y)
    return out


# ----------------------------------------------------------------------------- baselines


def sliced(subject: Subject, test, config) -> dict:
    """The smoothed, folded pretrained network with its inner channels >= h cut."""
    x, y = test
    out = {}
    for c in config.widths.eval:
        sizes = widths_for(subject.plan.group_sizes, subject.groups, c)
        mask = channel_mask(subject.spec, sizes)
        w = jax.tree.map(lambda a, m: a * m, subject.weights, mask)
        out[f"acc_c{round(100 * c)}"] = accuracy(subject.module, subject.spec, w, x, y)
    return out


@dataclasses.dataclass(frozen=True)
class MaskedModel:
    """A flax module whose `params` are multiplied by fixed 0/1 masks before every apply:
    the narrow network inside the wide one (for `classify.make_task`)."""

    module: subjects.ResNet
    masks: dict

    def init(self, *args, **kwargs):
        return self.module.init(*args, **kwargs)

    def apply(self, variables, *args, **kwargs):
        params = jax.tree.map(lambda p, m: p * m, variables["params"], self.masks)
        return self.module.apply({**variables, "params": params}, *args, **kwargs)


def individual(subject: Subject, data, config, workdir: pathlib.Path, mesh) -> dict:
    """A ResNet of inner width h (with BatchNorm, from scratch) per compression, trained
    with classify's task (config.individual.optimizer / train) in workdir/c<pct>."""
    module = subjects.ResNet(config.model.depth)
    x0 = jnp.zeros((1, 32, 32, 3))
    spec = spec_from_flax(module, module.init(jax.random.key(0), x0), x0)
    hidden = [
        layer.out_group for layer in spec.layers if re.fullmatch(config.model.hidden, layer.name)
    ]
    out = {}
    for c in config.widths.eval:
        sizes = widths_for([g.size for g in spec.groups], sorted(set(hidden)), c)
        masks = convert.canonical_to_flax(spec, channel_mask(spec, sizes))["params"]
        sub = ml_collections.ConfigDict(config.individual.to_dict())
        sub.seed, sub.data = config.seed, config.data.to_dict()
        tx = classify.make_optimizer(sub.optimizer, sub.train.num_steps)
        task = classify.make_task(
            MaskedModel(module, masks), tx, data["train"], {"test": data["test"]}, sub, mesh
        )
        _, final = loop.train(task, sub, workdir / f"c{round(100 * c)}", mesh=mesh)
        out[f"acc_c{round(100 * c)}"] = final["test_accuracy"]
    return out


# ----------------------------------------------------------------------------- run


def run(config, workdir) -> dict:
    """Run `config.mode` (see module docstring); write and return workdir/results.json."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if config.mode not in MODES:
        raise loop.UserError(f"unknown mode {config.mode!r} (config.mode); choose one of {MODES}")
    if config.mode == "htty":
        raise loop.UserError("mode 'htty' is not implemented yet (see wsl/methods/metamorph.py)")
    mesh = parallel.make_mesh()
    t0 = time.perf_counter()
    subject = prepare(
        config.model.depth, config.model.generate, config.model.hidden, config.model.smooth
    )
    data = load_data(config)
    results: dict = {"mode": config.mode, "depth": config.model.depth}
    if config.mode == "sliced":
        results |= sliced(subject, data["test"], config)
    elif config.mode == "individual":
        results |= individual(subject, data, config, workdir, mesh)
    else:
        inr = make_inr(config)
        tx = optax.chain(
            optax.clip(config.train.clip),
            classify.make_optimizer(config.optimizer, config.train.num_steps),
        )
        task = make_neumeta_task(subject, inr, tx, data, config, mesh)
        state, final = loop.train(task, config, workdir, mesh=mesh)
        results |= final
        results["inr_params"] = hyper.num_params(state.params)
    results["pretrained_acc"] = accuracy(
        subject.module, subject.spec, subject.weights, *data["test"]
    )
    results["fold_smooth_max_abs_diff"] = preparation_error(
        config.model.depth, subject, data["test"][0][:100]
    )
    results["generated_params_full"] = subject.plan.num_generated
    results["wall_s"] = time.perf_counter() - t0
    if jax.process_index() == 0:
        (workdir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results, indent=2))
    return results


def plot_accuracy_vs_width(record, path) -> None:
    """Accuracy vs inner width (one line per method, the paper's values dashed) from a
    `scripts/reproduce.py` record of table metamorph_resnet (a dict or a JSON path)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(record, dict):
        record = json.loads(pathlib.Path(record).read_text())
    widths = {f"acc_c{c}": round(64 * (1 - c / 100)) for c in (0, 25, 50, 75)}
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for source, rows, key, style in (
        ("ours", record["rows"], "mean", "-o"),
        ("paper", record["paper"], "value", "--x"),
    ):
        for method in dict.fromkeys(r["method"] for r in rows):
            pts = sorted(
                (widths[r["metric"]], r[key])
                for r in rows
                if r["method"] == method and r["metric"] in widths and r[key] is not None
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=f"{method} ({source})")
    ax.axvspan(31, 65, color="0.92", zorder=0, label="trained widths")
    ax.set_xlabel("inner width of the last block (64 = full)")
    ax.set_ylabel("CIFAR-10 test accuracy")
    ax.set_title(f"{record['table']} ({record['variant']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
