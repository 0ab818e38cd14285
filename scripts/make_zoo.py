"""Generate a model zoo (Small CNN Zoo recipe or heterogeneous) from a config; resumable.

    python scripts/make_zoo.py --config=experiments/zoo_mnist.py:cpu --out=zoos/mnist

Shards are written atomically as they finish (`<out>/shards/`); rerun the same command
after a kill to continue. With `--workers=N` (default: the config's trainer.workers) N
single-threaded worker processes split the shards. When all shards exist the zoo is
assembled: weights.npy, metrics.csv.gz, layout.csv (and offsets.npy for hetero),
config.json.
"""

import os
import pathlib
import sys
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from wsl.data import zoo

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiments/zoo_*.py[:variant]")
_OUT = flags.DEFINE_string("out", None, "output folder (zoos/ is git-ignored)")
_WORKERS = flags.DEFINE_integer("workers", None, "worker processes (default: config)")
_WORKER_INDEX = flags.DEFINE_integer("worker_index", None, "internal: this worker")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", 1, "internal: number of workers")
flags.mark_flags_as_required(["config", "out"])


def main(argv):
    del argv
    cfg, out = _CONFIG.value, pathlib.Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # workers and reruns share compiles
        jax.config.update("jax_compilation_cache_dir", str((out / ".jax_cache").absolute()))
    generate = zoo.generate_hetero_zoo if cfg.kind == "hetero" else zoo.generate_cnn_zoo
    assemble = zoo.assemble_hetero_zoo if cfg.kind == "hetero" else zoo.assemble_cnn_zoo
    if _WORKER_INDEX.value is not None:  # a child of spawn_workers
        generate(cfg, out, worker=_WORKER_INDEX.value, num_workers=_NUM_WORKERS.value)
        return
    t0 = time.time()
    workers = _WORKERS.value or cfg.trainer.get("workers", 1)
    if workers > 1:
        args = [
            a
            for a in sys.argv
            if not a.startswith(("--workers", "--worker_index", "--num_workers"))
        ]
        zoo.spawn_workers(args, workers, log_dir=out)
        done = generate(cfg, out, worker=0, num_workers=1)  # nothing left: checks shards
    else:
        done = generate(cfg, out)
    if not done:
        sys.exit("some shards are missing; rerun to continue")
    wall = time.time() - t0
    prev = out / "wall_seconds.txt"
    total = wall + (float(prev.read_text()) if prev.exists() else 0.0)
    prev.write_text(f"{total:.1f}")
    spread = assemble(
        cfg,
        out,
        extra={
            "command": " ".join(["python", *sys.argv]),
            "wall_seconds_total": total,
            "machine": f"{os.cpu_count()} CPUs",
        },
    )
    print(f"zoo written to {out}: test accuracy (last epoch) {spread}")


if __name__ == "__main__":
    app.run(main)
