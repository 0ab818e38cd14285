"""Record the evaluations of one run folder (its metrics.jsonl "eval" rows, or those of
another split) as results/NAME.{json,md}, with the command that made it, the commit it ran
at, the date and this machine, so that a diagnostic run's numbers can be cited:

    python scripts/diagnostics/record_eval.py NAME WORKDIR --commit SHA --command "..." \
        [--description "..."] [--metrics acc_c0,acc_c25,...] [--split train]
"""

import argparse
import datetime
import json
import pathlib
import shlex
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name")
    p.add_argument("workdir")
    p.add_argument("--commit", required=True, help="the commit the run started from")
    p.add_argument("--command", required=True)
    p.add_argument("--description", default="")
    p.add_argument("--metrics", default="", help="comma-separated; default every metric")
    p.add_argument("--split", default="eval", help="the metrics.jsonl rows to record")
    p.add_argument("--out", default=str(ROOT / "results"), help="where NAME.{json,md} go")
    args = p.parse_args(argv)
    with open(pathlib.Path(args.workdir) / "metrics.jsonl") as f:
        logged = [r for r in map(json.loads, f) if r.get("split") == args.split]
    if not logged:
        raise SystemExit(f"error: no {args.split} rows in {args.workdir}/metrics.jsonl")
    skip = ("split", "step")
    metrics = args.metrics.split(",") if args.metrics else [k for k in logged[-1] if k not in skip]
    rows = [{"step": r["step"]} | {m: r.get(m) for m in metrics} for r in logged]
    write(pathlib.Path(args.out), args.name, rows, args.command, args.commit, args.description)


def write(out: pathlib.Path, name: str, rows, command: str, commit: str, description="", **extra):
    """results NAME.{json,md} in `out`: `rows` (dicts; the table's columns are all their
    keys, in order of appearance) with the command, commit, date and this machine;
    `extra` fields go into the JSON only."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import reproduce

    rec = {"name": name, "description": description, "command": command, "commit": commit}
    rec |= {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    rec |= {"machine": reproduce.machine(), **extra, "rows": rows}
    (out / f"{name}.json").write_text(json.dumps(rec, indent=1) + "\n")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    md = [f"# {name}", "", description, ""] if description else [f"# {name}", ""]
    md += ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    md += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    m = rec["machine"]
    md += ["", f"- command: `{command}`", f"- commit: `{commit}`"]
    md += [f"- date: {rec['date']}", f"- machine: {m['platform']}, {m['cpu_count']} CPUs"]
    (out / f"{name}.md").write_text("\n".join(md) + "\n")


def record(out, rows, argv, description="", **extra) -> None:
    """`write` for a diagnostic script run now as `python *argv`: results/NAME.{json,md}
    at `out` (a path without suffix), with this checkout's commit (reproduce.commit)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import reproduce

    out = pathlib.Path(out)
    command = shlex.join(["python", *argv])
    write(out.parent, out.name, rows, command, reproduce.commit(), description, **extra)


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    main()
