"""Converters between source formats and the canonical layout (see `spec.py`).

Every conversion goes through a `NetSpec` of the source, and every layout difference is
handled here, once:

- Flax variables (`{'params': ..., 'batch_stats': ...}`): same axis order as canonical.
- torch `state_dict` (name -> numpy array): dense `(out, in)` -> `(in, out)`; conv
  `(out, in, kh, kw)` -> `(kh, kw, in, out)`; BatchNorm `weight/bias/running_mean/
  running_var` -> `scale/bias/mean/var`; a dense layer after flattening a conv's
  `(C, H, W)` output -> the canonical `(H, W, C)` order (needs the target spec).
- The Small CNN Zoo's flat TF vector (`layout.csv`): TF kernels are HWIO and dense
  `(in, out)`, i.e. canonical; only slicing and reshaping.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from wsl.weights.spec import Layer, NetSpec, compatible, spec_from_state_dict


class WeightShapeError(ValueError):
    """Weights whose shapes do not match the spec; names the layer and both shapes."""


def check_weights(spec: NetSpec, weights) -> None:
    """Raise WeightShapeError naming the first array whose shape differs from the spec."""
    if len(weights) != len(spec.layers):
        raise WeightShapeError(f"spec has {len(spec.layers)} layers, weights have {len(weights)}")
    for layer, arrays in zip(spec.layers, weights, strict=True):
        for role, shape in layer.shapes:
            if role not in arrays:
                raise WeightShapeError(f"layer {layer.name!r}: missing array {role!r}")
            got = tuple(np.shape(arrays[role]))
            if got != tuple(shape):
                raise WeightShapeError(
                    f"layer {layer.name!r} {role}: weights have shape "
                    f"{got}, spec expects {tuple(shape)}"
                )


# ---- Flax --------------------------------------------------------------------------


def _get(tree: Mapping, key: str):
    node = tree
    for part in key.split("/"):
        node = node[part]
    return node


def _set(tree: dict, key: str, value) -> None:
    parts = key.split("/")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def flax_to_canonical(spec: NetSpec, variables: Mapping):
    """Flax variables -> canonical weights (a tuple of dicts, one per layer)."""
    out = []
    for layer in spec.layers:
        try:
            out.append({role: _get(variables, key) for role, key in layer.params})
        except KeyError as e:
            raise WeightShapeError(f"layer {layer.name!r}: variables have no entry {e}") from e
    weights = tuple(out)
    check_weights(spec, weights)
    return weights


def canonical_to_flax(spec: NetSpec, weights) -> dict:
    """Canonical weights -> nested Flax variables dict (`params`, `batch_stats`, ...)."""
    check_weights(spec, weights)
    tree: dict = {}
    for layer, arrays in zip(spec.layers, weights, strict=True):
        for role, key in layer.params:
            _set(tree, key, arrays[role])
    return tree


# ---- torch state dicts ---------------------------------------------------------------


def _torch_to_canon(layer: Layer, role: str, x, spatial: int = 1):
    if role != "kernel":
        return x
    if layer.kind == "conv":
        return np.transpose(x, (2, 3, 1, 0))
    if spatial > 1:  # torch flattens (C, H, W); canonical is (H, W, C)
        o, i = x.shape
        x = x.reshape(o, i // spatial, spatial).transpose(0, 2, 1).reshape(o, i)
    return np.transpose(x)


def _canon_to_torch(layer: Layer, role: str, x, spatial: int = 1):
    if role != "kernel":
        return x
    if layer.kind == "conv":
        return np.transpose(x, (3, 2, 0, 1))
    x = np.transpose(x)
    if spatial > 1:
        o, i = x.shape
        x = x.reshape(o, spatial, i // spatial).transpose(0, 2, 1).reshape(o, i)
    return x


def _spatial(target: NetSpec | None, i: int) -> int:
    return target.layers[i].in_spatial if target is not None else 1


def torch_to_canonical(state_dict: Mapping[str, Any], spec: NetSpec | None = None):
    """torch state dict -> canonical weights. With `spec` (e.g. from `spec_from_flax`),
    the state dict must match it layer by layer (else a ValueError names the first
    mismatch) and the weights can be used with that spec and its symmetries."""
    src = spec_from_state_dict(state_dict)
    if spec is not None:
        compatible(spec, src)
    weights = tuple(
        {
            role: _torch_to_canon(layer, role, np.asarray(state_dict[key]), _spatial(spec, i))
            for role, key in layer.params
        }
        for i, layer in enumerate(src.layers)
    )
    check_weights(src, weights)
    return weights


def canonical_to_torch(weights, names: NetSpec, spec: NetSpec | None = None) -> dict:
    """Canonical weights -> torch state dict with the names of `names` (a spec from
    `spec_from_state_dict`); `spec` gives flatten information if the weights' spec
    has it. Non-weight buffers (num_batches_tracked) are not produced."""
    check_weights(names, weights)
    out = {}
    for i, (layer, arrays) in enumerate(zip(names.layers, weights, strict=True)):
        for role, key in layer.params:
            out[key] = _canon_to_torch(layer, role, np.asarray(arrays[role]), _spatial(spec, i))
    return out


# ---- the Small CNN Zoo's flat vectors -------------------------------------------------


def read_layout(text_or_path) -> list[dict[str, str]]:
    """Rows of a `layout.csv` (a path or its text); extra columns are ignored."""
    text = str(text_or_path)
    if "\n" not in text:
        with open(text) as f:
            text = f.read()
    rows = list(csv.DictReader(io.StringIO(text)))
    need = {"varname", "start_idx", "end_idx", "shape"}
    if not rows or not need <= set(rows[0]):
        raise ValueError(
            f"layout.csv needs the columns {sorted(need)}, got "
            f"{sorted(rows[0]) if rows else 'no rows'}"
        )
    return rows


def write_layout(spec: NetSpec) -> str:
    """layout.csv text for a spec's flat vector (pandas-style leading index column, as
    the published zoos have it)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["", "varname", "start_idx", "end_idx", "size", "shape"])
    pos, row = 0, 0
    for layer in spec.layers:
        for role, shape in layer.shapes:
            n = int(np.prod(shape))
            w.writerow([row, layer.keys[role], pos, pos + n, n, str(tuple(shape))])
            pos, row = pos + n, row + 1
    return buf.getvalue()


def flatten(spec: NetSpec, weights) -> np.ndarray:
    """Canonical weights -> one flat vector, layer by layer, arrays in spec order (for a
    `flat` spec this is exactly the Small CNN Zoo's row layout)."""
    check_weights(spec, weights)
    parts = [
        np.asarray(arrays[role]).reshape(-1)
        for layer, arrays in zip(spec.layers, weights, strict=True)
        for role, _ in layer.shapes
    ]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def unflatten(spec: NetSpec, vector: np.ndarray):
    """Flat vector (as written by `flatten` or a Small CNN Zoo row) -> canonical."""
    vector = np.asarray(vector)
    if vector.ndim != 1 or vector.size != spec.num_params:
        raise WeightShapeError(
            f"flat weights have shape {vector.shape}, spec expects ({spec.num_params},)"
        )
    out, pos = [], 0
    for layer in spec.layers:
        arrays = {}
        for role, shape in layer.shapes:
            n = int(np.prod(shape))
            arrays[role] = vector[pos : pos + n].reshape(shape)
            pos += n
        out.append(arrays)
    return tuple(out)


def to_canonical(spec: NetSpec, source) -> tuple:
    """Dispatch on `spec.source`: flax variables, torch state dict or flat vector."""
    if spec.source == "flax":
        return flax_to_canonical(spec, source)
    if spec.source == "torch":
        return torch_to_canonical(source)
    if spec.source == "flat":
        return unflatten(spec, source)
    raise ValueError(f"unknown spec source {spec.source!r}; expected flax, torch or flat")


def transfer(weights, src: NetSpec, dst: NetSpec) -> tuple:
    """Use canonical weights of spec `src` with spec `dst` (same layers, e.g. a torch
    spec and the Flax spec of the same architecture): checks, then re-labels."""
    compatible(src, dst)
    check_weights(src, weights)
    real = [w for layer, w in zip(src.layers, weights, strict=True) if layer.kind != "other"]
    it = iter(real)
    out = tuple(next(it) if layer.kind != "other" else None for layer in dst.layers)
    if any(w is None for w in out):
        raise ValueError("the destination spec has parameters the source does not have")
    return out


def stack(weights_list: Sequence) -> tuple:
    """Stack canonical weights of one spec along a new leading axis (a batch of nets)."""
    return tuple(
        {role: np.stack([w[i][role] for w in weights_list]) for role in weights_list[0][i]}
        for i in range(len(weights_list[0]))
    )
