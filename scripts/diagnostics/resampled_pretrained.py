"""The pretrained ResNet's generated block narrowed without any training, two ways, at every
inner width: `sliced` keeps channels 0..h-1 (metamorph.sliced); `resampled` keeps h channels
spread evenly over the smoothed order (channel floor(i * H / h) for i < h: where NeuMeta's
coordinate i / h points at full width H) and multiplies the kernels that read them by
H / h (NeuMeta's fan-in scaling): the network NeuMeta would generate if its INR reproduced
the pretrained weights exactly at every width.
What NeuMeta's INR adds at a width is its accuracy above `resampled` there.

    python scripts/diagnostics/resampled_pretrained.py [--variant cpu] [--widths 16,20,...]
        [--out results/NAME] [--description "..."]

Uses experiments/metamorph_resnet.py's `variant` (its model, test subset and widths).
"""

import argparse
import json
import pathlib
import sys

import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = pathlib.Path(__file__).name


def resample(spec, weights, groups, full_sizes, sizes) -> tuple:
    """Canonical weights with every metamorphic group g narrowed to sizes[g] evenly spread
    channels (placed first, the rest 0, as channel_mask's layout) and the kernels reading
    it scaled by full / size."""
    pick = {}
    for g in groups:
        h, full = int(sizes[g]), int(full_sizes[g])
        pick[g] = (np.floor(np.arange(h) * full / h).astype(int), full / h)
    out = []
    for layer, arrays in zip(spec.layers, weights, strict=True):
        new = {}
        for role, a in arrays.items():
            a = np.asarray(a)
            b = np.zeros_like(a)
            src = a
            if layer.in_group in pick and role == "kernel":
                idx, scale = pick[layer.in_group]
                src = np.take(src, idx, axis=-2) * scale
            if layer.out_group in pick and role in ("kernel", "bias", "scale"):
                src = np.take(src, pick[layer.out_group][0], axis=-1)
            b[tuple(slice(0, n) for n in src.shape)] = src
            new[role] = jnp.asarray(b)
        out.append(new)
    return tuple(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="cpu")
    p.add_argument("--widths", default=",".join(map(str, range(16, 65, 4))))
    p.add_argument("--out", default="")
    p.add_argument("--description", default="")
    args_in = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(args_in)
    from wsl import configs
    from wsl.methods import metamorph

    config = configs.load_module(ROOT / "experiments" / "metamorph_resnet.py").get_config(
        args.variant
    )
    m = config.model
    sub = metamorph.prepare(m.depth, m.generate, m.hidden, m.smooth, config.inr.per_layer)
    data = metamorph.load_data(config)
    sub, data = metamorph.cache_prefix(sub, data)  # exact: the frozen blocks run once
    x, y = data["test"]
    full_sizes = sub.plan.group_sizes
    full = int(full_sizes[sub.groups[0]])
    lowest = full * (1 - config.widths.train_max_compression)
    rows = []
    for h in sorted(int(w) for w in args.widths.split(",")):
        if not 1 <= h <= full:
            raise SystemExit(f"error: width {h} outside 1..{full} (--widths)")
        sizes = metamorph.widths_for(full_sizes, sub.groups, 1.0 - h / full)
        cut = metamorph.sliced_weights(sub, sizes)
        spread = resample(sub.spec, sub.weights, sub.groups, full_sizes, sizes)
        row = {
            "width": h,
            "trained_by_neumeta": bool(lowest <= h),
            "sliced": metamorph.accuracy(sub.module, sub.spec, cut, x, y, start=sub.start),
            "resampled": metamorph.accuracy(sub.module, sub.spec, spread, x, y, start=sub.start),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        sys.path.insert(0, str(ROOT / "scripts" / "diagnostics"))
        import record_eval

        record_eval.record(
            args.out, rows, [f"scripts/diagnostics/{SCRIPT}", *args_in], args.description,
            variant=args.variant, test_size=len(y),
        )  # fmt: skip


if __name__ == "__main__":
    main()
