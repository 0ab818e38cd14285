"""Benchmark: NG-GNN and NG-T training-step throughput on neural graphs.

    python scripts/bench_gnn.py [--batch 128] [--repeats 3] [--only NG-GNN:siren ...]

For each (model, data) pair, in a fresh subprocess (so that peak memory is its own): a
batch of 128 random subject networks becomes one padded `jraph.GraphsTuple`; a jitted step
(forward + backward + optax adam update) runs twice to warm up, then `repeats` blocks of
`steps` steps are timed; graphs/s = batch * steps / seconds per block (all blocks are
reported: the spread). Peak memory is the subprocess's maxrss.

Sizes are the reference's (mkofinas/neural-graphs) configs:
- siren: SIRENs 2 -> 32 -> 32 -> 1 (`subjects.SIREN`), graphs with reverse edges (67 nodes,
  2,240 edges), 10 classes. NG-GNN: d=32, 4 PNA layers, dropout 0.2
  (inr_classification pna.yaml + mnist_cls_pna.sh). NG-T: d_node 64, d_edge 32, d_attn 128,
  8 heads, 4 layers (rtransformer.yaml).
- cnn: Small CNN Zoo networks (`subjects.SmallCNN`, 1 input channel, 3 x conv 16 3x3,
  dense 10), forward edges (59 nodes, 688 edges), one regression output (MSE).
  NG-GNN: d=256, 4 layers (cnn_zoo_pna.sh). NG-T: d_node 128, d_edge 64, d_attn 256
  (cnn_zoo_rt.sh).
Every pair runs with mimalloc preloaded, as `python -m wsl.main` runs (wsl/allocator.py);
the `:system` pairs repeat the NG-GNN steps under glibc's allocator.
The anchor (the reference implementation, PyTorch + PyG, 2 threads, on this machine, with
its default allocator) is given for NG-GNN only; `speedup` = our graphs/s (median block) /
the anchor's midpoint.
Run it when the machine is quiet (the load average is recorded).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import resource
import shlex
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import reproduce  # noqa: E402  (commit, machine, now)

from wsl import allocator  # noqa: E402

ROOT = reproduce.ROOT
PAIRS = ("NG-GNN:siren", "NG-GNN:cnn", "NG-T:siren", "NG-T:cnn")
# the same NG-GNN steps under glibc's allocator (WSL_ALLOCATOR=system): what mimalloc,
# which every pair above runs with (wsl/allocator.py), is worth
SYSTEM_PAIRS = ("NG-GNN:siren:system", "NG-GNN:cnn:system")
ALL_PAIRS = PAIRS + SYSTEM_PAIRS
BASELINE = {
    "what": "mkofinas/neural-graphs NG-GNN (PyTorch 2.13 + PyG 2.8, 2 threads, its own "
    "configs), train step of 128 graphs, measured on this machine",
    "NG-GNN:siren": {"graphs_per_s": [16.0, 18.0], "s_per_step": [7.1, 7.9], "params": 92_010},
    "NG-GNN:cnn": {"graphs_per_s": [3.4, 3.5], "s_per_step": [37.0, 37.0], "params": 5_600_000},
}


def subject_batch(data: str, batch: int, seed: int = 0):
    """(padded GraphsTuple batch dict, labels, description) of `batch` random networks."""
    import jax
    import jax.numpy as jnp
    import jraph
    import numpy as np

    from wsl.nn import subjects
    from wsl.weights import convert, graph, spec

    if data == "siren":
        module, x, reverse, k = subjects.SIREN(), jnp.zeros((1, 2)), True, 1
    elif data == "cnn":
        module, x, reverse, k = subjects.SmallCNN(), jnp.zeros((1, 28, 28, 1)), False, 3
    else:
        raise ValueError(f"unknown data {data!r}; choose 'siren' or 'cnn'")
    keys = jax.random.split(jax.random.key(seed), batch)
    stacked = jax.jit(jax.vmap(module.init, in_axes=(0, None)))(keys, x)
    s = spec.spec_from_flax(module, jax.tree.map(lambda a: a[0], stacked), x)
    to_features = lambda v: graph.graph_features(s, convert.flax_to_canonical(s, v), k, reverse)
    feats = jax.jit(jax.vmap(to_features))(stacked)
    st = graph.structure(s, k, reverse)
    n, e = st["n_nodes"], len(st["senders"])
    shift = np.repeat(np.arange(batch) * n, e)
    tile = lambda a: jnp.asarray(np.tile(a, batch))
    g = jraph.GraphsTuple(
        nodes={
            "bias": feats[0].reshape(batch * n, 1),
            "layer": tile(st["layer"]),
            "index": tile(st["index"]),
            "role": tile(st["role"]),
        },
        edges={"weight": feats[1].reshape(batch * e, k * k), "type": tile(st["type"])},
        senders=jnp.asarray(np.tile(st["senders"], batch) + shift),
        receivers=jnp.asarray(np.tile(st["receivers"], batch) + shift),
        n_node=jnp.full((batch,), n),
        n_edge=jnp.full((batch,), e),
        globals=None,
    )
    delta = float(np.mean(np.log(np.bincount(st["receivers"], minlength=n) + 1.0)))  # PNA's
    padded = jraph.pad_with_graphs(g, batch * n + 1, batch * e, batch + 1)
    mask = jnp.arange(batch + 1) < batch
    rng = np.random.default_rng(seed)
    if data == "siren":
        labels = jnp.asarray(rng.integers(0, 10, batch + 1))
    else:
        labels = jnp.asarray(rng.uniform(0, 1, (batch + 1, 1)).astype(np.float32))
    info = {"nodes_per_graph": n, "edges_per_graph": e, "k_max": k, "reverse_edges": reverse}
    return {"graph": padded, "graph_mask": mask}, labels, delta, info


def make_model(name: str, data: str, delta: float):
    from wsl.nn.gnn import NGGNN
    from wsl.nn.transformer import NGT

    limits = {
        "siren": dict(max_inputs=2, max_hidden_layers=2, max_outputs=1),
        "cnn": dict(max_inputs=1, max_hidden_layers=3, max_outputs=10),
    }[data]
    out = 10 if data == "siren" else 1
    if name == "NG-GNN" and data == "siren":
        return NGGNN(out, hidden=32, dropout=0.2, avg_log_degree=delta, **limits)
    if name == "NG-GNN":
        return NGGNN(out, hidden=256, avg_log_degree=delta, **limits)
    if name == "NG-T" and data == "siren":
        return NGT(out, **limits)
    if name == "NG-T":
        return NGT(
            out, d_node=128, d_edge=64, d_attn=256, d_node_hidden=256, d_edge_hidden=128,
            d_out_hidden=256, **limits,
        )  # fmt: skip
    raise ValueError(f"unknown model {name!r}; choose NG-GNN or NG-T")


def run_one(pair: str, batch_size: int, steps: int, repeats: int) -> dict:
    """Time the train step of one (model, data) pair in this process."""
    import jax
    import jax.numpy as jnp
    import optax

    name, data = pair.split(":")[:2]
    t0 = time.perf_counter()
    batch, labels, delta, info = subject_batch(data, batch_size)
    model = make_model(name, data, delta)
    params = jax.jit(model.init)(jax.random.key(0), batch)
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    def loss_fn(p, batch, labels, key):
        y = model.apply(p, batch, train=True, rngs={"dropout": key})
        if data == "siren":
            per = optax.softmax_cross_entropy_with_integer_labels(y, labels)
        else:
            per = jnp.mean((y - labels) ** 2, axis=-1)
        mask = batch["graph_mask"].astype(jnp.float32)
        return jnp.sum(per * mask) / jnp.sum(mask)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p, o, batch, labels, key):
        loss, grads = jax.value_and_grad(loss_fn)(p, batch, labels, key)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss

    setup_s = time.perf_counter() - t0
    key = jax.random.key(1)
    t0 = time.perf_counter()
    for _ in range(2):  # warm-up; the first call compiles
        key, sub = jax.random.split(key)
        params, opt_state, loss = step(params, opt_state, batch, labels, sub)
    jax.block_until_ready(loss)
    warmup_s = time.perf_counter() - t0
    rates, step_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            key, sub = jax.random.split(key)
            params, opt_state, loss = step(params, opt_state, batch, labels, sub)
        jax.block_until_ready(loss)
        dt = (time.perf_counter() - t0) / steps
        step_s.append(round(dt, 4))
        rates.append(round(batch_size / dt, 2))
    n_params = sum(int(a.size) for a in jax.tree.leaves(params))
    peak_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    work = {}  # after the peak: its own arrays are not the step's
    if name == "NG-GNN":
        work = edge_work(batch, model.hidden, model.num_layers)
        median = sorted(step_s)[len(step_s) // 2]
        work["edge_ops_share"] = round(work["edge_ops_s"] / median, 3)
        work["edge_products_share"] = round(work["edge_products_s"] / median, 3)
    return {
        "pair": pair,
        "model": name,
        "data": data,
        "params": n_params,
        "allocator": allocator.active(),
        "batch_size": batch_size,
        "steps_per_block": steps,
        "graphs_per_s": rates,
        "s_per_step": step_s,
        "graphs_per_s_median": sorted(rates)[len(rates) // 2],
        "setup_s": round(setup_s, 2),
        "warmup_s": round(warmup_s, 2),
        "final_loss": float(loss),
        "avg_log_degree": round(delta, 4),
        "peak_rss_mb": peak_mb,
        **info,
        **work,
    }


def edge_work(batch, d: int, num_layers: int, repeats: int = 5) -> dict:
    """What bounds an NG-GNN step: its per-edge work timed alone at the batch's shapes
    (forward + backward, jitted, best of `repeats`), for the `num_layers` layers:
    - edge_ops_s: the gathers and scatters of a layer (node features gathered at senders
      and receivers twice, segment sum of m and m^2, segment max and min of m);
    - edge_products_s: a layer's edge products, (E, d) @ (d, 3d) (FiLM scale and shift,
      edge update), and edge_products_gflops their FLOPs (forward + backward).
    Their sum is a floor under the step (the rest: node MLPs, embedding, readout, Adam)."""
    import jax
    import jax.numpy as jnp
    import jraph

    from wsl.nn.gnn import segment_extreme

    g = batch["graph"]
    s, r = g.senders, g.receivers
    n, e = g.nodes["bias"].shape[0], s.shape[0]

    def ops(x, m):
        mm = m * (x[r] + x[s])
        a = jraph.segment_sum(mm, r, n) + jraph.segment_sum(mm * mm, r, n)
        a = a + segment_extreme(mm, r, n, 1.0) + segment_extreme(mm, r, n, -1.0)
        return jnp.sum(a**2) + jnp.sum((x[s] + x[r]) * m)

    def products(m, w):
        return jnp.sum((m @ w) ** 2)

    def best(f, *a):
        jax.block_until_ready(f(*a))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(f(*a))
            times.append(time.perf_counter() - t0)
        return min(times)

    keys = jax.random.split(jax.random.key(0), 3)
    x, m = jax.random.normal(keys[0], (n, d)), jax.random.normal(keys[1], (e, d))
    w = jax.random.normal(keys[2], (d, 3 * d)) / d**0.5
    t_ops = best(jax.jit(jax.grad(ops, argnums=(0, 1))), x, m)
    t_mm = best(jax.jit(jax.grad(products, argnums=(0, 1))), m, w)
    return {
        "edge_ops_s": round(num_layers * t_ops, 4),
        "edge_products_s": round(num_layers * t_mm, 4),
        "edge_products_gflops": round(num_layers * 3 * 2 * e * d * 3 * d / 1e9, 1),
    }


def cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def main(argv=None) -> int:
    allocator.preload()  # restarts this process once with mimalloc (wsl/allocator.py)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="timed blocks per pair")
    p.add_argument("--steps", type=int, default=0, help="steps per block (0: 10 siren, 3 cnn)")
    p.add_argument(
        "--only",
        nargs="*",
        default=list(ALL_PAIRS),
        help=f"subset of {ALL_PAIRS}",
    )
    p.add_argument("--one", default="", help=argparse.SUPPRESS)  # subprocess mode
    p.add_argument("--out", default=str(ROOT / "results" / "bench_gnn.json"))
    args = p.parse_args(argv)
    steps = lambda pair: args.steps or (10 if ":siren" in pair else 3)
    if args.one:
        print(json.dumps(run_one(args.one, args.batch, steps(args.one), args.repeats)))
        return 0

    load_before = os.getloadavg()[0]
    rows = []
    for pair in args.only:
        if pair not in ALL_PAIRS:
            sys.exit(f"error: unknown pair {pair!r}; choose from {ALL_PAIRS}")
        cmd = [sys.executable, __file__, "--one", pair, "--batch", str(args.batch),
               "--repeats", str(args.repeats), "--steps", str(steps(pair))]  # fmt: skip
        env = allocator.system_env() if pair in SYSTEM_PAIRS else None
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            sys.exit(f"error: {pair} failed with exit code {proc.returncode}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        base = BASELINE.get(":".join(pair.split(":")[:2]))
        if base:
            row["speedup"] = round(row["graphs_per_s_median"] / (sum(base["graphs_per_s"]) / 2), 2)
            row["speedup_range"] = [
                round(min(row["graphs_per_s"]) / base["graphs_per_s"][1], 2),
                round(max(row["graphs_per_s"]) / base["graphs_per_s"][0], 2),
            ]
        print(json.dumps(row), flush=True)
        rows.append(row)
    speedups = {r["pair"]: r["speedup"] for r in rows if "speedup" in r}
    record = {
        "name": "bench_gnn",
        "command": shlex.join(["python", "scripts/bench_gnn.py", *(argv or sys.argv[1:])]),
        "commit": reproduce.commit(),
        "date": reproduce.now(),
        "machine": {**reproduce.machine(), "cpu": cpu_model()},
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "rows": rows,
        "baseline": BASELINE,
        "speedup": speedups,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    summary = ", ".join(
        f"{r['pair']} {r['graphs_per_s_median']:.1f} graphs/s"
        + (f" ({r['speedup']}x)" if "speedup" in r else "")
        + f" {r['peak_rss_mb']:.0f} MB"
        for r in rows
    )
    print(f"bench_gnn: {summary}; load {record['load_average_1m']} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
