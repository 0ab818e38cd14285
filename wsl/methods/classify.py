"""Train a subject network (`wsl.nn.subjects`) on an image data set (`wsl.data.images`).

Used for zoo baselines, individually trained networks and the predictors that later get
canonicalised. `run(config, workdir)` trains with `wsl.train.loop`, writes
`workdir/results.json` (test accuracy and loss) and returns it.

Config (see experiments/classify_mnist.py):
    seed
    data.{name, preprocess, val_size}                  # images.load / preprocess / split
    model.{name, kwargs}                               # subjects.make(name, **kwargs)
    optimizer.{name, learning_rate, schedule, warmup_steps, momentum, weight_decay}
    train.{num_steps, batch_size, eval_batch_size, ...} # plus the loop's keys (loop.Options)
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wsl.data import images
from wsl.nn import subjects
from wsl.train import loop, parallel

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")
RESULTS_FILE = "results.json"


def make_schedule(opt, num_steps: int):
    """`opt.learning_rate`, constant or (`opt.schedule` = cosine) linear warm-up over
    `opt.warmup_steps` then cosine decay to 0 at `num_steps`."""
    schedule = opt.get("schedule", "constant")
    if schedule not in SCHEDULES:
        raise loop.UserError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    lr = opt.learning_rate
    if schedule == "cosine":
        warmup = min(opt.get("warmup_steps", 0), num_steps // 2)
        lr = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(num_steps, warmup + 1))
    return lr


def make_optimizer(opt, num_steps: int, lr=None) -> optax.GradientTransformation:
    """optax optimiser from `config.optimizer`: adam / adamw / sgd (+ momentum), the learning
    rate of `make_schedule` (or `lr`, a number or schedule), weight decay (decoupled for
    adamw, L2 otherwise), optional gradient clipping by global norm (`clip`, default off)."""
    if opt.name not in OPTIMIZERS:
        raise loop.UserError(f"unknown optimizer {opt.name!r}; choose one of {OPTIMIZERS}")
    lr = make_schedule(opt, num_steps) if lr is None else lr
    wd = opt.get("weight_decay", 0.0)
    if opt.name == "adamw":
        tx = optax.adamw(lr, weight_decay=wd)
    else:
        base = optax.adam(lr) if opt.name == "adam" else optax.sgd(lr, opt.get("momentum") or None)
        tx = optax.chain(optax.add_decayed_weights(wd), base) if wd else base
    clip = opt.get("clip", 0.0)  # > 0: clip the gradients' global norm first
    return optax.chain(optax.clip_by_global_norm(clip), tx) if clip else tx


def make_model(model_config):
    kwargs = {
        k: tuple(v) if isinstance(v, list) else v for k, v in model_config.kwargs.to_dict().items()
    }
    try:
        return subjects.make(model_config.name, **kwargs)
    except (ValueError, TypeError) as e:
        raise loop.UserError(f"config.model: {e}") from None


def load_data(data_config, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': (x, y), 'test': (x, y)[, 'val': (x, y)]} as float32 images, int32 labels."""
    if data_config.name not in images.DATASETS:
        raise loop.UserError(
            f"unknown data set {data_config.name!r}; choose one of {images.DATASETS}"
        )
    if data_config.preprocess not in images.SCHEMES:
        raise loop.UserError(
            f"unknown preprocessing {data_config.preprocess!r}; choose one of {images.SCHEMES}"
        )
    data = images.load(data_config.name)
    prep = lambda x: images.preprocess(x, data_config.preprocess)
    train = (data.train_x, data.train_y)
    out = {}
    if data_config.get("val_size", 0):
        train, val = images.train_val_split(*train, data_config.val_size, seed)
        out["val"] = (prep(val[0]), val[1])
    out["train"] = (prep(train[0]), train[1])
    out["test"] = (prep(data.test_x), data.test_y)
    return out


def make_task(model, tx, train_xy, eval_sets, config, mesh) -> loop.Task:
    """The loop's Task for classification: cross-entropy on `train_xy`, accuracy and loss
    on each of `eval_sets` ({split: (x, y)})."""
    train_x, train_y = train_xy
    batch_size = config.train.batch_size
    sample = jnp.zeros((1, *train_x.shape[1:]), jnp.float32)

    def init(key):
        pkey, dkey, skey = jax.random.split(key, 3)
        variables = dict(model.init({"params": pkey, "dropout": dkey}, sample, train=False))
        params = variables.pop("params")
        return loop.new_state(params, tx.init(params), skey, model_state=variables)

    def apply(params, model_state, x, train, key=None):
        variables = {"params": params, **model_state}
        rngs = {"dropout": key} if key is not None else None
        if train and model_state:  # BatchNorm statistics update in training mode
            return model.apply(variables, x, train=True, rngs=rngs, mutable=list(model_state))
        return model.apply(variables, x, train=train, rngs=rngs), model_state

    def train_step(state, batch, key):
        def loss_fn(params):
            logits, model_state = apply(params, state.model_state, batch["x"], True, key)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
            return loss, (logits, model_state)

        (loss, (logits, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["y"])
        new = state.replace(params=params, opt_state=opt_state, model_state=model_state)
        return new, {"loss": loss, "accuracy": accuracy}

    def eval_step(state, batch):
        logits, _ = apply(state.params, state.model_state, batch["x"], False)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
        m = batch["mask"]
        correct = (jnp.argmax(logits, -1) == batch["y"]) * m
        return {"correct": correct.sum(), "loss": (ce * m).sum(), "count": m.sum()}

    eval_step = parallel.jit_eval(eval_step, mesh)

    def evaluate(state):
        out = {}
        for split, (x, y) in eval_sets.items():
            s = loop.eval_in_batches(
                eval_step, state, {"x": x, "y": y}, config.train.eval_batch_size, mesh
            )
            out[f"{split}_accuracy"] = s["correct"] / s["count"]
            out[f"{split}_loss"] = s["loss"] / s["count"]
        return out

    mine = parallel.process_slice(batch_size)

    def batch(step):
        idx = loop.batch_indices(len(train_x), batch_size, config.seed, step)[mine]
        return {"x": train_x[idx], "y": train_y[idx]}

    return loop.Task(init, train_step, batch, batch_size, evaluate)


def print_table(workdir) -> None:
    """Print the eval records of a run as a small table."""
    rows = loop.read_metrics(workdir, "eval")
    train = {r["step"]: r for r in loop.read_metrics(workdir, "train")}
    if not rows:
        return
    keys = [k for k in rows[-1] if k not in ("step", "split")]
    print(f"{'step':>8} {'train_loss':>10} " + " ".join(f"{k:>14}" for k in keys))
    for r in rows:
        tl = train.get(r["step"], {}).get("loss", float("nan"))
        print(f"{r['step']:>8} {tl:>10.4f} " + " ".join(f"{r.get(k, np.nan):>14.4f}" for k in keys))


def run(config, workdir) -> dict:
    """Train config.model on config.data; write and return workdir/results.json."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = parallel.make_mesh()
    model = make_model(config.model)
    data = load_data(config.data, config.seed)
    tx = make_optimizer(config.optimizer, config.train.num_steps)
    eval_sets = {k: v for k, v in data.items() if k != "train"}
    task = make_task(model, tx, data["train"], eval_sets, config, mesh)

    t0 = time.perf_counter()
    state, final = loop.train(task, config, workdir, mesh=mesh)
    wall = time.perf_counter() - t0
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    results = {
        **final,
        "step": int(state.step),
        "dataset": config.data.name,
        "model": config.model.name,
        "num_params": n_params,
        "wall_s": wall,
    }
    if jax.process_index() == 0:
        (workdir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
        print_table(workdir)
    return results
