"""Neural graphs (Kofinas et al. 2024), INR classification: which digit / garment does a
SIREN represent, read from its weights alone (wsl.methods.predict, cross-entropy).

Data: our SIREN sets (scripts/fit_inrs.py with experiments/inr_mnist.py /
inr_fashion_mnist.py: one 2-32-32-1 SIREN per image, variant in wsl/data/inr.py); the
INRs of training images are split 90 / 10 into train / val, those of test images are the
test set. The DWSNets INR sets cannot be reached here.

Encoder: `--config.encoder.name=` MLP, StatNN, DeepSets, NG-GNN, NG-T or SNE (kwargs from
`encoders.<name>`); data: `--config.data.path=inrs/fashion_mnist`. Training augmentations
as in the paper: a random hidden-neuron permutation per network, weight noise, dropout.

smoke: 3,000 training INRs, 400 steps (minutes on a 2-core CPU).
cpu:   every INR of the set, 4,000 steps of 64.
paper: the reference's sizes (NG-GNN d=64, 4 layers; batch 32, Adam 1e-3), 150 epochs
       of the 60k-INR sets, for GPUs.

    python -m wsl.main --config=experiments/ng_inr_classification.py:smoke \
        --config.encoder.name=NG-GNN --workdir=runs/ng_inr
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location(
    "ng_cnn", pathlib.Path(__file__).with_name("ng_cnn_generalization.py")
)
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config(variant: str = "smoke"):
    c = _base.get_config(variant)
    small, paper = variant == "smoke", variant == "paper"
    c.data.kind = "inr_set"
    c.data.path = "inrs/mnist"
    c.data.split = (0.9, 0.1, 0.0)  # train INRs -> train / val; test INRs are the test set
    c.data.max_networks = 3000 if small else 0
    c.inputs.k_max = 1  # dense layers only
    c.augment.permute = True
    c.augment.noise = 0.05  # in units of each layer's standard deviation
    c.augment.dropout = 0.0
    c.encoders["NG-GNN"].hidden = 64 if paper else 32
    c.encoders["NG-GNN"].pooling = "cat"
    c.encoders["NG-T"].pooling = "cat"
    steps = 400 if small else (4000 if variant == "cpu" else 280000)
    c.train.num_steps = steps
    c.train.batch_size = 32 if paper else 64
    c.train.eval_every = steps // 4
    c.optimizer.warmup_steps = steps // 20
    c.optimizer.learning_rate = 1e-3 if paper else 2e-3
    return c
