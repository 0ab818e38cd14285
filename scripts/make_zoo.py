"""Generate a model zoo (Small CNN Zoo recipe or heterogeneous) from a config; resumable.

    python scripts/make_zoo.py --config=experiments/zoo_mnist.py:cpu --out=zoos/mnist

Shards are written atomically as they finish (`<out>/shards/`); rerun the same command
after a kill to continue. With `--workers=N` (default: the config's trainer.workers) N
single-threaded worker processes split the shards. When all shards exist the zoo is
assembled: weights.npy, metrics.csv.gz, layout.csv (and offsets.npy for hetero),
config.json.
"""

import sys

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
    cfg = _CONFIG.value
    hetero = cfg.kind == "hetero"
    spread = zoo.run_generation(
        zoo.generate_hetero_zoo if hetero else zoo.generate_cnn_zoo,
        zoo.assemble_hetero_zoo if hetero else zoo.assemble_cnn_zoo,
        cfg,
        _OUT.value,
        sys.argv,
        workers=_WORKERS.value or cfg.trainer.get("workers", 1),
        worker_index=_WORKER_INDEX.value,
        num_workers=_NUM_WORKERS.value,
    )
    if spread is not None:
        print(f"zoo written to {_OUT.value}: test accuracy (last epoch) {spread}")


if __name__ == "__main__":
    app.run(main)
