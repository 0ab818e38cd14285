"""Benchmark: inference throughput of canonicaliser + predictor, the paper's non-equivariant
canonicaliser (LC-Opt) against the equivariant baseline (LC-GCNN), at matched accuracy.

    WSL_DATA_DIR=/path/to/data python scripts/bench_canon.py [--dataset mnist|cifar10]

Panigrahi & Mondal (arXiv 2405.14089) claim their canonicalisation is up to 2x faster.
Accuracy: the two rows' runs of the `canon_<dataset>` table (scripts/reproduce.py; run
here if their results.json is missing, reused otherwise) give the accuracy on the rotated
test set; "matched" means within --tolerance. Throughput: the same architectures, jitted,
timed alternately (median of --repeats calls on one batch, after a warm-up) so that the
load of a shared machine hits both alike. Writes results/bench_canon.json (figures,
baseline, `speedup` = LC-Opt images/s / LC-GCNN images/s, peak memory, machine, command,
commit) and prints one summary line last.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import resource
import shlex
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import reproduce  # noqa: E402  (TABLES, run_seed, commit, machine, now)

from wsl import configs  # noqa: E402

ROOT = reproduce.ROOT
KINDS = {"LC-GCNN": "equivariant", "LC-Opt": "optimized"}


def load_config(path: str, variant: str, kind: str):
    config = configs.load(ROOT / path, variant)
    config.canon.kind = kind
    return config


def trained_results(dataset: str, variant: str, runs_dir) -> dict:
    """{method: results.json} of the table's LC-GCNN and LC-Opt runs (run if missing)."""
    name = f"canon_{dataset}"
    out = {}
    for method in KINDS:
        run = next(r for r in reproduce.TABLES[name].runs if r.method == method)
        workdir = pathlib.Path(runs_dir).absolute() / name / reproduce.slug(run) / variant / "seed0"
        status = reproduce.run_seed(run, variant, 0, workdir)
        if status["error"]:
            sys.exit(f"error: the {method} run failed: {status['error']} (see {workdir})")
        out[method] = json.loads((workdir / "results.json").read_text()) | {"workdir": str(workdir)}
    return out


def timings(config_path, variant, batch_size, repeats, seed=0) -> dict:
    """Images/s of canonicaliser + predictor and of the canonicaliser alone, per method."""
    import jax
    import numpy as np

    from wsl.methods import canonicalize as cz
    from wsl.nn import canon

    fns, sizes = {}, {}
    for method, kind in KINDS.items():
        config = load_config(config_path, variant, kind)
        canonicalizer = cz.make_canonicalizer(config.canon, canon.group(config.group))
        predictor, pvars = cz.make_predictor(config.predictor)
        shape = (28, 28, 1) if config.data.name == "mnist" else (32, 32, 3)
        x = jax.random.normal(jax.random.key(seed), (batch_size, *shape))
        ckey, pkey = jax.random.split(jax.random.key(seed))
        cvars = canonicalizer.init(ckey, x[:1])
        pvars = pvars or predictor.init(pkey, x[:1])
        full = jax.jit(cz.wrap(canonicalizer, predictor))  # -> (logits, info)
        alone = jax.jit(functools.partial(cz.canonicalize, canonicalizer))  # -> (x_c, info)
        fns[method, "full"] = functools.partial(full, cvars, pvars, x)
        fns[method, "alone"] = functools.partial(alone, cvars, x)
        sizes[method] = cz.num_params(cvars.get("params", {}))
    times = {k: [] for k in fns}
    for fn in fns.values():  # compile and warm up
        jax.block_until_ready(fn())
    for _ in range(repeats):  # alternate, so that all see the same machine load
        for k, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[k].append(time.perf_counter() - t0)
    rate = lambda k: round(batch_size / float(np.median(times[k])), 1)
    return {
        m: {
            "images_per_s": rate((m, "full")),
            "canonicalizer_images_per_s": rate((m, "alone")),
            "num_params_canonicalizer": sizes[m],
        }
        for m in KINDS
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist", choices=("mnist", "cifar10"))
    p.add_argument("--variant", default="smoke", choices=("smoke", "paper"))
    p.add_argument("--runs_dir", default=str(ROOT / "runs"))
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--tolerance", type=float, default=0.01, help="accuracy gap still 'matched'")
    p.add_argument("--out", default=str(ROOT / "results" / "bench_canon.json"))
    args = p.parse_args(argv)
    config_path = f"experiments/canon_{args.dataset}.py"

    t0 = time.perf_counter()
    trained = trained_results(args.dataset, args.variant, args.runs_dir)
    speed = timings(config_path, args.variant, args.batch_size, args.repeats)
    figures = {
        m: speed[m]
        | {
            k: trained[m][k]
            for k in ("rotated_accuracy", "upright_accuracy", "identity_rate", "workdir")
        }
        for m in KINDS
    }
    opt, eq = figures["LC-Opt"], figures["LC-GCNN"]
    gap = opt["rotated_accuracy"] - eq["rotated_accuracy"]
    record = {
        "name": "bench_canon",
        "dataset": args.dataset,
        "variant": args.variant,
        "config": config_path,
        "command": shlex.join(["python", "scripts/bench_canon.py", *(argv or sys.argv[1:])]),
        "commit": reproduce.commit(),
        "date": reproduce.now(),
        "machine": reproduce.machine(),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "figures": figures,
        "baseline": {
            "what": "LC-GCNN: the exactly C4-equivariant G-CNN canonicaliser (Kaba et al. "
            "2023) + the same predictor; the paper claims LC-Opt is up to 2x faster",
            **eq,
        },
        "speedup": round(opt["images_per_s"] / eq["images_per_s"], 3),
        "canonicalizer_speedup": round(
            opt["canonicalizer_images_per_s"] / eq["canonicalizer_images_per_s"], 3
        ),
        "accuracy_gap": round(gap, 4),
        "matched_accuracy": abs(gap) <= args.tolerance,
        "tolerance": args.tolerance,
        "peak_rss_mb": round(
            max(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
            )
            / 1024,
            1,
        ),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"bench_canon ({args.dataset}, batch {args.batch_size}): LC-Opt "
        f"{opt['images_per_s']:.0f} images/s at {opt['rotated_accuracy']:.4f} rotated accuracy, "
        f"LC-GCNN {eq['images_per_s']:.0f} images/s at {eq['rotated_accuracy']:.4f}: speedup "
        f"{record['speedup']:.2f}x (canonicalisers alone {record['canonicalizer_speedup']:.2f}x), "
        f"accuracy {'matched' if record['matched_accuracy'] else 'NOT matched'} "
        f"(gap {gap:+.4f}), peak {record['peak_rss_mb']:.0f} MB -> {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
