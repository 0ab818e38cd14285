"""Redundant blocks (wsl.methods.redundancy): Block Redundancy and Redundant Blocks
Approximation (Cannistraci, Rodolà, Rieck, arXiv 2410.04941) on the pretrained CIFAR-10
ResNets and a ViT trained on MNIST (experiments/vit_mnist.py, trained on first use).

One run = one model x one approximation:
    approx = Original   the network as it is
             RBA        the k blocks of highest BR, consecutive ones grouped into spans, each
                        span replaced by a closed-form linear map (the paper's method)
             Random     spans of the same lengths at random places, fitted the same way
             Identity   the RBA spans replaced by the identity (option-A shortcut)
             Drop+head  the identity, then the classifier head re-fitted in closed form
             RBA+head   RBA, then the same closed-form head re-fit
             RBA-fit    RBA with blocks ranked by how much their own linear map misses on
                        the fit samples instead of by BR (ours; redundancy.linear_redundancy)
for k = ceil(fraction x number of blocks) at each of `fractions`; results.json reports the
curve and, at `target_fraction`, test_accuracy, accuracy_drop, blocks_replaced_frac,
params_removed_frac.

smoke: 500 fit samples, 2000 test images (a fixed random subset), fractions 0.1 .. 0.4.
paper: 500 fit samples, the full test set, fractions 0.1 .. 0.5.

    python -m wsl.main --config=experiments/redundancy.py:smoke --workdir=runs/red \\
        --config.model=resnet56 --config.approx=RBA
"""

import ml_collections

VARIANTS = ("smoke", "paper")


def get_config(variant: str = "smoke") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {list(VARIANTS)}")
    smoke = variant == "smoke"
    c = ml_collections.ConfigDict()
    c.method = "redundancy"
    c.variant = variant  # recorded with the curves in results_dir/redundancy_curves.json
    c.seed = 0  # picks the fit samples (and the random spans)
    c.model = "resnet56"  # resnet20 | resnet32 | resnet44 | resnet56 | vit
    c.approx = "RBA"  # Original | RBA | RBA+head | RBA-fit | Random | Identity | Drop+head
    c.mode = "shared"  # shared: one map for all positions/tokens; position: one per position
    c.ridge = 0.0  # > 0: ridge-regularised fit (relative to the mean eigenvalue of X'X)
    c.sequential = False  # True: fit each span on the inputs of the already-approximated net
    c.num_samples = 500  # training images the maps are fitted on
    c.eval_size = 2000 if smoke else 0  # test images (images.subset: fixed, random; 0: all)
    c.fractions = (0.1, 0.2, 0.3, 0.4) if smoke else (0.1, 0.2, 0.3, 0.4, 0.5)
    c.target_fraction = 0.2  # the operating point reported in results.json
    c.similarity_samples = 500  # samples for the CKA / cosine heat map
    c.results_dir = "results"  # heat maps and redundancy_curves.{json,md,png} go here
    c.vit = ml_collections.ConfigDict(
        {
            "config": "experiments/vit_mnist.py",
            "variant": "smoke",
            "workdir": "runs/vit_mnist/smoke",
        }
    )
    return c
