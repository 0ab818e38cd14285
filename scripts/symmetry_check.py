"""Quick check of wsl's weight-space symmetries on every subject network.

For each network: derive its NetSpec from the Flax module, convert to the canonical
layout and back, apply a random hidden-neuron permutation, a positive rescaling (ReLU
nets), sign flips (tanh / sine nets) and BatchNorm folding (ResNet), and print the
largest change of the network's output on sklearn's digits (upsampled / as coordinates
where needed). Every number should be ~1e-6 or below: the function did not change,
while the weights did (last column).

    python scripts/symmetry_check.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from wsl.data import images
from wsl.nn import subjects
from wsl.weights import convert, fold, spec, symmetry


def inputs(shape) -> jnp.ndarray:
    """Real digits, resized to the network's input shape (nearest neighbour)."""
    x = images.preprocess(images.load("digits").test_x[: shape[0]], "symmetric")
    if len(shape) == 2:  # SIREN: pixel coordinates of one digit in [-1, 1]^2
        g = np.linspace(-1, 1, 8)
        return jnp.asarray(np.stack(np.meshgrid(g, g), -1).reshape(-1, 2))
    h, w, c = shape[1:]
    idx_h, idx_w = np.arange(h) * 8 // h, np.arange(w) * 8 // w
    x = x[:, idx_h][:, :, idx_w]
    return jnp.asarray(np.repeat(x, c, axis=-1))


def main() -> None:
    nets = {
        "MLP (relu)": (subjects.MLP(), (32, 8, 8, 1)),
        "SmallCNN (relu)": (subjects.SmallCNN(), (32, 28, 28, 1)),
        "SmallCNN (tanh)": (subjects.SmallCNN(act="tanh"), (32, 28, 28, 1)),
        "SIREN": (subjects.SIREN(), (64, 2)),
        "ResNet20": (subjects.ResNet(20), (8, 32, 32, 3)),
        "ResNet56": (subjects.ResNet(56), (8, 32, 32, 3)),
    }
    print(
        f"{'network':18s} {'params':>8s} {'groups':>6s} {'permute':>9s} {'rescale':>9s} "
        f"{'signflip':>9s} {'fold BN':>9s} {'|dw|':>7s}"
    )
    key = jax.random.key(0)
    for name, (module, shape) in nets.items():
        x = inputs(shape)
        variables = module.init(key, x)
        s = spec.spec_from_flax(module, variables, x)
        w = convert.flax_to_canonical(s, variables)
        ref = module.apply(variables, x)

        def diff(w2, sp=s, mod=module, x=x, ref=ref):
            return float(jnp.max(jnp.abs(mod.apply(convert.canonical_to_flax(sp, w2), x) - ref)))

        allowed = {g.scaling for g in s.groups if g.permutable}
        wp = symmetry.permute(s, w, key)
        cells = [diff(wp)]
        cells.append(diff(symmetry.rescale(s, w, key)) if allowed & {"positive", "any"} else None)
        cells.append(diff(symmetry.sign_flip(s, w, key)) if allowed & {"sign", "any"} else None)
        if any(layer.kind == "norm" for layer in s.layers):
            plain = subjects.ResNet(module.depth, norm=False)
            ps = spec.spec_from_flax(plain, plain.init(key, x), x)
            fs, fw = fold.fold_batchnorm(s, w)
            cells.append(diff(convert.transfer(fw, fs, ps), ps, plain))
        else:
            cells.append(None)
        dw = max(
            float(jnp.max(jnp.abs(a - b)))
            for a, b in zip(jax.tree.leaves(wp), jax.tree.leaves(w), strict=True)
        )
        groups = sum(g.permutable for g in s.groups)
        text = " ".join(f"{c:9.1e}" if c is not None else f"{'-':>9s}" for c in cells)
        print(f"{name:18s} {s.num_params:8d} {groups:6d} {text} {dw:7.3f}")


if __name__ == "__main__":
    main()
