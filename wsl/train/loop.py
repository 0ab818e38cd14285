"""One training loop for every method.

A method describes its training as a `Task` of pure functions and hands it to `train`:

    init(key) -> TrainState                         # build params, optimiser state, ...
    train_step(state, batch, key) -> (state, metrics)   # pure; jitted over the mesh by the loop
    batch(step) -> batch                            # this host's slice of global batch `step`
    evaluate(state) -> {name: float}                # host-level; may call jitted functions

`train` jits `train_step` over a device mesh (batch sharded, state replicated), draws the
step's key as `fold_in(state.rng, state.step)`, advances `state.step`, evaluates every
`eval_every` steps and at the end, writes metrics as JSON lines to `workdir/metrics.jsonl`,
shows a progress bar on a terminal, and checkpoints with orbax.

Resuming: batches are a pure function of (seed, step) (`batch_indices`) and the step key of
(state.rng, step), so the checkpointed `TrainState` is the whole position of a run: a run
killed at any point and restarted in the same workdir ends bit-identical to an
uninterrupted one. A NaN/inf loss stops the run naming the step (`NonFiniteError`), and a
state with non-finite values is never saved. A workdir holding another config or
architecture stops with `WorkdirMismatchError` before anything is written.

Config keys read here: `seed` and `train.{num_steps, batch_size, eval_every, log_every,
checkpoint_every, keep_checkpoints, async_checkpoints, nan_at_step}` (see `options`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from wsl.train import checkpoint, parallel

METRICS_FILE = "metrics.jsonl"


class UserError(Exception):
    """A problem the user can fix (config, data path, workdir, diverging run);
    `wsl.main` prints it as one line `error: ...` and exits non-zero."""


class NonFiniteError(UserError):
    """The loss (or the state) became NaN or inf."""


class WorkdirMismatchError(UserError):
    """The workdir holds a run of another config or architecture."""


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training. `rng` is raw key data (uint32) so that
    orbax stores it like any array; `model_state` holds e.g. {'batch_stats': ...}."""

    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any
    rng: jax.Array


def new_state(params, opt_state, key: jax.Array, model_state=None) -> TrainState:
    """A TrainState at step 0."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=opt_state,
        model_state={} if model_state is None else model_state,
        rng=jax.random.key_data(key),
    )


@dataclasses.dataclass(frozen=True)
class Task:
    """What a method gives the loop (see module docstring). `train_step` must return
    metrics with a scalar "loss" and need not touch `state.step` or `state.rng`.
    `batch_size` is the global batch size (checked against the device count)."""

    init: Callable[[jax.Array], TrainState]
    train_step: Callable[[TrainState, Any, jax.Array], tuple[TrainState, dict]]
    batch: Callable[[int], Any]
    batch_size: int
    evaluate: Callable[[TrainState], dict] | None = None
    # optional: step number -> a hashable static variant, passed to
    # `train_step(..., variant=v)`; the loop compiles one step per variant (a method whose
    # steps differ in shape by phase, e.g. HTTY; `jax.lax.switch` around convolutions is
    # ~35x slower on XLA:CPU, measured)
    variant: Callable[[int], Any] | None = None


@dataclasses.dataclass(frozen=True)
class Options:
    num_steps: int
    eval_every: int = 0  # 0: evaluate at the end only
    log_every: int = 100
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    async_checkpoints: bool = True
    nan_at_step: int = 0  # testing aid: > 0 makes the loss NaN from this step on


def options(config) -> Options:
    """Loop options from `config.train` (unknown keys there are the method's)."""
    train = config.train
    names = [f.name for f in dataclasses.fields(Options)]
    return Options(**{k: train[k] for k in names if k in train})


# ----------------------------------------------------------------------------- batches


@functools.lru_cache(maxsize=4)
def _permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng((seed, epoch)).permutation(num_examples)


def batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Example indices of global batch `step`: epoch e = step // (num_examples //
    batch_size) is the permutation `default_rng((seed, e))`, remainder dropped. A pure
    function of its arguments, so a resumed run needs only the step."""
    per_epoch = num_examples // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch size {batch_size} exceeds the {num_examples} examples")
    epoch, i = divmod(step, per_epoch)
    return _permutation(num_examples, seed, epoch)[i * batch_size : (i + 1) * batch_size]


def eval_in_batches(eval_step, state, arrays: Mapping[str, np.ndarray], batch_size, mesh):
    """Sum `eval_step(state, batch) -> {name: sum}` over a fixed data set in global batches
    of `batch_size` (the last one padded; `batch["mask"]` is 1 on real rows, 0 on padding).
    Jit `eval_step` with `parallel.jit_eval`. `batch_size` is rounded up to a multiple of
    the device count (the padding is masked anyway). Returns {name: float}."""
    n = len(next(iter(arrays.values())))
    batch_size = -(-batch_size // mesh.devices.size) * mesh.devices.size
    mine = parallel.process_slice(batch_size)
    totals = None
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)
        mask = (idx < n).astype(np.float32)[mine]
        idx = np.minimum(idx, n - 1)[mine]
        batch = {k: np.asarray(v)[idx] for k, v in arrays.items()} | {"mask": mask}
        out = eval_step(state, parallel.shard_batch(batch, mesh))
        totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    return {k: float(v) for k, v in jax.device_get(totals).items()}


# ----------------------------------------------------------------------------- records


def config_dict(config) -> dict:
    """A JSON-able dict of an ml_collections config (or a mapping)."""
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(config, default=str))


def check_workdir(workdir: pathlib.Path, config: dict) -> None:
    """Raise WorkdirMismatchError if `workdir` holds a run of another config."""
    old = checkpoint.read_config(workdir)
    if old is None or old == config:
        return
    a, b = checkpoint.flatten(old), checkpoint.flatten(config)
    diffs = [
        f"{k}: workdir has {a.get(k, '<unset>')!r}, this run has {b.get(k, '<unset>')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k, "<unset>") != b.get(k, "<unset>")
    ]
    raise WorkdirMismatchError(
        f"{workdir} holds a run of another config ({'; '.join(diffs[:5])}"
        f"{'; ...' if len(diffs) > 5 else ''}); use a new --workdir, or delete that one"
    )


def _truncate_metrics(path: pathlib.Path, last_step: int) -> None:
    """Keep the lines of steps <= last_step (a resumed run rewrites the later ones)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            pass  # a line cut short by a kill
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(k + "\n" for k in keep))
    tmp.replace(path)  # atomic: a kill here leaves the old or the new file


def read_metrics(workdir, split: str | None = None) -> list[dict]:
    """The records of `workdir/metrics.jsonl` (of one split: "train" or "eval")."""
    path = pathlib.Path(workdir) / METRICS_FILE
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [r for r in rows if split is None or r.get("split") == split]


# ----------------------------------------------------------------------------- the loop


def make_step(train_step, nan_at_step: int = 0):
    """The body of the loop's jitted step: `(state, batch) -> (state, metrics)` with the
    step key `fold_in(state.rng, state.step)` and `step` advanced by one."""

    def step(state: TrainState, batch):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        new, metrics = train_step(state, batch, key)
        new = new.replace(step=state.step + 1, rng=state.rng)
        if nan_at_step > 0:
            bad = new.step >= nan_at_step
            metrics = dict(metrics, loss=jnp.where(bad, jnp.nan, metrics["loss"]))
        return new, metrics

    return step


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else True


def _abstract(init, key, mesh):
    rep = parallel.replicated(mesh)
    shapes = jax.eval_shape(init, key)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), shapes)


def train(task: Task, config, workdir, *, mesh=None) -> tuple[TrainState, dict]:
    """Train `task` as configured, resuming from the latest checkpoint in `workdir`.
    Returns the final state and the final evaluation metrics ({} without `evaluate`)."""
    opts = options(config)
    workdir = pathlib.Path(workdir)
    mesh = parallel.make_mesh() if mesh is None else mesh
    try:
        parallel.check_batch_size(task.batch_size, mesh)
    except ValueError as e:
        raise UserError(f"{e} (config.train.batch_size)") from None
    lead = jax.process_index() == 0
    cfg = config_dict(config)
    check_workdir(workdir, cfg)

    key = jax.random.key(config.seed)
    abstract = _abstract(task.init, key, mesh)
    mngr = checkpoint.manager(
        workdir, keep=opts.keep_checkpoints, async_save=opts.async_checkpoints
    )
    metrics_path = workdir / METRICS_FILE
    try:
        start = mngr.latest_step()
        if start is None:
            state, start = parallel.jit_init(task.init, mesh)(key), 0
        else:
            diffs = checkpoint.differences(
                checkpoint.shapes(abstract), checkpoint.stored_shapes(mngr, start)
            )
            if diffs:
                raise WorkdirMismatchError(
                    f"the checkpoint at step {start} in {mngr.directory} was written by "
                    f"another architecture ({'; '.join(diffs)}); use a new --workdir"
                )
            state = checkpoint.restore(mngr, start, abstract)
            if lead:
                print(f"resuming from step {start} in {workdir}", flush=True)
        if lead:
            checkpoint.write_config(workdir, cfg)
            _truncate_metrics(metrics_path, start)
        return _run(task, opts, state, start, mesh, mngr, metrics_path if lead else None)
    finally:
        mngr.wait_until_finished()
        mngr.close()


def _run(task, opts: Options, state, start, mesh, mngr, metrics_path):
    step_fns: dict = {}

    def step_fn(state, batch, step):
        v = task.variant(step) if task.variant is not None else None
        if v not in step_fns:
            fn = task.train_step if v is None else functools.partial(task.train_step, variant=v)
            step_fns[v] = parallel.jit_step(make_step(fn, opts.nan_at_step), mesh)
        return step_fns[v](state, batch)

    def write(record):
        if metrics_path is not None:
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    pending: list[tuple[int, dict]] = []
    t_flush = time.perf_counter()

    def flush():
        nonlocal t_flush
        if not pending:
            return
        values = jax.device_get([m for _, m in pending])
        for (s, _), m in zip(pending, values, strict=True):
            if not np.isfinite(m["loss"]):
                last = mngr.latest_step()
                raise NonFiniteError(
                    f"loss is {float(m['loss'])} at step {s}; stopped. The last good "
                    f"checkpoint (step {last}) is kept in {mngr.directory}"
                    if last is not None
                    else f"loss is {float(m['loss'])} at step {s}; stopped (no checkpoint yet)"
                )
        now = time.perf_counter()
        mean = {k: float(np.mean([m[k] for m in values])) for k in values[0]}
        record = {"step": pending[-1][0], "split": "train", **mean}
        record["steps_per_s"] = len(pending) / max(now - t_flush, 1e-9)
        write(record)
        bar.set_postfix(loss=f"{mean['loss']:.4g}")
        pending.clear()
        t_flush = now

    final: dict = {}
    bar = tqdm(
        total=opts.num_steps,
        initial=start,
        disable=None if metrics_path is not None else True,
        dynamic_ncols=True,
        desc="train",
    )
    with bar:
        for step in range(start, opts.num_steps):
            batch = parallel.shard_batch(task.batch(step), mesh)
            state, metrics = step_fn(state, batch, step)
            s = step + 1
            pending.append((s, metrics))
            bar.update(1)
            last = s == opts.num_steps
            save = last or s % opts.checkpoint_every == 0
            evaluate = task.evaluate is not None and (
                last or (opts.eval_every > 0 and s % opts.eval_every == 0)
            )
            if save or evaluate or s % opts.log_every == 0:
                flush()
            if evaluate:
                final = task.evaluate(state)
                write({"step": s, "split": "eval", **final})
            if save:
                if not bool(_all_finite(state)):
                    raise NonFiniteError(
                        f"the state became NaN or inf at step {s} (finite loss); stopped. "
                        f"The last good checkpoint (step {mngr.latest_step()}) is kept in "
                        f"{mngr.directory}"
                    )
                checkpoint.save(mngr, s, state)
            if save or evaluate:
                t_flush = time.perf_counter()  # steps_per_s counts training only
    if start >= opts.num_steps and task.evaluate is not None:
        final = task.evaluate(state)  # the run was complete: re-evaluate its final state
    return state, final
