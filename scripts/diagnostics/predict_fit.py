"""Training fit of finished property-prediction runs: each run's final model evaluated on its
own training networks beside its val / test numbers (overfitting shows as a training
Kendall tau far above the test one).

    python scripts/diagnostics/predict_fit.py WORKDIR [WORKDIR ...] [--out results/NAME]
        [--description "..."]

Each WORKDIR is a finished `wsl.methods.predict` run (its config.json and checkpoints);
its latest checkpoint is evaluated in a temporary copy, so the run is left untouched.
Prints one row per run; with --out writes NAME.{json,md} with the command, commit, date
and machine.
"""

import argparse
import json
import pathlib
import shutil
import sys
import tempfile

import ml_collections

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = pathlib.Path(__file__).name


def fit_row(workdir: pathlib.Path) -> dict:
    from wsl.methods import predict
    from wsl.train import checkpoint, loop, parallel

    raw = checkpoint.read_config(workdir)
    if raw is None or raw.get("method") != "predict" or not (workdir / "checkpoints").exists():
        raise SystemExit(f"error: {workdir} is not a finished wsl.methods.predict run")
    config = ml_collections.ConfigDict(raw)
    data = predict.load_data(config.data, config.seed)
    extra = {"train": predict._rows_only(data, data.splits["train"])}
    task, _ = predict.build(config, data, parallel.make_mesh(), extra)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(workdir / "checkpoints", pathlib.Path(tmp) / "checkpoints")
        state, final = loop.train(task, config, tmp)
    metric = "kendall_tau" if data.num_classes == 0 else "accuracy"
    row = {"run": "/".join(workdir.parts[-4:]), "encoder": config.encoder.name, "seed": config.seed}
    row |= {"step": int(state.step)}
    row |= {f"{s}_{metric}": final[f"{s}_{metric}"] for s in ("train", "val", "test")}
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdirs", nargs="+")
    p.add_argument("--out", default="")
    p.add_argument("--description", default="")
    args_in = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(args_in)
    rows = []
    for w in args.workdirs:
        rows.append(fit_row(pathlib.Path(w)))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        sys.path.insert(0, str(ROOT / "scripts" / "diagnostics"))
        import record_eval

        argv_rec = [f"scripts/diagnostics/{SCRIPT}", *args_in]
        record_eval.record(args.out, rows, argv_rec, args.description)


if __name__ == "__main__":
    main()
