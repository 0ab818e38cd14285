"""Benchmark: capture ResNet56's block representations and fit every RBA map, timed.

    WSL_DATA_DIR=/path/to/data python scripts/bench_redundancy.py [--depth 56] [--samples 500]

Target (issue #8): capturing and fitting all maps for ResNet56 takes seconds, not minutes.
Times, on `--samples` CIFAR-10 training images: the capture of all 28 representations
(compiling once, then warm), the Block Redundancy scores, the fit of all 27 single-block
maps (shared over positions) and of the spans RBA picks at 20 % of the blocks (sequential
fitting: one extra partial forward per span). The fit is compared with numpy's
`lstsq` (SVD) on the same data, as `speedup`. Writes results/bench_redundancy.json and
prints one summary line last.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import resource
import shlex
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import reproduce  # noqa: E402  (commit, machine, now: one definition for all records)

ROOT = reproduce.ROOT
TARGET_S = 60.0  # "seconds, not minutes"


def numpy_fit(x, y):
    """Baseline: numpy lstsq with a bias column, shared over positions (as fit_map)."""
    import numpy as np

    from wsl.methods import redundancy as R

    x = R.resample(x, y.shape[1:-1]).reshape(-1, x.shape[-1]).astype(np.float64)
    a = np.concatenate([x, np.ones((len(x), 1))], 1)
    return np.linalg.lstsq(a, y.reshape(-1, y.shape[-1]).astype(np.float64), rcond=None)[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=56)
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--fraction", type=float, default=0.2)
    p.add_argument("--out", default=str(ROOT / "results" / "bench_redundancy.json"))
    args = p.parse_args(argv)

    import jax
    import numpy as np

    from wsl.data import images, pretrained
    from wsl.methods import redundancy as R

    load_before = os.getloadavg()[0]
    cpu0 = time.process_time()
    module, variables, _ = pretrained.resnet_cifar10_flax(args.depth)
    data = images.load("cifar10")
    x = images.preprocess(data.train_x[: args.samples], "cifar")
    t = {}

    t0 = time.perf_counter()
    blocks = R.find_blocks(module, variables, x)
    t["find_blocks_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cap = R.capture(module, variables, x, blocks)
    t["capture_first_s"] = time.perf_counter() - t0  # includes compiling
    t0 = time.perf_counter()
    cap = R.capture(module, variables, x, blocks)
    t["capture_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    red = R.block_redundancy(cap.reps)
    t["br_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    maps = [R.fit_map(cap.reps[b], cap.reps[b + 1]) for b in range(len(blocks))]
    t["fit_all_single_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = [numpy_fit(cap.reps[b], cap.reps[b + 1]) for b in range(len(blocks))]
    t["numpy_lstsq_all_single_s"] = time.perf_counter() - t0
    err = max(
        float(np.abs(np.concatenate([m["weight"], m["bias"][None]]) - r).max())
        for m, r in zip(maps, ref, strict=True)
    )

    k = math.ceil(args.fraction * len(blocks) - 1e-9)
    spans = R.select_spans(red["br"], k)
    t0 = time.perf_counter()
    R.fit_spans(module, variables, x, blocks, spans, original=cap, sequential=True)
    t["fit_spans_sequential_s"] = time.perf_counter() - t0
    cpu = time.process_time() - cpu0  # all of the above, CPU seconds of this process

    total = t["capture_first_s"] + t["br_s"] + t["fit_all_single_s"] + t["fit_spans_sequential_s"]
    record = {
        "name": "bench_redundancy",
        "command": shlex.join(["python", "scripts/bench_redundancy.py", *(argv or sys.argv[1:])]),
        "commit": reproduce.commit(),
        "date": reproduce.now(),
        "machine": reproduce.machine(),
        "model": f"ResNet{args.depth} (akamaster, pretrained)",
        "samples": args.samples,
        "num_blocks": len(blocks),
        "spans_at_fraction": [list(s) for s in spans],
        "fraction": args.fraction,
        **{k: round(v, 3) for k, v in t.items()},
        "total_s": round(total, 3),
        "max_abs_diff_vs_numpy_lstsq": err,
        "process_cpu_s": round(cpu, 1),  # incl. data loading and the numpy baseline
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "jax_backend": jax.default_backend(),
        "baseline": {
            "what": "numpy.linalg.lstsq (SVD) with a bias column on the same 27 fits",
            "fit_all_single_s": round(t["numpy_lstsq_all_single_s"], 3),
        },
        "speedup": round(t["numpy_lstsq_all_single_s"] / max(t["fit_all_single_s"], 1e-9), 2),
        "target_s": TARGET_S,
        "passed": total <= TARGET_S and err < 1e-4,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"bench_redundancy: ResNet{args.depth}, {args.samples} images: capture "
        f"{t['capture_first_s']:.1f} s (warm {t['capture_s']:.1f} s), fit all "
        f"{len(blocks)} maps {t['fit_all_single_s']:.2f} s ({record['speedup']}x numpy "
        f"lstsq, max diff {err:.1e}), {len(spans)} RBA spans sequentially "
        f"{t['fit_spans_sequential_s']:.1f} s; total {total:.1f} s, load "
        f"{load_before:.1f}, peak {record['peak_rss_mb']:.0f} MB, "
        f"{'PASS' if record['passed'] else 'FAIL'} -> {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
