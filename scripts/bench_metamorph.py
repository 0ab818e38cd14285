"""Benchmark: generate every weight of a ResNet56 (BatchNorm folded) for one configuration.

    python scripts/bench_metamorph.py [--inr smoke|paper|both] [--repeats 3]

The INR (wsl.nn.hyper, random parameters: the time does not depend on training) makes all
56 weight tensors (55 convs + the dense head, with biases) of a ResNet56 at full width in
one jitted call over all queries. Baseline: the same INR called once per layer (a Python
loop over layers, each call jitted, as NeuMeta's reference loops over parameter keys);
`speedup` = baseline time / one-call time. Also the INR's parameter count against the
parameters it stands for (the paper's "stored parameters" column): one ResNet56, and the
four networks at inner-width compression 0 / 25 / 50 / 75 % stored separately.
Writes results/bench_metamorph.json and prints one summary line last.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shlex
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import reproduce  # noqa: E402  (commit, machine, now)

from wsl.nn import hyper, subjects  # noqa: E402
from wsl.weights import spec as spec_lib  # noqa: E402

ROOT = reproduce.ROOT
SIZES = {  # experiments/metamorph_resnet.py: smoke and paper INRs
    "smoke": {"hidden": 128, "num_layers": 3, "num_freqs": 8},
    "paper": {"hidden": 512, "num_layers": 8, "num_freqs": 32},
}


def timed(fn, repeats: int) -> tuple[float, float]:
    """(first call incl. compile, median of `repeats` further calls), seconds."""
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return first, float(np.median(times))


def bench(plan: hyper.Plan, spec, size: dict, repeats: int) -> dict:
    inr = hyper.INR(**size)
    params = inr.init(jax.random.key(0), jnp.zeros((1, 6)))["params"]
    shape = hyper.full_shape(plan)
    one = jax.jit(lambda p: hyper.generate(inr, p, plan, shape))
    compile_s, one_s = timed(lambda: one(params), repeats)
    # baseline: one INR call per layer
    per_layer = [hyper.make_plan(spec, [i]) for i in plan.layers]
    fns = [
        jax.jit(lambda p, q=q: hyper.generate(inr, p, q, hyper.full_shape(q))) for q in per_layer
    ]
    loop_compile_s, loop_s = timed(lambda: [f(params) for f in fns], repeats)
    return {
        "inr": size,
        "inr_params": hyper.num_params(params),
        "queries": plan.num_queries,
        "generate_s": round(one_s, 4),
        "generate_first_call_s": round(compile_s, 2),
        "per_layer_loop_s": round(loop_s, 4),
        "per_layer_first_call_s": round(loop_compile_s, 2),
        "speedup": round(loop_s / one_s, 2),
        "weights_per_s": round(plan.num_generated / one_s, 1),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--inr", default="both", choices=("smoke", "paper", "both"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "results" / "bench_metamorph.json"))
    args = p.parse_args(argv)
    load_before = os.getloadavg()[0]
    module = subjects.ResNet(56, norm=False)
    x = jnp.zeros((1, 32, 32, 3))
    spec = spec_lib.spec_from_flax(module, module.init(jax.random.key(0), x), x)
    layers = [i for i, layer in enumerate(spec.layers) if layer.kind in ("conv", "dense")]
    plan = hyper.make_plan(spec, layers)
    inner = sorted({layer.out_group for layer in spec.layers if layer.name.endswith("/conv1")})

    def stored(compression: float) -> int:  # parameters of the net at this compression
        sizes = list(plan.group_sizes)
        for g in inner:
            sizes[g] = max(1, round(sizes[g] * (1 - compression)))
        return sum(
            int(np.prod(layer.kernel_shape or (1,)))
            * sizes[layer.in_group]
            * sizes[layer.out_group]
            + sizes[layer.out_group]
            for layer in (spec.layers[i] for i in layers)
        )

    networks = {f"c{round(100 * c)}": stored(c) for c in (0.0, 0.25, 0.5, 0.75)}
    names = ("smoke", "paper") if args.inr == "both" else (args.inr,)
    runs = {name: bench(plan, spec, SIZES[name], args.repeats) for name in names}
    for r in runs.values():
        r["inr_vs_resnet56"] = round(r["inr_params"] / networks["c0"], 3)
        r["inr_vs_four_networks"] = round(r["inr_params"] / sum(networks.values()), 3)
    record = {
        "name": "bench_metamorph",
        "what": "generate all 56 weight tensors of a ResNet56 (BN folded) for one configuration",
        "command": shlex.join(["python", "scripts/bench_metamorph.py", *(argv or sys.argv[1:])]),
        "commit": reproduce.commit(),
        "date": reproduce.now(),
        "machine": reproduce.machine(),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "generated_layers": len(layers),
        "generated_params": plan.num_generated,
        "network_params": networks,
        "baseline": "the same INR called once per layer (56 jitted calls)",
        "runs": runs,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    summary = "; ".join(
        f"{n} INR ({r['inr_params']:,} params = {r['inr_vs_resnet56']}x ResNet56): "
        f"{r['generate_s']:.3f} s, {r['speedup']}x vs per-layer loop"
        for n, r in runs.items()
    )
    print(
        f"bench_metamorph: ResNet56 ({plan.num_generated:,} weights) in one call; "
        f"{summary} -> {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
