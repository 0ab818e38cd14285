"""Quickstart: classify sklearn's 8x8 digits (offline, no download) in seconds on any CPU.

    python -m wsl.main --config=experiments/quickstart.py --workdir=/tmp/quickstart

smoke: a two-layer SmallCNN (Conv(32, 3x3, stride 2) x 2: 8 -> 3 -> 1) for 600 steps.
paper: the same network, longer (there is no paper table behind this config).
"""

import ml_collections

VARIANTS = ("smoke", "paper")


def get_config(variant: str = "smoke") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {list(VARIANTS)}")
    smoke = variant == "smoke"
    c = ml_collections.ConfigDict()
    c.method = "classify"
    c.seed = 0
    c.distributed = "auto"
    c.data = ml_collections.ConfigDict({"name": "digits", "preprocess": "unit", "val_size": 0})
    c.model = ml_collections.ConfigDict(
        {"name": "SmallCNN", "kwargs": {"features": 32, "num_layers": 2}}
    )
    c.optimizer = ml_collections.ConfigDict(
        {
            "name": "adam",
            "learning_rate": 3e-3,
            "schedule": "cosine",
            "warmup_steps": 50,
            "momentum": 0.0,
            "weight_decay": 0.0,
        }
    )
    c.train = ml_collections.ConfigDict(
        {
            "batch_size": 64,
            "num_steps": 600 if smoke else 3000,
            "eval_batch_size": 360,
            "eval_every": 200 if smoke else 500,
            "log_every": 50,
            "checkpoint_every": 200 if smoke else 500,
            "keep_checkpoints": 3,
            "async_checkpoints": True,
            "nan_at_step": 0,
        }
    )
    return c
