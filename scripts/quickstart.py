"""The quickstart, end to end on built-in data (sklearn's digits, offline): make a small
CNN zoo, train StatNN and NG-GNN to predict each CNN's test accuracy from its weights,
print a Kendall tau table. About 5 minutes on 2 CPU cores; rerunning skips finished steps.

    python scripts/quickstart.py [--out runs/quickstart] [--encoders StatNN,NG-GNN]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def sh(cmd: list[str]) -> None:
    print("$", shlex.join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/quickstart")
    parser.add_argument("--encoders", default="StatNN,NG-GNN")
    args = parser.parse_args(argv)
    out = (ROOT / args.out).absolute()
    zoo = out / "zoo"
    t0 = time.perf_counter()
    if not (zoo / "weights.npy").exists():
        sh([sys.executable, "scripts/make_zoo.py", "--config=experiments/zoo_digits.py",
            f"--out={zoo}"])  # fmt: skip
    spread = json.loads((zoo / "config.json").read_text())["test_accuracy_spread_last_epoch"]
    rows = []
    for name in args.encoders.split(","):
        workdir = out / name
        if not (workdir / "results.json").exists():
            sh([sys.executable, "-m", "wsl.main", "--config=experiments/predict_digits.py",
                f"--config.data.path={zoo}", f"--config.encoder.name={name}",
                f"--workdir={workdir}"])  # fmt: skip
        r = json.loads((workdir / "results.json").read_text())
        rows.append((name, r))
    lines = [
        f"Digits zoo: {spread['n']} CNNs, test accuracy min {spread['test_accuracy_min']:.3f} "
        f"/ median {spread['median']:.3f} / max {spread['max']:.3f}",
        "",
        "| encoder | params | Kendall tau (test) | R^2 (test) | train s |",
        "|---|---|---|---|---|",
        *(
            f"| {n} | {r['num_params']:,} | {r['test_kendall_tau']:.3f} | {r['test_r2']:.3f} "
            f"| {r['wall_s']:.0f} |"
            for n, r in rows
        ),
        "",
        f"({r['num_networks']['train']} training / {r['num_networks']['test']} test networks; "
        f"total {time.perf_counter() - t0:.0f} s; runs in {out})",
    ]
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
