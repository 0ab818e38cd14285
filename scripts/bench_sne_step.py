"""Benchmark: SNE training-step time with masked vs static per-layer chunk attention.

    python scripts/bench_sne_step.py [--chunks 8,16,32] [--batch 128] [--repeats 5]

A batch of random Small CNN Zoo networks (`subjects.SmallCNN`: 1 input channel, 3 x conv
16 3x3, dense 10; 4,970 parameters) is chunked once (`wsl.weights.chunk`); a jitted
step (SNE forward + backward + adam update, MSE on random targets) is timed with the
chunk-level SAB's two exact attention paths (`wsl.nn.set`), both as
`wsl.methods.predict` builds them:

- masked: `masked_attention` with the layers' window (the path for mixed architectures),
- static: `segment_attention` over the layers' static (start, size) chunk runs (the path
  when every network has one architecture, as a Small CNN Zoo or an INR set).

SNE sizes as experiments/ng_cnn_generalization.py's `cpu` variant (dim 64, heads 4, depth
1, hidden 64). `repeats` blocks of `steps` steps per variant, the variants alternating
(so the machine's drift hits both); `speedup` = masked median / static median per chunk
size. The two paths compute the same function (tests/test_sne.py); the losses of the
first step are recorded as a check. Run it when the machine is quiet.
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

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import reproduce  # noqa: E402  (commit, machine, now)

ROOT = reproduce.ROOT
MODEL = {"dim": 64, "heads": 4, "hidden": 64, "depth": 1}


def chunk_batch(c: int, batch: int, seed: int = 0):
    """(chunk dict of `batch` random Small CNNs, their spec)."""
    import jax
    import jax.numpy as jnp

    from wsl.nn import subjects
    from wsl.weights import chunk, convert, spec

    module, x = subjects.SmallCNN(), jnp.zeros((1, 28, 28, 1))
    keys = jax.random.split(jax.random.key(seed), batch)
    stacked = jax.jit(jax.vmap(module.init, in_axes=(0, None)))(keys, x)
    s = spec.spec_from_flax(module, jax.tree.map(lambda a: a[0], stacked), x)
    weights = jax.vmap(lambda v: convert.flax_to_canonical(s, v))(stacked)
    return chunk.chunk_batch(s, weights, c), s


def time_variants(c: int, batch: int, steps: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from wsl.nn.sne import SNE
    from wsl.weights import chunk

    x, s = chunk_batch(c, batch)
    y = jax.random.uniform(jax.random.key(1), (batch,))
    window = chunk.max_layer_chunks([s], c)
    segments = tuple((start, k) for _, k, start in chunk.layout(s, c))
    models = {
        "masked": SNE(out_dim=1, window=window, **MODEL),
        "static": SNE(out_dim=1, window=window, segments=segments, **MODEL),
    }
    params = models["masked"].init(jax.random.key(0), x)
    tx = optax.adam(1e-3)

    def make_step(model):
        def loss_fn(p):
            return jnp.mean((model.apply(p, x)[:, 0] - y) ** 2)

        @jax.jit
        def step(p, o):
            loss, g = jax.value_and_grad(loss_fn)(p)
            u, o = tx.update(g, o, p)
            return optax.apply_updates(p, u), o, loss

        return step

    steps_fn = {name: make_step(m) for name, m in models.items()}
    state = {name: (params, tx.init(params)) for name in models}
    first_loss = {}
    for name, fn in steps_fn.items():  # compile and warm up
        for i in range(2):
            p, o, loss = fn(*state[name])
            jax.block_until_ready(loss)
            if i == 0:
                first_loss[name] = float(loss)
    blocks = {name: [] for name in models}
    for _ in range(repeats):
        for name, fn in steps_fn.items():
            p, o = state[name]
            t = time.perf_counter()
            for _ in range(steps):
                p, o, loss = fn(p, o)
            jax.block_until_ready(loss)
            blocks[name].append((time.perf_counter() - t) / steps)
    med = {name: float(np.median(b)) for name, b in blocks.items()}
    return {
        "chunk_size": c,
        "num_chunks": chunk.num_chunks(s, c),
        "layer_chunks": [k for _, k, _ in chunk.layout(s, c)],
        "scores_masked_per_head": chunk.num_chunks(s, c) ** 2,
        "scores_static_per_head": sum(k * k for _, k, _ in chunk.layout(s, c)),
        "step_s_blocks": {name: [round(v, 4) for v in b] for name, b in blocks.items()},
        "step_s_median": {name: round(v, 4) for name, v in med.items()},
        "first_step_loss": first_loss,
        "speedup": round(med["masked"] / med["static"], 2),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--chunks", default="8,16,32")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "results" / "bench_sne_step.json"))
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    rows = []
    for c in (int(v) for v in args.chunks.split(",")):
        row = time_variants(c, args.batch, args.steps, args.repeats)
        rows.append(row)
        print(json.dumps(row), flush=True)
    record = {
        "name": "bench_sne_step",
        "command": shlex.join(["python", "scripts/bench_sne_step.py", *(argv or sys.argv[1:])]),
        "commit": reproduce.commit(),
        "date": reproduce.now(),
        "machine": reproduce.machine(),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "wall_s": round(time.perf_counter() - t0, 1),
        "model": MODEL | {"batch": args.batch, "networks": "subjects.SmallCNN (random init)"},
        "baseline": "masked: set.masked_attention with the layers' window (mixed architectures)",
        "rows": rows,
        "speedup": {str(r["chunk_size"]): r["speedup"] for r in rows},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    summary = ", ".join(
        f"c={r['chunk_size']}: {r['step_s_median']['masked']:.3f} -> "
        f"{r['step_s_median']['static']:.3f} s/step ({r['speedup']}x)"
        for r in rows
    )
    print(f"bench_sne_step: {summary}; load {record['load_average_1m']} -> {out}")
    return 0


if __name__ == "__main__":
    from wsl import allocator

    allocator.preload()  # restarts this process once with mimalloc, as `python -m wsl.main`
    raise SystemExit(main())
