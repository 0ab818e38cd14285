"""Write the README's table of reproduced paper tables from results/*.json.

    python scripts/readme_table.py           # rewrites the block between the markers
    python scripts/readme_table.py --check   # exit 1 if README.md is not up to date

Every number in that block comes from a results file written by `scripts/reproduce.py`
(its command, commit, date and machine are in the linked .md); nothing is typed in. Per
table: the headline metrics (`HEADLINES`), our mean over seeds per method and dataset, the
paper's value where the table registers one.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
START, END = "<!-- results-table:start -->", "<!-- results-table:end -->"

# table -> metrics shown in the README (the rest stay in results/NAME.md)
HEADLINES = {
    "classify_mnist": ("test_accuracy",),
    "ng_cnn_generalization": ("test_kendall_tau",),
    "ng_inr_classification": ("test_accuracy",),
    "sne_cnn": ("test_kendall_tau",),
    "sne_inr": ("test_accuracy",),
    "sne_transfer": ("test_kendall_tau",),
    "sne_cross_arch": ("test_kendall_tau",),
    "sne_ablation": ("test_kendall_tau",),
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
    and command on its first row only."""
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
        command = f"`{record['command']}`" if first else ""
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    p.add_argument("--results_dir", default=str(ROOT / "results"))
    p.add_argument("--check", action="store_true", help="only check that README is current")
    args = p.parse_args(argv)
    readme = pathlib.Path(args.readme)
    text = readme.read_text()
    if START not in text or END not in text:
        print(f"error: {readme} lacks the markers {START} ... {END}", file=sys.stderr)
        return 2
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = head + block(pathlib.Path(args.results_dir)) + tail
    if args.check:
        if new != text:
            print(f"{readme} is out of date: run python scripts/readme_table.py", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
