"""Write the README's generated blocks: the table of reproduced paper tables from
results/*.json, the table of generated zoos and INR sets from results/zoos.json, and the
benchmarks' speed-ups from results/bench_*.json.

    python scripts/readme_table.py           # rewrites the blocks between the markers
    python scripts/readme_table.py --check   # exit 1 if README.md is not up to date

Every number in those blocks comes from a results file written by `scripts/reproduce.py`
or `scripts/zoo_report.py` (command, commit, date and machine are in the linked .md);
nothing is typed in. Per paper table: the headline metrics (`HEADLINES`), our mean over
seeds per method and dataset, the paper's value where the table registers one. Per zoo:
its size, the spread of the property later tables predict, and its wall time.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
START, END = "<!-- results-table:start -->", "<!-- results-table:end -->"
ZOO_START, ZOO_END = "<!-- zoos-table:start -->", "<!-- zoos-table:end -->"
BENCH_START, BENCH_END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
PRE_START, PRE_END = "<!-- pretrained-table:start -->", "<!-- pretrained-table:end -->"

# table -> metrics shown in the README (the rest stay in results/NAME.md)
HEADLINES = {
    "classify_mnist": ("test_accuracy",),
    "ng_cnn_generalization": ("test_kendall_tau",),
    "ng_inr_classification": ("test_accuracy",),
    "sne_cnn": ("test_kendall_tau",),
    "sne_inr": ("test_accuracy",),
    "sne_transfer": ("transfer_kendall_tau",),
    "sne_cross_arch": ("test_kendall_tau", "transfer_residual_kendall_tau"),
    "sne_ablation": ("test_kendall_tau", "test_invariance_gap"),
    "metamorph_resnet": ("acc_c0", "acc_c75"),
    "redundancy": ("test_accuracy",),
    "canon_mnist": ("upright_accuracy", "rotated_accuracy"),
    "canon_cifar10": ("upright_accuracy", "rotated_accuracy"),
}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def rows(name: str, record: dict) -> list[str]:
    """README rows of one table: one per headline metric and dataset, | table (variant) |
    command | dataset, metric | ours per method | paper per method |; the table's name
    and command (with the commands of rows merged from earlier runs) on its first row."""
    paper = {(p["method"], p["dataset"], p["metric"]): p["value"] for p in record["paper"]}
    groups: dict[tuple[str, str], list[dict]] = {}
    for metric in HEADLINES.get(name, ()):
        for r in record["rows"]:
            if r["metric"] == metric and r["mean"] is not None:
                groups.setdefault((r["dataset"], metric), []).append(r)
    out = []
    for (dataset, metric), rs in groups.items():
        ours = ", ".join(f"{r['method']} {_fmt(r['mean'])}" for r in rs)
        theirs = ", ".join(
            f"{r['method']} {_fmt(paper[(r['method'], dataset, metric)])}"
            for r in rs
            if (r["method"], dataset, metric) in paper
        )
        first = not out
        table = f"[{name}](results/{name}.md) ({record['variant']})" if first else ""
        commands = [record["command"]] + [m["command"] for m in record.get("merged_from", [])]
        command = " + ".join(f"`{c}`" for c in commands) if first else ""
        out.append(f"| {table} | {command} | {dataset}, {metric} | {ours} | {theirs or '-'} |")
    return out or [f"| {name} ({record['variant']}) | `{record['command']}` | no rows | | |"]


def block(results_dir: pathlib.Path) -> str:
    lines = [
        START,
        "| table | command | dataset, metric | ours (mean over seeds) | paper |",
        "|---|---|---|---|---|",
    ]
    for name in HEADLINES:
        path = results_dir / f"{name}.json"
        if path.exists():
            lines += rows(name, json.loads(path.read_text()))
        else:
            lines.append(f"| {name} | `python scripts/reproduce.py --table {name}` | not run | | |")
    return "\n".join([*lines, END])


def zoo_block(results_dir: pathlib.Path) -> str:
    """The zoos and INR sets of results/zoos.json: folder, size, property spread, wall
    time (the recipes and commands are in the linked results/zoos.md)."""
    lines = [
        ZOO_START,
        "| folder | networks | property (min / median / max) | wall time |",
        "|---|---|---|---|",
    ]
    path = results_dir / "zoos.json"
    record = json.loads(path.read_text()) if path.exists() else {"rows": []}
    for r in record["rows"]:
        if r["kind"] == "inr":
            prop = (f"PSNR {r['psnr_min']:.1f} / {r['psnr_median']:.1f} / "
                    f"{r['psnr_max']:.1f} dB (mean {r['psnr_mean']:.1f})")  # fmt: skip
        else:
            prop = "test accuracy " + " / ".join(
                f"{r[f'test_accuracy_{k}']:.3f}" for k in ("min", "median", "max")
            )
        wall = "-" if r["wall_s"] is None else f"{r['wall_s'] / 60:.0f} min"
        lines.append(f"| {r['folder']} | {r['n']:,} | {prop} | {wall} |")
    if not record["rows"]:
        lines.append("| none generated yet: `python scripts/zoo_report.py` | | | |")
    return "\n".join([*lines, ZOO_END])


def _speedups(x, prefix: str = "") -> list[str]:
    """A benchmark's `speedup` (a number, or nested dicts of numbers) as 'name 1.23x'."""
    if isinstance(x, dict):
        return [t for k, v in x.items() for t in _speedups(v, f"{prefix}{k} ")]
    return [f"{prefix}{x:.2f}x"] if isinstance(x, (int, float)) else []


def bench_block(results_dir: pathlib.Path) -> str:
    """One row per results/bench_*.json: its command, speedup(s) over its baseline, the
    baseline, commit (figures, memory and machine are in the linked JSON)."""
    lines = [
        BENCH_START,
        "| benchmark | command | speedup | baseline | commit |",
        "|---|---|---|---|---|",
    ]
    for path in sorted(results_dir.glob("bench_*.json")):
        r = json.loads(path.read_text())
        base = r.get("baseline")
        if isinstance(base, dict):
            base = base.get("what") or base.get("source") or ""
        base = str(base or "")
        base = base if len(base) <= 90 else base[:89].rstrip() + "…"
        speed = ", ".join(_speedups(r.get("speedup"))) or "-"
        lines.append(
            f"| [{path.stem}](results/{path.name}) | `{r.get('command', '')}` | {speed} | "
            f"{base} | `{str(r.get('commit', ''))[:7]}` |"
        )
    return "\n".join([*lines, BENCH_END])


def pretrained_block(results_dir: pathlib.Path) -> str:
    """The pretrained ResNets' accuracy on our CIFAR-10 copy (results/pretrained_resnet.json,
    written by scripts/eval_pretrained.py) beside the published figures."""
    lines = [
        PRE_START,
        "| network | ours, CIFAR-10 JPEG test set | published, lossless test set |",
        "|---|---|---|",
    ]
    path = results_dir / "pretrained_resnet.json"
    if not path.exists():
        return "\n".join([*lines, "| not run: `python scripts/eval_pretrained.py` | | |", PRE_END])
    r = json.loads(path.read_text())
    for row in r["rows"]:
        lines.append(
            f"| {row['method']} | {row['ours']:.2f} % | {row['published_lossless']:.2f} % |"
        )
    m = r.get("machine", {})
    lines += [
        "",
        f"Command: `{r['command']}` (commit `{r['commit'][:7]}`, {m.get('cpus', '?')} CPU(s), "
        f"{r['wall_s']:.0f} s for all).",
    ]
    return "\n".join([*lines, PRE_END])


def _replace(text: str, start: str, end: str, new: str) -> str | None:
    """`text` with the block from `start` to `end` (markers included) replaced by `new`;
    None when a marker is missing."""
    if start not in text or end not in text:
        return None
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + new + tail


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    p.add_argument("--results_dir", default=str(ROOT / "results"))
    p.add_argument("--check", action="store_true", help="only check that README is current")
    args = p.parse_args(argv)
    readme = pathlib.Path(args.readme)
    text = new = readme.read_text()
    results = pathlib.Path(args.results_dir)
    blocks = ((START, END, block), (ZOO_START, ZOO_END, zoo_block),
              (BENCH_START, BENCH_END, bench_block),
              (PRE_START, PRE_END, pretrained_block))  # fmt: skip
    for start, end, make in blocks:
        new = _replace(new, start, end, make(results))
        if new is None:
            print(f"error: {readme} lacks the markers {start} ... {end}", file=sys.stderr)
            return 2
    if args.check:
        if new != text:
            print(f"{readme} is out of date: run python scripts/readme_table.py", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
