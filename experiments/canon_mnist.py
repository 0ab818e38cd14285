"""Canonicalisation on C4-rotated MNIST (wsl.methods.canonicalize; Panigrahi & Mondal 2024).

One row per `canon.kind` (none | tta | equivariant | optimized): a CNN predictor trained
here from scratch on upright MNIST (with the canonicaliser, jointly, for the last two),
tested on the upright test set and on a copy rotated by a random C4 element per image.

smoke: SmallCNN predictor widened to 64 channels, 1 epoch of Adam; canonicalisers: the
       paper's = SmallCNN(32 channels, 3 stride-2 convs) embedding into 32 dims (19.9k
       parameters), the equivariant baseline = a SmallCNN lifted to C4 (GroupCNN 8/8/8,
       4.7k parameters), sized for about the same accuracy (scripts/bench_canon.py).
paper: the same networks trained longer (5 epochs) on the full sets; the paper's own
       rotated-MNIST setup is not reproduced (its architectures are larger).

    python -m wsl.main --config=experiments/canon_mnist.py:smoke --workdir=runs/canon \
        --config.canon.kind=optimized
"""

import ml_collections

VARIANTS = ("smoke", "paper")


def get_config(variant: str = "smoke") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {list(VARIANTS)}")
    smoke = variant == "smoke"
    c = ml_collections.ConfigDict()
    c.method = "canonicalize"
    c.seed = 0
    c.distributed = "auto"
    c.group = "C4"
    c.data = ml_collections.ConfigDict(
        {
            "name": "mnist",
            "preprocess": "unterthiner",
            "val_size": 0,
            "train_size": 0,
            "test_size": 5000 if smoke else 0,
            "rotation_seed": 0,
        }
    )
    c.predictor = ml_collections.ConfigDict(
        {
            "name": "SmallCNN",
            "kwargs": {"features": 64, "num_layers": 3},
            "pretrained": "",
            "trainable": True,
        }
    )
    c.canon = ml_collections.ConfigDict(
        {
            "kind": "optimized",
            "beta": 1.0,
            "task_weight": 1.0,
            "prior_weight": 1.0,
            "score_scale": 1.0,
            "contrastive_weight": 1.0,
            "network": {"name": "SmallCNN", "kwargs": {"features": 32, "num_layers": 3,
                                                        "num_classes": 32}},
            "equivariant": {"features": (8, 8, 8), "kernel_size": 3, "strides": 2},
        }
    )  # fmt: skip
    batch_size = 128
    epochs = 1 if smoke else 5
    num_steps = epochs * (60000 // batch_size)
    c.optimizer = ml_collections.ConfigDict(
        {
            "name": "adam",
            "learning_rate": 3e-3,
            "schedule": "cosine",
            "warmup_steps": 100,
            "momentum": 0.0,
            "weight_decay": 0.0,
        }
    )
    c.canon_optimizer = ml_collections.ConfigDict(
        {
            "name": "adam",
            "learning_rate": 1e-3,
            "schedule": "cosine",
            "warmup_steps": 100,
            "momentum": 0.0,
            "weight_decay": 0.0,
        }
    )
    c.train = ml_collections.ConfigDict(
        {
            "batch_size": batch_size,
            "num_steps": num_steps,
            "eval_batch_size": 500,
            "eval_every": 0,
            "log_every": 100,
            "checkpoint_every": 1000,
            "keep_checkpoints": 2,
            "async_checkpoints": True,
            "nan_at_step": 0,
        }
    )
    c.eval = ml_collections.ConfigDict(
        {"throughput_batch_size": 256, "throughput_repeats": 10, "invariance_examples": 32}
    )
    return c
