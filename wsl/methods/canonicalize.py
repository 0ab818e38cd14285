"""Canonicalisation: make any Flax predictor invariant to an image group.

Panigrahi & Mondal, *Improved Canonicalization for Model Agnostic Equivariance* (arXiv
2405.14089), with the learned-canonicalisation baseline of Kaba et al. 2023. The
interface follows ``arnab39/equiadapt``'s three methods, as pure functions:

    x_c, info = canonicalize(canonicalizer, variables, x, train=False, beta=1.0)
    y = invert_canonicalization(group, predictor_output, info, kind="invariant")
    loss = prior_regularization_loss(info)          # CE of the pose scores toward identity
    loss = contrastive_loss(info)                   # orthogonality of the copies' embeddings
    f = wrap(canonicalizer, predictor)              # f(cvars, pvars, x) -> (logits, info)

``canonicalize`` picks the highest-scoring pose (`jnp.argmax`: ties go to the lowest
element index; exact ties only happen between identical candidates, which give the same
canonical image) and returns that candidate. In training the selection is a
straight-through estimator: ``onehot + softmax(beta s) - stop_gradient(softmax(beta s))``
weights the candidates, so the forward pass uses the chosen one and the task loss's
gradient reaches the scores.

``run(config, workdir)`` trains and evaluates one row of the canon tables
(experiments/canon_*.py); ``config.canon.kind`` is one of

- ``none``: the predictor alone;
- ``tta``: the predictor averaged over the group at test time (mean of the softmaxes);
- ``equivariant``: + the G-CNN canonicaliser (`wsl.nn.canon.GroupCNN`), prior loss;
- ``optimized``: + the paper's non-equivariant canonicaliser (`OptimizedCanonicalizer`),
  prior and contrastive losses.

Training uses upright images only; the predictor is trained from scratch, fine-tuned
(``predictor.pretrained`` + ``trainable``) or frozen (``trainable = False``; with
``canon.task_weight = 0`` the canonicaliser then learns from its prior and contrastive
losses alone and training never runs the predictor). Results:
accuracy on the upright test set and on a copy rotated by one random group element per
image (fixed by ``data.rotation_seed``, the same for every row), the identity rate (the
canonicaliser's choice on upright test images), the pose accuracy (the rotated copy
mapped back to upright), the largest logit change under the group on a few test images
(`invariance_error`, 0 for the exact groups) and inference images/s.

Config (see experiments/canon_mnist.py):
    seed
    data.{name, preprocess, train_size, test_size, rotation_seed}
    group                                             # C4 | D4 | C8
    predictor.{name, kwargs, pretrained, trainable}   # pretrained: "" or "resnet20", ...
    canon.{kind, beta, task_weight, prior_weight, contrastive_weight, score_scale,
           network.{name, kwargs},
           equivariant.{features, kernel_size, strides}}
    optimizer.{...}, canon_optimizer.{...}            # classify.make_optimizer, each
    train.{num_steps, batch_size, eval_batch_size, ...}
    eval.{throughput_batch_size, throughput_repeats, invariance_examples}
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from wsl.data import pretrained
from wsl.methods import classify
from wsl.nn import canon
from wsl.train import loop, parallel

KINDS = ("none", "tta", "equivariant", "optimized")

# ----------------------------------------------------------------------------- the interface


def canonicalize(canonicalizer: nn.Module, variables, x, *, train: bool = False, beta=1.0):
    """Canonicalise a batch of images: ``(x_canonical, info)`` with info ``{"scores":
    (B, |G|), "pose": (B,) int32, "embeddings": (B, |G|, D) or None}``; x_canonical[i] is
    ``g_pose[i]^{-1} x[i]``. `canonicalizer` is a `wsl.nn.canon` canonicaliser (returns
    scores, embeddings, candidates)."""
    scores, emb, cands = canonicalizer.apply(variables, x)
    pose = jnp.argmax(scores, axis=-1).astype(jnp.int32)
    if train:
        hard = jax.nn.one_hot(pose, scores.shape[-1], dtype=x.dtype)
        soft = jax.nn.softmax(beta * scores, axis=-1)
        w = hard + soft - jax.lax.stop_gradient(soft)
        x_c = jnp.einsum("bg,bg...->b...", w, cands)
    else:
        x_c = jnp.take_along_axis(cands, pose.reshape(-1, *[1] * (cands.ndim - 1)), 1)[:, 0]
    return x_c, {"scores": scores, "pose": pose, "embeddings": emb}


def invert_canonicalization(grp: canon.Group, y, info, kind: str = "invariant"):
    """Map the predictor's output on the canonical image back to the input's frame:
    ``invariant`` outputs (class logits) stay as they are; ``image`` outputs (B, H, W, C)
    are moved by the pose; ``regular`` outputs (B, |G|, ...) indexed by group element are
    permuted, ``out[:, g] = y[:, pose^{-1} g]``."""
    if kind == "invariant":
        return y
    if kind == "image":
        return canon.apply(grp, y, info["pose"])
    if kind == "regular":
        idx = canon.compose(grp, canon.inverse(grp, info["pose"])[:, None], jnp.arange(grp.order))
        return jnp.take_along_axis(y, idx.reshape(*idx.shape, *[1] * (y.ndim - 2)), 1)
    raise ValueError(f"unknown output kind {kind!r}; choose 'invariant', 'image' or 'regular'")


def prior_regularization_loss(info, target: int = 0):
    """Cross-entropy of the pose scores toward element `target` (the identity): on
    upright training data this teaches the canonicaliser that upright is canonical."""
    labels = jnp.full(info["scores"].shape[:1], target, jnp.int32)
    return optax.softmax_cross_entropy_with_integer_labels(info["scores"], labels).mean()


def contrastive_loss(info):
    """The paper's orthogonality loss: the mean |dot product| between the embeddings of
    different copies of the same image (raw dot products, as in the reference code);
    0 without embeddings."""
    emb = info.get("embeddings")
    if emb is None:
        return jnp.zeros(())
    n = emb.shape[1]
    dots = jnp.abs(jnp.einsum("bgd,bhd->bgh", emb, emb)) * (1 - jnp.eye(n))
    return jnp.sum(dots, axis=(1, 2)).mean() / (n * (n - 1))


def identity_rate(info):
    """Fraction of the batch whose chosen pose is the identity."""
    return jnp.mean(info["pose"] == 0)


def group_average(grp: canon.Group, predict, x):
    """Test-time augmentation: log of the mean softmax of `predict` over the orbit of x."""
    logits = predict(canon.orbit(grp, x).reshape(-1, *x.shape[1:]))
    probs = jax.nn.softmax(logits.reshape(x.shape[0], grp.order, -1), -1).mean(1)
    return jnp.log(probs)


def wrap(canonicalizer: nn.Module, predictor: nn.Module):
    """The invariant predictor ``f(cvars, pvars, x) -> (logits, info)``: canonicalise x,
    then apply `predictor` (any Flax module taking images) to the canonical images."""

    def f(cvars, pvars, x):
        x_c, info = canonicalize(canonicalizer, cvars, x)
        y = predictor.apply(pvars, x_c)
        return invert_canonicalization(canonicalizer.group, y, info), info

    return f


# ----------------------------------------------------------------------------- building


def make_canonicalizer(canon_config, grp: canon.Group) -> nn.Module | None:
    """The canonicaliser of `canon_config.kind` (None for 'none' and 'tta')."""
    kind = canon_config.kind
    if kind not in KINDS:
        raise loop.UserError(f"unknown canon.kind {kind!r}; choose one of {KINDS}")
    if kind == "equivariant":
        e = canon_config.equivariant
        return canon.GroupCNN(grp, tuple(e.features), e.kernel_size, e.strides)
    if kind == "optimized":
        net = classify.make_model(canon_config.network)
        return canon.OptimizedCanonicalizer(net, grp, canon_config.get("score_scale", 1.0))
    return None


def make_predictor(predictor_config):
    """(module, pretrained variables or None)."""
    name = predictor_config.get("pretrained", "")
    if not name:
        return classify.make_model(predictor_config), None
    if not name.startswith("resnet") or not name[6:].isdigit():
        raise loop.UserError(f"unknown predictor.pretrained {name!r}; e.g. 'resnet20'")
    try:
        module, variables, _ = pretrained.resnet_cifar10_flax(int(name[6:]))
    except ValueError as e:
        raise loop.UserError(f"predictor.pretrained: {e}") from None
    return module, jax.tree.map(np.asarray, dict(variables))


def load_data(config):
    """{'train': (x, y) upright, 'test': (x, y) upright, 'rotated': (x, y, g)}: test
    images moved by one random group element g each (numpy, fixed by rotation_seed)."""
    data = classify.load_data(config.data, config.seed)
    x, y = data["train"]
    if config.data.get("train_size", 0):
        idx = np.random.default_rng(config.seed).permutation(len(x))[: config.data.train_size]
        x, y = x[idx], y[idx]
    tx, ty = data["test"]
    if config.data.get("test_size", 0):  # a fixed subset, the same for every row and seed
        idx = np.sort(np.random.default_rng(0).permutation(len(tx))[: config.data.test_size])
        tx, ty = tx[idx], ty[idx]
    grp = canon.group(config.group)
    g = np.random.default_rng(config.data.rotation_seed).integers(0, grp.order, len(tx))
    rx = np.empty_like(tx)
    for k in range(grp.order):
        rx[g == k] = np.asarray(canon.transform(grp, jnp.asarray(tx[g == k]), k))
    return {"train": (x, y), "test": (tx, ty), "rotated": (rx, ty, g.astype(np.int32))}


def throughput(fn, x, repeats: int) -> float:
    """Images/s of ``fn(x)`` (jitted; compiled and warmed up first): the batch size over
    the median wall time of `repeats` calls."""
    jax.block_until_ready(fn(x))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(x))
        times.append(time.perf_counter() - t0)
    return x.shape[0] / float(np.median(times))


def num_params(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------- the task


def make_task(config, data, mesh) -> tuple[loop.Task, Callable]:
    """The loop's Task and ``predict(state, x) -> (logits, info)`` (info None without a
    canonicaliser)."""
    c = config.canon
    grp = canon.group(config.group)
    canonicalizer = make_canonicalizer(c, grp)
    predictor, pretrained_vars = make_predictor(config.predictor)
    trainable = config.predictor.trainable
    train_x, train_y = data["train"]
    sample = jnp.zeros((1, *train_x.shape[1:]), jnp.float32)
    num_steps = config.train.num_steps

    txs = {}
    if canonicalizer is not None:
        txs["canonicalizer"] = classify.make_optimizer(config.canon_optimizer, num_steps)
    if trainable:
        txs["predictor"] = classify.make_optimizer(config.optimizer, num_steps)
    tx = optax.multi_transform(txs, lambda p: {k: k for k in p}) if txs else optax.identity()

    def init(key):
        ckey, pkey, skey = jax.random.split(key, 3)
        params, model_state = {}, {}
        if canonicalizer is not None:
            cvars = dict(canonicalizer.init({"params": ckey}, sample))
            params["canonicalizer"] = cvars.pop("params")
            model_state["canonicalizer"] = cvars
        pvars = pretrained_vars or predictor.init(pkey, sample, train=False)
        pvars = dict(jax.tree.map(jnp.asarray, pvars))
        if trainable:
            params["predictor"] = pvars.pop("params")
        model_state["predictor"] = pvars
        return loop.new_state(params, tx.init(params), skey, model_state=model_state)

    def variables(params, model_state, part):
        out = dict(model_state.get(part, {}))
        return out | {"params": params[part]} if part in params else out

    def apply_predictor(params, model_state, x, train):
        pvars = variables(params, model_state, "predictor")
        if train and trainable and "batch_stats" in pvars:
            logits, upd = predictor.apply(pvars, x, train=True, mutable=["batch_stats"])
            return logits, model_state["predictor"] | dict(upd)
        return predictor.apply(pvars, x, train=train and trainable), model_state["predictor"]

    # a frozen predictor with task_weight 0: the canonicaliser learns from its own losses
    # (prior, contrastive) and the predictor is not run in training at all
    use_task = trainable or c.task_weight > 0

    def train_step(state, batch, key):
        del key  # deterministic: no dropout, no sampled rotations

        def loss_fn(params):
            x, loss, metrics = batch["x"], 0.0, {}
            pstate = state.model_state["predictor"]
            if canonicalizer is not None:
                cvars = variables(params, state.model_state, "canonicalizer")
                x, info = canonicalize(canonicalizer, cvars, x, train=True, beta=c.beta)
                prior, contrast = prior_regularization_loss(info), contrastive_loss(info)
                loss = c.prior_weight * prior + c.contrastive_weight * contrast
                metrics = {"prior": prior, "contrastive": contrast, "identity": identity_rate(info)}
            if use_task:
                logits, pstate = apply_predictor(params, state.model_state, x, True)
                ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
                loss = loss + c.task_weight * ce
                metrics |= {"ce": ce, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["y"])}
            return loss, (pstate, metrics)

        (loss, (pstate, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new = state.replace(
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
            model_state=state.model_state | {"predictor": pstate},
        )
        return new, metrics | {"loss": loss}

    def predict(state, x):
        p = lambda z: apply_predictor(state.params, state.model_state, z, False)[0]
        if c.kind == "none":
            return p(x), None
        if c.kind == "tta":
            return group_average(grp, p, x), None
        cvars = variables(state.params, state.model_state, "canonicalizer")
        x_c, info = canonicalize(canonicalizer, cvars, x)
        return p(x_c), info

    def eval_step(state, batch):
        m = batch["mask"]
        logits, info = predict(state, batch["x"])
        logits_r, info_r = predict(state, batch["xr"])
        out = {
            "upright": ((jnp.argmax(logits, -1) == batch["y"]) * m).sum(),
            "rotated": ((jnp.argmax(logits_r, -1) == batch["y"]) * m).sum(),
            "count": m.sum(),
        }
        if info is not None:
            out["identity"] = ((info["pose"] == 0) * m).sum()
            out["pose"] = ((info_r["pose"] == batch["g"]) * m).sum()
        return out

    eval_step = parallel.jit_eval(eval_step, mesh)
    predict_jit = jax.jit(predict)
    e = config.eval

    def evaluate(state):
        (x, y), (rx, _, g) = data["test"], data["rotated"]
        arrays = {"x": x, "xr": rx, "y": y, "g": g}
        s = loop.eval_in_batches(eval_step, state, arrays, config.train.eval_batch_size, mesh)
        out = {
            "upright_accuracy": s["upright"] / s["count"],
            "rotated_accuracy": s["rotated"] / s["count"],
        }
        if "identity" in s:
            out["identity_rate"] = s["identity"] / s["count"]
            out["pose_accuracy"] = s["pose"] / s["count"]
        xs = jnp.asarray(x[: e.invariance_examples])
        ref = predict_jit(state, xs)[0]
        out["invariance_error"] = max(
            float(jnp.abs(predict_jit(state, canon.transform(grp, xs, u))[0] - ref).max())
            for u in range(1, grp.order)
        )
        xb = jnp.asarray(np.resize(x, (e.throughput_batch_size, *x.shape[1:])))
        out["images_per_s"] = throughput(
            lambda z: predict_jit(state, z)[0], xb, e.throughput_repeats
        )
        return out

    mine = parallel.process_slice(config.train.batch_size)

    def batch(step):
        idx = loop.batch_indices(len(train_x), config.train.batch_size, config.seed, step)[mine]
        return {"x": train_x[idx], "y": train_y[idx]}

    task = loop.Task(init, train_step, batch, config.train.batch_size, evaluate)
    return task, predict


def run(config, workdir) -> dict:
    """Train (if anything is trainable) and evaluate one row; write workdir/results.json."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if config.group not in canon.GROUPS:
        raise loop.UserError(f"unknown group {config.group!r}; choose one of {canon.GROUPS}")
    mesh = parallel.make_mesh()
    data = load_data(config)
    task, _ = make_task(config, data, mesh)
    t0 = time.perf_counter()
    trains = config.canon.kind in ("equivariant", "optimized") or config.predictor.trainable
    if trains:
        state, final = loop.train(task, config, workdir, mesh=mesh)
    else:  # a frozen predictor alone: nothing to train
        state = parallel.jit_init(task.init, mesh)(jax.random.key(config.seed))
        final = task.evaluate(state)
    wall = time.perf_counter() - t0
    results = {
        **final,
        "kind": config.canon.kind,
        "group": config.group,
        "dataset": config.data.name,
        "step": int(state.step),
        "num_params_canonicalizer": num_params(state.params.get("canonicalizer", {})),
        "num_params_predictor": num_params(
            state.params.get("predictor", state.model_state["predictor"].get("params", {}))
        ),
        "wall_s": wall,
    }
    if jax.process_index() == 0:
        (workdir / classify.RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results))
    return results
