"""Learning curves of a table's runs: each row's metric at every evaluation of its runs (mean
and std over the seeds that logged it), read from the runs' metrics.jsonl, as
results/NAME.{json,md,png} (NAME: <table>_curves_<variant> unless --name). It tells a row
whose budget ended while it was still improving from one that had flattened or turned.

    python scripts/diagnostics/learning_curves.py --table ng_inr_classification \
        --variant cpu [--runs_dir runs] [--metrics test_accuracy,val_accuracy] [--merge]

Runs that have not started are skipped (and named); the record gives this checkout's commit,
the runs' own commands are in their folders (run.json) and in results/<table>.md. --merge
keeps the curves of the existing record whose runs are not found now (e.g. on a machine that
lost those run folders), naming the command and commit they came from.
"""

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "scripts" / "diagnostics"))

import record_eval  # noqa: E402
import reproduce  # noqa: E402


def curves(table: str, variant: str, runs_dir, metrics=()) -> tuple[list, list]:
    """(rows {method, dataset, metric, step, mean, std, n_seeds}, folders not found) of
    every (run, metric) of `table` (its rows' metrics, or `metrics` for every run)."""
    import numpy as np

    from wsl.train.loop import read_metrics

    rows, missing, seen = [], [], set()
    for run in reproduce.TABLES[table].runs:
        for metric in metrics or (run.metric,):
            key = (run.method, run.dataset, metric)
            if key in seen:
                continue
            seen.add(key)
            folder = pathlib.Path(runs_dir) / reproduce.run_folder(table, run)
            by_step: dict[int, list[float]] = {}
            for seed in run.seeds:
                workdir = folder / variant / f"seed{seed}"
                logged = read_metrics(workdir, "eval")
                if not logged:
                    missing.append(str(workdir))
                for r in logged:
                    if r.get(metric) is not None:
                        by_step.setdefault(int(r["step"]), []).append(float(r[metric]))
            for step, values in sorted(by_step.items()):
                rows.append(
                    {"method": run.method, "dataset": run.dataset, "metric": metric}
                    | {"step": step, "mean": float(np.mean(values))}
                    | {"std": float(np.std(values)), "n_seeds": len(values)}
                )
    return rows, missing


def merge(rows, path: pathlib.Path, table: str) -> tuple[list, list]:
    """(rows, merged_from): `rows` plus the rows of the record at `path` whose (method,
    dataset, metric) has none now, in the table's order; merged_from names the command,
    commit and date each kept (method/dataset) came from."""
    if not path.exists():
        raise SystemExit(f"error: --merge: {path} does not exist; run without --merge")
    old = json.loads(path.read_text())

    def key(r):
        return r["method"], r["dataset"], r["metric"]

    now = {key(r) for r in rows}
    kept = [r for r in old["rows"] if key(r) not in now]
    pairs = sorted({f"{r['method']}/{r['dataset']}" for r in kept})
    earlier = old.get("merged_from", [])
    own = [p for p in pairs if not any(p in s["rows"] for s in earlier)]
    sources = [{k: old[k] for k in ("command", "commit", "date")} | {"rows": own}]
    sources += [s | {"rows": [p for p in s["rows"] if p in pairs]} for s in earlier]
    runs = reproduce.TABLES[table].runs
    order = {(r.method, r.dataset, r.metric): i for i, r in enumerate(runs)}
    first = {}
    for i, r in enumerate(runs):
        first.setdefault((r.method, r.dataset), i)

    def rank(r):  # the table's order of runs, then metric, then step
        return order.get(key(r), first.get(key(r)[:2], len(runs))), r["metric"], r["step"]

    return sorted(rows + kept, key=rank), [s for s in sources if s["rows"]]


def plot(rows, title: str, path) -> None:
    """One panel per (metric, dataset), one line per method (std band over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    panels = [(m, d) for m in metrics for d in datasets]
    # a row of panels per metric; one data set's metrics three to a row
    cols = len(datasets) if len(datasets) > 1 else min(len(panels), 3)
    n_rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(4.5 * cols, 3.2 * n_rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (metric, dataset) in zip(axes.flat, panels, strict=False):
        for k, method in enumerate(methods):
            key = (method, dataset, metric)
            pts = [r for r in rows if (r["method"], r["dataset"], r["metric"]) == key]
            if not pts:
                continue
            x = np.asarray([r["step"] for r in pts])
            m, s = np.asarray([r["mean"] for r in pts]), np.asarray([r["std"] for r in pts])
            ax.plot(x, m, "o-", color=f"C{k}", ms=3, label=method)
            ax.fill_between(x, m - s, m + s, color=f"C{k}", alpha=0.2)
        ax.set_title(dataset if len(datasets) > 1 else metric, fontsize=9)
        ax.set_ylabel(metric, fontsize=8)
        ax.set_xlabel("training step", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", required=True, help=f"one of {sorted(reproduce.TABLES)}")
    p.add_argument("--variant", default="cpu", choices=("smoke", "cpu", "paper"))
    p.add_argument("--runs_dir", default=str(ROOT / "runs"))
    p.add_argument("--metrics", default="", help="comma-separated; default each row's own")
    p.add_argument("--name", default="", help="default <table>_curves_<variant>")
    p.add_argument("--out", default=str(ROOT / "results"), help="where NAME.{json,md,png} go")
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the existing record's curves of the rows whose runs are not found now",
    )
    args = p.parse_args(argv)
    if args.table not in reproduce.TABLES:
        raise SystemExit(f"error: unknown table {args.table!r}; one of {sorted(reproduce.TABLES)}")
    metrics = tuple(m for m in args.metrics.split(",") if m)
    rows, missing = curves(args.table, args.variant, args.runs_dir, metrics)
    name = args.name or f"{args.table}_curves_{args.variant}"
    out = pathlib.Path(args.out) / name
    merged_from = []
    if args.merge:
        rows, merged_from = merge(rows, out.with_suffix(".json"), args.table)
        kept = {tuple(p.split("/", 1)) for s in merged_from for p in s["rows"]}
        folders = [
            str(pathlib.Path(args.runs_dir) / reproduce.run_folder(args.table, r))
            for r in reproduce.TABLES[args.table].runs
            if (r.method, r.dataset) in kept
        ]
        missing = [w for w in missing if not any(w.startswith(f + "/") for f in folders)]
    for workdir in missing:
        print(f"not run (no evaluations): {workdir}")
    if not rows:
        raise SystemExit(f"error: no evaluations of table {args.table} in {args.runs_dir}")
    what = f"Learning curves of {args.table} ({args.variant}): each row's metric at every "
    what += "evaluation, mean and std over the seeds that logged it, from the runs' "
    what += f"metrics.jsonl (their commands and commits: results/{args.table}.md)."
    for src in merged_from:
        what += f" {', '.join(src['rows'])}: kept from `{src['command']}` at commit "
        what += f"`{src['commit'][:7]}`, {src['date']}."
    argv = sys.argv if argv is None else ["scripts/diagnostics/learning_curves.py", *argv]
    extra = {"merged_from": merged_from} if merged_from else {}
    record_eval.record(out, rows, argv, what, table=args.table, missing=missing, **extra)
    plot(rows, f"{args.table} ({args.variant})", out.with_suffix(".png"))
    print(f"wrote {out}.{{json,md,png}}")


if __name__ == "__main__":
    main()
