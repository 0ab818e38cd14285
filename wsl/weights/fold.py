"""Fold BatchNorm (eval statistics) into the dense or conv layer that feeds it.

y = gamma * (W x + b - mean) / sqrt(var + eps) + beta
  = (W * s) x + (b - mean) * s + beta,   s = gamma / sqrt(var + eps)  (per output channel)

`fold_batchnorm` returns the folded spec (norm layers removed, each folded layer gains a
bias whose source key sits beside its kernel's) and the folded canonical weights. The
folded spec matches the spec traced from the same architecture built without BatchNorm
(e.g. `ResNet(norm=False)`), so the folded weights load into that module directly.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from wsl.weights.convert import check_weights
from wsl.weights.spec import NetSpec, Residual


def _bias_key(kernel_key: str) -> str:
    for sep in ("/", "."):
        head, s, tail = kernel_key.rpartition(sep)
        if s and tail in ("kernel", "weight"):
            return f"{head}{sep}bias"
    return kernel_key + "_bias"


def fold_batchnorm(spec: NetSpec, weights) -> tuple[NetSpec, tuple]:
    """Fold every BatchNorm whose input is a dense/conv layer's output into that layer."""
    check_weights(spec, weights)
    fold_into = {}  # norm index -> producer index
    for i, layer in enumerate(spec.layers):
        if layer.kind == "norm":
            src = layer.src
            if src < 0 or spec.layers[src].kind not in ("dense", "conv"):
                raise ValueError(
                    f"BatchNorm {layer.name!r} does not follow a dense or conv "
                    f"layer (src {src}); it cannot be folded (reparameterize_batchnorm "
                    "turns it into a 1x1 conv instead)"
                )
            if not layer.direct:
                raise ValueError(
                    f"BatchNorm {layer.name!r} reads {spec.layers[src].name!r} through a "
                    "nonlinearity (or max pooling, padding, a residual sum); it cannot be "
                    "folded into it (reparameterize_batchnorm turns it into a 1x1 conv)"
                )
            fold_into[i] = src
    by_src = {s: n for n, s in fold_into.items()}
    keep = [i for i in range(len(spec.layers)) if i not in fold_into]
    new_index = {old: new for new, old in enumerate(keep)}
    for n, s in fold_into.items():
        new_index[n] = new_index[s]

    def remap(i: int) -> int:
        return -1 if i < 0 else new_index[i]

    layers, out = [], []
    for i in keep:
        layer, arrays = spec.layers[i], dict(weights[i])
        if i in by_src:
            bn, norm = spec.layers[by_src[i]], weights[by_src[i]]
            s = norm["scale"] / jnp.sqrt(norm["var"] + bn.eps)
            b = arrays.get("bias", 0.0)
            arrays = {"kernel": arrays["kernel"] * s, "bias": (b - norm["mean"]) * s + norm["bias"]}
            params = dict(layer.params)
            params.setdefault("bias", _bias_key(params["kernel"]))
            shapes = dict(layer.shapes)
            shapes["bias"] = (layer.out_features,)
            layer = dataclasses.replace(
                layer, params=tuple(params.items()), shapes=tuple(shapes.items())
            )
        layers.append(dataclasses.replace(layer, src=remap(layer.src)))
        out.append(arrays)
    residuals = tuple(Residual(remap(r.src), remap(r.dst), r.offset) for r in spec.residuals)
    return dataclasses.replace(spec, layers=tuple(layers), residuals=residuals), tuple(out)


def _orphan_norms(spec: NetSpec) -> list[int]:
    """BatchNorm layers with no dense/conv output to fold into: their input is the
    network input, another norm, a residual sum (the output of a residual's dst), or a
    layer's output after a nonlinearity (`Layer.direct` False)."""
    summed = {r.dst for r in spec.residuals}
    return [
        i
        for i, layer in enumerate(spec.layers)
        if layer.kind == "norm"
        and (
            layer.src < 0
            or spec.layers[layer.src].kind not in ("dense", "conv")
            or layer.src in summed
            or not layer.direct
        )
    ]


def batchnorm_to_conv(spec: NetSpec, weights, kernel_shape=(1, 1)) -> tuple[NetSpec, tuple]:
    """Re-parameterise every BatchNorm that has no dense/conv to fold into (HTTY,
    Sommariva et al. 2025) as the equivalent 1x1 conv: kernel diag(s) with
    s = gamma / sqrt(var + eps), bias beta - mean * s. The new conv layer keeps the
    norm's channel group on both axes; its arrays' source keys sit beside the norm's
    parameters (`<module>/kernel`, `<module>/bias`), so the weights load into the same
    architecture with `nn.Conv(C, kernel_shape, name=<the norm's name>)` in its place.
    `kernel_shape=()` gives a dense layer instead (for (N, C) features)."""
    check_weights(spec, weights)
    orphans = set(_orphan_norms(spec))
    layers, out = [], []
    for i, (layer, arrays) in enumerate(zip(spec.layers, weights, strict=True)):
        if i not in orphans:
            layers.append(layer)
            out.append(arrays)
            continue
        c = layer.out_features
        s = arrays["scale"] / jnp.sqrt(arrays["var"] + layer.eps)
        bias = arrays["bias"] - arrays["mean"] * s
        kernel = jnp.diag(s).reshape(*(1,) * len(kernel_shape), c, c)
        base = dict(layer.params).get("bias") or dict(layer.params)["scale"]
        head = base.rpartition("/")[0] if "/" in base else base.rpartition(".")[0]
        sep = "/" if "/" in base else "."
        kind = "conv" if kernel_shape else "dense"
        layers.append(
            dataclasses.replace(
                layer,
                kind=kind,
                in_features=c,
                kernel_shape=tuple(kernel_shape),
                params=(("kernel", f"{head}{sep}kernel"), ("bias", f"{head}{sep}bias")),
                shapes=(("kernel", tuple(kernel.shape)), ("bias", (c,))),
                in_group=layer.out_group,
            )
        )
        out.append({"kernel": kernel, "bias": bias})
    return dataclasses.replace(spec, layers=tuple(layers)), tuple(out)


def reparameterize_batchnorm(spec: NetSpec, weights) -> tuple[NetSpec, tuple]:
    """Remove every BatchNorm: fold it into the dense/conv that feeds it, or, where there
    is none, turn it into the equivalent 1x1 conv (`batchnorm_to_conv`)."""
    spec, weights = batchnorm_to_conv(spec, weights)
    return fold_batchnorm(spec, weights)
