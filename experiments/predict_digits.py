"""Predict a CNN's test accuracy from its weights on the digits zoo (the quickstart).

The zoo: experiments/zoo_digits.py (Small CNNs trained on sklearn's 8x8 digits with
sampled hyper-parameters). scripts/quickstart.py makes it, then trains StatNN and NG-GNN
with this config and prints a Kendall tau table.

    python scripts/make_zoo.py --config=experiments/zoo_digits.py --out=runs/quickstart/zoo
    python -m wsl.main --config=experiments/predict_digits.py \
        --config.encoder.name=NG-GNN --workdir=runs/quickstart/NG-GNN
"""

import pathlib

from wsl import configs

_base = configs.load_module(pathlib.Path(__file__).with_name("ng_cnn_generalization.py"))

VARIANTS = ("smoke", "paper")


def get_config(variant: str = "smoke"):
    if variant not in ("smoke", "paper"):
        raise ValueError(f"unknown variant {variant!r}; choose smoke or paper")
    c = _base.get_config("smoke")
    c.variant = variant
    c.data.path = "runs/quickstart/zoo"
    c.data.max_networks = 0
    c.train.batch_size = 32
    c.train.num_steps = 800 if variant == "smoke" else 4000
    c.train.eval_every = c.train.num_steps // 4
    c.optimizer.warmup_steps = c.train.num_steps // 20
    return c
