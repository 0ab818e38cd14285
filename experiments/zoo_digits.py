"""Small CNN Zoo on sklearn's 8x8 digits (offline anywhere): the quickstart's zoo.

The Unterthiner et al. recipe (hyper-parameters sampled per model, see zoo_mnist.py) on
8x8 images, so with 2 conv layers (8 -> 3 -> 1) instead of 3; 1,437 training and 360
test images.

smoke: 512 models, 8 epochs (about a minute on 2 cores). paper: 2,000 models, 30 epochs.

    python scripts/make_zoo.py --config=experiments/zoo_digits.py --out=runs/zoo_digits
"""

import pathlib

from wsl import configs

_base = configs.load_module(pathlib.Path(__file__).with_name("zoo_mnist.py"))

VARIANTS = ("smoke", "paper")


def get_config(variant: str = "smoke"):
    if variant not in ("smoke", "paper"):
        raise ValueError(f"unknown variant {variant!r}; choose smoke or paper")
    c = _base.get_config("smoke")
    c.variant = variant
    c.dataset = "digits"
    c.num_layers = 2
    c.features = 16
    c.max_train, c.max_test = 0, 0
    c.num_models = 512 if variant == "smoke" else 2000
    c.epochs = 8 if variant == "smoke" else 30
    c.record_epochs = (0, c.epochs // 2, c.epochs)
    c.train_eval_size = 1437
    c.trainer.models_per_shard = 8
    c.trainer.workers = 1
    return c
