"""Summarise the generated zoos and INR sets (README: Model zoos and INR sets): for each
folder that exists, its generating command, wall time, size and the spread of the property
the later tables predict (test accuracy of the zoos' networks, PSNR of the INRs). Writes
results/zoos.{md,json} with this repo's commit and the machine.

    python scripts/zoo_report.py [--folders zoos/mnist inrs/mnist ...] [--merge]

--merge keeps the rows of the existing results/zoos.json whose folders are not here now
(each row records the commit and date it was made at), e.g. after regenerating one set on
a machine that has lost the others.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import reproduce  # noqa: E402  (commit, machine, now)

ROOT = reproduce.ROOT
FOLDERS = (
    "zoos/mnist",
    "zoos/fashion_mnist",
    "zoos/hetero",
    "inrs/mnist",
    "inrs/fashion_mnist",
    "inrs/mnist_dws",
    "inrs/fashion_mnist_dws",
)


def summarise(folder: pathlib.Path) -> dict | None:
    meta_file = folder / "config.json"
    if not meta_file.exists():
        return None
    meta = json.loads(meta_file.read_text())
    cfg = meta["config"]
    row = {
        "folder": str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else str(folder),
        "kind": cfg.get("kind"),
        "dataset": cfg.get("dataset"),
        "variant": cfg.get("variant"),
        "command": meta.get("command"),
        "wall_s": meta.get("wall_seconds_total"),
    }
    if cfg.get("kind") == "inr":
        from wsl.data import inr

        s = inr.load_inr_set(folder)
        p = np.asarray(s.psnr, np.float64)
        row |= {
            "n": len(s),
            "recipe": f"SIREN {cfg['hidden']} ({cfg.get('siren_variant', 'sitzmann')} init, "
            f"output offset {cfg.get('output_offset', 0.0)}), omega_0 {cfg['omega_0']}, "
            f"{cfg['steps']} Adam steps (lr {cfg['learning_rate']})"
            + (f", early stop at {cfg['target_psnr']} dB" if cfg.get("target_psnr") else "")
            + ", full batch",
            "psnr_mean": float(p.mean()),
            "psnr_min": float(p.min()),
            "psnr_median": float(np.median(p)),
            "psnr_max": float(p.max()),
        }
        return row
    from wsl.data import zoo

    if cfg.get("kind") == "hetero":
        z = zoo.load_hetero_zoo(folder)
        steps = np.asarray(z.metrics["step"]).astype(int)
        acc = np.asarray(z.metrics["test_accuracy"], np.float64)[steps == steps.max()]
    else:
        z = zoo.load_small_cnn_zoo(folder, step="last")
        acc = np.asarray(z.metrics["test_accuracy"], np.float64)
    row |= {
        "n": int(len(acc)),
        "recipe": f"{cfg.get('epochs')} epochs, batch {cfg.get('batch_size')}, "
        f"checkpoints at epochs {list(cfg.get('record_epochs', []))}",
        "test_accuracy_min": float(acc.min()),
        "test_accuracy_median": float(np.median(acc)),
        "test_accuracy_max": float(acc.max()),
        "test_accuracy_iqr": [float(np.quantile(acc, 0.25)), float(np.quantile(acc, 0.75))],
    }
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", nargs="*", default=list(FOLDERS))
    parser.add_argument("--out", default=str(ROOT / "results" / "zoos"))
    parser.add_argument("--merge", action="store_true", help="keep rows of folders not here")
    args = parser.parse_args(argv)
    commit, date = reproduce.commit(), reproduce.now()
    rows = [
        r | {"commit": commit, "date": date}
        for f in args.folders
        if (r := summarise((ROOT / f).absolute()))
    ]
    old_file = pathlib.Path(args.out).with_suffix(".json")
    if args.merge and old_file.exists():
        old = json.loads(old_file.read_text())
        here = {r["folder"] for r in rows}
        kept = [
            {"commit": old.get("commit"), "date": old.get("date")} | r
            for r in old["rows"]
            if r["folder"] not in here
        ]
        order = {f: i for i, f in enumerate(FOLDERS)}
        rows = sorted(rows + kept, key=lambda r: order.get(r["folder"], len(order)))
    record = {
        "rows": rows,
        "command": "python scripts/zoo_report.py" + (" --merge" if args.merge else ""),
        "commit": commit,
        "date": date,
        "machine": reproduce.machine(),
        "note": "generated here from the real images with the published recipes, shortened "
        "for a 2-core CPU (variant 'cpu'); the published zoos and INR sets are not reachable",
    }
    lines = [
        "# Generated zoos and INR sets",
        "",
        "| folder | networks | recipe | property spread | wall time | command | commit |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["kind"] == "inr":
            spread = (f"PSNR mean {r['psnr_mean']:.1f} dB (min {r['psnr_min']:.1f}, median "
                      f"{r['psnr_median']:.1f}, max {r['psnr_max']:.1f})")  # fmt: skip
        else:
            lo, mid, hi = (r[f"test_accuracy_{k}"] for k in ("min", "median", "max"))
            spread = f"test acc. min {lo:.3f} / median {mid:.3f} / max {hi:.3f}"
        wall = "?" if r["wall_s"] is None else f"{r['wall_s'] / 60:.0f} min"
        lines.append(f"| {r['folder']} | {r['n']:,} | {r['recipe']} | {spread} | {wall} | "
                     f"`{r['command']}` | `{str(r.get('commit'))[:7]}` |")  # fmt: skip
    m = record["machine"]
    lines += [
        "",
        f"- {record['note']}",
        "- wall time: as the generator records it, summed over the runs that reached the "
        "end; a run killed earlier is not counted, though the shards it wrote are kept "
        "(inrs/mnist and inrs/fashion_mnist were finished by a second run, so "
        "they took longer)",
        f"- written at commit `{record['commit']}`, {record['date']}, {m['platform']}, "
        f"{m['cpu_count']} CPUs; each row's commit: the code it was summarised at",
    ]
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
