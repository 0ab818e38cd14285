"""Small CNN Zoo on Fashion-MNIST: `zoo_mnist.py` with dataset = fashion_mnist.

python scripts/make_zoo.py --config=experiments/zoo_fashion_mnist.py:cpu --out=zoos/fashion_mnist
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location(
    "zoo_mnist", pathlib.Path(__file__).with_name("zoo_mnist.py")
)
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config(variant: str = "smoke"):
    c = _base.get_config(variant)
    c.dataset = "fashion_mnist"
    return c
