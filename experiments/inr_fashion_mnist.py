"""SIREN INR set of Fashion-MNIST: `inr_mnist.py` with dataset = fashion_mnist.

python scripts/fit_inrs.py --config=experiments/inr_fashion_mnist.py:cpu --out=inrs/fashion_mnist
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location(
    "inr_mnist", pathlib.Path(__file__).with_name("inr_mnist.py")
)
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config(variant: str = "smoke"):
    c = _base.get_config(variant)
    c.dataset = "fashion_mnist"
    return c
