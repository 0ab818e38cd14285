"""How fast HTTY's per-block INRs fit the 9 stage-2 blocks of ResNet56 (32 channels) from a
random INR, reconstruction only: per-axis (NeuMeta's) vs gaussian Fourier features, with
and without coordinate noise. Runs what is missing, then writes
results/htty_stage2_fit.{json,md}:

    python scripts/diagnostics/htty_stage2_fit.py [--steps 300] [--prefix runs/htty_stage2_]

Per setting: the uniform reconstruction loss (mean over kernel and bias of the relative
squared error, as trained) and the relative error ||W - W*|| / ||W*|| of the conv1 and
conv2 kernels and of the biases, of the EMA parameters' noiseless generation.
"""

import argparse
import datetime
import json
import pathlib
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
BASE = (
    "python -m wsl.main --config=experiments/metamorph_resnet.py:cpu --config.mode=htty "
    "--config.htty.model.generate=layer2_\\d+/conv[12] "
    "--config.htty.model.hidden=layer2_\\d+/conv1 --config.htty.phases.final_steps=0 "
    "--config.htty.train.eval_every=0 --config.data.test_size=500 "
    "--config.htty.eval.k_samples=1 --config.htty.train.log_every=50 "
    "--config.htty.train.checkpoint_every=100000"
)
DESCRIPTION = (
    "How fast HTTY's per-block INRs (256 x 4, 16 frequencies) fit the 9 stage-2 blocks of "
    "ResNet56 (32 channels) from a random INR, reconstruction only: per-axis (NeuMeta's) vs "
    "gaussian Fourier features, with and without coordinate noise"
)
GAUSS = "--config.htty.inr.encoding=gaussian --config.htty.inr.gaussian_scale=10"
SETTINGS = {
    "axis_n0": ("per-axis features, noise 0", "--config.htty.noise=0"),
    "axis_n025": ("per-axis features, noise 0.25", "--config.htty.noise=0.25"),
    "gauss_n0": ("gaussian features (scale 10), noise 0", f"{GAUSS} --config.htty.noise=0"),
    "gauss_n025": ("gaussian features (scale 10), noise 0.25", f"{GAUSS} --config.htty.noise=0.25"),
}


def per_layer(workdir: pathlib.Path) -> dict:
    """Relative errors of the EMA generation (full width and depth) by parameter kind."""
    import jax
    import jax.numpy as jnp
    import ml_collections
    import numpy as np

    from wsl.methods import metamorph
    from wsl.train import checkpoint

    cfg = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    sub = metamorph.prepare_htty(cfg.model)
    lay = metamorph.htty_layout(sub, cfg.model.train_depths)
    gen = metamorph.htty_generator(sub, metamorph.make_inr(cfg), lay, cfg)
    _, state = checkpoint.load(workdir)
    params = jax.tree.map(jnp.asarray, state["model_state"]["ema"])
    on = np.ones(len(sub.blocks), bool)
    _, eff = gen(params, on, lay.ref, cfg.model.depth, jax.random.key(0), 1)
    errs: dict = {"conv1_kernel": [], "conv2_kernel": [], "bias": []}
    for i, g in zip(sub.plan.layers, eff, strict=True):
        name, t = sub.spec.layers[i].name, sub.weights[i]
        for r in g:
            e = float(jnp.linalg.norm(g[r] - t[r]) / jnp.linalg.norm(t[r]))
            errs["bias" if r == "bias" else f"{name.split('/')[-1]}_kernel"].append(e)
    return {f"rel_err_{k}": float(np.mean(v)) for k, v in errs.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--prefix", default="runs/htty_stage2_")
    args = p.parse_args()
    sys.path[:0] = [str(ROOT / "scripts")]
    import reproduce

    commit = reproduce.commit()  # the code the runs start from
    steps = f"--config.htty.phases.steps_per_phase={args.steps + 1} "
    steps += f"--config.htty.train.recon_steps={args.steps}"
    rows = []
    for key, (label, extra) in SETTINGS.items():
        workdir = pathlib.Path(f"{args.prefix}{key}")
        argv = f"{BASE} {steps} {extra} --workdir={workdir}".split()
        command = shlex.join(argv)
        if not (workdir / "results.json").exists():
            print(f"$ {command}", flush=True)
            subprocess.run([sys.executable, *argv[1:]], check=True, cwd=ROOT)
        with open(workdir / "metrics.jsonl") as f:
            logs = [json.loads(line) for line in f]
        recon = [m["recon"] for m in logs if m.get("split") == "train" and m["step"] <= args.steps]
        row = {"setting": label, "command": command, "recon_loss": recon[-1]}
        rows.append(row | per_layer(workdir))
        print(rows[-1], flush=True)
    rec = {
        "name": "htty_stage2_fit",
        "description": DESCRIPTION,
        "steps": args.steps,
        "command": "python scripts/diagnostics/htty_stage2_fit.py" + f" --steps {args.steps}",
        "commit": commit,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": reproduce.machine(),
        "rows": rows,
    }
    out = ROOT / "results"
    (out / "htty_stage2_fit.json").write_text(json.dumps(rec, indent=1) + "\n")
    cols = ("recon_loss", "rel_err_conv1_kernel", "rel_err_conv2_kernel", "rel_err_bias")
    md = [f"# htty_stage2_fit\n\n{rec['description']} ({args.steps} steps at 3e-3, EMA 0.99)\n"]
    md += ["| setting | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    md += [f"| {r['setting']} | " + " | ".join(f"{r[c]:.4f}" for c in cols) + " |" for r in rows]
    md += ["", "Commands (from the repository root, WSL_DATA_DIR set):", ""]
    md += [f"- {r['setting']}: `{r['command']}`" for r in rows]
    m = rec["machine"]
    md += ["", f"- command: `{rec['command']}`", f"- commit: `{rec['commit']}`"]
    md += [f"- date: {rec['date']}", f"- machine: {m['platform']}, {m['cpu_count']} CPUs"]
    (out / "htty_stage2_fit.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
