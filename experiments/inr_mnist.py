"""SIREN INR set of MNIST: one SIREN (2-32-32-1, omega_0 30, see wsl/data/inr.py for the
exact variant) per image, full-batch Adam.

Variants: `smoke` (16 INRs, 50 steps), `cpu` (10,000 INRs: the first 8,000 training
and 2,000 test images), `paper` (all 70,000 images, as the DWSNets / NFN sets).

    python scripts/fit_inrs.py --config=experiments/inr_mnist.py:cpu --out=inrs/mnist
"""

import ml_collections

VARIANTS = ("smoke", "cpu", "paper")


def get_config(variant: str = "smoke") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.kind = "inr"
    c.variant = variant
    c.dataset = "mnist"
    c.seed = 0
    c.hidden = (32, 32)
    c.omega_0 = 30.0
    c.learning_rate = 1e-3
    c.target_psnr = 0.0  # > 0: early stopping at this PSNR (dB), as the DWSNets sets (40)
    c.siren_variant = "sitzmann"  # initialisation: sitzmann | dwsnets (subjects.SIREN)
    c.output_offset = 0.0  # added to the SIREN's output (DWSNets: 0.5)
    c.inrs_per_shard = 128  # written together
    c.inrs_per_program = 4  # fitted together (vmap); 2-4 measured fastest (inr.py)
    c.workers = 1
    if variant == "smoke":
        c.num_train, c.num_test = 12, 4
        c.steps = 50
        c.inrs_per_shard = 8
        c.inrs_per_program = 4
    elif variant == "cpu":
        c.num_train, c.num_test = 8000, 2000
        c.steps = 500
        c.workers = 2
    elif variant == "paper":
        c.num_train, c.num_test = 60000, 10000
        c.steps = 1000
    else:
        raise ValueError(f"unknown variant {variant!r}; choose smoke, cpu or paper")
    return c
