"""akamaster's checkpoint through the converters: the Flax ResNet must classify real
CIFAR-10 test images about as well as the published figure (less the JPEG loss)."""

import jax
import jax.numpy as jnp
import numpy as np

from wsl.data import images, pretrained
from wsl.weights import convert, symmetry


def test_pretrained_resnet20_accuracy_and_symmetry():
    module, variables, spec = pretrained.resnet_cifar10_flax(20)
    data = images.load("cifar10")
    idx = np.random.default_rng(0).choice(len(data.test_y), 1000, replace=False)
    x = images.preprocess(data.test_x[idx], "cifar")
    logits = np.asarray(module.apply(variables, x))
    acc = float(np.mean(logits.argmax(-1) == data.test_y[idx]))
    assert 0.75 < acc < 0.88, acc  # ~81 % on the JPEG copy (91.78 % lossless)
    # a permuted + rescaled pretrained network classifies identically
    w = symmetry.random_symmetry(
        spec, convert.flax_to_canonical(spec, variables), jax.random.key(0)
    )
    logits2 = np.asarray(module.apply(convert.canonical_to_flax(spec, w), x[:200]))
    assert np.max(np.abs(logits2 - logits[:200])) < 1e-4 * np.max(np.abs(logits))
    assert np.array_equal(logits2.argmax(-1), logits[:200].argmax(-1))
    assert jnp.isfinite(logits).all()
