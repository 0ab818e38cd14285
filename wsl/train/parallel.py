"""Data parallelism on any device mesh: the batch is sharded along the `data` axis of a
`jax.sharding.Mesh` over all devices, everything else (parameters, optimiser state) is
replicated, and `jax.jit` with `NamedSharding` in/out shardings lets XLA insert the
gradient all-reduce. The same code runs on 1 CPU, 8 GPUs, a TPU slice and several hosts.

Multi-host: call `initialize()` before anything touches a JAX backend; each host then
builds its own slice of every global batch (`process_slice`) and `shard_batch` assembles
the global array with `jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"

# Environment variables that mean "this process is one of several" (set by hand; on SLURM
# JAX's own cluster auto-detection fills in coordinator, process count and id).
_MULTI_PROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES")


def wants_distributed(env: Mapping[str, str] | None = None) -> bool:
    """True when the environment says this process is one of several: JAX's coordinator
    variables, or a SLURM job step with more than one task."""
    env = os.environ if env is None else env
    if any(env.get(k) for k in _MULTI_PROCESS_ENV):
        return True
    return int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1) > 1


def initialize(mode: str | bool = "auto") -> bool:
    """Call `jax.distributed.initialize()` when running on several hosts.

    `mode`: "auto" (multi-host environment detected by `wants_distributed`), True/"on"
    (always, e.g. on a TPU pod slice where JAX auto-detects the cluster) or False/"off".
    Must run before any JAX computation. Returns whether JAX is now distributed."""
    mode = {True: "on", False: "off"}.get(mode, mode)
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"distributed must be 'auto', 'on' or 'off', got {mode!r}")
    if jax.distributed.is_initialized():
        return True
    if mode == "on" or (mode == "auto" and wants_distributed()):
        # SLURM, Open MPI and Cloud TPU are detected by JAX; a manual launch sets
        # JAX_COORDINATOR_ADDRESS (host:port), JAX_NUM_PROCESSES and JAX_PROCESS_ID.
        env = os.environ
        jax.distributed.initialize(
            num_processes=int(env["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in env else None,
            process_id=int(env["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in env else None,
        )
        return True
    return False


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh with axis `data` over `devices` (default: all devices of all hosts)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the `data` axis, other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
    """A global batch must split evenly over devices and hosts; one clear error if not."""
    n = mesh.devices.size
    if global_batch_size % n:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by the {n} devices of "
            f"the mesh; choose a multiple of {n} (e.g. {max(n, global_batch_size // n * n)})"
        )
    if global_batch_size % jax.process_count():
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by the "
            f"{jax.process_count()} processes"
        )


def process_slice(global_batch_size: int) -> slice:
    """The rows of a global batch this host feeds (all rows on a single host)."""
    per = global_batch_size // jax.process_count()
    i = jax.process_index()
    return slice(i * per, (i + 1) * per)


def shard_batch(local_batch, mesh: Mesh):
    """Turn this host's slice of a global batch (a pytree of numpy arrays with a common
    leading axis) into global `jax.Array`s sharded along `data`."""
    sharding = data_sharded(mesh)
    procs = jax.process_count()

    def put(x):
        x = np.asarray(x)
        global_shape = (x.shape[0] * procs, *x.shape[1:])
        check_batch_size(global_shape[0], mesh)
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree.map(put, local_batch)


def replicate(tree, mesh: Mesh):
    """Place a pytree (parameters, optimiser state, ...) on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def jit_step(fn: Callable, mesh: Mesh, *, donate_state: bool = True) -> Callable:
    """jit `fn(state, batch) -> (state, metrics)` with the state replicated, the batch
    sharded along `data`, and replicated outputs (XLA inserts the gradient all-reduce)."""
    rep = replicated(mesh)
    return jax.jit(
        fn,
        in_shardings=(rep, data_sharded(mesh)),
        out_shardings=(rep, rep),
        donate_argnums=(0,) if donate_state else (),
    )


def jit_init(init: Callable, mesh: Mesh) -> Callable:
    """jit `init(key) -> state` so that the state comes out replicated on every device
    (also on several hosts, where `device_put` of host values cannot reach all devices)."""
    return jax.jit(init, out_shardings=replicated(mesh))


def jit_eval(fn: Callable, mesh: Mesh) -> Callable:
    """jit `fn(state, batch) -> metrics` with the state replicated, the batch sharded."""
    return jax.jit(
        fn, in_shardings=(replicated(mesh), data_sharded(mesh)), out_shardings=replicated(mesh)
    )
