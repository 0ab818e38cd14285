"""Benchmark SNE (issue #6): memory and time to encode large networks vs chunk size, and
the logit-invariance experiment.

    python scripts/bench_sne.py [--nets resnet56,vit,vit_tiny] [--chunks 32,64,128,256,512]
                                [--variants sab,isab,dense] [--skip-invariance]

Part 1 (memory): for every (network, chunk size c, encoder variant) a fresh subprocess
chunks one network (random normal weights of the network's shapes: values do not change
time or memory), compiles `SNE.apply` for a batch of 1 and records
- XLA's own memory analysis of the compiled encoder (temporary buffers = the working
  memory of the encoding, arguments = the chunk dict + parameters),
- the process's peak RSS (`resource.getrusage`, includes the JAX runtime and compiling),
- the encode time (best of 2 runs after compiling).
Variants: `sab` = the paper's SAB at the chunk level, attention in query blocks of 512
chunks over a key window of the largest layer (exact; memory O(block * window), compute
O(chunks * window)); `sab_allkeys` = the same without the window (every block scans all
keys: O(chunks^2) compute; not in the default list); `isab` = ISAB with 16 inducing
points per layer (linear compute); `dense` = baseline, SAB with one dense
(chunks x chunks) attention matrix: it is only compiled (its memory analysis), and run
only when its buffers stay under 2 GB.

Part 2 (logit invariance): SNE regressors trained on random ReLU MLPs (target: the log
std of each MLP's outputs on fixed probes, a property of the function) with and without
the logit-invariance regulariser (weight 1), same data, init and batches; reports test
MSE and the invariance gap mean |f(w) - f(pi w)| on held-out networks.

Writes results/bench_sne.json and prints one summary line last.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import shlex
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import reproduce  # noqa: E402  (commit, machine, now)

ROOT = reproduce.ROOT
NETS = {
    "resnet56": ("ResNet", {"depth": 56}, (1, 32, 32, 3)),
    "vit": ("ViT", {}, (1, 32, 32, 3)),
    "vit_tiny": ("ViT", {"dim": 192, "depth": 12, "heads": 3, "mlp_dim": 768}, (1, 32, 32, 3)),
}
MODEL = {"dim": 64, "heads": 4, "hidden": 64, "depth": 1}
BLOCK = 512
DENSE_RUN_LIMIT = 2 * 2**30


def _rss_mb() -> float:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def encode_one(net: str, c: int, variant: str) -> dict:
    """One configuration, in this (fresh) process."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from wsl.nn import subjects
    from wsl.nn.sne import SNE
    from wsl.weights import chunk as ch
    from wsl.weights import spec as sp

    name, kwargs, shape = NETS[net]
    module = subjects.make(name, **kwargs)
    x = jnp.zeros(shape)
    s = sp.spec_from_flax(module, jax.eval_shape(module.init, jax.random.key(0), x), x)
    rng = np.random.default_rng(0)
    w = tuple(
        {r: rng.standard_normal(sh).astype(np.float32) for r, sh in layer.shapes}
        for layer in s.layers
    )
    chunks = jax.jit(lambda w: ch.chunk_batch(s, w, c))(jax.tree.map(lambda a: a[None], w))
    jax.block_until_ready(chunks)
    kind = "isab" if variant == "isab" else "sab"
    window = ch.max_layer_chunks([s], c) if variant == "sab" else None
    model = SNE(
        **MODEL, chunk_block=kind, block=None if variant == "dense" else BLOCK, window=window
    )
    params = jax.jit(model.init)(jax.random.key(0), chunks)
    rss_setup = _rss_mb()
    t0 = time.perf_counter()
    compiled = jax.jit(model.apply).lower(params, chunks).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    temp = int(getattr(mem, "temp_size_in_bytes", -1))
    args_b = int(getattr(mem, "argument_size_in_bytes", -1))
    row = {
        "net": net,
        "c": c,
        "variant": variant,
        "num_params": s.num_params,
        "num_layers": len(s.layers),
        "num_chunks": int(chunks["values"].shape[1]),
        "padding_fraction": round(1 - s.num_params / chunks["values"].size, 4),
        "xla_temp_mb": round(temp / 2**20, 2),
        "xla_argument_mb": round(args_b / 2**20, 2),
        "compile_s": round(compile_s, 2),
        "rss_before_compile_mb": round(rss_setup, 1),
    }
    if variant == "dense" and temp > DENSE_RUN_LIMIT:
        row["encode_s"] = None  # not run: its buffers alone exceed the limit
    else:
        times = []
        while len(times) < 2 and sum(times) < 5:  # best of 2 runs (1 if it is slow)
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(params, chunks))
            times.append(time.perf_counter() - t0)
        row["encode_s"] = round(min(times), 3)
        row["max_layer_chunks"] = ch.max_layer_chunks([s], c)
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return row


def invariance_experiment(steps: int = 400, lam: float = 1.0, seed: int = 0) -> dict:
    """Train SNE on random MLPs with and without logit invariance (same data, init,
    batches); report test MSE and invariance gap on held-out networks."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from wsl.nn import subjects
    from wsl.nn.sne import SNE, invariance_gap, logit_invariance_loss
    from wsl.weights import chunk as ch
    from wsl.weights import spec as sp

    c, n_train, n_test, batch = 16, 512, 256, 32
    module = subjects.MLP(hidden=(16, 16), num_classes=1)
    x0 = jnp.zeros((1, 2))
    s = sp.spec_from_flax(module, jax.eval_shape(module.init, jax.random.key(0), x0), x0)
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    scale = rng.uniform(0.3, 1.5, n).astype(np.float32)
    w = tuple(
        {r: rng.standard_normal((n, *sh)).astype(np.float32) * scale.reshape(-1, *[1] * len(sh))
         for r, sh in layer.shapes}
        for layer in s.layers
    )  # fmt: skip
    w = jax.tree.map(jnp.asarray, w)
    probes = jnp.asarray(rng.uniform(-1, 1, (64, 2)).astype(np.float32))

    def target(wi):  # a property of the function: log std of its outputs on fixed probes
        from wsl.weights.convert import canonical_to_flax

        return jnp.log(jnp.std(module.apply(canonical_to_flax(s, wi), probes)) + 1e-6)

    y = jax.jit(jax.vmap(target))(w)
    y = (y - y[:n_train].mean()) / y[:n_train].std()
    tr = jax.tree.map(lambda a: a[:n_train], w)
    te = jax.tree.map(lambda a: a[n_train:], w)
    model = SNE(out_dim=1, dim=32, hidden=32, heads=2, block=None)
    apply = lambda p, d: model.apply(p, d)
    p0 = model.init(jax.random.key(seed), ch.chunk_batch(s, jax.tree.map(lambda a: a[:2], tr), c))
    opt = optax.adam(1e-3)

    def train(weight: float) -> dict:
        @jax.jit
        def step(p, o, idx, key):
            wb = jax.tree.map(lambda a: a[idx], tr)

            def loss(p):
                pred = apply(p, ch.chunk_batch(s, wb, c))[:, 0]
                task = jnp.mean((pred - y[idx]) ** 2)
                if weight == 0:
                    return task
                return task + logit_invariance_loss(apply, p, s, wb, key, c, weight=weight)

            value, g = jax.value_and_grad(loss)(p)
            upd, o = opt.update(g, o, p)
            return optax.apply_updates(p, upd), o, value

        p, o = p0, opt.init(p0)
        order = np.random.default_rng(seed + 1)
        t0 = time.perf_counter()
        for i in range(steps):
            idx = jnp.asarray(order.choice(n_train, batch, replace=False))
            p, o, _ = step(p, o, idx, jax.random.fold_in(jax.random.key(seed + 2), i))
        train_s = time.perf_counter() - t0
        pred = jax.jit(apply)(p, ch.chunk_batch(s, te, c))[:, 0]
        gap = jax.jit(
            lambda p, k: jnp.mean(
                jnp.stack([invariance_gap(apply, p, s, te, kk, c) for kk in jax.random.split(k, 8)])
            )
        )(p, jax.random.key(seed + 3))
        return {
            "weight": weight,
            "test_mse": round(float(jnp.mean((pred - y[n_train:]) ** 2)), 4),
            "invariance_gap": round(float(gap), 5),
            "train_s": round(train_s, 1),
        }

    without, with_li = train(0.0), train(lam)
    return {
        "task": "regress the standardised log std of the outputs (64 fixed probes) of "
        "random ReLU MLPs 2-16-16-1 (weights N(0, s^2), s ~ U(0.3, 1.5) per network)",
        "n_train": n_train,
        "n_test": n_test,
        "steps": steps,
        "batch": batch,
        "c": c,
        "model": "SNE(dim=32, hidden=32, heads=2, depth=1), Adam 1e-3",
        "gap": "mean |f(w) - f(pi w)| over 256 test networks x 8 random permutations",
        "without": without,
        "with": with_li,
        "gap_ratio": round(without["invariance_gap"] / max(with_li["invariance_gap"], 1e-12), 2),
    }


def _child(spec: str) -> int:
    job = json.loads(spec)
    out = invariance_experiment() if job["part"] == "invariance" else encode_one(**job["args"])
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def _run(job: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(job)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {**job.get("args", {}), "error": " | ".join(tail)}
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", default="resnet56,vit,vit_tiny")
    p.add_argument("--chunks", default="32,64,128,256,512")
    p.add_argument("--variants", default="sab,isab,dense")
    p.add_argument("--skip-invariance", action="store_true")
    p.add_argument("--out", default=str(ROOT / "results" / "bench_sne.json"))
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(args.child)

    t_start = time.perf_counter()
    rows = []
    for net in args.nets.split(","):
        for c in map(int, args.chunks.split(",")):
            for variant in args.variants.split(","):
                row = _run({"part": "encode", "args": {"net": net, "c": c, "variant": variant}})
                rows.append(row)
                print(json.dumps(row), flush=True)
    for row in rows:  # memory ratio of the dense baseline to the blocked SAB
        base = next(
            (
                r
                for r in rows
                if r.get("variant") == "dense" and (r["net"], r["c"]) == (row["net"], row["c"])
            ),
            None,
        )
        if base and row.get("variant") == "sab" and "xla_temp_mb" in row and "xla_temp_mb" in base:
            row["dense_over_sab_temp"] = round(
                base["xla_temp_mb"] / max(row["xla_temp_mb"], 1e-6), 1
            )
            if base.get("encode_s") and row.get("encode_s"):
                row["speedup_vs_dense"] = round(base["encode_s"] / row["encode_s"], 2)
    invariance = None if args.skip_invariance else _run({"part": "invariance"})
    if invariance:
        print(json.dumps(invariance), flush=True)

    ok = [r for r in rows if "error" not in r and r.get("variant") == "sab"]
    worst = max(ok, key=lambda r: r["xla_temp_mb"]) if ok else None
    ratios = [r["dense_over_sab_temp"] for r in ok if "dense_over_sab_temp" in r]
    record = {
        "name": "bench_sne",
        "command": shlex.join(["python", "scripts/bench_sne.py", *(argv or sys.argv[1:])]),
        "commit": reproduce.commit(),
        "date": reproduce.now(),
        "machine": reproduce.machine(),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "model": {**MODEL, "query_block": BLOCK, "window": "max_layer_chunks", "batch": 1},
        "weights": "random normal of each network's shapes (values do not change time/memory)",
        "baseline": "dense: the same SAB with one (chunks x chunks) attention matrix per head",
        "speedup": None,  # a memory benchmark: see dense_over_sab_temp per row
        "peak_memory_mb": max((r["peak_rss_mb"] for r in rows if "peak_rss_mb" in r), default=None),
        "rows": rows,
        "invariance": invariance,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    summary = "bench_sne:"
    if worst:
        summary += (
            f" blocked+windowed SAB working memory <= {worst['xla_temp_mb']:.0f} MB (XLA temp) for "
            f"{len(ok)} configs up to {max(r['num_params'] for r in ok) / 1e6:.2f} M params; "
            f"dense baseline needs up to {max(ratios, default=float('nan')):.0f}x more;"
        )
    if invariance and "with" in invariance:
        summary += (
            f" invariance gap {invariance['without']['invariance_gap']:.4f} -> "
            f"{invariance['with']['invariance_gap']:.4f} with logit invariance"
            f" (test MSE {invariance['without']['test_mse']:.3f} -> "
            f"{invariance['with']['test_mse']:.3f});"
        )
    errors = sum("error" in r for r in rows) + bool(invariance and "error" in invariance)
    print(f"{summary} {errors} errors -> {out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
