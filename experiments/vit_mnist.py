"""Train a small ViT on MNIST (wsl.methods.classify): the transformer subject of the
redundant-blocks table (experiments/redundancy.py).

smoke: ViT with 7x7 patches (16 tokens + class token), width 64, 6 pre-norm encoder blocks
       (4 heads, MLP 128), AdamW with warmup + cosine decay, 4 epochs at batch 128; about
       98 % test accuracy in a quarter of an hour on a 2-core CPU.
paper: the same network with 4x4 patches (49 tokens + class token), 20 epochs (for a GPU).

    python -m wsl.main --config=experiments/vit_mnist.py:smoke --workdir=runs/vit_mnist
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
    c.data = ml_collections.ConfigDict({"name": "mnist", "preprocess": "unit", "val_size": 0})
    c.model = ml_collections.ConfigDict(
        {
            "name": "ViT",
            "kwargs": {
                "patch": 7 if smoke else 4,
                "dim": 64,
                "depth": 6,
                "heads": 4,
                "mlp_dim": 128,
                "num_classes": 10,
            },
        }
    )
    c.optimizer = ml_collections.ConfigDict(
        {
            "name": "adamw",
            "learning_rate": 2e-3 if smoke else 1e-3,
            "schedule": "cosine",
            "warmup_steps": 300 if smoke else 1000,
            "momentum": 0.0,
            "weight_decay": 1e-4,
        }
    )
    batch_size = 128
    epochs = 4 if smoke else 20
    c.train = ml_collections.ConfigDict(
        {
            "batch_size": batch_size,
            "num_steps": epochs * (60000 // batch_size),
            "eval_batch_size": 1000,
            "eval_every": 0 if smoke else 60000 // batch_size * 5,
            "log_every": 100,
            "checkpoint_every": 500,
            "keep_checkpoints": 2,
            "async_checkpoints": True,
            "nan_at_step": 0,
        }
    )
    return c
