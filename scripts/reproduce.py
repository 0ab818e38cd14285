"""Reproduce a paper table: run its configs over seeds, then write results/NAME.{md,json,png}.

    python scripts/reproduce.py --table classify_mnist [--variant smoke|paper]
    python scripts/reproduce.py --table all --variant smoke

Each run is `python -m wsl.main` in its own folder `runs/<table>/<method>-<dataset>/
<variant>/seed<k>`; a run whose results.json exists is skipped, one that was killed resumes
from its checkpoint. Registering a table is a few lines in TABLES below:

    TABLES["my_table"] = Table(
        runs=(Run("SNE", "CIFAR10", "experiments/predict_cifar.py", "kendall_tau",
                  overrides=("train.num_steps=1000",), seeds=(0, 1, 2)),),
        paper=(Paper("SNE", "CIFAR10", "kendall_tau", 0.911),),
    )
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Run:
    """One row of a table: `config` (path, or path:variant to pin a variant) run once per
    seed with `--config.seed=k` and `--config.<override>`; `metric` is read from each
    run's results.json and reported as mean and std over seeds."""

    method: str
    dataset: str
    config: str
    metric: str
    overrides: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)


@dataclasses.dataclass(frozen=True)
class Paper:
    """A value the paper reports, shown beside ours."""

    method: str
    dataset: str
    metric: str
    value: float


@dataclasses.dataclass(frozen=True)
class Table:
    runs: tuple[Run, ...]
    paper: tuple[Paper, ...] = ()
    title: str = ""


TABLES: dict[str, Table] = {
    "classify_mnist": Table(
        title="Small CNN on MNIST: test accuracy (no paper value: Unterthiner et al. sample "
        "hyper-parameters per network and report no single figure)",
        runs=(
            Run(
                "SmallCNN",
                "MNIST",
                "experiments/classify_mnist.py",
                "test_accuracy",
                seeds=(0, 1, 2),
            ),
        ),
    ),
}

# Redundant blocks (issue #8): one run per model x approximation; the curves, the per-k
# table and the similarity heat maps land in results/redundancy_{curves,similarity_*}.*.
TABLES["redundancy"] = Table(
    title="Redundant blocks (Cannistraci et al. 2024): test accuracy with k = ceil(0.2 x "
    "blocks) replaced (ResNet56 6/27, ResNet20 2/9, ViT 2/6), no fine-tuning; pretrained "
    "ResNets on the CIFAR-10 JPEG copy, a ViT trained here on MNIST",
    runs=tuple(
        Run(
            approx,
            data,
            "experiments/redundancy.py",
            metric,
            overrides=(f"model={model}", f"approx={approx}"),
            seeds=(0, 1, 2) if approx == "Random" else (0,),
        )
        for model, data in (
            ("resnet56", "CIFAR10-ResNet56"),
            ("resnet20", "CIFAR10-ResNet20"),
            ("vit", "MNIST-ViT"),
        )
        for approx in ("Original", "RBA", "RBA+head", "Random", "Identity", "Drop+head")
        for metric in ("test_accuracy", "accuracy_drop", "params_removed_frac")
    ),
)

# Canonicalisation (issue #9): one run per canon.kind; its rows share the run's folder.
# No paper values: the paper fine-tunes ImageNet ResNet50/ViT, not these setups.
for _name, _data, _what in (
    ("mnist", "MNIST-C4", "a CNN trained here"),
    ("cifar10", "CIFAR10-C4", "akamaster's pretrained ResNet20 (JPEG copy)"),
):
    TABLES[f"canon_{_name}"] = Table(
        title=f"Canonicalisation on C4-rotated {_data[:-3]}, predictor = {_what}: accuracy on "
        "upright / randomly C4-rotated test images, identity rate on upright ones, "
        "inference images/s. LC-GCNN = equivariant canonicaliser (Kaba et al. 2023); "
        "LC-Opt = non-equivariant canonicaliser (Panigrahi & Mondal 2024)",
        runs=tuple(
            Run(method, _data, f"experiments/canon_{_name}.py", metric, (f"canon.kind={kind}",))
            for method, kind in (
                ("Predictor", "none"),
                ("Predictor+TTA", "tta"),
                ("LC-GCNN", "equivariant"),
                ("LC-Opt", "optimized"),
            )
            for metric in ("upright_accuracy", "rotated_accuracy", "identity_rate", "images_per_s")
            if metric != "identity_rate" or kind in ("equivariant", "optimized")
        ),
    )


# Neural metamorphosis (issue #7): one run per mode; the four compressions of a mode are
# metrics of the same run (shared folder). Paper values: NeuMeta Table (ResNet20, lossless
# CIFAR-10), as fractions.
TABLES["metamorph_resnet"] = Table(
    title="Neural metamorphosis, ResNet20 on the CIFAR-10 JPEG copy: test accuracy at "
    "compression 0/25/50/75 % of the last block's inner width (64/48/32/16; 75 % never "
    "trained). NeuMeta = INR generating the last block (Yang & Wang 2024); Sliced = "
    "pretrained net with the channels cut; Individual = trained from scratch at that width",
    runs=tuple(
        Run(method, "CIFAR10-JPEG", "experiments/metamorph_resnet.py", metric, (f"mode={mode}",))
        for method, mode in (
            ("Individual", "individual"),
            ("Sliced", "sliced"),
            ("NeuMeta", "neumeta"),
        )  # fmt: skip
        for metric in ("acc_c0", "acc_c25", "acc_c50", "acc_c75")
        + (("acc_full_noiseless", "pretrained_acc", "recon_rel_error") if mode == "neumeta" else ())
    ),
    paper=tuple(
        Paper(method, "CIFAR10-JPEG", f"acc_c{c}", v / 100)
        for method, values in (
            ("NeuMeta", (91.76, 91.32, 90.56, 89.56)),
            ("Individual", (92.60, 90.65, 89.57, 87.04)),
        )  # fmt: skip
        for c, v in zip((0, 25, 50, 75), values, strict=True)
    ),
)


# ----------------------------------------------------------------------------- records


def commit() -> str:
    """`git rev-parse HEAD` (+ "-dirty" with uncommitted changes), "unknown" outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    """Platform, CPU count and JAX devices of this machine (asks jax in a subprocess, so
    that this process never holds an accelerator the runs need)."""
    code = "import jax, json; print(json.dumps([str(d) for d in jax.devices()]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    devices = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else []
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "jax_devices": devices,
    }


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- running


def slug(run: Run) -> str:
    return f"{run.method}-{run.dataset}".replace("/", "_").replace(" ", "_")


def command(run: Run, variant: str, seed: int, workdir: pathlib.Path) -> list[str]:
    config = run.config if ":" in run.config else f"{run.config}:{variant}"
    return [
        sys.executable,
        "-m",
        "wsl.main",
        f"--config={config}",
        f"--workdir={workdir}",
        f"--config.seed={seed}",
        *(f"--config.{o}" for o in run.overrides),
    ]


def run_seed(run: Run, variant: str, seed: int, workdir: pathlib.Path) -> dict:
    """Run one seed (skipped if its results.json exists); returns
    {"value", "wall_s", "error"}."""
    results, record = workdir / "results.json", workdir / "run.json"
    if not results.exists():
        cmd = command(run, variant, seed, workdir)
        print("$", shlex.join(cmd), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            return {"value": None, "wall_s": wall, "error": f"exit code {proc.returncode}"}
        record.write_text(json.dumps({"command": shlex.join(cmd), "wall_s": wall}) + "\n")
    wall = json.loads(record.read_text())["wall_s"] if record.exists() else 0.0
    value = json.loads(results.read_text()).get(run.metric)
    error = None if value is not None else f"no {run.metric!r} in {results}"
    return {"value": value, "wall_s": wall, "error": error}


def reproduce(name: str, variant: str, runs_dir, results_dir, argv=None) -> dict:
    """Run table `name` and write results_dir/NAME.{json,md,png}; returns the JSON record."""
    import numpy as np

    table = TABLES[name]
    rows, errors, wall = [], [], 0.0
    for run in table.runs:
        values = []
        for seed in run.seeds:
            workdir = pathlib.Path(runs_dir).absolute() / name / slug(run) / variant / f"seed{seed}"
            out = run_seed(run, variant, seed, workdir)
            wall += out["wall_s"]
            if out["error"]:
                errors.append(f"{slug(run)} seed {seed}: {out['error']} (see {workdir})")
            else:
                values.append(float(out["value"]))
        rows.append(
            {
                "method": run.method,
                "dataset": run.dataset,
                "metric": run.metric,
                "mean": float(np.mean(values)) if values else None,
                "std": float(np.std(values)) if values else None,
                "n_seeds": len(values),
            }
        )
    argv = sys.argv[1:] if argv is None else argv
    record = {
        "table": name,
        "variant": variant,
        "rows": rows,
        "paper": [dataclasses.asdict(p) for p in table.paper],
        "command": shlex.join(["python", "scripts/reproduce.py", *argv]),
        "commit": commit(),
        "date": now(),
        "machine": machine(),
        "wall_s": wall,
    }
    results_dir = pathlib.Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    (results_dir / f"{name}.md").write_text(markdown(record, table.title, errors))
    plot(record, results_dir / f"{name}.png")
    if errors:
        raise RuntimeError("some runs failed:\n  " + "\n  ".join(errors))
    return record


# ----------------------------------------------------------------------------- reporting


def _paper_value(record, row):
    for p in record["paper"]:
        if (p["method"], p["dataset"], p["metric"]) == (
            row["method"],
            row["dataset"],
            row["metric"],
        ):
            return p["value"]
    return None


def markdown(record: dict, title: str = "", errors=()) -> str:
    m = record["machine"]
    lines = [
        f"# {record['table']} ({record['variant']})",
        "",
        *([title, ""] if title else []),
        "| method | dataset | metric | ours (mean ± std) | seeds | paper |",
        "|---|---|---|---|---|---|",
    ]
    for row in record["rows"]:
        ours = "failed" if row["mean"] is None else f"{row['mean']:.4f} ± {row['std']:.4f}"
        paper = _paper_value(record, row)
        lines.append(
            f"| {row['method']} | {row['dataset']} | {row['metric']} | {ours} | "
            f"{row['n_seeds']} | {'' if paper is None else f'{paper:.4f}'} |"
        )
    lines += [
        "",
        f"- command: `{record['command']}`",
        f"- commit: `{record['commit']}`",
        f"- date: {record['date']}",
        f"- machine: {m['platform']}, {m['cpu_count']} CPUs, JAX devices "
        f"{', '.join(m['jax_devices'])}",
        f"- wall time of the runs: {record['wall_s']:.0f} s",
    ]
    lines += [f"- FAILED: {e}" for e in errors]
    return "\n".join(lines) + "\n"


def plot(record: dict, path) -> None:
    """Bar plot: ours (mean ± std over seeds) beside the paper's value, per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = record["rows"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(rows) + 2), 3.5))
    ours = [r["mean"] if r["mean"] is not None else np.nan for r in rows]
    stds = [r["std"] or 0.0 for r in rows]
    paper = [_paper_value(record, r) for r in rows]
    shift = 0.2 if any(p is not None for p in paper) else 0.0
    bars = ax.bar(x - shift, ours, 0.4, yerr=stds, capsize=3, label="ours")
    ax.bar_label(bars, fmt="%.3f", padding=2)
    if shift:
        bars = ax.bar(x + shift, [np.nan if p is None else p for p in paper], 0.4, label="paper")
        ax.bar_label(bars, fmt="%.3f", padding=2)
    ax.set_xlim(-0.75, len(rows) - 0.25)
    ax.set_ylim(top=ax.get_ylim()[1] * 1.1)  # room for the labels
    ax.set_xticks(x, [f"{r['method']}\n{r['dataset']}" for r in rows])
    ax.set_ylabel(", ".join(sorted({r["metric"] for r in rows})))
    ax.set_title(f"{record['table']} ({record['variant']})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", required=True, help=f"one of {sorted(TABLES)} or 'all'")
    parser.add_argument("--variant", default="smoke", choices=("smoke", "paper"))
    parser.add_argument("--runs_dir", default=str(ROOT / "runs"))
    parser.add_argument("--results_dir", default=str(ROOT / "results"))
    args = parser.parse_args(argv)
    names = sorted(TABLES) if args.table == "all" else [args.table]
    if unknown := [n for n in names if n not in TABLES]:
        print(
            f"error: unknown table {unknown[0]!r}; choose one of {sorted(TABLES)} or 'all'",
            file=sys.stderr,
        )
        return 2
    status = 0
    for name in names:
        try:
            record = reproduce(
                name,
                args.variant,
                args.runs_dir,
                args.results_dir,
                sys.argv[1:] if argv is None else argv,
            )
            for row in record["rows"]:
                print(
                    f"{name}: {row['method']} {row['dataset']} {row['metric']} = "
                    f"{row['mean']:.4f} ± {row['std']:.4f} ({row['n_seeds']} seeds)"
                )
        except RuntimeError as e:
            print(f"error: {name}: {e}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
