"""Classify MNIST with a small CNN (wsl.methods.classify).

smoke: SmallCNN widened to 64 channels per conv (3 x Conv(64, 3x3, stride 2, 'valid'), global
       average pool, Dense(10)), 3 epochs of Adam with warmup + cosine decay; >= 97 % test
       accuracy in about a minute on a 2-core CPU.
paper: the Small CNN Zoo network of Unterthiner et al. 2020 (3 x Conv(16), 4,970 parameters)
       with its published training setup: batch 512, 86 epochs, images in [-1, 1], greyscale.
       The zoo samples optimiser and learning rate per network; here Adam at Keras' default
       learning rate 1e-3.

    python -m wsl.main --config=experiments/classify_mnist.py:smoke --workdir=runs/mnist
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
    c.distributed = "auto"  # "on" on multi-host launches where JAX cannot tell
    c.data = ml_collections.ConfigDict(
        {"name": "mnist", "preprocess": "unterthiner", "val_size": 0}
    )
    c.model = ml_collections.ConfigDict(
        {"name": "SmallCNN", "kwargs": {"features": 64 if smoke else 16, "num_layers": 3}}
    )
    c.optimizer = ml_collections.ConfigDict(
        {
            "name": "adam",
            "learning_rate": 3e-3 if smoke else 1e-3,
            "schedule": "cosine" if smoke else "constant",
            "warmup_steps": 200 if smoke else 0,
            "momentum": 0.0,
            "weight_decay": 0.0,
        }
    )
    batch_size = 128 if smoke else 512
    epochs = 3 if smoke else 86
    c.train = ml_collections.ConfigDict(
        {
            "batch_size": batch_size,
            "num_steps": epochs * (60000 // batch_size),
            "eval_batch_size": 1000,
            "eval_every": 0 if smoke else 60000 // batch_size * 10,
            "log_every": 100,
            "checkpoint_every": 500 if smoke else 1000,
            "keep_checkpoints": 3,
            "async_checkpoints": True,
            "nan_at_step": 0,
        }
    )
    return c
