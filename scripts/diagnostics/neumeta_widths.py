"""Accuracy of a trained NeuMeta INR at every inner width, beside the sliced pretrained net:
how the generated network degrades outside the trained widths (the reference's test mode
sweeps 16..64 the same way).

    python scripts/diagnostics/neumeta_widths.py WORKDIR STEP [--widths 16,20,...,64]
        [--test_size 0] [--out results/NAME] [--description "..."]
        [--also LABEL=WORKDIR ...] [--k_samples 1] [--noise 2]

Uses the run's own config (its test subset unless --test_size is given), the EMA
parameters of checkpoint STEP and the run's K noisy samples per width. Prints one row per
width; with --out writes NAME.{json,md,png} with the command, commit, date and machine.
--also adds a column LABEL per further run of the same pretrained block (e.g. another
seed or setting; its checkpoint STEP, its own config and K), on the same test images.
--k_samples K replaces every run's K (1: the generated weights without coordinate noise),
--noise S its coordinate noise at evaluation (U(-S/2, S/2) on the raw coordinates).
"""

import argparse
import json
import pathlib
import sys

import jax
import ml_collections
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = pathlib.Path(__file__).name


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir")
    p.add_argument("step", type=int)
    p.add_argument("--widths", default=",".join(map(str, range(16, 65, 4))))
    p.add_argument("--test_size", type=int, default=-1, help="-1: the run's own")
    p.add_argument("--out", default="")
    p.add_argument("--description", default="")
    p.add_argument("--also", action="append", default=[], help="LABEL=WORKDIR, repeatable")
    p.add_argument("--k_samples", type=int, default=0, help="0: each run's; 1: noiseless")
    p.add_argument("--noise", type=float, default=-1.0, help="coordinate noise; -1: each run's")
    args_in = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(args_in)
    from wsl.methods import metamorph
    from wsl.train import checkpoint, loop, parallel

    runs = [("neumeta", args.workdir)]
    for item in args.also:
        label, sep, workdir = item.partition("=")
        taken = {"width", "trained", "sliced", *(name for name, _ in runs)}
        if not sep or not label or label in taken:
            raise SystemExit(f"error: --also {item!r}: give LABEL=WORKDIR (a new column name)")
        runs.append((label, workdir))
    configs = []
    for _, workdir in runs:
        config = ml_collections.ConfigDict(checkpoint.read_config(workdir))
        if config.mode != "neumeta":
            raise SystemExit(f"error: {workdir} is a {config.mode!r} run, not neumeta")
        configs.append(config)
    config = configs[0]  # its pretrained block, test images and trained widths for all
    if args.test_size >= 0:
        config.data.test_size = args.test_size
    m = config.model
    sub = metamorph.prepare(m.depth, m.generate, m.hidden, m.smooth, config.inr.per_layer)
    data = metamorph.load_data(config)
    if config.get("cache_prefix", True):
        sub, data = metamorph.cache_prefix(sub, data)
    mesh = parallel.make_mesh()
    models = []
    for (label, workdir), c in zip(runs, configs, strict=True):
        inr = metamorph.make_inr(c)
        task = metamorph.make_neumeta_task(sub, inr, metamorph.neumeta_optimizer(c), data, c, mesh)
        abstract = loop._abstract(task.init, jax.random.key(c.seed), mesh)
        mngr = checkpoint.manager(pathlib.Path(workdir), keep=100, async_save=False)
        params = checkpoint.restore(mngr, args.step, abstract).model_state["ema"]
        models.append((label, c, inr, params))
    full_sizes = sub.plan.group_sizes
    full = int(full_sizes[sub.groups[0]])
    lowest = full * (1 - config.widths.train_max_compression)
    x, y = data["test"]
    rows = []
    for h in sorted(int(w) for w in args.widths.split(",")):
        if not 1 <= h <= full:
            raise SystemExit(f"error: width {h} outside 1..{full} (--widths)")
        c = 1.0 - h / full
        row = {"width": h, "trained": bool(lowest <= h)}
        for label, cfg, inr, params in models:
            key = jax.random.key(cfg.seed + 1)  # evaluate_neumeta's
            gen, _ = metamorph.generate_at(
                sub,
                inr,
                params,
                c,
                key,
                args.k_samples or cfg.eval.k_samples,
                cfg.noise if args.noise < 0 else args.noise,
                cfg.inr.norm,
            )
            w = metamorph.insert(sub, gen)
            row[label] = metamorph.accuracy(sub.module, sub.spec, w, x, y, start=sub.start)
        cut = metamorph.sliced_weights(sub, metamorph.widths_for(full_sizes, sub.groups, c))
        row["sliced"] = metamorph.accuracy(sub.module, sub.spec, cut, x, y, start=sub.start)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        sys.path.insert(0, str(ROOT / "scripts" / "diagnostics"))
        import record_eval

        record_eval.record(
            args.out, rows, [f"scripts/diagnostics/{SCRIPT}", *args_in], args.description,
            workdir=args.workdir, step=args.step, test_size=len(y),
            k_samples=[args.k_samples or cfg.eval.k_samples for _, cfg, _, _ in models],
            noise=[cfg.noise if args.noise < 0 else args.noise for _, cfg, _, _ in models],
        )  # fmt: skip
        out = pathlib.Path(args.out)
        plot(rows, [label for label, *_ in models], lowest, full, out.with_suffix(".png"))


def plot(rows, labels, lowest: float, full: int, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = np.asarray([r["width"] for r in rows])
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.axvspan(lowest, full, color="0.92", zorder=0, label="trained widths")
    for label in labels:
        name = "NeuMeta (generated)" if label == "neumeta" else label
        ax.plot(h, [r[label] for r in rows], "-o", label=name)
    ax.plot(h, [r["sliced"] for r in rows], "-s", label="sliced pretrained")
    ax.set_xlabel("inner width of the generated block")
    ax.set_ylabel("test accuracy")
    ax.set_title(path.stem)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
