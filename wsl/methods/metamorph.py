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
            (the reference's weighted regression loss; with `loss.recon_normalize`, ours,
            each array's term divided by its value at W = 0, so the loss is scale-free: the
            raw value is ~1e-3 on folded weights; normalised, a reconstruction-only fit
            reached relative error 0.73 instead of 0.89 in 1,000 steps here;
            `loss.recon_weighting` "uniform", ours: every entry weighted alike);
    warm-up (ours, `train.recon_steps` > 0): that many reconstruction-only steps at full
    width first, at `train.recon_learning_rate`, then the joint loss on `optimizer`'s
    schedule restarted from 0 (`neumeta_learning_rate`). Trained with the CE from a random
    INR the generated block collapses to rank ~1 (all channels alike) within a few hundred
    steps here; a joint phase started at full rate undoes the reconstruction fit.
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
    individual_block  per compression, only the generated layers trained from scratch at
                inner width h, the rest of the pretrained net frozen (`BlockModel`): the
                individually trained net at a NeuMeta run's scope and budget (ours; the
                paper's Individual trains the whole net, 200 epochs, out of reach here).
    htty        HTTY (below): per-block INRs for the whole ResNet56, trained block by block;
                also the accuracy at never-trained depths (`acc_d<depth>`).

HTTY (Sommariva, Calderara, Porrello, "How to Train Your Metamorphic Deep Neural Network",
arXiv 2505.05510) extends NeuMeta from the last block to the whole network with three
ingredients: block-wise incremental training, INR initialisation from the previous block,
and BatchNorm replacement. Here (`make_htty_task`, settings in `config.htty`):

    subject: akamaster's ResNet56, BatchNorm removed (`fold.reparameterize_batchnorm`:
        folded into the conv before it; a BatchNorm without one would become the equal 1x1
        conv; ResNet56 has none) and smoothed. Every conv of its 27 residual blocks is
        generated; the inner width of every block (conv1's outputs) is metamorphic.
    one INR per block (`hyper.Plan.blocks`): their parameters are stacked, and one vmapped
        call generates every weight tensor of a configuration (`hyper.apply`).
    phases: blocks are added `phases.blocks_per_phase` at a time in `model.order`; phase p
        trains blocks 1 .. (p + 1) * per_phase jointly for `steps_per_phase` steps (the
        last phase `final_steps` more). At a phase's first step every block it adds starts
        as a copy of the previously added block's INR (parameters, EMA and Adam moments:
        `copy_blocks`); block 1 starts from a random init. Blocks not yet added run with
        their pretrained weights at full width.
    every step: a width h in [32, 64] (64 with probability `widths.full_prob`) for the
        reference (largest) group, every added block's inner width round(full * h / 64);
        a depth from `model.train_depths`; loss = CE + recon + L2 as NeuMeta's, over the
        added blocks (recon on full-width, full-depth steps).
    branch scalars (`model.branch_scalar`) multiplying every generated block's
        residual-branch output (conv2's kernel and bias): `per_block`, the authors' code's
        skip-init alpha, one per block shared by all widths, init 0 (a block enters as the
        identity; reconstruction compares the unscaled weights); or `per_width` (ours),
        s[h] per width shared by all blocks, init 1, the stand-in for the per-width
        statistics a BatchNorm would have re-estimated. And the classifier `linear`,
        shared by all configurations, trained directly from its pretrained weights.
    depth: the coordinates carry (l, L). ResNet-d (d = 6n + 2) inside ResNet56 keeps the
        first n blocks of every stage, renumbers the kept layers (l) and sets L to their
        count (`depth_config`); a dropped block's weights are zero, so it computes the
        identity (its input is a ReLU output) and the network is exactly the ResNet-d.
    evaluation: as NeuMeta's (EMA parameters, K-sample average) at every compression of
        all inner widths, and at `model.eval_depths` (never trained) at full width.

Choices the paper leaves open to us, made here and configurable where marked (written when
only its abstract was available to us; its code, published as
TSommariva/How-to-Train-Your-Metamorphic-Deep-Neural-Network, has since been read: the
`paper` config follows it where we have the knob, experiments/metamorph_resnet.py):
    1. one INR per residual block (not one for the network), all of NeuMeta's shape; the
       blocks with equally many queries run in one vmapped call (`hyper.apply`).
    2. order of the blocks: from the input (`model.order`, or output_first); all added
       blocks keep training (not only the newest); several blocks added in one phase all
       copy the same previous block; the optimiser moments and EMA are copied too.
    3. the learning rate (warmup + cosine) restarts at every phase. Optionally
       (`train.recon_steps`, ours, 0 in `paper`) every phase starts with reconstruction-only
       steps at full width and depth, at `train.recon_learning_rate`: without them a
       phase's copied INRs generate another block's weights and the cross-entropy starts
       from a broken network (NeuMeta's warm-up, per phase). With `train.recon_fraction`
       < 1 (ours) each of those steps fits a random sample of that fraction of every
       INR's queries (`sampled_recon`, an unbiased estimate of the loss), so a stage-3
       step costs a fraction of a full generation.
    4. what is metamorphic: the inner widths of all blocks; the residual stream keeps
       16/32/64 channels (so option-A shortcuts stay exact), the stem conv stays pretrained
       and frozen, the classifier is shared.
    5. the BatchNorm stand-in (`model.branch_scalar`): per_width, one scalar per reference
       width h, shared by all blocks, on the residual branch (a width never trained uses
       the scalar of the nearest trained width), or per_block as the authors' code. Weight
       decay applies to the INRs only.
    6. reconstruction compares the effective weights (after a per-width scalar; before a
       per-block one) with the pretrained ones; depth training samples `model.train_depths`
       uniformly (default: 56 only, so every shallower depth is never trained); blocks are
       dropped from the end of stages.
    7. the `paper` schedule and INR size: now the authors' code's (CIFAR-100 configs; the
       config's docstring lists what we do not follow).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import re
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from wsl.data import images, pretrained
from wsl.methods import classify
from wsl.nn import hyper, subjects
from wsl.train import loop, parallel
from wsl.weights import convert, fold, symmetry
from wsl.weights.spec import NetSpec, spec_from_flax

MODES = ("neumeta", "sliced", "individual", "individual_block", "htty")
RESULTS_FILE = "results.json"


# ----------------------------------------------------------------------------- preparation


@dataclasses.dataclass(frozen=True)
class Subject:
    """The folded, smoothed pretrained network: module (`ResNet(norm=False)`), spec,
    canonical weights, and the generated part (`plan`: the layers the INR makes,
    `groups`: the metamorphic channel groups); for HTTY also its blocks and shared layers
    (`make_htty_subject`)."""

    module: subjects.ResNet
    spec: NetSpec
    weights: tuple
    plan: hyper.Plan
    groups: tuple[int, ...]
    blocks: tuple[str, ...] = ()  # HTTY: the residual blocks in training order (plan.blocks)
    shared: tuple[int, ...] = ()  # HTTY: layers trained directly, shared by all configs
    start: int | None = None  # inputs are the activations entering this residual block


def prepare(
    depth: int, generate: str, hidden: str, smooth: bool = True, per_layer: bool = False
) -> Subject:
    """akamaster's pretrained ResNet-`depth` as a Subject (`make_subject`)."""
    _, variables, spec = pretrained.resnet_cifar10_flax(depth)
    module = subjects.ResNet(depth, norm=False)
    weights = convert.flax_to_canonical(spec, variables)
    return make_subject(module, spec, weights, generate, hidden, smooth, per_layer)


def make_subject(
    module,
    spec: NetSpec,
    weights,
    generate: str,
    hidden: str,
    smooth: bool = True,
    per_layer: bool = False,
):
    """Fold BatchNorm (`fold.reparameterize_batchnorm`), smooth (`symmetry.smooth`); the
    layers whose names fully match regex `generate` are generated, the output groups of
    those matching `hidden` are metamorphic. `module` is the folded architecture.
    `per_layer`: one INR per generated layer (NeuMeta's reference composes one MLP per
    parameter tensor), else one INR for all."""
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
    plan = hyper.make_plan(spec, gen, list(range(len(gen))) if per_layer else None)
    return Subject(module, spec, weights, plan, tuple(groups))


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


RECON_WEIGHTINGS = ("neumeta", "uniform")


def _weighted_sq(g, t, normalize: bool, weighting: str = "neumeta") -> jax.Array:
    """NeuMeta's weighted regression of one array: mean(|t|/max|t| * (g - t)^2) (weighting
    "uniform": the plain mean squared error, every entry counted alike); with `normalize`,
    divided by its value at g = 0 (scale-free: 1 for g = 0)."""
    if weighting not in RECON_WEIGHTINGS:
        raise loop.UserError(
            f"unknown loss.recon_weighting {weighting!r}; choose one of {RECON_WEIGHTINGS}"
        )
    w = jnp.abs(t) + 1e-6 if weighting == "neumeta" else jnp.ones_like(t)
    w = w / jnp.max(w)
    err = jnp.mean(w * (g - t) ** 2)
    return err / jnp.mean(w * t**2) if normalize else err


def recon_loss(
    generated: tuple, targets: tuple, normalize: bool = False, weighting: str = "neumeta"
) -> jax.Array:
    """NeuMeta's weighted regression, the mean over arrays of `_weighted_sq`."""
    return jnp.mean(
        jnp.stack(
            [
                _weighted_sq(g[r], t[r], normalize, weighting)
                for g, t in zip(generated, targets, strict=True)
                for r in g
            ]
        )
    )


def _recon_options(loss_config) -> tuple[bool, str]:
    """(normalize, weighting) of `config.loss` (defaults: raw, NeuMeta's weighting)."""
    return loss_config.get("recon_normalize", False), loss_config.get("recon_weighting", "neumeta")


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
        if n := config.data.get(key, 0):  # (0: all, kept without a copy)
            idx = images.subset(len(data[split][0]), n)
            data[split] = tuple(a[idx] for a in data[split])
    return data


@functools.lru_cache(maxsize=8)
def _predict(module, start: int | None = None):
    """Jitted class prediction of `module` (compiled once per module and batch shape)."""
    return jax.jit(lambda v, xb: jnp.argmax(module.apply(v, xb, start=start), -1))


def accuracy(
    module, spec: NetSpec, weights, x, y, batch_size: int = 500, start: int | None = None
) -> float:
    """Test accuracy of `module` with canonical `weights` (`x`: images, or with `start` the
    activations entering that residual block, see `cache_prefix`)."""
    variables = convert.canonical_to_flax(spec, weights)
    apply = _predict(module, start)
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int(
            np.sum(np.asarray(apply(variables, x[i : i + batch_size])) == y[i : i + batch_size])
        )
    return correct / len(x)


def frozen_blocks(subject: Subject) -> int | None:
    """The number of residual blocks before the first generated layer (None when a layer
    outside the blocks, e.g. the stem, is generated): their output depends on the image
    alone."""
    n = (subject.module.depth - 2) // 6
    first = []
    for i in subject.plan.layers:
        m = _BLOCK_INDEX.match(subject.spec.layers[i].name)
        if m is None:
            return None
        first.append((int(m.group(1)) - 1) * n + int(m.group(2)))
    return min(first)


def cache_prefix(subject: Subject, data: dict, batch_size: int = 500) -> tuple[Subject, dict]:
    """Run the frozen blocks (`frozen_blocks`) once over every split: returns the subject
    with `start` set and the data with images replaced by the activations entering the
    first generated block (exact: nothing before it is trained, and no augmentation is
    used). A NeuMeta step then runs only the generated block and the head: for ResNet20's
    last block about 1/9 of the network's convolutions."""
    k = frozen_blocks(subject)
    if not k:  # the stem alone is not worth caching
        return subject, data
    variables = convert.canonical_to_flax(subject.spec, subject.weights)
    run = jax.jit(lambda v, xb: subject.module.apply(v, xb, stop=k))
    out = {}
    for split, (x, y) in data.items():
        feats = [
            np.asarray(run(variables, x[i : i + batch_size])) for i in range(0, len(x), batch_size)
        ]
        out[split] = (np.concatenate(feats) if feats else x[:0], y)
    return dataclasses.replace(subject, start=k), out


# ----------------------------------------------------------------------------- NeuMeta


def make_inr(config) -> hyper.INR:
    c = config.inr
    return hyper.INR(
        c.hidden,
        c.num_layers,
        c.num_freqs,
        3,
        c.scalar,
        c.get("encoding", "axis"),
        c.get("gaussian_scale", 10.0),
        c.get("size_coords", True),
    )


def neumeta_learning_rate(config):
    """`config.optimizer`'s learning rate (`classify.make_schedule`); with a reconstruction
    warm-up (`train.recon_steps` > 0) its steps run at the constant
    `train.recon_learning_rate` (0: `optimizer.learning_rate`), and the joint steps after it
    follow `optimizer`'s schedule (its warm-up from 0, then cosine) over the remaining
    steps: Adam's second moments, accumulated on the small reconstruction gradients, would
    otherwise make the first cross-entropy steps many times too large (measured: a fit at
    relative error 0.53 undone within 50 steps even at 3e-4)."""
    opt, train = config.optimizer, config.train
    warm = train.get("recon_steps", 0)
    if not warm:
        return classify.make_schedule(opt, train.num_steps)
    recon_lr = train.get("recon_learning_rate") or opt.learning_rate
    joint = classify.make_schedule(opt, max(train.num_steps - warm, 1))
    joint = joint if callable(joint) else optax.constant_schedule(joint)
    return optax.join_schedules([optax.constant_schedule(recon_lr), joint], [warm])


def neumeta_optimizer(config) -> optax.GradientTransformation:
    """Gradient clipping by value (`train.clip`, the reference's), then `config.optimizer`
    at `neumeta_learning_rate`."""
    lr = neumeta_learning_rate(config)
    tx = classify.make_optimizer(config.optimizer, config.train.num_steps, lr)
    return optax.chain(optax.clip(config.train.clip), tx)


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
        params = hyper.init_params(inr, pkey, plan)
        return loop.new_state(params, tx.init(params), skey, model_state={"ema": params})

    warmup = config.train.get("recon_steps", 0)

    def train_step(state, batch, key):
        k_size, k_noise = jax.random.split(key)
        sizes, is_full = sample_sizes(k_size)
        warm = state.step < warmup  # reconstruction only, at full width
        sizes = jnp.where(warm, full, sizes)
        is_full = is_full | warm
        shape = hyper.shape_for(plan, sizes)

        def loss_fn(params):
            gen = hyper.generate(inr, params, plan, shape, k_noise, config.noise, config.inr.norm)
            recon = jnp.where(is_full, recon_loss(gen, targets, *_recon_options(c)), 0.0)
            l2 = sum(jnp.sqrt(jnp.sum(a[r] ** 2)) for a in gen for r in a)

            # the network runs in warm-up steps too (its CE is then ignored): a conv inside
            # lax.cond runs ~7x slower on XLA:CPU (as inside scan, jax issue 12868)
            variables = convert.canonical_to_flax(spec, insert(subject, gen))
            logits = module.apply(variables, batch["x"], start=subject.start)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
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
        return hyper.generate(inr, params, subject.plan, shape, norm=norm), sizes
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
            subject.module, subject.spec, insert(subject, gen), x, y, start=subject.start
        )
    gen, _ = generate_at(subject, inr, params, 0.0, key, 1, 0.0, config.inr.norm)
    targets = tuple(subject.weights[i] for i in subject.plan.layers)
    out["recon_rel_error"] = relative_error(gen, targets)
    out["recon_loss"] = float(recon_loss(gen, targets, *_recon_options(config.loss)))
    out["acc_full_noiseless"] = accuracy(
        subject.module, subject.spec, insert(subject, gen), x, y, start=subject.start
    )
    return out


# ----------------------------------------------------------------------------- HTTY

_BLOCK = re.compile(r"(layer\d+_\d+)/")
_BLOCK_INDEX = re.compile(r"layer(\d+)_(\d+)/")


def make_htty_subject(module, spec: NetSpec, weights, model) -> Subject:
    """`make_subject` with one INR per residual block (`layer<s>_<b>`) among the generated
    layers, numbered in training order (`model.order`: input_first | output_first), and
    the layers matching regex `model.shared` (the classifier) trained directly."""
    sub = make_subject(module, spec, weights, model.generate, model.hidden, model.smooth)
    names = [sub.spec.layers[i].name for i in sub.plan.layers]
    of = [m.group(1) if (m := _BLOCK.match(n)) else None for n in names]
    if None in of:
        raise loop.UserError(
            f"config.htty.model.generate matches {names[of.index(None)]!r}, which is in no "
            "residual block (layer<stage>_<block>/...); HTTY generates whole blocks"
        )
    order = list(dict.fromkeys(of))  # spec order: input first
    if model.order == "output_first":
        order = order[::-1]
    elif model.order != "input_first":
        raise loop.UserError(
            f"unknown block order {model.order!r} (config.htty.model.order); "
            "choose input_first or output_first"
        )
    plan = hyper.make_plan(sub.spec, sub.plan.layers, [order.index(b) for b in of])
    shared = tuple(
        i for i, layer in enumerate(sub.spec.layers) if re.fullmatch(model.shared, layer.name)
    )
    if set(shared) & set(plan.layers):
        raise loop.UserError("config.htty.model.shared and .generate match the same layer")
    return dataclasses.replace(sub, plan=plan, blocks=tuple(order), shared=shared)


def prepare_htty(model) -> Subject:
    """akamaster's pretrained ResNet-`model.depth` as an HTTY Subject."""
    _, variables, spec = pretrained.resnet_cifar10_flax(model.depth)
    module = subjects.ResNet(model.depth, norm=False)
    return make_htty_subject(module, spec, convert.flax_to_canonical(spec, variables), model)


def depth_config(subject: Subject, depth: int) -> tuple[np.ndarray, int, np.ndarray]:
    """The ResNet-`depth` inside the subject's ResNet: the last blocks of every stage
    dropped (blocks b >= (depth - 2) / 6). Returns the generated layers' index coordinates
    (the kept conv/dense layers renumbered in order, -1 for dropped ones), the L coordinate
    (number of kept layers) and `keep` (num_layers,) 0/1 per layer of the spec. A dropped
    block's weights are zero: it adds nothing to its input, which is a ReLU output, so
    the block computes the identity and the network is exactly the shallower ResNet."""
    blocks = [_BLOCK_INDEX.match(layer.name) for layer in subject.spec.layers]
    per_stage = 1 + max(int(m.group(2)) for m in blocks if m)
    if (depth - 2) % 6 or not 1 <= (depth - 2) // 6 <= per_stage:
        raise loop.UserError(
            f"depth {depth} is not a ResNet depth 6n + 2 with 1 <= n <= {per_stage} "
            "(config.htty.model.train_depths / eval_depths)"
        )
    n = (depth - 2) // 6
    keep = np.asarray([not m or int(m.group(2)) < n for m in blocks])
    ids = np.cumsum(keep) - 1
    layer_ids = np.where(keep[list(subject.plan.layers)], ids[list(subject.plan.layers)], -1)
    return layer_ids.astype(np.int32), int(keep.sum()), keep.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class HTTYLayout:
    """Static arrays of an HTTY subject: `layer_block` (num_generated,) each generated
    layer's block (training order); `branch_out` (num_generated,) whether it writes the
    residual stream (its output gets the per-width scalar); `group_block` (num_groups,)
    the block whose inner width a metamorphic group is, -1 for other groups; `full` the
    group sizes; `ref` the largest metamorphic width (the width coordinate h of the
    per-width scalars; every metamorphic group has size round(full * h / ref));
    `depths` the training depths' (layer_ids, L, keep)."""

    layer_block: np.ndarray
    branch_out: np.ndarray
    group_block: np.ndarray
    full: np.ndarray
    ref: int
    depths: tuple


def htty_layout(subject: Subject, train_depths) -> HTTYLayout:
    plan, groups = subject.plan, set(subject.groups)
    group_block = -np.ones(len(plan.group_sizes), np.int32)
    for b, g in zip(plan.blocks, plan.out_groups, strict=True):
        if g in groups:
            group_block[g] = b
    full = np.asarray(plan.group_sizes, np.int32)
    return HTTYLayout(
        layer_block=np.asarray(plan.blocks, np.int32),
        branch_out=np.asarray([g not in groups for g in plan.out_groups]),
        group_block=group_block,
        full=full,
        ref=int(max(full[g] for g in groups)),
        depths=tuple(depth_config(subject, int(d)) for d in train_depths),
    )


def htty_sizes(lay: HTTYLayout, h, active_blocks):
    """Group sizes at reference width h: the metamorphic groups of active blocks at
    round(full * h / ref) (at least 1), every other group at full size."""
    scaled = jnp.maximum(1, jnp.round(lay.full * h / lay.ref)).astype(jnp.int32)
    gb = jnp.asarray(lay.group_block)
    on = (gb >= 0) & jnp.asarray(active_blocks)[jnp.maximum(gb, 0)]
    return jnp.where(on, scaled, jnp.asarray(lay.full))


def branch_scales(lay: HTTYLayout, params, h, per_block: bool):
    """(net, recon): (num_generated,) multipliers of the generated layers. The layers that
    write the residual stream (conv2) take the shared scalar: with `per_block` (the
    reference's skip-init alpha) their block's `scalars[block]`, which reconstruction
    leaves out (it compares the raw generated weights); else the width's `scalars[h]`,
    which reconstruction includes. Every other layer: 1."""
    out = jnp.asarray(lay.branch_out)
    if per_block:
        alpha = params["scalars"][jnp.asarray(lay.layer_block)]
        return jnp.where(out, alpha, 1.0), jnp.ones(out.shape)
    scale = jnp.where(out, params["scalars"][h], 1.0)
    return scale, scale


def htty_weights(subject: Subject, lay: HTTYLayout, params, gen, active, keep, scales):
    """Canonical weights of the network: the generated layers of active blocks times
    `scales[0]` (`branch_scales`), the pretrained weights in blocks not yet added, the
    shared layers from `params`, and every layer multiplied by `keep` (0 for dropped
    blocks). Returns (weights, the generated arrays times `scales[1]`: what
    reconstruction and L2 see)."""
    net, rec = scales
    weights, effective = list(subject.weights), []
    for j, i in enumerate(subject.plan.layers):
        g = gen[j]
        effective.append({r: a * rec[j] for r, a in g.items()})
        weights[i] = {r: jnp.where(active[j], g[r] * net[j], subject.weights[i][r]) for r in g}
    for i in subject.shared:
        weights[i] = params["shared"][f"layer{i}"]
    weights = tuple({r: a * keep[i] for r, a in w.items()} for i, w in enumerate(weights))
    return weights, tuple(effective)


def _per_layer_recon(generated, targets, normalize: bool = False, weighting="neumeta"):
    """(num_generated,) NeuMeta's weighted regression per layer (mean over its arrays)."""
    return jnp.stack(
        [
            jnp.mean(jnp.stack([_weighted_sq(g[r], t[r], normalize, weighting) for r in g]))
            for g, t in zip(generated, targets, strict=True)
        ]
    )


def query_targets(
    plan: hyper.Plan, targets: tuple, kernel_size: int, normalize=False, weighting="neumeta"
) -> dict[str, jax.Array]:
    """`targets` (one {kernel, bias} per generated layer of `plan`) laid out per query of
    `plan` (hyper's order) as the INR outputs them: "value" (Q, k*k) (a conv kernel at its
    centre positions, a dense weight or a bias in column 0), "coef" (Q, k*k) each entry's
    coefficient in `_per_layer_recon` (0 where an output is unused), "layer" (Q,) and
    "kind" (Q,) (0 conv, 1 dense, 2 bias), for `sampled_recon`."""
    kmax, k2 = kernel_size, kernel_size**2
    value, coef, layer, kind = [], [], [], []

    def entry_coef(t, n_arrays):
        t = np.asarray(t, np.float64)
        w = np.abs(t) + 1e-6 if weighting == "neumeta" else np.ones_like(t)
        w = w / w.max()
        denom = np.mean(w * t**2) if normalize else 1.0
        return w / (t.size * denom * n_arrays)

    def column0(t, c):  # (n,) values and coefficients in the first of k*k outputs
        v, cc = np.zeros((t.size, k2)), np.zeros((t.size, k2))
        v[:, 0], cc[:, 0] = t.ravel(), c.ravel()
        return v, cc

    for p, t in enumerate(targets):
        kern, n_arrays, rows = np.asarray(t["kernel"]), len(t), []
        if plan.kinds[p] == "conv":
            kh, kw, n_in, n_out = kern.shape
            v, c = np.zeros((n_in * n_out, kmax, kmax)), np.zeros((n_in * n_out, kmax, kmax))
            top, left = (kmax - kh) // 2, (kmax - kw) // 2  # the centre, as hyper._centre
            win = (slice(None), slice(top, top + kh), slice(left, left + kw))
            v[win] = kern.transpose(2, 3, 0, 1).reshape(-1, kh, kw)
            c[win] = entry_coef(kern, n_arrays).transpose(2, 3, 0, 1).reshape(-1, kh, kw)
            rows.append((v.reshape(-1, k2), c.reshape(-1, k2), 0))
        else:
            rows.append(column0(kern, entry_coef(kern, n_arrays)) + (1,))
        if "bias" in t:
            b = np.asarray(t["bias"])
            rows.append(column0(b, entry_coef(b, n_arrays)) + (2,))
        for v, c, kd in rows:
            value.append(v), coef.append(c)
            kind.append(np.full(len(v), kd)), layer.append(np.full(len(v), p))
    out = {"value": np.concatenate(value), "coef": np.concatenate(coef)}
    out |= {"layer": np.concatenate(layer), "kind": np.concatenate(kind)}
    if len(out["layer"]) != plan.num_queries:
        raise ValueError("targets do not match the plan's layers (kernel and bias shapes)")
    return {k: jnp.asarray(v, jnp.int32 if k in ("layer", "kind") else jnp.float32)
            for k, v in out.items()}  # fmt: skip


def sampled_recon(inr, params, plan: hyper.Plan, shape, table, scale, key, fraction, noise, norm):
    """An unbiased estimate of `_per_layer_recon` (num_layers,) of the weights `plan`'s
    INRs generate at `shape` (the full configuration: the targets' shapes), from a random
    `fraction` of the queries (`hyper.apply_sampled`); `table` from `query_targets`, `scale`
    (num_layers,) each layer's factor on its generated arrays (HTTY's per-width scalar on
    the residual branch). fraction 1 gives `_per_layer_recon` itself."""
    k_noise, k_sample = jax.random.split(key)
    x, _, in_size = hyper.coordinates(plan, shape, k_noise, noise, norm)
    out, q, inv = hyper.apply_sampled(inr, params, plan, x, k_sample, fraction)
    kind, layer = table["kind"][q][:, None], table["layer"][q]
    pred = jnp.where(
        kind == 0,
        out["conv"] / in_size[q][:, None],
        jnp.where(kind == 1, (out["dense"] / in_size[q])[:, None], out["bias"][:, None]),
    )
    pred = pred * scale[layer][:, None]
    err = jnp.sum(table["coef"][q] * (pred - table["value"][q]) ** 2, -1) * inv
    return jax.ops.segment_sum(err, layer, num_segments=len(plan.layers))


def copy_blocks(tree, src, new):
    """Every leaf under a dict key "inr" (stacked per-block INR parameters, and their
    EMA / optimiser moments) with the rows where `new` (num_blocks,) is true replaced by
    row `src`: the blocks being added start from the previous block's INR."""

    def copy(path, a):
        if not any(getattr(k, "key", None) == "inr" for k in path) or jnp.ndim(a) == 0:
            return a
        m = jnp.reshape(new, (-1,) + (1,) * (a.ndim - 1))
        return jnp.where(m, a[src][None], a)

    return jax.tree_util.tree_map_with_path(copy, tree)


@dataclasses.dataclass(frozen=True)
class Phases:
    """Block-wise incremental schedule: phase p (of `num`) trains blocks
    [0, (p + 1) * per_phase) for `steps` steps; the last phase runs `final` more. The first
    `recon` steps of every phase are a reconstruction warm-up (`warming`)."""

    num_blocks: int
    per_phase: int
    steps: int
    final: int
    recon: int = 0

    @property
    def num(self) -> int:
        return -(-self.num_blocks // self.per_phase)

    @property
    def num_steps(self) -> int:
        return self.num * self.steps + self.final

    def phase(self, step):
        return jnp.minimum(step // self.steps, self.num - 1)

    def active(self, step):
        """(num_blocks,) bool: the blocks added by `step`."""
        return jnp.arange(self.num_blocks) < (self.phase(step) + 1) * self.per_phase

    def position(self, step):
        """Steps since the start of `step`'s phase."""
        return step - self.phase(step) * self.steps

    def warming(self, step):
        """True in the first `recon` steps of a phase: reconstruction only, full width."""
        return self.position(step) < self.recon

    def starts(self, step):
        """(src, new): at the first step of a phase, the blocks it adds (`new`) and the
        previously added block they copy (`src`); phase 0 adds block 0 fresh and copies it
        into its other blocks. `new` is all false on other steps."""
        p = self.phase(step)
        first = (step % self.steps == 0) & (step < self.num * self.steps)
        b = jnp.arange(self.num_blocks)
        src = jnp.maximum(p * self.per_phase - 1, 0)
        new = first & (b >= p * self.per_phase) & (b < (p + 1) * self.per_phase) & (b != src)
        return src, new

    def learning_rate(
        self, lr: float, warmup: int, recon_lr: float | None = None, recon_decay: float = 1.0
    ):
        """Restarted at every phase (the last one spans its steps plus `final`): the
        `recon` warm-up steps at `recon_lr` (default `lr`; with `recon_decay` < 1 cosine
        from it to recon_lr * recon_decay over those steps), then warm-up from 0 over
        `warmup` steps and cosine decay to 0 over the rest (as `neumeta_learning_rate`,
        per phase)."""
        last = (self.num - 1) * self.steps
        recon_lr = lr if recon_lr is None else recon_lr

        def schedule(count):
            pos = self.position(count) - self.recon
            length = jnp.where(count < last, self.steps, self.steps + self.final) - self.recon
            w = min(warmup, (self.steps - self.recon) // 2)
            up = lr * (pos + 1) / max(w, 1)
            t = jnp.clip((pos - w) / jnp.maximum(length - w, 1), 0.0, 1.0)
            joint = jnp.where(pos < w, up, 0.5 * lr * (1.0 + jnp.cos(jnp.pi * t)))
            r = jnp.clip(self.position(count) / max(self.recon - 1, 1), 0.0, 1.0)
            warm = recon_lr * (
                recon_decay + (1.0 - recon_decay) * 0.5 * (1.0 + jnp.cos(jnp.pi * r))
            )
            return jnp.where(pos < 0, warm, joint)

        return schedule


def make_phases(subject: Subject, config) -> Phases:
    p, recon = config.phases, config.train.get("recon_steps", 0)
    if not 0 <= recon < p.steps_per_phase:
        raise loop.UserError(
            f"htty.train.recon_steps={recon} must be >= 0 and below htty.phases.steps_per_phase"
            f"={p.steps_per_phase} (the warm-up runs at the start of every phase)"
        )
    return Phases(len(subject.blocks), p.blocks_per_phase, p.steps_per_phase, p.final_steps, recon)


def generation_buckets(phases: Phases, buckets: int) -> tuple[int, ...]:
    """The numbers of blocks a training step generates (ours, `htty.train.generate_buckets`):
    the blocks are cut into `buckets` equal runs (ResNet56, 3: one stage each) and a step
    generates the runs up to the last added block, so the stage-1 phases do not pay for
    generating stage 3 (whose blocks have 16x the queries). One compiled step per count;
    1 generates all blocks on every step."""
    size = -(-phases.num_blocks // max(int(buckets), 1))
    added = {min(phases.num_blocks, (p + 1) * phases.per_phase) for p in range(phases.num)}
    return tuple(sorted({min(phases.num_blocks, -(-n // size) * size) for n in added}))


def make_htty_optimizer(subject: Subject, config) -> optax.GradientTransformation:
    """Clipping by value, then AdamW with the per-phase learning rate; weight decay on the
    INRs only (not on the branch scalars or the shared classifier)."""
    o = config.optimizer
    recon_lr = config.train.get("recon_learning_rate") or None
    recon_decay = float(config.train.get("recon_decay", 1.0))
    if not 0.0 <= recon_decay <= 1.0:
        raise loop.UserError(f"htty.train.recon_decay={recon_decay} must be in [0, 1]")
    schedule = make_phases(subject, config).learning_rate(
        o.learning_rate, o.warmup_steps, recon_lr, recon_decay
    )

    def decay(params):
        return {k: jax.tree.map(lambda _, k=k: k == "inr", v) for k, v in params.items()}

    return optax.chain(
        optax.clip(config.train.clip),
        optax.adamw(schedule, weight_decay=o.weight_decay, mask=decay),
    )


BRANCH_SCALARS = ("per_width", "per_block")


def branch_scalar(config) -> tuple[bool, float]:
    """(per_block, init) from `model.branch_scalar` (per_width: ours, one scalar per width
    shared by all blocks, init 1; per_block: the reference's skip-init alpha, one per block
    shared by all widths, init 0, so a block enters as the identity) and
    `model.branch_scalar_init` (default: 1 per width, 0 per block)."""
    kind = config.model.get("branch_scalar", "per_width")
    if kind not in BRANCH_SCALARS:
        raise loop.UserError(
            f"htty.model.branch_scalar={kind!r}: choose one of {list(BRANCH_SCALARS)}"
        )
    per_block = kind == "per_block"
    init = config.model.get("branch_scalar_init", None)
    return per_block, float((0.0 if per_block else 1.0) if init is None else init)


def make_htty_task(subject: Subject, inr: hyper.INR, tx, data, config, mesh) -> loop.Task:
    """HTTY's loop Task. Params: {"inr": per-block INRs (stacked), "scalars": (ref + 1,)
    per-width or (num_blocks,) per-block scalars (`branch_scalar`), "shared": the shared
    layers}; their EMA in `state.model_state`.
    Every step: add the phase's new blocks if it starts (`copy_blocks` on params, EMA and
    optimiser moments), sample a width h in [h_lo, ref] (ref with `widths.full_prob`) and
    a training depth, generate all blocks in one call, use the active blocks' weights and
    the pretrained weights elsewhere; loss = CE + recon (full width and depth only, active
    layers) + L2 (active layers). In a phase's first `train.recon_steps` steps: recon only,
    at full width and depth, and the network is not run (CE and accuracy logged as NaN);
    with `train.recon_fraction` < 1 only that fraction of the queries is generated
    (`sampled_recon`; L2 logged as NaN).
    A step generates only the blocks of the buckets added so far (`generation_buckets`):
    the Task's `variant(step)` = (bucket, network runs) makes the loop compile one step
    per variant; `train_step` without a variant generates every block and runs the
    network (the same updates)."""
    plan, spec, module = subject.plan, subject.spec, subject.module
    phases = make_phases(subject, config)
    lay = htty_layout(subject, config.model.train_depths)
    targets = tuple(subject.weights[i] for i in plan.layers)
    h_lo = max(1, int(round(lay.ref * (1.0 - config.widths.train_max_compression))))
    ids_tab = jnp.asarray(np.stack([d[0] for d in lay.depths]))
    num_tab = jnp.asarray([d[1] for d in lay.depths], jnp.float32)
    keep_tab = jnp.asarray(np.stack([d[2] for d in lay.depths]))
    full_depth = [i for i, d in enumerate(lay.depths) if d[1] == plan.num_layers]
    if phases.recon and not full_depth:
        raise loop.UserError(
            "htty.train.recon_steps > 0 fits the full-depth network: add the subject's depth "
            f"({config.model.depth}) to htty.model.train_depths"
        )
    full_depth = full_depth[0] if full_depth else 0
    train_x, train_y = data["train"]
    c = config.loss
    recon_options = _recon_options(c)
    ends = generation_buckets(phases, config.train.get("generate_buckets", 3))
    subs = [hyper.first_inrs(plan, n) for n in ends]
    fraction = float(config.train.get("recon_fraction", 1.0))
    if not 0.0 < fraction <= 1.0:
        raise loop.UserError(f"htty.train.recon_fraction={fraction} must be in (0, 1]")
    tables = [
        query_targets(sub, [targets[j] for j in js], inr.kernel_size, *recon_options)
        for sub, js in subs
    ] if fraction < 1 else None  # fmt: skip
    per_block, scalar_init = branch_scalar(config)
    num_scalars = plan.num_inrs if per_block else lay.ref + 1

    def init(key):
        pkey, skey = jax.random.split(key)
        params = {
            "inr": hyper.init_params(inr, pkey, plan),
            "scalars": jnp.full((num_scalars,), scalar_init, jnp.float32),
            "shared": {f"layer{i}": subject.weights[i] for i in subject.shared},
        }
        return loop.new_state(params, tx.init(params), skey, model_state={"ema": params})

    def variant(step: int) -> tuple[int, bool]:
        """(bucket, whether the network runs) of a step: static, one compiled step each."""
        added = int(jnp.sum(phases.active(step)))
        return int(np.searchsorted(ends, added)), not bool(phases.warming(step))

    def train_step(state, batch, key, variant=None):
        k_size, k_full, k_depth, k_noise = jax.random.split(key, 4)
        src, new = phases.starts(state.step)
        params = copy_blocks(state.params, src, new)
        opt_state = copy_blocks(state.opt_state, src, new)
        ema = copy_blocks(state.model_state["ema"], src, new)
        blocks_on = phases.active(state.step)
        active = blocks_on[jnp.asarray(lay.layer_block)]
        warm = phases.warming(state.step)  # reconstruction only, full width and depth
        h = jax.random.randint(k_size, (), h_lo, lay.ref + 1)
        h = jnp.where(jax.random.uniform(k_full) < config.widths.full_prob, lay.ref, h)
        h = jnp.where(warm, lay.ref, h)
        d = jax.random.randint(k_depth, (), 0, len(lay.depths))
        d = jnp.where(warm, full_depth, d)
        shape = hyper.Shape(htty_sizes(lay, h, blocks_on), ids_tab[d], num_tab[d])
        is_full = (h == lay.ref) & (num_tab[d] == plan.num_layers)
        n_active = jnp.maximum(jnp.sum(active), 1)

        def loss_fn(params, k: int, net: bool):
            # generate the first ends[k] blocks only (the active ones and, within the
            # bucket, a few not yet added); the rest keep their pretrained weights
            sub, js = subs[k]
            inr_params = jax.tree.map(lambda a: a[: ends[k]], params["inr"])
            sub_shape = hyper.Shape(shape.sizes, shape.layer_ids[jnp.asarray(js)], shape.num_layers)
            if not net and tables is not None:  # reconstruction from a sample of queries
                on = active[jnp.asarray(js)]
                scale = branch_scales(lay, params, h, per_block)[1][jnp.asarray(js)]
                per_layer = sampled_recon(
                    inr, inr_params, sub, sub_shape, tables[k], scale, k_noise, fraction,
                    config.noise, config.inr.norm,
                )  # fmt: skip
                recon = jnp.sum(on * per_layer) / n_active
                nan = jnp.full((), jnp.nan, jnp.float32)
                return c.recon * recon, (nan, nan, recon, nan)
            part = hyper.generate(
                inr, inr_params, sub, sub_shape, k_noise, config.noise, config.inr.norm
            )
            gen = list(targets)
            for j, g in zip(js, part, strict=True):
                gen[j] = g
            scales = branch_scales(lay, params, h, per_block)
            weights, eff = htty_weights(subject, lay, params, gen, active, keep_tab[d], scales)
            recon = jnp.sum(active * _per_layer_recon(eff, targets, *recon_options)) / n_active
            recon = jnp.where(is_full, recon, 0.0)
            l2 = sum(
                jnp.where(active[j], jnp.sqrt(jnp.sum(eff[j][r] ** 2)), 0.0)
                for j in js
                for r in eff[j]
            )
            if not net:  # reconstruction-only step: the network is not run
                nan = jnp.full((), jnp.nan, jnp.float32)
                return c.recon * recon, (nan, nan, recon, l2)
            logits = module.apply(convert.canonical_to_flax(spec, weights), batch["x"])
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
            acc = jnp.mean(jnp.argmax(logits, -1) == batch["y"])
            loss = jnp.where(warm, c.recon * recon, c.ce * ce + c.recon * recon + c.l2 * l2)
            return loss, (ce, acc, recon, l2)

        k, net = (len(ends) - 1, True) if variant is None else variant
        grad_fn = jax.value_and_grad(functools.partial(loss_fn, k=k, net=net), has_aux=True)
        (loss, (ce, acc, recon, l2)), grads = grad_fn(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        dk = config.train.ema
        ema = jax.tree.map(lambda e, p: dk * e + (1 - dk) * p, ema, params)
        new_state = state.replace(params=params, opt_state=opt_state, model_state={"ema": ema})
        return new_state, {
            "loss": loss,
            "ce": ce,
            "recon": recon,
            "l2": l2,
            "accuracy": acc,
            "width": h,
            "depth_layers": num_tab[d],
            "blocks": jnp.sum(blocks_on),
        }

    generator = htty_generator(subject, inr, lay, config)

    def evaluate(state):
        # the blocks trained so far: at a phase's end, `state.step` is already the next
        # phase's first step, whose new blocks are not copied in until that step runs
        active = phases.active(jnp.maximum(state.step - 1, 0))
        return evaluate_htty(
            subject, lay, generator, state.model_state["ema"], active, data["test"], config
        )

    mine = parallel.process_slice(config.train.batch_size)

    def batch(step):
        idx = loop.batch_indices(len(train_x), config.train.batch_size, config.seed, step)[mine]
        return {"x": train_x[idx], "y": train_y[idx]}

    return loop.Task(init, train_step, batch, config.train.batch_size, evaluate, variant)


def htty_generator(subject: Subject, inr, lay: HTTYLayout, config):
    """`generate(params, active_blocks, h, depth, key, k) -> (weights, effective generated
    arrays)`: the whole network at reference width h (python int) and depth, the generated
    part the mean of `k` generations (k = 1: noiseless); jitted once per k."""
    plan = subject.plan
    h_lo = max(1, int(round(lay.ref * (1.0 - config.widths.train_max_compression))))
    per_block = branch_scalar(config)[0]

    @functools.partial(jax.jit, static_argnums=(6,))
    def run(params, blocks_on, h, ids, num_layers, keep, k, key):
        shape = hyper.Shape(htty_sizes(lay, h, blocks_on), ids, num_layers)
        norm = config.inr.norm
        if k <= 1:
            gen = hyper.generate(inr, params["inr"], plan, shape, norm=norm)
        else:
            gen = hyper.generate_mean(inr, params["inr"], plan, shape, key, k, config.noise, norm)
        active = blocks_on[jnp.asarray(lay.layer_block)]
        scales = branch_scales(lay, params, jnp.clip(h, h_lo, lay.ref), per_block)
        return htty_weights(subject, lay, params, gen, active, keep, scales)

    def generate(params, blocks_on, h, depth, key, k):
        ids, num_layers, keep = depth_config(subject, depth)
        return run(
            params, jnp.asarray(blocks_on), jnp.int32(h), ids, jnp.float32(num_layers), keep, k, key
        )

    return generate


def evaluate_htty(subject: Subject, lay, generator, params, blocks_on, test, config) -> dict:
    """Test accuracy at every evaluation compression (the inner width of every added
    block; K-sample average) and at every evaluation depth (full width); at full width
    and depth the reconstruction error of the generated weights and the noiseless net's
    accuracy."""
    x, y = test
    key = jax.random.key(config.seed + 1)
    depth, k = config.model.depth, config.eval.k_samples
    out = {}
    for c in config.widths.eval:
        h = max(1, int(round(lay.ref * (1.0 - c))))
        weights, _ = generator(params, blocks_on, h, depth, key, k)
        out[f"acc_c{round(100 * c)}"] = accuracy(subject.module, subject.spec, weights, x, y)
    for d in config.model.eval_depths:
        weights, _ = generator(params, blocks_on, lay.ref, int(d), key, k)
        out[f"acc_d{int(d)}"] = accuracy(subject.module, subject.spec, weights, x, y)
    weights, eff = generator(params, blocks_on, lay.ref, depth, key, 1)
    on = np.asarray(blocks_on)[lay.layer_block]
    gen = tuple(a for a, a_on in zip(eff, on, strict=True) if a_on)
    targets = tuple(
        subject.weights[i] for i, a_on in zip(subject.plan.layers, on, strict=True) if a_on
    )
    out["recon_rel_error"] = relative_error(gen, targets)
    out["recon_loss"] = float(recon_loss(gen, targets, *_recon_options(config.loss)))
    out["acc_full_noiseless"] = accuracy(subject.module, subject.spec, weights, x, y)
    out["blocks_added"] = int(np.sum(np.asarray(blocks_on)))
    return out


def htty_config(config) -> ml_collections.ConfigDict:
    """The run's config for mode htty: `seed`, `data`, `method`, `mode` and `distributed`
    from the top level, everything else from `config.htty`; `train.num_steps` derived
    from the phases (the number of blocks comes from the subject: 27 for ResNet56)."""
    c = ml_collections.ConfigDict(
        {k: config[k] for k in ("method", "mode", "seed", "distributed", "data") if k in config}
    )
    c.update(config.htty.to_dict())
    return c


# ----------------------------------------------------------------------------- baselines


def sliced_weights(subject: Subject, sizes) -> tuple:
    """The subject's weights with the channels >= sizes[g] of every group g cut (zeroed)."""
    return jax.tree.map(lambda a, m: a * m, subject.weights, channel_mask(subject.spec, sizes))


def sliced(subject: Subject, test, config) -> dict:
    """The smoothed, folded pretrained network with its inner channels >= h cut."""
    x, y = test
    out = {}
    for c in config.widths.eval:
        w = sliced_weights(subject, widths_for(subject.plan.group_sizes, subject.groups, c))
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


@dataclasses.dataclass(frozen=True)
class BlockModel:
    """The pretrained subject with only its generated layers trained, from scratch, at the
    widths of `masks` (flax params of 0/1): every other layer keeps its pretrained value
    (`frozen`) whatever the trained params hold. Runs from block `subject.start` (inputs
    are the cached activations, `cache_prefix`). For `classify.make_task`."""

    subject: Subject
    masks: dict
    frozen: dict  # the pretrained flax params
    trained: dict  # 1.0 on the generated layers' leaves, 0.0 elsewhere

    def init(self, rngs, *args, **kwargs):
        x0 = jnp.zeros((1, 32, 32, 3))
        fresh = self.subject.module.init(rngs, x0)["params"]
        params = jax.tree.map(lambda f, p, t: t * f + (1 - t) * p, fresh, self.frozen, self.trained)
        return {"params": params}

    def apply(self, variables, x, train: bool = False, rngs=None, **kwargs):
        params = jax.tree.map(
            lambda p, f, t, m: t * p * m + (1 - t) * f,
            variables["params"],
            self.frozen,
            self.trained,
            self.masks,
        )
        return self.subject.module.apply({"params": params}, x, start=self.subject.start)


def block_model(subject: Subject, sizes) -> BlockModel:
    """`BlockModel` of `subject` whose generated layers have the channel group sizes
    `sizes` (the other layers keep the pretrained weights)."""
    spec = subject.spec
    on = set(subject.plan.layers)
    sel = tuple(
        {r: np.full(shape, float(i in on), np.float32) for r, shape in layer.shapes}
        for i, layer in enumerate(spec.layers)
    )
    return BlockModel(
        subject,
        convert.canonical_to_flax(spec, channel_mask(spec, sizes))["params"],
        convert.canonical_to_flax(spec, subject.weights)["params"],
        convert.canonical_to_flax(spec, sel)["params"],
    )


def individual_block(subject: Subject, data, config, workdir: pathlib.Path, mesh) -> dict:
    """Per compression: the generated layers only (NeuMeta's part of the network) trained
    from scratch at that inner width with the rest of the pretrained net frozen, with
    classify's task (config.individual_block.optimizer / train) in workdir/c<pct>: the
    individually trained net at the budget and scope of a NeuMeta run."""
    out = {}
    for c in config.widths.eval:
        model = block_model(subject, widths_for(subject.plan.group_sizes, subject.groups, c))
        sub = ml_collections.ConfigDict(config.individual_block.to_dict())
        sub.seed, sub.data = config.seed, config.data.to_dict()
        tx = classify.make_optimizer(sub.optimizer, sub.train.num_steps)
        task = classify.make_task(model, tx, data["train"], {"test": data["test"]}, sub, mesh)
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
    mesh = parallel.make_mesh()
    t0 = time.perf_counter()
    if config.mode == "htty":
        config = htty_config(config)
        subject = prepare_htty(config.model)
    else:
        m = config.model
        subject = prepare(
            m.depth, m.generate, m.hidden, m.smooth, config.inr.get("per_layer", False)
        )
    data = load_data(config)
    results: dict = {"mode": config.mode, "depth": config.model.depth}
    results["fold_smooth_max_abs_diff"] = preparation_error(
        config.model.depth, subject, data["test"][0][:100]
    )
    if config.mode in ("neumeta", "individual_block") and config.get("cache_prefix", True):
        t = time.perf_counter()
        subject, data = cache_prefix(subject, data)
        results["cached_blocks"] = subject.start
        results["cache_s"] = time.perf_counter() - t
    if config.mode == "sliced":
        results |= sliced(subject, data["test"], config)
    elif config.mode == "individual":
        results |= individual(subject, data, config, workdir, mesh)
    elif config.mode == "individual_block":
        results |= individual_block(subject, data, config, workdir, mesh)
    elif config.mode == "htty":
        phases = make_phases(subject, config)
        config.train.num_steps = phases.num_steps
        inr = make_inr(config)
        task = make_htty_task(
            subject, inr, make_htty_optimizer(subject, config), data, config, mesh
        )
        state, final = loop.train(task, config, workdir, mesh=mesh)
        results |= final
        results["inr_params"] = hyper.num_params(state.params["inr"])
        results["num_blocks"] = len(subject.blocks)
        results["num_phases"] = phases.num
        results["num_steps"] = phases.num_steps
    else:
        inr = make_inr(config)
        task = make_neumeta_task(subject, inr, neumeta_optimizer(config), data, config, mesh)
        state, final = loop.train(task, config, workdir, mesh=mesh)
        results |= final
        results["inr_params"] = hyper.num_params(state.params)
    results["pretrained_acc"] = accuracy(
        subject.module, subject.spec, subject.weights, *data["test"], start=subject.start
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
    ax.set_xlabel("inner width (64 = full; last block, HTTY: every block)")
    ax.set_ylabel("CIFAR-10 test accuracy")
    ax.set_title(f"{record['table']} ({record['variant']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
