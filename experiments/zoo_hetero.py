"""Heterogeneous zoo on MNIST for cross-architecture work, in the spirit of CNN Wild Park:
CNNs of 2-5 'SAME' conv layers (widths, kernel sizes 3/5/7, activation, optional
residual links from an earlier same-size layer), trained with the Small CNN Zoo
optimizers (no dropout). Each model's architecture is stored with it.

Families (wsl.data.zoo.family_of; `families` gives each one's fraction): base = 2-3
layers, 3x3 kernels, widths 8/16/32, no residual link (the cross-architecture table
trains on these); deeper = 4-5 layers; wider = at least one layer of width 64; kernels =
5x5 or 7x7; residual = with residual links (4-5 layers, as a link needs an earlier layer
of the same size). Each non-base CNN changes exactly one property of base. Without
`families` every option is drawn independently (CNNs then often change several at once,
and `mlp_fraction` of the models are MLPs).

    python scripts/make_zoo.py --config=experiments/zoo_hetero.py:cpu --out=zoos/hetero
"""

import ml_collections

HETERO = dict(
    mlp_fraction=0.25,
    cnn_depths=(2, 3, 4, 5),
    cnn_widths=(8, 16, 32),
    per_layer_width=True,
    kernel_sizes=(3, 5, 7),
    strides=(2, 2),  # first two layers (28 -> 14 -> 7), stride 1 after
    residual_prob=0.5,
    mlp_depths=(1, 2, 3),
    mlp_widths=(16, 32, 64, 128),
    activations=("relu", "tanh", "gelu", "sigmoid", "leaky_relu"),
    num_archs=0,  # > 0: a pool of that many architectures shared by the models
    families={"base": 0.4, "deeper": 0.15, "wider": 0.15, "kernels": 0.15, "residual": 0.15},
    wide_widths=(64,),  # the `wider` family's extra widths
)

HYPER = dict(
    activation=("relu",),  # unused: the architecture carries the activation
    optimizer=("adam", "sgd", "rmsprop"),
    learning_rate=(5e-4, 2e-2),
    l2reg=(1e-8, 1e-3),
    dropout=(0.0, 0.0),
    init_std=(1e-2, 1e-2),
    w_init=("glorot_uniform",),  # unused: flax default initialisers
    b_init=("zeros",),
    train_fraction=(0.1, 0.25, 0.5, 1.0),
)

VARIANTS = ("smoke", "cpu", "paper")


def get_config(variant: str = "smoke") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.kind = "hetero"
    c.variant = variant
    c.dataset = "mnist"
    c.seed = 0
    c.batch_size = 32
    c.hetero = dict(HETERO)
    c.hyper = dict(HYPER)
    c.max_train = 0
    c.max_test = 0
    c.trainer = dict(models_per_shard=8, workers=1)
    if variant == "smoke":
        c.num_models = 6
        c.epochs = 1
        c.record_epochs = (0, 1)
        c.train_eval_size = 500
        c.max_train, c.max_test = 1024, 500
        c.trainer.models_per_shard = 3
    elif variant == "cpu":
        c.num_models = 1000
        c.hetero["num_archs"] = 100  # 10 models (own hyper-parameters and seed) per
        # architecture: each compiles once (compiling dominated: ~5 s per new architecture)
        c.epochs = 1
        c.record_epochs = (0, 1)
        c.train_eval_size = 2000
        c.max_train = 12000
        c.trainer.workers = 2
    elif variant == "paper":
        c.num_models = 10000
        c.epochs = 20
        c.record_epochs = (0, 1, 5, 10, 20)
        c.train_eval_size = 60000
    else:
        raise ValueError(f"unknown variant {variant!r}; choose smoke, cpu or paper")
    return c
