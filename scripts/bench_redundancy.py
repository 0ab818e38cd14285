"""Benchmark: capture ResNet56's block representations and fit every RBA map, timed.

    WSL_DATA_DIR=/path/to/data python scripts/bench_redundancy.py [--depth 56] [--samples 500]

Target (issue #8): capturing and fitting all maps for ResNet56 takes seconds, not minutes.
Times, on `--samples` CIFAR-10 training images: the capture of all 28 representations
(compiling once, then warm), the Block Redundancy scores, the fit of all 27 single-block
maps (shared over positions) and of the spans RBA picks at 20 % of the blocks (sequential
fitting, optional: one extra partial forward per span, timed apart). `total_s` (wall) and
`total_cpu_s` (CPU seconds, which do not depend on what else the machine runs) cover finding
the blocks, the capture, BR, all single-block fits and the default RBA span fits; the
target is met when the CPU seconds (an upper bound of the wall time on an idle 2-core
machine) stay under a minute. The fit is compared with numpy's `lstsq` (SVD) on the same
data, as `speedup`. Writes results/bench_redundancy.json and prints one summary line last.
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
    with R._one_blas_thread():  # as fit_map: threads only spin on a busy machine
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
    module, variables, _ = pretrained.resnet_cifar10_flax(args.depth)
    data = images.load("cifar10")
    x = images.preprocess(data.train_x[: args.samples], "cifar")
    t, cpu = {}, {}

    def timed(name, f):
        c0, t0 = time.process_time(), time.perf_counter()
        out = f()
        t[name], cpu[name] = time.perf_counter() - t0, time.process_time() - c0
        return out

    blocks = timed("find_blocks_s", lambda: R.find_blocks(module, variables, x))
    cap = timed("capture_first_s", lambda: R.capture(module, variables, x, blocks))  # compiles
    cap = timed("capture_s", lambda: R.capture(module, variables, x, blocks))
    red = timed("br_s", lambda: R.block_redundancy(cap.reps))
    fit_all = lambda: [R.fit_map(cap.reps[b], cap.reps[b + 1]) for b in range(len(blocks))]  # noqa: E731
    maps = timed("fit_all_single_s", fit_all)
    ref = timed(
        "numpy_lstsq_all_single_s",
        lambda: [numpy_fit(cap.reps[b], cap.reps[b + 1]) for b in range(len(blocks))],
    )
    err = max(
        float(np.abs(np.concatenate([m["weight"], m["bias"][None]]) - r).max())
        for m, r in zip(maps, ref, strict=True)
    )
    k = math.ceil(args.fraction * len(blocks) - 1e-9)
    spans = R.select_spans(red["br"], k)
    fit = lambda seq: R.fit_spans(module, variables, x, blocks, spans, original=cap, sequential=seq)  # noqa: E731
    timed("fit_spans_s", lambda: fit(False))
    timed("fit_spans_sequential_s", lambda: fit(True))

    core = ("find_blocks_s", "capture_first_s", "br_s", "fit_all_single_s", "fit_spans_s")
    total, total_cpu = sum(t[k] for k in core), sum(cpu[k] for k in core)
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
        "total_what": "find blocks + capture (incl. compiling) + BR + fit all 27 single-block "
        "maps + fit the RBA spans at the fraction (independent fits, the default)",
        "total_cpu_s": round(total_cpu, 3),  # CPU seconds of the same steps (load-independent)
        "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "jax_backend": jax.default_backend(),
        "baseline": {
            "what": "numpy.linalg.lstsq (SVD) with a bias column on the same 27 fits "
            "(one BLAS thread, as fit_map)",
            "fit_all_single_s": round(t["numpy_lstsq_all_single_s"], 3),
        },
        "speedup": round(t["numpy_lstsq_all_single_s"] / max(t["fit_all_single_s"], 1e-9), 2),
        "target_s": TARGET_S,
        "passed": total_cpu <= TARGET_S and err < 1e-4,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"bench_redundancy: ResNet{args.depth}, {args.samples} images: capture "
        f"{t['capture_first_s']:.1f} s (warm {t['capture_s']:.1f} s), fit all "
        f"{len(blocks)} maps {t['fit_all_single_s']:.2f} s ({record['speedup']}x numpy "
        f"lstsq, max diff {err:.1e}); total {total:.1f} s wall, {total_cpu:.1f} CPU s, load "
        f"{load_before:.1f}, peak {record['peak_rss_mb']:.0f} MB, "
        f"{'PASS' if record['passed'] else 'FAIL'} -> {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
