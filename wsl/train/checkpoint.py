"""Checkpoints and run records in a workdir, with orbax.

Layout of a workdir:

    config.json      the run's config (compared on restart: another config -> error)
    checkpoints/N/   orbax checkpoint of the train state after N steps (keep the last few)
    metrics.jsonl    one JSON object per line (written by `wsl.train.loop`)
    results.json     final metrics (written by the method)

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a
run killed at any point leaves only whole checkpoints (`cleanup_tmp_directories` removes
the debris on the next start). `load` reads a checkpoint back as numpy arrays without
knowing the model, for tests, zoos and analysis.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"


def manager(
    workdir, *, keep: int = 3, async_save: bool = True, reader: bool = False
) -> ocp.CheckpointManager:
    """An orbax `CheckpointManager` over `workdir/checkpoints`, keeping the last `keep`
    (`reader=True`: for `load`, restoring any pytree as numpy; creates and deletes nothing)."""
    directory = pathlib.Path(workdir).absolute() / CHECKPOINT_DIR
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if reader else keep,
        create=not reader,
        cleanup_tmp_directories=not reader,
        enable_async_checkpointing=async_save and not reader,
    )
    handler = ocp.PyTreeCheckpointHandler() if reader else ocp.StandardCheckpointHandler()
    return ocp.CheckpointManager(directory, options=options, item_handlers=handler)


def save(mngr: ocp.CheckpointManager, step: int, state) -> None:
    """Save `state` as checkpoint `step` (asynchronously if the manager is async)."""
    if step not in mngr.all_steps():
        mngr.save(step, args=ocp.args.StandardSave(state))


def _key_str(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def shapes(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    """'a/b/c' -> (shape, dtype) for every array leaf of `tree` (arrays, ShapeDtypeStructs or
    orbax array metadata); namedtuple fields and dict keys give the same path."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {
        "/".join(_key_str(k) for k in path): (tuple(x.shape), str(np.dtype(x.dtype)))
        for path, x in leaves
        if hasattr(x, "shape")
    }


def differences(expected: Mapping, found: Mapping, limit: int = 5) -> list[str]:
    """Human-readable differences between two flat mappings (at most `limit`)."""
    out = []
    for k in sorted(set(expected) | set(found), key=lambda k: (not k.startswith("params"), k)):
        if k not in found:
            out.append(f"{k}: missing in checkpoint (expected {expected[k]})")
        elif k not in expected:
            out.append(f"{k}: in checkpoint only ({found[k]})")
        elif expected[k] != found[k]:
            out.append(f"{k}: expected {expected[k]}, found {found[k]}")
    return out[:limit] + ([f"... and {len(out) - limit} more"] if len(out) > limit else [])


def stored_shapes(mngr: ocp.CheckpointManager, step: int) -> dict:
    """Shapes and dtypes of checkpoint `step`, read from its metadata (no array data)."""
    meta = mngr.item_metadata(step)
    return shapes(getattr(meta, "tree", meta))


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state):
    """Restore checkpoint `step` into the structure, shapes and shardings of
    `abstract_state` (a pytree of `jax.ShapeDtypeStruct`). Check compatibility first with
    `differences(shapes(abstract_state), stored_shapes(mngr, step))`."""
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))


def load(workdir, step: int | None = None) -> tuple[int, dict]:
    """(step, state) of checkpoint `step` (default: the latest) in `workdir`, as a nested
    dict of numpy arrays, without knowing the model. FileNotFoundError if there is none."""
    mngr = manager(workdir, reader=True)
    try:
        step = mngr.latest_step() if step is None else step
        if step is None or step not in mngr.all_steps():
            raise FileNotFoundError(
                f"no checkpoint{'' if step is None else f' at step {step}'} in "
                f"{pathlib.Path(workdir) / CHECKPOINT_DIR}"
            )
        meta = mngr.item_metadata(step)
        meta = getattr(meta, "tree", meta)
        restore_args = jax.tree.map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
            meta,
            is_leaf=lambda x: hasattr(x, "shape"),
        )
        state = mngr.restore(step, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    finally:
        mngr.close()
    return step, state


def write_config(workdir, config: Mapping) -> None:
    path = pathlib.Path(workdir) / CONFIG_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def read_config(workdir) -> dict | None:
    path = pathlib.Path(workdir) / CONFIG_FILE
    return json.loads(path.read_text()) if path.exists() else None


def flatten(config: Mapping, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out = {}
    for k, v in config.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
