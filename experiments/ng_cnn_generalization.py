"""Neural graphs (Kofinas et al. 2024), CNN generalisation: predict each network's test
accuracy from its weights (wsl.methods.predict), Kendall tau on held-out networks.

Data: our Small CNN Zoos (scripts/make_zoo.py with experiments/zoo_mnist.py /
zoo_fashion_mnist.py, last recorded epoch of each model; the published CIFAR10-GS zoo
cannot be reached here). Split 70 / 10 / 20 % of the models by seed.

Select the encoder with `--config.encoder.name=NG-GNN` (MLP, StatNN, DeepSets, NG-GNN,
NG-T, SNE; each takes its kwargs from `encoders.<name>` unless `encoder.kwargs` is set)
and the zoo with `--config.data.path=zoos/fashion_mnist`.

smoke: 600 networks, 300 steps, small encoders (minutes on a 2-core CPU).
cpu:   every network of the zoo, 1,100 steps of 128 (~100 epochs of a 2,000-network zoo's
       1,400 training networks; a third of the reference's 300, so a table fits in a few hours
       here), the encoders of `smoke` widened.
paper: the reference's sizes (its scripts/cnn_zoo_pna.sh, cnn_zoo_rt.sh: NG-GNN d=256,
       4 layers; NG-T d_node 128, d_edge 64, hidden 256; batch 128, AdamW 1e-3), 300
       epochs of a 30k-network zoo, for GPUs. Not followed: NG-T's batch 192 and
       NG-GNN's MSE loss (one batch size and loss here for every encoder of a table).
All variants: the reference's readout (the output neurons' features concatenated,
`pooling='cat'`), training augmentation (weight noise 0.1 x each array's own std,
dropout 0.01; configs/data/zoo_cifar_nfn.yaml), graphs with forward edges only and raw
(not standardised) weights (results/ng_gnn_mnist_recipe_probe.md measures each), NG-GNN's
LayerNorm over each graph's nodes and channels (`norm='graph'`: the reference normalises over
the whole batch, PyG's graph mode without a batch vector; results/ng_gnn_mnist_norm_probe.md).
Not followed (documented choices): AdamW with amsgrad at a constant 1e-3 (ours: cosine decay,
no amsgrad), test reported at the best validation step (ours: the last step), the separate
1-D encoding of a dense layer's weights inside CNNs (ours: 1x1 kernels, `wsl.weights.graph`).

    python -m wsl.main --config=experiments/ng_cnn_generalization.py:smoke \
        --config.encoder.name=NG-GNN --workdir=runs/ng_cnn
"""

import ml_collections

VARIANTS = ("smoke", "cpu", "paper")


def get_config(variant: str = "smoke") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {list(VARIANTS)}")
    small, paper = variant == "smoke", variant == "paper"
    c = ml_collections.ConfigDict()
    c.method = "predict"
    c.seed = 0
    c.distributed = "auto"
    c.data = ml_collections.ConfigDict(
        {
            "kind": "cnn_zoo",
            "path": "zoos/mnist",
            "test_path": "",
            "step": "last",
            "target": "test_accuracy",
            "split": (0.7, 0.1, 0.2),
            "max_networks": 600 if small else 0,
        }
    )
    c.encoder = ml_collections.ConfigDict({"name": "NG-GNN", "kwargs": {}})
    d = 256 if paper else (32 if small else 64)
    c.encoders = ml_collections.ConfigDict(
        {
            "MLP": {"hidden": (256, 256, 256) if not small else (128, 128)},
            "StatNN": {"hidden": (1000, 1000) if paper else (256, 256)},
            "DeepSets": {"phi": (64, 64), "rho": (64,)},
            "NG-GNN": {"hidden": d, "num_layers": 4, "pooling": "cat", "norm": "graph"},
            "NG-T": {
                "d_node": 128 if paper else 32, "d_edge": 64 if paper else 16,
                "d_attn": 256 if paper else 32, "d_node_hidden": 256 if paper else 32,
                "d_edge_hidden": 128 if paper else 16, "d_out_hidden": 256 if paper else 32,
                "num_layers": 4 if paper else 2, "heads": 8 if paper else 2, "pooling": "cat",
            },
            "SNE": {"dim": 64 if not small else 32, "hidden": 64, "heads": 4, "depth": 1,
                    "layer_encoding": True, "chunk_pos_encoding": False},
        }
    )  # fmt: skip
    # the reference's CNN-zoo graphs: forward edges only (rev_edge_features False) and raw
    # weights (normalize False); its INR graphs differ (experiments/ng_inr_classification.py)
    c.inputs = ml_collections.ConfigDict(
        {"k_max": 3, "reverse": False, "chunk_size": 16, "standardise": False}
    )
    # the reference's CNN-zoo training augmentation (mkofinas/neural-graphs
    # configs/data/zoo_cifar_nfn.yaml): weight noise 0.1 x each array's own std, dropout
    # 0.01; without it NG-GNN fits its training networks exactly (train Kendall tau 0.99,
    # test 0.71 on our MNIST zoo: results/ng_cnn_mnist_fit_noaug.md)
    # (translate / rotate / input_scale: INR-only, experiments/ng_inr_classification.py)
    c.augment = ml_collections.ConfigDict(
        {"permute": False, "noise": 0.1, "dropout": 0.01, "translate": 0.0, "rotate": 0.0,
         "input_scale": 0.0}
    )  # fmt: skip
    c.loss = "bce"
    # logit invariance (wsl.methods.predict): unset = the encoder's own (SNE 1.0, the
    # paper's regulariser; the others 0); e.g. --config.invariance_weight=0 for SNE without
    c.invariance_weight = ml_collections.config_dict.placeholder(float)
    # paper: the reference scripts' 300 epochs of a 30k-network zoo
    steps = 300 if small else (1100 if variant == "cpu" else 300 * 30000 // 128)
    c.optimizer = ml_collections.ConfigDict(
        {
            "name": "adamw",
            "learning_rate": 1e-3 if paper else 2e-3,
            "schedule": "cosine",
            "warmup_steps": steps // 20,
            "momentum": 0.0,
            "weight_decay": 5e-4,
            "clip": 10.0,  # the reference clips the gradients' global norm at 10
        }
    )
    c.train = ml_collections.ConfigDict(
        {
            "batch_size": 64 if small else 128,
            "num_steps": steps,
            "eval_batch_size": 512,
            "eval_every": steps // 3 if small else steps // 6,
            "log_every": 50,
            "checkpoint_every": 500,
            "keep_checkpoints": 2,
            "async_checkpoints": True,
            "nan_at_step": 0,
        }
    )
    return c
