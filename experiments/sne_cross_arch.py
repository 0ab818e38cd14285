"""Cross-architecture transfer (SNE, Andreis et al. 2024): train an accuracy predictor on
one architecture family of our heterogeneous zoo (experiments/zoo_hetero.py), test it on
families it never saw — deeper CNNs, other kernel sizes, residual links — without any code
or config change. Only encoders that read any architecture apply: SNE and the neural
graphs (NG-GNN, NG-T).

Families (wsl.data.zoo.family_of; experiments/zoo_hetero.py draws each with its own
fraction): base = CNNs of 2-3 layers, 3x3 kernels, widths 8-32, no residual links (train;
70 / 10 / 20 % split); each other family changes exactly one of these: deeper = 4-5
layers; wider = a layer of width 64; kernels = 5x5 or 7x7 kernels; residual = with
residual links (4-5 layers).

smoke: 300 steps, chunks of 256. cpu: 1,000 steps, chunks of 64 (the paper's: 0.06 s per
step of 32 base networks here, ~33 s per evaluation of all sets). paper: 20,000 steps,
chunks of 64, the encoders widened.

    python -m wsl.main --config=experiments/sne_cross_arch.py:smoke \
        --config.encoder.name=SNE --workdir=runs/sne_cross
"""

import pathlib

from wsl import configs

_base = configs.load_module(pathlib.Path(__file__).with_name("ng_cnn_generalization.py"))

VARIANTS = ("smoke", "cpu", "paper")


def get_config(variant: str = "smoke"):
    c = _base.get_config(variant)
    c.encoder.name = "SNE"
    c.data.kind = "hetero_zoo"
    c.data.path = "zoos/hetero"
    c.data.family = "base"
    c.data.test_families = ("deeper", "wider", "kernels", "residual")
    c.data.max_networks = 0
    c.augment.noise = c.augment.dropout = 0.0  # augmentations need one architecture
    c.inputs.k_max = 7
    # up to 32 x 32 x 7 x 7 kernels: ~800 chunks of 64 per network, but each set is padded
    # to its own largest network (predict.mixed_inputs): training on the base family pays
    # for ~200 chunks; smoke takes 256 (50 chunks)
    c.inputs.chunk_size = 256 if variant == "smoke" else 64
    c.train.eval_batch_size = 32  # attention memory grows with chunks x window per network
    c.train.batch_size = 32
    steps = {"smoke": 300, "cpu": 1000}.get(variant, 20000)
    c.train.num_steps = steps
    c.train.eval_every = steps // 3
    c.optimizer.warmup_steps = steps // 20
    return c
