"""`NetSpec`: the static description of a network's weights that every method reads.

A `NetSpec` lists the layers in computation order (kind, features, kernel shape, where
each array lives in its source format), the *permutation groups* (which array axes
permute together: one group per channel space of the network, merged through residual
adds), zero-padding embeddings between groups (option-A shortcuts), and residual links.
It is a frozen dataclass of tuples: hashable, usable as a `jax.jit` static argument.

Canonical layout (`Weights` = a tuple with one dict of arrays per layer):

| kind        | arrays (canonical axis order)                                          |
|-------------|------------------------------------------------------------------------|
| `dense`     | `kernel` (in, out), `bias` (out,)                                      |
| `conv`      | `kernel` (kh, kw, in, out), `bias` (out,)                              |
| `norm`      | BatchNorm: `scale`, `bias`, `mean`, `var` (all (features,)); eps in spec |
| `layernorm` | `scale`, `bias` (features,)                                            |
| `other`     | any other parameter module, arrays as in the source (never permuted)   |

A dense layer that reads a flattened (H, W, C) activation has `in_spatial = H * W`; its
kernel's in-axis is ordered (h, w, c) with the channel innermost, as Flax flattens.

Specs are derived, never hand-written: `spec_from_flax` traces the model's jaxpr (which
parameter feeds which op, residual adds, pads and flattening), `spec_from_state_dict`
reads a torch-style state dict's names and shapes (layers only, no symmetry
information), and `spec_from_layout` reads the Small CNN Zoo's `layout.csv`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.extend import core as jcore

Weights = tuple  # tuple[dict[str, Array], ...], one dict per layer of a NetSpec

# Scaling classes: which per-channel diagonal scalings d commute with every nonlinearity
# applied to a group. 'any': d != 0 (linear); 'positive': d > 0 (ReLU-like);
# 'sign': d = +-1 (odd activations: tanh, sin); 'none': only d = 1.
_MEET = {
    ("any", "any"): "any",
    ("any", "positive"): "positive",
    ("any", "sign"): "sign",
    ("positive", "positive"): "positive",
    ("sign", "sign"): "sign",
}


def _meet(a: str, b: str) -> str:
    return _MEET.get((a, b)) or _MEET.get((b, a)) or "none"


@dataclasses.dataclass(frozen=True)
class Layer:
    """One parameterised layer. `params` maps canonical array names to keys in the source
    format (a '/'-joined Flax variables path, a torch state-dict name, or a layout.csv
    varname); `shapes` gives the canonical shape of each array."""

    name: str
    kind: str  # dense | conv | norm | layernorm | other
    in_features: int
    out_features: int
    kernel_shape: tuple[int, ...] = ()
    params: tuple[tuple[str, str], ...] = ()
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    in_group: int = -1  # permutation group of the input channels (-1: unknown)
    out_group: int = -1  # permutation group of the output channels
    in_spatial: int = 1  # > 1 when a dense layer reads a flattened (H, W, C) activation
    src: int = -1  # index of the layer whose output this layer reads (-1: network input)
    eps: float = 1e-5  # BatchNorm epsilon (norm layers only)
    direct: bool = True  # norms: reads `src`'s output with no nonlinearity, pooling by
    #                      max, zero padding or residual sum in between (so it can fold)

    @property
    def keys(self) -> dict[str, str]:
        return dict(self.params)

    @property
    def shape_of(self) -> dict[str, tuple[int, ...]]:
        return dict(self.shapes)

    @property
    def num_params(self) -> int:
        return int(sum(np.prod(s) for _, s in self.shapes))


@dataclasses.dataclass(frozen=True)
class Group:
    """A channel space whose indices permute together. `scaling` names the per-channel
    scalings that also leave the function unchanged (see `_MEET`)."""

    size: int
    permutable: bool
    scaling: str = "none"


@dataclasses.dataclass(frozen=True)
class Embed:
    """Channel i of group `src` is channel `offset + i` of group `dst` (zero padding)."""

    src: int
    dst: int
    offset: int


@dataclasses.dataclass(frozen=True)
class Residual:
    """A residual add: the output of layer `src` (or the input, -1) is added, channel i to
    channel `offset + i`, to the output of layer `dst`."""

    src: int
    dst: int
    offset: int = 0


@dataclasses.dataclass(frozen=True)
class NetSpec:
    layers: tuple[Layer, ...]
    groups: tuple[Group, ...] = ()
    embeds: tuple[Embed, ...] = ()
    residuals: tuple[Residual, ...] = ()
    source: str = "flax"  # flax | torch | flat

    @property
    def num_params(self) -> int:
        return sum(layer.num_params for layer in self.layers)

    @property
    def has_symmetry(self) -> bool:
        return bool(self.groups)

    def describe(self) -> str:
        """A human-readable table of the layers and groups."""
        rows = [f"NetSpec ({self.source}, {len(self.layers)} layers, {self.num_params} params)"]
        for i, layer in enumerate(self.layers):
            k = "x".join(map(str, layer.kernel_shape))
            rows.append(
                f"  {i:3d} {layer.kind:9s} {layer.name:28s} {layer.in_features:5d} -> "
                f"{layer.out_features:5d} {k:5s} groups {layer.in_group}->{layer.out_group}"
                f" src {layer.src}"
            )
        for g, group in enumerate(self.groups):
            rows.append(
                f"  group {g}: size {group.size} permutable={group.permutable} "
                f"scaling={group.scaling}"
            )
        return "\n".join(rows)


def compatible(a: NetSpec, b: NetSpec) -> None:
    """Raise ValueError naming the first layer where two specs of (possibly different
    sources) disagree in kind or canonical shapes."""
    la = [x for x in a.layers if x.kind != "other"]
    lb = [x for x in b.layers if x.kind != "other"]
    if len(la) != len(lb):
        raise ValueError(f"specs differ in layer count: {len(la)} vs {len(lb)}")
    for x, y in zip(la, lb, strict=True):
        sx, sy = x.shape_of, y.shape_of
        if x.kind != y.kind or any(sx.get(k) != sy.get(k) for k in set(sx) | set(sy)):
            raise ValueError(
                f"layer {x.name!r} ({x.kind}, {sx}) does not match {y.name!r} ({y.kind}, {sy})"
            )


# --------------------------------------------------------------------------------------
# From a Flax module: trace the jaxpr of `apply`.
# --------------------------------------------------------------------------------------

_LEAF_ROLES = {"kernel": "kernel", "bias": "bias", "scale": "scale", "mean": "mean", "var": "var"}
_ODD = {"tanh", "sin", "sinh", "atan", "asinh", "erf", "tan"}
_NONLINEAR = {
    "exp",
    "log",
    "log1p",
    "expm1",
    "logistic",
    "sqrt",
    "rsqrt",
    "cbrt",
    "integer_pow",
    "pow",
    "square",
    "cos",
    "cosh",
    "erf_inv",
    "sign",
    "floor",
    "ceil",
    "round",
    "is_finite",
    "exp2",
}
_LINEAR_UNARY = {
    "neg",
    "convert_element_type",
    "copy",
    "copy_p",
    "reduce_precision",
    "optimization_barrier",
}


@dataclasses.dataclass
class _Act:
    group: int  # union-find id of the last axis' channel space (-1: no channel axis)
    producer: int  # layer index that wrote these channels (-1: the network input)
    spatial: int = 1  # > 1 after flattening (H, W, C) -> H*W*C
    offset: int = 0  # channel offset relative to the producer (after a zero pad)
    raw: bool = True  # only affine maps since the producer (a norm reading it can fold)


@dataclasses.dataclass(frozen=True)
class _Param:
    leaves: frozenset  # indices of the parameter leaves this value derives from


class _Tracer:
    def __init__(self, leaf_paths: list[tuple[str, ...]], leaf_shapes: list[tuple[int, ...]]):
        self.paths = leaf_paths
        self.shapes = leaf_shapes
        self.parent: list[int] = []
        self.size: list[int] = []
        self.frozen: list[bool] = []
        self.scaling: list[str] = []
        self.embeds: list[tuple[int, int, int]] = []
        self.residuals: list[tuple[int, int, int]] = []
        self.modules: dict[tuple[str, ...], dict[str, Any]] = {}  # module path -> info
        self.order: list[tuple[str, ...]] = []  # modules in computation order
        self.eps: dict[int, float] = {}  # leaf index -> epsilon added to it

    # union-find over channel spaces
    def new_group(self, size: int, frozen: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.frozen.append(frozen)
        self.scaling.append("any")
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[b] = a
            self.frozen[a] = self.frozen[a] or self.frozen[b]
            self.scaling[a] = _meet(self.scaling[a], self.scaling[b])
        return a

    def freeze(self, g: int) -> None:
        if g >= 0:
            self.frozen[self.find(g)] = True

    def restrict(self, g: int, scaling: str) -> None:
        if g >= 0:
            r = self.find(g)
            self.scaling[r] = _meet(self.scaling[r], scaling)

    # parameter modules
    def module_of(self, leaf: int) -> tuple[str, ...]:
        return self.paths[leaf][1:-1]  # drop the collection and the leaf name

    def touch(self, leaf: int) -> dict[str, Any]:
        mod = self.module_of(leaf)
        if mod not in self.modules:
            self.modules[mod] = {"kind": None, "uses": 0, "index": len(self.order)}
            self.order.append(mod)
        return self.modules[mod]

    def mark_other(self, leaves, *groups: int) -> None:
        for leaf in leaves:
            self.touch(leaf)["other"] = True
        for g in groups:
            self.freeze(g)

    # the walk
    def run(self, jaxpr: jcore.Jaxpr, labels: list, values: list | None = None) -> list:
        env: dict = {}
        consts: dict = {
            v: x for v, x in zip(jaxpr.invars, values or [], strict=False) if x is not None
        }

        def read(v):
            if isinstance(v, jcore.Literal):
                return None
            return env.get(v)

        def value(v):
            if isinstance(v, jcore.Literal):
                return np.asarray(v.val)
            return consts.get(v)

        for v, lab in zip(jaxpr.invars, labels, strict=True):
            env[v] = lab
        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            vals = [value(v) for v in eqn.invars]
            outs = self.eqn(eqn, ins, vals)
            for v, lab in zip(eqn.outvars, outs, strict=True):
                env[v] = lab
            if eqn.primitive.name in _LINEAR_UNARY and vals and vals[0] is not None:
                consts[eqn.outvars[0]] = vals[0]
        return [read(v) for v in jaxpr.outvars]

    def eqn(self, eqn, ins, vals) -> list:
        prim = eqn.primitive.name
        p = eqn.params
        acts = [x for x in ins if isinstance(x, _Act)]
        params = [x for x in ins if isinstance(x, _Param)]
        leaves = frozenset().union(*[x.leaves for x in params]) if params else frozenset()
        n_out = len(eqn.outvars)
        out_shape = [tuple(v.aval.shape) for v in eqn.outvars]
        self.out_last = out_shape[0][-1] if out_shape and out_shape[0] else None
        in_shape = [tuple(getattr(v.aval, "shape", ())) for v in eqn.invars]

        sub = p.get("jaxpr") or p.get("call_jaxpr")
        if sub is not None:
            sub_jaxpr = getattr(sub, "jaxpr", sub)
            if isinstance(sub_jaxpr, jcore.Jaxpr) and len(sub_jaxpr.invars) == len(ins):
                return self.run(sub_jaxpr, list(ins), list(vals))

        if not acts:  # a computation on parameters (and constants) only
            if prim == "add" and params and vals[1 - ins.index(params[0])] is not None:
                for leaf in params[0].leaves:  # BatchNorm's var + eps
                    self.eps[leaf] = float(np.asarray(vals[1 - ins.index(params[0])]))
            return [_Param(leaves) if leaves else None for _ in range(n_out)]

        def keep(a: _Act, **kw) -> list:
            return [dataclasses.replace(a, **kw) for _ in range(n_out)]

        def unknown() -> list:
            for a in acts:
                self.freeze(a.group)
            self.mark_other(leaves)
            prod = max(a.producer for a in acts)
            return [_Act(self.new_group(s[-1] if s else 1, frozen=True), prod) for s in out_shape]

        a = acts[0]
        last = in_shape[ins.index(a)][-1] if in_shape[ins.index(a)] else None

        if prim in ("dot_general", "conv_general_dilated"):
            return self.linear(eqn, ins, a, out_shape[0]) or unknown()

        if prim in (
            "add",
            "sub",
            "mul",
            "div",
            "max",
            "min",
            "select_n",
            "atan2",
            "rem",
            "pow",
            "nextafter",
            "clamp",
            "and",
            "or",
            "ge",
            "gt",
            "le",
            "lt",
            "eq",
            "ne",
        ):
            return self.elementwise(prim, ins, vals, acts, params, in_shape, n_out)

        if prim in _LINEAR_UNARY or prim in ("abs",) or prim in _ODD or prim in _NONLINEAR:
            if len(acts) != 1 or params:
                return unknown()
            if prim == "abs":
                self.restrict(a.group, "positive")
            elif prim in _ODD:
                self.restrict(a.group, "sign")
            elif prim in _NONLINEAR:
                self.restrict(a.group, "none")
            return keep(a, raw=a.raw and prim in _LINEAR_UNARY)

        if prim in ("reduce_sum", "reduce_max", "reduce_min", "argmax", "argmin", "reduce_prod"):
            nd = len(in_shape[0])
            if nd - 1 in tuple(p["axes"]):
                if prim in ("argmax", "argmin", "reduce_prod"):
                    return unknown()
                self.restrict(a.group, "none")  # e.g. LayerNorm statistics
                return keep(a, group=-1)
            if prim in ("reduce_max", "reduce_min"):
                self.restrict(a.group, "positive")
            elif prim != "reduce_sum":
                return unknown()
            return keep(a, raw=a.raw and prim == "reduce_sum")

        if prim.startswith("reduce_window"):
            dims = p.get("window_dimensions", ())
            if dims and dims[-1] != 1:
                return unknown()
            if "max" in prim or "min" in prim:
                self.restrict(a.group, "positive")
                return keep(a, raw=False)
            return keep(a)

        if prim in ("reshape", "broadcast_in_dim", "squeeze", "expand_dims"):
            src_shape, dst_shape = in_shape[0], out_shape[0]
            if a.group < 0:
                return keep(a)
            if prim == "broadcast_in_dim" and src_shape:
                if p["broadcast_dimensions"][-1] != len(dst_shape) - 1:
                    return unknown()
            if a.group < 0 or (src_shape and dst_shape and src_shape[-1] == dst_shape[-1]):
                return keep(a)
            if prim == "reshape" and len(src_shape) >= 3 and a.spatial == 1:
                # flatten (N, ..., H, W, C) -> (N, ..., H*W*C): channel innermost
                for k in range(len(src_shape) - 1, 0, -1):
                    if (
                        int(np.prod(src_shape[k:])) == dst_shape[-1]
                        and src_shape[:k] == dst_shape[:-1]
                    ):
                        return keep(a, spatial=int(np.prod(src_shape[k:-1])))
            return unknown()

        if prim == "slice":
            nd = len(in_shape[0])
            strides = p.get("strides") or (1,) * nd
            if p["start_indices"][-1] == 0 and p["limit_indices"][-1] == last and strides[-1] == 1:
                return keep(a)
            return unknown()

        if prim == "pad":
            lo, hi, interior = p["padding_config"][-1]
            if vals[1] is None or float(vals[1]) != 0.0 or interior != 0:
                return unknown()
            if lo == 0 and hi == 0:
                return keep(a)
            if lo < 0 or hi < 0 or a.group < 0:
                return unknown()
            g = self.new_group(int(lo + last + hi))
            self.embeds.append((a.group, g, int(lo)))
            return keep(a, group=g, offset=a.offset + int(lo), raw=False)

        if prim == "transpose":
            perm = tuple(p["permutation"])
            if perm[-1] == len(perm) - 1:
                return keep(a)
            return unknown()

        if prim == "concatenate":
            if p["dimension"] == len(in_shape[0]) - 1:
                return unknown()
            g = a.group
            for x in acts[1:]:
                g = self.union(g, x.group) if (g >= 0 and x.group >= 0) else max(g, x.group)
            self.tie(leaves, g, last)
            return keep(a, group=g)

        return unknown()

    def tie(self, leaves, group: int, size) -> None:
        """Parameter leaves meet channel space `group` elementwise: their last axis
        permutes with it (a bias, a norm's statistics)."""
        for leaf in leaves:
            shape = self.shapes[leaf]
            if group < 0 or not shape or shape[-1] != size:
                continue
            info = self.touch(leaf)
            info.setdefault("ties", {})[leaf] = group

    def elementwise(self, prim, ins, vals, acts, params, in_shape, n_out) -> list:
        a = acts[0]
        if len(acts) == 2:
            b = acts[1]
            if a.group >= 0 and b.group >= 0:
                g = self.union(a.group, b.group)
            else:
                g = max(a.group, b.group)
            if (
                prim in ("add", "sub")
                and a.producer != b.producer
                and a.group >= 0
                and b.group >= 0
            ):
                skip, main = sorted((a, b), key=lambda x: x.producer)
                self.residuals.append((skip.producer, main.producer, skip.offset - main.offset))
                return [_Act(g, main.producer, 1, main.offset, raw=False) for _ in range(n_out)]
            if prim not in ("add", "sub", "select_n"):
                self.restrict(g, "none")
            elif prim == "select_n":
                self.restrict(g, "none")
            raw = a.raw and b.raw and prim in ("add", "sub")
            return [
                _Act(g, max(a.producer, b.producer), a.spatial, a.offset, raw) for _ in range(n_out)
            ]
        if params:
            leaves = frozenset().union(*[x.leaves for x in params])
            size = in_shape[ins.index(a)][-1] if in_shape[ins.index(a)] else None
            out_last = self.out_last
            if a.group < 0 and out_last and out_last > 1:
                # channel-free statistics (LayerNorm's) meet a per-channel parameter:
                # the result lives in a fresh channel space, merged later with x's
                a = dataclasses.replace(a, group=self.new_group(out_last))
                size = out_last
            if prim in ("max", "min", "select_n", "pow", "rem", "atan2") or (
                prim == "div" and ins.index(a) != 0
            ):
                self.mark_other(leaves, a.group)
                return [dataclasses.replace(a, raw=False) for _ in range(n_out)]
            self.tie(leaves, a.group, size)
            producer = a.producer
            for mod in sorted({self.module_of(leaf) for leaf in leaves}):
                info = self.modules.get(mod)
                if info is None or info.get("layer_kind") in ("dense", "conv"):
                    continue  # a dense/conv bias: the layer itself wrote these channels
                if info.get("src") is None:  # a norm's first contact with an activation
                    info["src"] = a.producer
                    info["direct"] = a.raw
                producer = info["index"]
            raw = a.raw if producer == a.producer else True  # a norm's output is raw
            return [dataclasses.replace(a, producer=producer, raw=raw) for _ in range(n_out)]
        # activation with constants only
        other = [v for v, x in zip(vals, ins, strict=True) if x is None]
        if prim in ("max", "min"):
            if all(v is not None and np.all(np.asarray(v) == 0) for v in other):
                self.restrict(a.group, "positive")
            else:
                self.restrict(a.group, "none")
        elif prim in ("add", "sub"):
            if not all(v is not None and np.all(np.asarray(v) == 0) for v in other):
                self.restrict(a.group, "none")
        elif prim == "div" and ins.index(a) != 0:
            self.restrict(a.group, "none")
        elif prim not in ("mul", "div"):
            self.restrict(a.group, "none")
        affine = prim in ("add", "sub", "mul") or (prim == "div" and ins.index(a) == 0)
        return [dataclasses.replace(a, raw=a.raw and affine) for _ in range(n_out)]

    def linear(self, eqn, ins, a: _Act, out_shape) -> list | None:
        if ins.index(a) != 0 or not isinstance(ins[1], _Param) or len(ins[1].leaves) != 1:
            return None
        (leaf,) = ins[1].leaves
        shape = self.shapes[leaf]
        if self.paths[leaf][-1] != "kernel":
            return None
        p = eqn.params
        if eqn.primitive.name == "dot_general":
            (lc, rc), (lb, rb) = p["dimension_numbers"]
            nd = len(eqn.invars[0].aval.shape)
            if len(shape) != 2 or tuple(lc) != (nd - 1,) or tuple(rc) != (0,) or lb or rb:
                return None
            kind = "dense"
        else:
            dn = p["dimension_numbers"]
            if (
                len(shape) != 4
                or p["feature_group_count"] != 1
                or p["batch_group_count"] != 1
                or tuple(dn.lhs_spec) != (0, 3, 1, 2)
                or tuple(dn.rhs_spec) != (3, 2, 0, 1)
            ):
                return None
            kind = "conv"
            if a.spatial != 1:
                return None
        info = self.touch(leaf)
        info["uses"] += 1
        if info["uses"] > 1:  # shared weights: no simple per-layer symmetry
            info["other"] = True
            self.freeze(a.group)
        out = self.new_group(shape[-1])
        info.update(
            layer_kind=kind, in_group=a.group, out_group=out, src=a.producer, in_spatial=a.spatial
        )
        return [_Act(out, info["index"])]


def _leaf_path(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def spec_from_flax(module, variables: Mapping, *args, method=None, **kwargs) -> NetSpec:
    """Derive the NetSpec of a Flax module by tracing `module.apply(variables, *args,
    **kwargs)` (inference mode: pass `train=False` if the module takes it).

    Layers come from the parameter modules (a `kernel` leaf: dense or conv; `scale`/
    `bias` with `mean`/`var` statistics: BatchNorm; `scale`/`bias` alone: LayerNorm;
    anything else: `other`), in the order the computation first uses them. The trace
    decides everything else: which channel spaces each layer reads and writes, residual
    adds (which merge channel spaces), zero-padded shortcuts, flattening, and which
    per-channel scalings each activation allows. Any operation the tracer does not
    understand makes the channel spaces it touches non-permutable, so the symmetries
    the spec reports are safe.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(variables)
    paths = [_leaf_path(pth) for pth, _ in flat]
    shapes = [tuple(np.shape(x)) for _, x in flat]
    treedef = jax.tree_util.tree_structure(variables)

    def fn(leaves, *a):
        v = jax.tree_util.tree_unflatten(treedef, leaves)
        return module.apply(v, *a, method=method, **kwargs)

    closed = jax.make_jaxpr(fn)([x for _, x in flat], *args)
    tr = _Tracer(paths, shapes)
    labels: list = [_Param(frozenset([i])) for i in range(len(flat))]
    n_in = len(closed.jaxpr.invars) - len(flat)
    in_avals = [v.aval for v in closed.jaxpr.invars[len(flat) :]]
    for aval in in_avals[:n_in]:
        labels.append(_Act(tr.new_group(aval.shape[-1] if aval.shape else 1, frozen=True), -1))
    outs = tr.run(closed.jaxpr, labels)
    for o in outs:
        if isinstance(o, _Act):
            tr.freeze(o.group)
    return _assemble(tr, paths, shapes)


def _assemble(tr: _Tracer, paths, shapes) -> NetSpec:
    by_module: dict[tuple[str, ...], dict[str, int]] = {}
    for i, path in enumerate(paths):
        by_module.setdefault(path[1:-1], {})[path[-1]] = i
    # modules never touched by the trace (unused parameters) go last, as `other`
    for mod in by_module:
        if mod not in tr.modules:
            tr.modules[mod] = {"kind": None, "uses": 0, "index": len(tr.order), "other": True}
            tr.order.append(mod)
    layers: list[dict[str, Any]] = []
    index_of: dict[int, int] = {}  # provisional module index -> layer index
    for mod in tr.order:
        info, leaves = tr.modules[mod], by_module[mod]
        names = set(leaves)
        ties = info.get("ties", {})
        kind = info.get("layer_kind")
        if info.get("other") or kind is None and not names <= {"scale", "bias", "mean", "var"}:
            kind = "other"
        elif kind is None:
            kind = "norm" if {"mean", "var"} <= names else "layernorm"
        if kind in ("dense", "conv") and not names <= {"kernel", "bias"}:
            kind = "other"
        if kind == "norm" and not {"mean", "var"} <= names:
            kind = "other"
        if kind in ("norm", "layernorm"):
            groups = {tr.find(g) for g in ties.values()}
            if len(groups) != 1 or len(ties) != len(leaves):
                kind = "other"
        if kind in ("dense", "conv") and "bias" in leaves:
            if leaves["bias"] not in ties or tr.find(ties[leaves["bias"]]) != tr.find(
                info["out_group"]
            ):
                kind = "other"
        if kind == "other":
            for g in ties.values():
                tr.freeze(g)
            for key in ("in_group", "out_group", "group"):
                if key in info and info[key] is not None and info[key] >= 0:
                    tr.freeze(info[key])
        index_of[info["index"]] = len(layers)
        layers.append({"mod": mod, "info": info, "leaves": leaves, "kind": kind})

    def resolve(producer) -> int:
        return -1 if producer is None or producer < 0 else index_of[producer]

    # renumber union-find roots densely
    roots: dict[int, int] = {}

    def gid(g) -> int:
        if g is None or g < 0:
            return -1
        r = tr.find(g)
        if r not in roots:
            roots[r] = len(roots)
        return roots[r]

    out_layers = []
    for rec in layers:
        mod, info, leaves, kind = rec["mod"], rec["info"], rec["leaves"], rec["kind"]
        name = "/".join(mod)
        order = sorted(
            leaves,
            key=lambda k: (
                ("kernel", "scale", "bias", "mean", "var", k).index(k)
                if k in ("kernel", "scale", "bias", "mean", "var")
                else 9
            ),
        )
        params = tuple((k, "/".join(paths[leaves[k]])) for k in order)
        shp = tuple((k, shapes[leaves[k]]) for k in order)
        if kind in ("dense", "conv"):
            kshape = shapes[leaves["kernel"]]
            out_layers.append(
                Layer(
                    name,
                    kind,
                    int(kshape[-2]),
                    int(kshape[-1]),
                    tuple(kshape[:-2]),
                    params,
                    shp,
                    gid(info["in_group"]),
                    gid(info["out_group"]),
                    int(info["in_spatial"]),
                    resolve(info["src"]),
                )
            )
        elif kind in ("norm", "layernorm"):
            g = next(iter(info["ties"].values()))
            f = shapes[leaves["scale" if "scale" in leaves else "bias"]][-1]
            eps = tr.eps.get(leaves.get("var", -1), 1e-5 if kind == "norm" else 1e-6)
            out_layers.append(
                Layer(
                    name,
                    kind,
                    f,
                    f,
                    (),
                    params,
                    shp,
                    gid(g),
                    gid(g),
                    1,
                    resolve(info.get("src", -1)),
                    eps,
                    bool(info.get("direct", True)),
                )
            )
        else:
            n = int(sum(np.prod(s) for _, s in shp))
            out_layers.append(Layer(name, "other", n, n, (), params, shp))
    for e in tr.embeds:  # embedded groups no layer refers to still need an id
        gid(e[0]), gid(e[1])
    groups = [
        Group(tr.size[r], not tr.frozen[r], tr.scaling[r] if not tr.frozen[r] else "none")
        for r, _ in sorted(roots.items(), key=lambda kv: kv[1])
    ]
    embeds = tuple(
        sorted({Embed(gid(s), gid(d), o) for s, d, o in tr.embeds}, key=lambda e: (e.dst, e.src))
    )
    residuals = tuple(
        dict.fromkeys(
            Residual(resolve(s) if s != -1 else -1, resolve(d), o) for s, d, o in tr.residuals
        )
    )
    # a group embedded into another is only permutable if both are
    groups = _propagate_frozen(groups, embeds)
    return NetSpec(tuple(out_layers), tuple(groups), embeds, residuals, "flax")


def _propagate_frozen(groups: list[Group], embeds: Sequence[Embed]) -> list[Group]:
    changed = True
    while changed:
        changed = False
        for e in embeds:
            s, d = groups[e.src], groups[e.dst]
            if s.permutable != d.permutable:
                groups[e.src] = dataclasses.replace(s, permutable=False, scaling="none")
                groups[e.dst] = dataclasses.replace(d, permutable=False, scaling="none")
                changed = True
            scaling = _meet(s.scaling, d.scaling)
            if scaling != s.scaling or scaling != d.scaling:
                groups[e.src] = dataclasses.replace(groups[e.src], scaling=scaling)
                groups[e.dst] = dataclasses.replace(groups[e.dst], scaling=scaling)
                changed = True
    return groups


# --------------------------------------------------------------------------------------
# From a torch-style state dict (names, shapes, order) and from layout.csv
# --------------------------------------------------------------------------------------

_TORCH_ROLES = {"weight": None, "bias": "bias", "running_mean": "mean", "running_var": "var"}


def spec_from_state_dict(state_dict: Mapping[str, Any]) -> NetSpec:
    """Layers of a torch `state_dict` (name -> array) in its order: a 4-D `weight` is a
    conv (out, in, kh, kw), a 2-D `weight` a dense (out, in), a 1-D `weight` with
    `running_mean`/`running_var` a BatchNorm, without them a LayerNorm. Buffers such as
    `num_batches_tracked` are not weights and are skipped. No symmetry information."""
    modules: dict[str, dict[str, tuple[str, tuple[int, ...]]]] = {}
    for key, value in state_dict.items():
        mod, _, leaf = key.rpartition(".")
        if leaf in _TORCH_ROLES:
            modules.setdefault(mod, {})[leaf] = (key, tuple(np.shape(value)))
    layers = []
    for mod, leaves in modules.items():
        w = leaves.get("weight")
        if w is not None and len(w[1]) in (2, 4):
            o, i = w[1][:2]
            kind = "dense" if len(w[1]) == 2 else "conv"
            ks = tuple(w[1][2:])
            params = [("kernel", w[0])]
            shapes = [("kernel", (i, o) if kind == "dense" else (*ks, i, o))]
            if "bias" in leaves:
                params.append(("bias", leaves["bias"][0]))
                shapes.append(("bias", (o,)))
            layers.append(Layer(mod, kind, i, o, ks, tuple(params), tuple(shapes)))
        elif w is not None and len(w[1]) == 1:
            f = w[1][0]
            kind = "norm" if "running_mean" in leaves else "layernorm"
            roles = [
                ("scale", "weight"),
                ("bias", "bias"),
                ("mean", "running_mean"),
                ("var", "running_var"),
            ]
            params = tuple((r, leaves[t][0]) for r, t in roles if t in leaves)
            layers.append(Layer(mod, kind, f, f, (), params, tuple((r, (f,)) for r, _ in params)))
        else:
            params = tuple((leaf, k) for leaf, (k, _) in leaves.items())
            shapes = tuple((leaf, s) for leaf, (_, s) in leaves.items())
            n = int(sum(np.prod(s) for _, s in shapes))
            layers.append(Layer(mod, "other", n, n, (), params, shapes))
    return NetSpec(tuple(layers), source="torch")


def _parse_shape(text: str) -> tuple[int, ...]:
    inner = text.strip().strip("()[]")
    return tuple(int(x) for x in inner.split(",") if x.strip())


def spec_from_layout(rows: Sequence[Mapping[str, str]]) -> NetSpec:
    """The Small CNN Zoo's `layout.csv` rows (varname, start_idx, end_idx, shape) ->
    NetSpec with `source='flat'` (TF layout: conv HWIO, dense (in, out), which is the
    canonical layout). The rows must tile the flat vector contiguously in order."""
    modules: dict[str, dict[str, tuple[str, tuple[int, ...]]]] = {}
    pos = 0
    for row in rows:
        name, start, end = row["varname"], int(row["start_idx"]), int(row["end_idx"])
        shape = _parse_shape(row["shape"])
        if start != pos or end - start != int(np.prod(shape)):
            raise ValueError(
                f"layout.csv row {name!r}: [{start}, {end}) with shape {shape} "
                f"does not continue the flat vector at index {pos}"
            )
        pos = end
        mod, _, leaf = name.rpartition("/")
        modules.setdefault(mod, {})[leaf.split(":")[0]] = (name, shape)
    layers = []
    for mod, leaves in modules.items():
        if "kernel" not in leaves:
            raise ValueError(f"layout.csv module {mod!r} has no kernel: {sorted(leaves)}")
        k = leaves["kernel"][1]
        kind = {2: "dense", 4: "conv"}.get(len(k))
        if kind is None:
            raise ValueError(f"layout.csv kernel {leaves['kernel'][0]!r} has shape {k}")
        order = [r for r in leaves if r in ("kernel", "bias")]  # row order (published: bias first)
        layers.append(
            Layer(
                mod,
                kind,
                k[-2],
                k[-1],
                tuple(k[:-2]),
                tuple((r, leaves[r][0]) for r in order),
                tuple((r, leaves[r][1]) for r in order),
            )
        )
    return NetSpec(tuple(layers), source="flat")
