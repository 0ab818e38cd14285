"""Small CNN Zoo on Fashion-MNIST: `zoo_mnist.py` with dataset = fashion_mnist.

python scripts/make_zoo.py --config=experiments/zoo_fashion_mnist.py:cpu --out=zoos/fashion_mnist
"""

import pathlib

from wsl import configs

_base = configs.load_module(pathlib.Path(__file__).with_name("zoo_mnist.py"))

VARIANTS = ("smoke", "cpu", "paper")


def get_config(variant: str = "smoke"):
    c = _base.get_config(variant)
    c.dataset = "fashion_mnist"
    return c
