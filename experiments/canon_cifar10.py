"""Canonicalisation on C4-rotated CIFAR-10 (JPEG copy) with akamaster's pretrained ResNet20
(wsl.methods.canonicalize; Panigrahi & Mondal 2024).

One row per `canon.kind` (none | tta | equivariant | optimized), tested on the upright
test set and on a copy rotated by a random C4 element per image. The canonicalisers are
trained on upright training images only.

smoke: the ResNet20 **frozen** (81 % on the JPEG test set); the canonicalisers learn from
       the prior (+ contrastive) losses alone on a small upright set of 5,000 training
       images (task_weight 0, so training never runs the ResNet); 1,000 test images.
       The paper's = SmallCNN(32 channels, 3 stride-2 convs) embedding into 64 dims; the
       equivariant baseline = GroupCNN 16/16/16.
paper: the ResNet20 **fine-tuned** jointly with the canonicaliser (task + prior +
       contrastive losses) on the 50,000 training images, full test set. (The paper
       fine-tunes ImageNet-pretrained ResNet50 / ViT on CIFAR; not reproduced here.)

    python -m wsl.main --config=experiments/canon_cifar10.py:smoke --workdir=runs/canon \
        --config.canon.kind=optimized
"""

import ml_collections

VARIANTS = ("smoke", "paper")


def get_config(variant: str = "smoke") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {list(VARIANTS)}")
    smoke = variant == "smoke"
    c = ml_collections.ConfigDict()
    c.method = "canonicalize"
    c.seed = 0
    c.distributed = "auto"
    c.group = "C4"
    c.data = ml_collections.ConfigDict(
        {
            "name": "cifar10",
            "preprocess": "cifar",
            "val_size": 0,
            "train_size": 5000 if smoke else 0,
            "test_size": 1000 if smoke else 0,
            "rotation_seed": 0,
        }
    )
    c.predictor = ml_collections.ConfigDict(
        {
            "name": "ResNet",
            "kwargs": {"depth": 20},
            "pretrained": "resnet20",
            "trainable": not smoke,
        }
    )
    c.canon = ml_collections.ConfigDict(
        {
            "kind": "optimized",
            "beta": 1.0,
            "task_weight": 0.0 if smoke else 1.0,
            "prior_weight": 1.0,
            "score_scale": 1.0,
            "contrastive_weight": 1.0,
            "network": {"name": "SmallCNN", "kwargs": {"features": 32, "num_layers": 3,
                                                        "num_classes": 64}},
            "equivariant": {"features": (16, 16, 16), "kernel_size": 3, "strides": 2},
        }
    )  # fmt: skip
    batch_size = 64
    num_steps = 600 if smoke else 10 * (50000 // batch_size)
    c.optimizer = ml_collections.ConfigDict(  # the predictor's (fine-tuning)
        {
            "name": "sgd",
            "learning_rate": 0.01,
            "schedule": "cosine",
            "warmup_steps": 0,
            "momentum": 0.9,
            "weight_decay": 5e-4,
        }
    )
    c.canon_optimizer = ml_collections.ConfigDict(
        {
            "name": "adam",
            "learning_rate": 1e-3,
            "schedule": "cosine",
            "warmup_steps": 50,
            "momentum": 0.0,
            "weight_decay": 0.0,
        }
    )
    c.train = ml_collections.ConfigDict(
        {
            "batch_size": batch_size,
            "num_steps": num_steps,
            "eval_batch_size": 250,
            "eval_every": 0,
            "log_every": 50,
            "checkpoint_every": 1000,
            "keep_checkpoints": 2,
            "async_checkpoints": True,
            "nan_at_step": 0,
        }
    )
    c.eval = ml_collections.ConfigDict(
        {"throughput_batch_size": 128, "throughput_repeats": 5, "invariance_examples": 16}
    )
    return c
