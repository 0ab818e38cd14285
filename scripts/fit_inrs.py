"""Fit an INR set (one SIREN per image) from a config; resumable.

    python scripts/fit_inrs.py --config=experiments/inr_mnist.py:cpu --out=inrs/mnist

Shards are written atomically as they finish (`<out>/shards/`); rerun the same command
after a kill to continue. When all shards exist: weights.npy, index.npz (label, split,
image_index, psnr), layout.csv, config.json.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from wsl.data import inr, zoo

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiments/inr_*.py[:variant]")
_OUT = flags.DEFINE_string("out", None, "output folder (inrs/ is git-ignored)")
_WORKERS = flags.DEFINE_integer("workers", None, "worker processes (default: config)")
_WORKER_INDEX = flags.DEFINE_integer("worker_index", None, "internal: this worker")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", 1, "internal: number of workers")
flags.mark_flags_as_required(["config", "out"])


def main(argv):
    del argv
    cfg = _CONFIG.value
    stats = zoo.run_generation(
        inr.generate_inr_set,
        inr.assemble_inr_set,
        cfg,
        _OUT.value,
        sys.argv,
        workers=_WORKERS.value or cfg.get("workers", 1),
        worker_index=_WORKER_INDEX.value,
        num_workers=_NUM_WORKERS.value,
    )
    if stats is not None:
        print(f"INR set written to {_OUT.value}: {stats}")


if __name__ == "__main__":
    app.run(main)
