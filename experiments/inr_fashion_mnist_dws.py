"""SIREN INR set of Fashion-MNIST made as the DWSNets sets were: `inr_mnist_dws.py` with
dataset = fashion_mnist.

    python scripts/fit_inrs.py --config=experiments/inr_fashion_mnist_dws.py:cpu \
        --out=inrs/fashion_mnist_dws
"""

import pathlib

from wsl import configs

_base = configs.load_module(pathlib.Path(__file__).with_name("inr_mnist_dws.py"))

VARIANTS = ("smoke", "cpu", "paper")


def get_config(variant: str = "smoke"):
    c = _base.get_config(variant)
    c.dataset = "fashion_mnist"
    return c
