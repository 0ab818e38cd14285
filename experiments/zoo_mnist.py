"""Small CNN Zoo on MNIST: the recipe of Unterthiner et al. 2020 (see wsl/data/zoo.py).

Variants: `smoke` (8 models, 1 epoch on 2,048 images: seconds), `cpu` (the zoo generated
on a 2-core CPU for this repo: 2,000 models, shortened training), `paper` (the published
zoo: 30,000 models, 86 epochs, checkpoints at 0, 1, 2, 3, 20, 40, 60, 80, 86).

    python scripts/make_zoo.py --config=experiments/zoo_mnist.py:cpu --out=zoos/mnist
"""

import ml_collections

# Sampled per model (Unterthiner et al. 2020, App. A; `w_init` names are Keras').
HYPER = dict(
    activation=("relu", "tanh"),
    optimizer=("adam", "sgd", "rmsprop"),
    learning_rate=(5e-4, 5e-2),  # log-uniform
    l2reg=(1e-8, 1e-2),  # log-uniform
    dropout=(0.0, 0.7),  # uniform
    init_std=(1e-3, 0.5),  # log-uniform; std of RandomNormal / TruncatedNormal
    w_init=("glorot_normal", "he_normal", "orthogonal", "RandomNormal", "TruncatedNormal"),
    b_init=("zeros",),
    train_fraction=(0.1, 0.25, 0.5, 1.0),
)

VARIANTS = ("smoke", "cpu", "paper")


def get_config(variant: str = "smoke") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.kind = "small_cnn"
    c.variant = variant
    c.dataset = "mnist"
    c.seed = 0
    c.batch_size = 32
    c.hyper = dict(HYPER)
    c.max_train = 0  # 0: all training images
    c.max_test = 0
    # formulation / conv chosen by measurement (scripts/bench_zoo.py, README)
    # vmap over K=4 models with im2col convs, one single-threaded process per core:
    # fastest measured on a 2-core CPU (scripts/bench_zoo.py)
    c.trainer = dict(formulation="vmap", conv="im2col", models_per_shard=4, workers=1)
    if variant == "smoke":
        c.num_models = 8
        c.epochs = 1
        c.record_epochs = (0, 1)
        c.train_eval_size = 1000
        c.max_train, c.max_test = 2048, 1000
        c.trainer.models_per_shard = 4
    elif variant == "cpu":
        c.num_models = 2000
        c.epochs = 2  # the published epoch 0-2 checkpoints; 86 epochs do not fit a CPU
        c.record_epochs = (0, 1, 2)
        c.train_eval_size = 5000
        c.trainer.workers = 2
    elif variant == "paper":
        c.num_models = 30000
        c.epochs = 86
        c.record_epochs = (0, 1, 2, 3, 20, 40, 60, 80, 86)
        c.train_eval_size = 60000
    else:
        raise ValueError(f"unknown variant {variant!r}; choose smoke, cpu or paper")
    return c
