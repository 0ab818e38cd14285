"""Take apart one checkpoint of an HTTY run: which part of the generated network breaks it.

    python scripts/diagnostics/htty_checkpoint_probe.py WORKDIR STEP [--test_size 2000]
        [--out results/NAME]

At full width and depth, noiseless generation, with the raw parameters and with their EMA:
per-stage relative error of the generated blocks, and the test accuracy of the network
with (a) everything as trained; (b) the pretrained classifier instead of the shared one;
(c) the full-width scalar (per-block scalars: every one) set to 1; (d) (b) and (c);
(e) only the stage-1 blocks generated (the others pretrained); (f) only stage 2's; (g) only
stage 3's. Prints a table; with --out writes NAME.{json,md} with the command, commit, date
and machine.
"""

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = pathlib.Path(__file__).name


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir")
    p.add_argument("step", type=int)
    p.add_argument("--test_size", type=int, default=2000)
    p.add_argument("--out", default="")
    p.add_argument("--description", default="")
    args_in = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(args_in)
    sys.path.insert(0, str(ROOT / "scripts" / "diagnostics"))
    from wsl.methods import metamorph
    from wsl.train import checkpoint, loop, parallel

    # the run's own config (HTTY's settings already merged in: metamorph.htty_config)
    config = ml_collections.ConfigDict(checkpoint.read_config(args.workdir))
    config.data.test_size = args.test_size
    sub = metamorph.prepare_htty(config.model)
    data = metamorph.load_data(config)
    phases = metamorph.make_phases(sub, config)
    config.train.num_steps = phases.num_steps
    inr = metamorph.make_inr(config)
    mesh = parallel.make_mesh()
    task = metamorph.make_htty_task(
        sub, inr, metamorph.make_htty_optimizer(sub, config), data, config, mesh
    )
    abstract = loop._abstract(task.init, jax.random.key(config.seed), mesh)
    mngr = checkpoint.manager(pathlib.Path(args.workdir), keep=100, async_save=False)
    state = checkpoint.restore(mngr, args.step, abstract)
    lay = metamorph.htty_layout(sub, config.model.train_depths)
    generator = metamorph.htty_generator(sub, inr, lay, config)
    blocks_on = np.asarray(phases.active(max(args.step - 1, 0)))
    x, y = data["test"]
    stage = np.asarray([int(b[5]) for b in sub.blocks])  # "layer<s>_<k>"
    layer_stage = stage[lay.layer_block]
    targets = [sub.weights[i] for i in sub.plan.layers]
    pretrained_linear = {f"layer{i}": sub.weights[i] for i in sub.shared}
    rows = []
    layer_on = blocks_on[lay.layer_block]
    classifier = {"shared": pretrained_linear}
    per_block = metamorph.branch_scalar(config)[0]
    for name, params in (("raw", state.params), ("ema", state.model_state["ema"])):
        ones = jnp.ones_like(params["scalars"])  # per block: every block's alpha 1
        unit = {"scalars": ones if per_block else params["scalars"].at[lay.ref].set(1.0)}
        cases = {
            "as trained": (params, blocks_on),
            "pretrained classifier": (params | classifier, blocks_on),
            "full-width scalar 1": (params | unit, blocks_on),
            "both": (params | classifier | unit, blocks_on),
        }
        for s in (1, 2, 3):
            only = blocks_on & (stage == s)
            if only.any():
                cases[f"only stage {s} generated"] = (params, only)
        _, eff = generator(params, jnp.asarray(blocks_on), lay.ref, config.model.depth, None, 1)
        scalars = params["scalars"] if per_block else params["scalars"][lay.ref]
        row = {"params": name, "scalar_full": np.asarray(scalars).round(4).tolist()}
        for s in (1, 2, 3):
            js = [j for j in range(len(targets)) if layer_stage[j] == s and layer_on[j]]
            if js:
                err = metamorph.relative_error(
                    tuple(eff[j] for j in js), tuple(targets[j] for j in js)
                )
                row[f"rel_error_stage{s}"] = err
        for label, (prm, on) in cases.items():
            w, _ = generator(prm, jnp.asarray(on), lay.ref, config.model.depth, None, 1)
            row[f"acc: {label}"] = metamorph.accuracy(sub.module, sub.spec, w, x, y)
        rows.append(row)
        print(json.dumps(row), flush=True)
    pre = metamorph.accuracy(sub.module, sub.spec, sub.weights, x, y)
    row = {"params": "pretrained", "acc: as trained": pre}
    rows.append(row)
    print(json.dumps(row))
    if args.out:
        import record_eval

        record_eval.record(
            args.out, rows, [f"scripts/diagnostics/{SCRIPT}", *args_in], args.description,
            workdir=args.workdir, step=args.step, test_size=args.test_size,
        )  # fmt: skip


if __name__ == "__main__":
    main()
