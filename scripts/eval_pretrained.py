"""Accuracy of akamaster's pretrained CIFAR-10 ResNets on our CIFAR-10 (JPEG copy).

    WSL_DATA_DIR=../shared/data python scripts/eval_pretrained.py [--depths 20 56]

Writes results/pretrained_resnet.json and .md (with command, commit, date, machine)
and prints one line per network.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from wsl.data import images, pretrained


def evaluate(depth: int, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    module, variables, _ = pretrained.resnet_cifar10_flax(depth)
    apply = jax.jit(lambda v, xb: jnp.argmax(module.apply(v, xb), -1))
    correct = 0
    for i in range(0, len(x), batch):
        correct += int(np.sum(np.asarray(apply(variables, x[i : i + batch])) == y[i : i + batch]))
    return correct / len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", type=int, nargs="+", default=[20, 32, 44, 56])
    ap.add_argument("--out", default="results/pretrained_resnet")
    args = ap.parse_args()
    data = images.load("cifar10")
    x = images.preprocess(data.test_x, "cifar")
    rows, t0 = [], time.time()
    for depth in args.depths:
        _, best = pretrained.load_resnet_cifar10(depth)
        t = time.time()
        acc = evaluate(depth, x, data.test_y)
        rows.append(
            {
                "method": f"ResNet{depth}",
                "dataset": "CIFAR-10 (JPEG copy) test",
                "metric": "accuracy",
                "ours": round(100 * acc, 2),
                "published_lossless": round(float(best), 2),
                "eval_s": round(time.time() - t, 1),
            }
        )
        print(
            f"ResNet{depth}: {100 * acc:.2f} % on the JPEG test set "
            f"(published {best:.2f} % on lossless CIFAR-10)",
            flush=True,
        )
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    record = {
        "table": "pretrained_resnet",
        "rows": rows,
        "command": "python " + " ".join(sys.argv),
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "platform": platform.platform(),
            "cpus": len(jax.devices("cpu")),
            "devices": [str(d) for d in jax.devices()],
        },
        "wall_s": round(time.time() - t0, 1),
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [
        "# Pretrained CIFAR-10 ResNets (akamaster) on the CIFAR-10 JPEG copy",
        "",
        "| network | ours (JPEG test set) | published (lossless test set) |",
        "|---|---|---|",
    ]
    lines += [
        f"| {r['method']} | {r['ours']:.2f} % | {r['published_lossless']:.2f} % |" for r in rows
    ]
    lines += [
        "",
        f"Command: `{record['command']}`  ",
        f"Commit: {commit}  ",
        f"Date: {record['date']}  ",
        f"Machine: {record['machine']['platform']}",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
