"""Reproduce a paper table: run its configs over seeds, then write results/NAME.{md,json,png}.

    python scripts/reproduce.py --table classify_mnist [--variant smoke|cpu|paper]
    python scripts/reproduce.py --table all --variant smoke

Each run is `python -m wsl.main` in its own folder `runs/<table>/<method>-<dataset>/
<variant>/seed<k>`; a run whose results.json exists is skipped, one that was killed resumes
from its checkpoint. Registering a table is a few lines in TABLES below:

    TABLES["my_table"] = Table(
        runs=(Run("NG-GNN", "MNIST", "experiments/ng_inr_classification.py", "test_accuracy",
                  overrides=("encoder.name=NG-GNN", "train.num_steps=1000"), seeds=(0, 1, 2)),),
        paper=(Paper("NG-GNN", "MNIST", "test_accuracy", 0.914),),
    )
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import shlex
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Run:
    """One row of a table: `config` (path, or path:variant to pin a variant) run once per
    seed with `--config.seed=k` and `--config.<override>`; `metric` is read from each
    run's results.json and reported as mean and std over seeds."""

    method: str
    dataset: str
    config: str
    metric: str
    overrides: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    folder: str = ""  # runs/<folder>/<variant>/seed<k>: tables that name the same folder
    #                   share its runs (default runs/<table>/<method>-<dataset>/...)
    reuse: str = ""  # the folder of a run whose training this one repeats exactly (same
    #                  config, seeds and overrides but evaluation-only ones, e.g.
    #                  data.test_path): once that run has finished, its checkpoints are
    #                  copied in and only this run's evaluation runs


@dataclasses.dataclass(frozen=True)
class Paper:
    """A value the paper reports, shown beside ours."""

    method: str
    dataset: str
    metric: str
    value: float


@dataclasses.dataclass(frozen=True)
class Table:
    runs: tuple[Run, ...]
    paper: tuple[Paper, ...] = ()
    title: str = ""
    plot: str = "bar"  # 'bar' (one bar per row) or 'lines' (metric on the x axis, one
    #                    line per method and dataset; e.g. accuracy vs compression)


TABLES: dict[str, Table] = {
    "classify_mnist": Table(
        title="Small CNN on MNIST: test accuracy (no paper value: Unterthiner et al. sample "
        "hyper-parameters per network and report no single figure)",
        runs=(
            Run(
                "SmallCNN",
                "MNIST",
                "experiments/classify_mnist.py",
                "test_accuracy",
                seeds=(0, 1, 2),
            ),
        ),
    ),
}

# Redundant blocks (issue #8): one run per model x approximation; the curves, the per-k
# table and the similarity heat maps land in results/redundancy_{curves,similarity_*}.*.
# RBA runs also report how non-linear the blocks are (redundancy.nonlinearity): the
# smallest share over all blocks, and the mean over the replaced ones.
TABLES["redundancy"] = Table(
    title="Redundant blocks (Cannistraci et al. 2024): test accuracy with k = ceil(0.2 x "
    "blocks) replaced (ResNet56 6/27, ResNet20 2/9, ViT 2/6), no fine-tuning; pretrained "
    "ResNets on the CIFAR-10 JPEG copy, a ViT trained here on MNIST",
    runs=tuple(
        Run(
            approx,
            data,
            "experiments/redundancy.py",
            metric,
            overrides=(f"model={model}", f"approx={approx}"),
            seeds=(0, 1, 2) if approx == "Random" else (0,),
        )
        for model, data in (
            ("resnet56", "CIFAR10-ResNet56"),
            ("resnet20", "CIFAR10-ResNet20"),
            ("vit", "MNIST-ViT"),
        )
        for approx in ("Original", "RBA", "RBA+head", "RBA-fit", "Random", "Identity", "Drop+head")
        for metric in ("test_accuracy", "accuracy_drop", "params_removed_frac")
        + (("nonlinearity_min", "nonlinearity_replaced") if approx == "RBA" else ())
    ),
)

# Canonicalisation (issue #9): one run per canon.kind; its rows share the run's folder.
# No paper values: the paper fine-tunes ImageNet ResNet50/ViT, not these setups.
for _name, _data, _what in (
    ("mnist", "MNIST-C4", "a CNN trained here"),
    ("cifar10", "CIFAR10-C4", "akamaster's pretrained ResNet20 (JPEG copy)"),
):
    TABLES[f"canon_{_name}"] = Table(
        title=f"Canonicalisation on C4-rotated {_data[:-3]}, predictor = {_what}: accuracy on "
        "upright / randomly C4-rotated test images, identity rate on upright ones, "
        "inference images/s. LC-GCNN = equivariant canonicaliser (Kaba et al. 2023); "
        "LC-Opt = non-equivariant canonicaliser (Panigrahi & Mondal 2024)",
        runs=tuple(
            Run(method, _data, f"experiments/canon_{_name}.py", metric, (f"canon.kind={kind}",))
            for method, kind in (
                ("Predictor", "none"),
                ("Predictor+TTA", "tta"),
                ("LC-GCNN", "equivariant"),
                ("LC-Opt", "optimized"),
            )
            for metric in ("upright_accuracy", "rotated_accuracy", "identity_rate", "images_per_s")
            if metric != "identity_rate" or kind in ("equivariant", "optimized")
        ),
    )


# Neural metamorphosis (issue #7): one run per mode; the four compressions of a mode are
# metrics of the same run (shared folder). Paper values: NeuMeta Table (ResNet20, lossless
# CIFAR-10), as fractions; none for HTTY (its CIFAR-10 ResNet56 figures are not transcribed).
TABLES["metamorph_resnet"] = Table(
    plot="lines",
    title="Neural metamorphosis on the CIFAR-10 JPEG copy: test accuracy at compression "
    "0/25/50/75 % of the inner width (64/48/32/16 in the last stage; 75 % never trained). "
    "NeuMeta = INR generating the last block of ResNet20 (Yang & Wang 2024); Sliced = "
    "pretrained ResNet20 with the channels cut; Individual = ResNet20 trained from scratch at "
    "that width; Individual-block = only NeuMeta's block trained from scratch at that width, "
    "the rest pretrained and frozen, NeuMeta's step budget (ours); HTTY = per-block INRs "
    "generating all 27 blocks of ResNet56, every block's "
    "inner width compressed, trained block by block (Sommariva et al. 2025)",
    runs=tuple(
        Run(method, "CIFAR10-JPEG", "experiments/metamorph_resnet.py", metric, (f"mode={mode}",))
        for method, mode in (
            ("Individual", "individual"),
            ("Individual-block", "individual_block"),
            ("Sliced", "sliced"),
            ("NeuMeta", "neumeta"),
            ("HTTY", "htty"),
        )  # fmt: skip
        for metric in ("acc_c0", "acc_c25", "acc_c50", "acc_c75")
        + (
            ("acc_full_noiseless", "pretrained_acc", "recon_rel_error")
            if mode in ("neumeta", "htty")
            else ()
        )
        + (("acc_d44",) if mode == "htty" else ())
    ),
    paper=tuple(
        Paper(method, "CIFAR10-JPEG", f"acc_c{c}", v / 100)
        for method, values in (
            ("NeuMeta", (91.76, 91.32, 90.56, 89.56)),
            ("Individual", (92.60, 90.65, 89.57, 87.04)),
        )  # fmt: skip
        for c, v in zip((0, 25, 50, 75), values, strict=True)
    ),
)


# Weight-space property prediction (issues #5 and #6): every run is one encoder on one
# data set with wsl.methods.predict; runs live in runs/predict/<table config>/<dataset>/
# <encoder>/..., so the SNE tables reuse the neural-graph tables' baseline runs.
ZOOS = (("MNIST", "zoos/mnist"), ("Fashion-MNIST", "zoos/fashion_mnist"))
# INR sets as (label, path, run folder): made as the DWSNets sets were (the papers' numbers
# are on those; experiments/inr_*_dws.py) and with Sitzmann's SIREN (inr_mnist.py)
INRS = (
    ("MNIST", "inrs/mnist_dws", "MNIST-dws"),
    ("Fashion-MNIST", "inrs/fashion_mnist_dws", "Fashion-MNIST-dws"),
)
INRS_SITZMANN = (
    ("MNIST-Sitzmann", "inrs/mnist", "MNIST"),
    ("Fashion-MNIST-Sitzmann", "inrs/fashion_mnist", "Fashion-MNIST"),
)
BASELINES = ("MLP", "StatNN", "DeepSets")
SEEDS = (0, 1, 2)


def _predict_run(
    encoder, dataset, path, config, metric, extra=(), tag="", seeds=SEEDS, subdir="", reuse=""
):
    """One encoder on one data set; its runs live in runs/predict/<config stem>/<subdir or
    dataset>/<encoder><tag>, shared by every table that names the same run."""
    stem = pathlib.Path(config).stem
    overrides = (f"encoder.name={encoder}", f"data.path={path}", *extra)
    folder = f"predict/{stem}/{subdir or dataset.replace('->', '_to_')}/{encoder}{tag}"
    method = encoder + tag
    return Run(method, dataset, config, metric, overrides, seeds, folder, reuse)


TABLES["ng_cnn_generalization"] = Table(
    title="Neural graphs (Kofinas et al. 2024), CNN generalisation: Kendall tau between "
    "predicted and true test accuracy of held-out CNNs of our Small CNN Zoos (last epoch). "
    "The paper reports NG-GNN 0.93 on CIFAR10-GS (not reachable here), above StatNN",
    runs=tuple(
        _predict_run(enc, ds, path, "experiments/ng_cnn_generalization.py", "test_kendall_tau")
        for ds, path in ZOOS
        for enc in (*BASELINES, "NG-GNN", "NG-T")
    ),
)
TABLES["ng_inr_classification"] = Table(
    title="Neural graphs (Kofinas et al. 2024), INR classification: test accuracy of "
    "classifying our SIREN sets' INRs by the image's class. MNIST / Fashion-MNIST: our sets "
    "made as the DWSNets sets were (DWSNets' SIREN, output offset 0.5, Adam 5e-4, <= 1,000 "
    "steps); *-Sitzmann: Sitzmann's SIREN fitted to ~85 dB. Paper: NG-GNN on the DWSNets sets",
    runs=tuple(
        _predict_run(
            enc, ds, path, "experiments/ng_inr_classification.py", "test_accuracy", subdir=sub
        )
        for ds, path, sub in INRS + INRS_SITZMANN
        for enc in (*BASELINES, "NG-GNN", "NG-T")
    ),
    paper=(
        Paper("NG-GNN", "MNIST", "test_accuracy", 0.914),
        Paper("NG-GNN", "Fashion-MNIST", "test_accuracy", 0.680),
    ),
)
TABLES["sne_cnn"] = Table(
    title="SNE (Andreis et al. 2024, with its logit-invariance regulariser, weight 1): Kendall "
    "tau of predicted test accuracy on our Small CNN Zoos, beside the neural-graph table's "
    "baselines (same runs, splits and seeds)",
    runs=tuple(
        _predict_run(enc, ds, path, "experiments/ng_cnn_generalization.py", "test_kendall_tau")
        for ds, path in ZOOS
        for enc in ("SNE", *BASELINES, "NG-GNN")
    ),
)
TABLES["sne_inr"] = Table(
    title="SNE (Andreis et al. 2024): INR classification accuracy on our DWSNets-style SIREN "
    "sets, beside the neural-graph table's encoders (same runs, trained with random "
    "hidden-neuron permutations as augmentation; SNE, not invariant to them by construction, "
    "also with its logit-invariance regulariser; SNE-noperm: without the augmentation)",
    runs=tuple(
        _predict_run(
            enc, ds, path, "experiments/ng_inr_classification.py", "test_accuracy", subdir=sub
        )
        for ds, path, sub in INRS
        for enc in ("SNE", *BASELINES, "NG-GNN")
    )
    + tuple(
        _predict_run(
            "SNE",
            ds,
            path,
            "experiments/ng_inr_classification.py",
            "test_accuracy",
            ("augment.permute=False",),
            "-noperm",
            subdir=sub,
        )
        for ds, path, sub in INRS
    ),
)
TABLES["sne_transfer"] = Table(
    title="Cross-dataset transfer: train on one Small CNN Zoo, Kendall tau on the test "
    "networks of the other (transfer_kendall_tau; the models of the sne_cnn runs, "
    "evaluated on the other zoo)",
    runs=tuple(
        _predict_run(
            enc,
            f"{src}->{dst}",
            spath,
            "experiments/ng_cnn_generalization.py",
            "transfer_kendall_tau",
            (f"data.test_path={dpath}",),
            reuse=_predict_run(
                enc, src, spath, "experiments/ng_cnn_generalization.py", "test_kendall_tau"
            ).folder,
        )
        for (src, spath), (dst, dpath) in (ZOOS, ZOOS[::-1])
        for enc in ("SNE", "StatNN", "NG-GNN")
    ),
)
TABLES["sne_cross_arch"] = Table(
    title="Cross-architecture transfer on our heterogeneous zoo: trained on small 3x3 CNNs "
    "(base), Kendall tau on the held-out base networks and on unseen families (SNE without "
    "logit invariance: a batch of mixed architectures is not permuted)",
    runs=tuple(
        _predict_run(enc, "hetero", "zoos/hetero", "experiments/sne_cross_arch.py", metric)
        for enc in ("SNE", "NG-GNN")
        for metric in (
            "test_kendall_tau",
            "transfer_deeper_kendall_tau",
            "transfer_wider_kendall_tau",
            "transfer_kernels_kendall_tau",
            "transfer_residual_kendall_tau",
        )
    ),
    plot="lines",  # Kendall tau from the held-out base networks to each unseen family
)
TABLES["sne_ablation"] = Table(
    title="SNE ablations on the MNIST Small CNN Zoo, each from SNE as in sne_cnn (chunks of "
    "16, layer encodings, logit invariance 1): chunk size, layer encodings, logit invariance "
    "off, permutation augmentation instead (Kendall tau; invariance gap = mean "
    "|f(w) - f(pi w)| on test networks)",
    runs=tuple(
        _predict_run(
            "SNE", "MNIST", "zoos/mnist", "experiments/ng_cnn_generalization.py", metric, extra, tag
        )  # fmt: skip
        for tag, extra in (
            ("", ()),
            ("-c8", ("inputs.chunk_size=8",)),
            ("-c32", ("inputs.chunk_size=32",)),
            ("-noenc", ("encoders.SNE.layer_encoding=False",)),
            ("-nologitinv", ("invariance_weight=0.0",)),
            # invariance from data instead: a random hidden-neuron permutation per network
            ("-permaug", ("augment.permute=True", "invariance_weight=0.0")),
        )
        for metric in ("test_kendall_tau", "test_invariance_gap")
    ),
)


# ----------------------------------------------------------------------------- records


def commit() -> str:
    """`git rev-parse HEAD` (+ "-dirty" with uncommitted changes outside results/, which
    holds generated tables, not code), "unknown" outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    """Platform, CPU count and JAX devices of this machine (asks jax in a subprocess, so
    that this process never holds an accelerator the runs need)."""
    code = "import jax, json; print(json.dumps([str(d) for d in jax.devices()]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    devices = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else []
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "jax_devices": devices,
    }


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- running


def slug(run: Run) -> str:
    return f"{run.method}-{run.dataset}".replace("/", "_").replace(" ", "_")


def run_folder(table: str, run: Run) -> str:
    """The folder under runs_dir that holds `run`'s variants and seeds."""
    return run.folder or f"{table}/{slug(run)}"


def missing_variant(table: Table, variant: str) -> str | None:
    """None if every run of `table` can run `variant`, else which config cannot (read from
    its `VARIANTS`; a config pinned with path:variant, or without VARIANTS, is not checked)."""
    from wsl import configs

    for run in table.runs:
        path = ROOT / run.config
        if ":" in run.config or not path.is_file():
            continue
        known = getattr(configs.load_module(path), "VARIANTS", None)
        if known is not None and variant not in known:
            return f"{run.config} has the variants {', '.join(known)}, not {variant!r}"
    return None


def command(run: Run, variant: str, seed: int, workdir: pathlib.Path) -> list[str]:
    config = run.config if ":" in run.config else f"{run.config}:{variant}"
    return [
        sys.executable,
        "-m",
        "wsl.main",
        f"--config={config}",
        f"--workdir={workdir}",
        f"--config.seed={seed}",
        *(f"--config.{o}" for o in run.overrides),
    ]


def run_seed(
    run: Run, variant: str, seed: int, workdir: pathlib.Path, source: pathlib.Path | None = None
) -> dict:
    """Run one seed (skipped if its results.json exists); with `source` (the workdir of a
    finished run this one repeats, `Run.reuse`) start from its checkpoints, so that only
    the evaluation runs. Returns {"value", "wall_s", "error"}."""
    results, record = workdir / "results.json", workdir / "run.json"
    if not results.exists():
        info = {}
        ckpt = workdir / "checkpoints"
        if source is not None and (source / "results.json").exists() and not ckpt.exists():
            workdir.mkdir(parents=True, exist_ok=True)
            tmp = workdir / "checkpoints.copying"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(source / "checkpoints", tmp)
            tmp.rename(ckpt)  # a kill during the copy leaves no half checkpoint behind
            info = {"reused_from": str(source)}
            print(f"reusing the trained model of {source}", flush=True)
        cmd = command(run, variant, seed, workdir)
        print("$", shlex.join(cmd), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            return {"value": None, "wall_s": wall, "error": f"exit code {proc.returncode}"}
        info = {"command": shlex.join(cmd), "wall_s": wall} | info
        record.write_text(json.dumps(info) + "\n")
    wall = json.loads(record.read_text())["wall_s"] if record.exists() else 0.0
    value = json.loads(results.read_text()).get(run.metric)
    error = None if value is not None else f"no {run.metric!r} in {results}"
    return {"value": value, "wall_s": wall, "error": error}


def reproduce(
    name: str,
    variant: str,
    runs_dir,
    results_dir,
    argv=None,
    datasets=None,
    methods=None,
    merge=False,
    rows_from=(),
) -> dict:
    """Run table `name` and write results_dir/NAME.{json,md,png}; returns the JSON record.
    `datasets` / `methods`: only the rows of these datasets (e.g. the ones whose zoo
    exists) / methods (e.g. the long run of a table first). `merge`: keep the rows of the
    (method, dataset) pairs not run now from the existing results_dir/NAME.json (same
    variant), with their command, commit, date and machine under "merged_from".
    `rows_from`: other tables whose results_dir/<table>.json (same variant) gives the rows
    of the runs this table shares with them (the same run folder and metric), instead of
    running them (e.g. the SNE tables' baselines, once their run folders are gone)."""
    import numpy as np

    table = TABLES[name]
    if why := missing_variant(table, variant):
        raise RuntimeError(f"no {variant!r} variant: {why}")
    results_dir = pathlib.Path(results_dir)
    previous = load_previous(results_dir / f"{name}.json", variant) if merge else None
    taken, taken_from = [], []
    for other in rows_from:
        if other not in TABLES or other == name:
            raise RuntimeError(f"--rows_from: {other!r} is not another registered table")
        record = load_previous(results_dir / f"{other}.json", variant, "--rows_from")
        done = {(r["method"], r["dataset"], r["metric"]) for r in taken}
        more, sources = shared_rows(table, other, record, done)
        taken += more
        taken_from += sources
    skip = {(r["method"], r["dataset"], r["metric"]) for r in taken}
    runs = [
        r
        for r in table.runs
        if (datasets is None or r.dataset in datasets)
        and (methods is None or r.method in methods)
        and (r.method, r.dataset, r.metric) not in skip
    ]
    if not runs and not taken:
        known = sorted({r.dataset for r in table.runs}), sorted({r.method for r in table.runs})
        raise RuntimeError(
            f"no rows of datasets {sorted(datasets or [])} / methods {sorted(methods or [])}; "
            f"table {name} has datasets {known[0]}, methods {known[1]}"
        )
    rows, errors, walls = [], [], {}
    for run in runs:
        values = []
        for seed in run.seeds:
            folder = run_folder(name, run)
            seed_dir = pathlib.Path(variant) / f"seed{seed}"
            workdir = pathlib.Path(runs_dir).absolute() / folder / seed_dir
            source = pathlib.Path(runs_dir).absolute() / run.reuse / seed_dir if run.reuse else None
            out = run_seed(run, variant, seed, workdir, source)
            walls[workdir] = out["wall_s"]  # rows of one run share its wall time
            if out["error"]:
                errors.append(f"{slug(run)} seed {seed}: {out['error']} (see {workdir})")
            else:
                values.append(float(out["value"]))
        rows.append(
            {
                "method": run.method,
                "dataset": run.dataset,
                "metric": run.metric,
                "mean": float(np.mean(values)) if values else None,
                "std": float(np.std(values)) if values else None,
                "n_seeds": len(values),
            }
        )
    argv = sys.argv[1:] if argv is None else argv
    rows, merged_from = table_order(table, rows + taken), taken_from
    if previous is not None:
        rows, kept_from = merge_rows(table, rows, previous)
        merged_from = merged_from + kept_from
    record = {
        "table": name,
        "variant": variant,
        "rows": rows,
        "paper": [dataclasses.asdict(p) for p in table.paper],
        "command": shlex.join(["python", "scripts/reproduce.py", *argv]),
        "commit": commit(),
        "date": now(),
        "machine": machine(),
        "wall_s": float(sum(walls.values())),
        **({"merged_from": merged_from} if merged_from else {}),
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    (results_dir / f"{name}.md").write_text(markdown(record, table.title, errors))
    (plot_lines if table.plot == "lines" else plot)(record, results_dir / f"{name}.png")
    if errors:
        raise RuntimeError("some runs failed:\n  " + "\n  ".join(errors))
    return record


def load_previous(path: pathlib.Path, variant: str, flag: str = "--merge") -> dict:
    """A table's existing record, for --merge / --rows_from: it must exist and be of
    `variant`."""
    if not path.exists():
        raise RuntimeError(f"{flag}: {path} does not exist; run that table first")
    record = json.loads(path.read_text())
    if record.get("variant") != variant:
        raise RuntimeError(
            f"{flag}: {path} holds the {record.get('variant')!r} variant, not {variant!r}; "
            "merge only rows of one variant"
        )
    return record


def table_order(table: Table, rows: list) -> list:
    """`rows` sorted as the table lists its runs (unknown rows last)."""
    order = {(r.method, r.dataset, r.metric): i for i, r in enumerate(table.runs)}
    return sorted(
        rows, key=lambda r: order.get((r["method"], r["dataset"], r["metric"]), len(order))
    )


def shared_rows(table: Table, other: str, record: dict, done=frozenset()) -> tuple[list, list]:
    """(rows, sources): the rows of `table`'s runs that table `other` also runs (the same
    run folder and metric), read from other's `record` and named as `table` names them,
    except those in `done` ((method, dataset, metric)); sources: where each came from, as
    merge_rows gives it (other's own command, or the record it had merged that row from)."""
    theirs = {(r.folder, r.metric): r for r in TABLES[other].runs if r.folder}
    values = {(r["method"], r["dataset"], r["metric"]): r for r in record["rows"]}
    fields = ("command", "commit", "date", "machine", "wall_s")
    rows, by_source = [], {}
    for run in table.runs:
        src_run = theirs.get((run.folder, run.metric)) if run.folder else None
        key = (run.method, run.dataset, run.metric)
        row = src_run and values.get((src_run.method, src_run.dataset, src_run.metric))
        if not row or row["mean"] is None or key in done:
            continue
        rows.append(row | {"method": run.method, "dataset": run.dataset})
        pair = f"{src_run.method}/{src_run.dataset}"
        src = next((s for s in record.get("merged_from", []) if pair in s["rows"]), record)
        entry = by_source.setdefault(id(src), {k: src[k] for k in fields} | {"rows": []})
        if f"{run.method}/{run.dataset}" not in entry["rows"]:
            entry["rows"].append(f"{run.method}/{run.dataset}")
    return rows, [s | {"rows": sorted(s["rows"])} for s in by_source.values()]


def merge_rows(table: Table, rows: list, previous: dict) -> tuple[list, list]:
    """(rows, merged_from): the new rows plus the previous record's rows of the
    (method, dataset) pairs not run now, in the table's order; merged_from lists where the
    kept rows came from (the previous record's own command, or what it had merged)."""
    done = {(r["method"], r["dataset"]) for r in rows}
    kept = [  # a failed row (no seed finished) is not a result: never kept
        r
        for r in previous["rows"]
        if (r["method"], r["dataset"]) not in done and r["mean"] is not None
    ]
    merged = table_order(table, rows + kept)
    pairs = {f"{r['method']}/{r['dataset']}" for r in kept}
    earlier = previous.get("merged_from", [])
    own = pairs - {p for src in earlier for p in src["rows"]}
    fields = ("command", "commit", "date", "machine", "wall_s")
    sources = [{k: previous[k] for k in fields} | {"rows": sorted(own)}]
    sources += [src | {"rows": sorted(pairs & set(src["rows"]))} for src in earlier]
    return merged, [s for s in sources if s["rows"]]


# ----------------------------------------------------------------------------- reporting


def _paper_value(record, row):
    for p in record["paper"]:
        if (p["method"], p["dataset"], p["metric"]) == (
            row["method"],
            row["dataset"],
            row["metric"],
        ):
            return p["value"]
    return None


def markdown(record: dict, title: str = "", errors=()) -> str:
    m = record["machine"]
    lines = [
        f"# {record['table']} ({record['variant']})",
        "",
        *([title, ""] if title else []),
        "| method | dataset | metric | ours (mean ± std) | seeds | paper |",
        "|---|---|---|---|---|---|",
    ]
    for row in record["rows"]:
        ours = "failed" if row["mean"] is None else f"{row['mean']:.4f} ± {row['std']:.4f}"
        paper = _paper_value(record, row)
        lines.append(
            f"| {row['method']} | {row['dataset']} | {row['metric']} | {ours} | "
            f"{row['n_seeds']} | {'' if paper is None else f'{paper:.4f}'} |"
        )
    lines += [
        "",
        f"- command: `{record['command']}`",
        f"- commit: `{record['commit']}`",
        f"- date: {record['date']}",
        f"- machine: {m['platform']}, {m['cpu_count']} CPUs, JAX devices "
        f"{', '.join(m['jax_devices'])}",
        f"- wall time of the runs: {record['wall_s']:.0f} s",
    ]
    for src in record.get("merged_from", []):
        lines.append(
            f"- rows {', '.join(src['rows'])} merged from: `{src['command']}`, commit "
            f"`{src['commit']}`, {src['date']}, {src['machine']['platform']}, "
            f"{src['machine']['cpu_count']} CPUs, runs {src['wall_s']:.0f} s"
        )
    lines += [f"- FAILED: {e}" for e in errors]
    return "\n".join(lines) + "\n"


def plot(record: dict, path) -> None:
    """Bar plot: ours (mean ± std over seeds) beside the paper's value, per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = record["rows"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(rows) + 2), 3.5))
    ours = [r["mean"] if r["mean"] is not None else np.nan for r in rows]
    stds = [r["std"] or 0.0 for r in rows]
    paper = [_paper_value(record, r) for r in rows]
    shift = 0.2 if any(p is not None for p in paper) else 0.0
    bars = ax.bar(x - shift, ours, 0.4, yerr=stds, capsize=3, label="ours")
    ax.bar_label(bars, fmt="%.3f", padding=2)
    if shift:
        bars = ax.bar(x + shift, [np.nan if p is None else p for p in paper], 0.4, label="paper")
        ax.bar_label(bars, fmt="%.3f", padding=2)
    ax.set_xlim(-0.75, len(rows) - 0.25)
    ax.set_ylim(top=ax.get_ylim()[1] * 1.1)  # room for the labels
    metrics = {r["metric"] for r in rows}
    many = len(metrics) > 1  # then each bar names its metric
    ax.set_xticks(
        x, [f"{r['method']}\n{r['dataset']}" + (f"\n{r['metric']}" if many else "") for r in rows]
    )
    ax.set_ylabel("value" if many else metrics.pop())
    ax.set_title(f"{record['table']} ({record['variant']})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_lines(record: dict, path) -> None:
    """One line per (method, dataset) over its metrics in table order (e.g. accuracy at
    compression 0/25/50/75 %), ours solid with std bands, the paper's dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    lines = dict.fromkeys((r["method"], r["dataset"]) for r in record["rows"])
    metrics = [  # the metrics every line has (extra per-method metrics stay in the table)
        m
        for m in dict.fromkeys(r["metric"] for r in record["rows"])
        if all(any((r["method"], r["dataset"], r["metric"]) == (*k, m) for r in record["rows"])
               for k in lines)
    ]  # fmt: skip
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (method, dataset) in enumerate(lines):
        colour = f"C{i}"
        rows = {
            r["metric"]: r
            for r in record["rows"]
            if (r["method"], r["dataset"]) == (method, dataset)
        }
        xs = [j for j, m in enumerate(metrics) if m in rows and rows[m]["mean"] is not None]
        if xs:
            mean = np.asarray([rows[metrics[j]]["mean"] for j in xs])
            std = np.asarray([rows[metrics[j]]["std"] or 0.0 for j in xs])
            ax.plot(xs, mean, "o-", color=colour, label=f"{method} (ours)")
            ax.fill_between(xs, mean - std, mean + std, color=colour, alpha=0.2)
        paper = [(j, _paper_value(record, {"method": method, "dataset": dataset, "metric": m}))
                 for j, m in enumerate(metrics)]  # fmt: skip
        paper = [(j, v) for j, v in paper if v is not None]
        if paper:
            ax.plot(*zip(*paper, strict=True), "s--", color=colour, alpha=0.6,
                    label=f"{method} (paper)")  # fmt: skip
    long = max(map(len, metrics), default=0) > 10  # then slanted, so they do not overlap
    ax.set_xticks(
        range(len(metrics)), metrics, rotation=20 if long else 0, ha="right" if long else "center"
    )
    ax.set_title(f"{record['table']} ({record['variant']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", required=True, help=f"one of {sorted(TABLES)} or 'all'")
    parser.add_argument(
        "--variant",
        default="smoke",
        choices=("smoke", "cpu", "paper"),
        help="smoke: minutes on a CPU; cpu: the full table on a CPU (where its configs have "
        "it, e.g. the weight-space tables on our zoos; --table all skips the others); "
        "paper: published sizes, for GPUs",
    )
    parser.add_argument(
        "--datasets",
        default="",
        help="comma-separated: only these datasets' rows (e.g. MNIST while the Fashion-MNIST "
        "zoo is being generated); default all",
    )
    parser.add_argument(
        "--methods", default="", help="comma-separated: only these methods' rows; default all"
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows not run now from the table's existing results JSON (same "
        "variant; their command and commit are recorded beside them), e.g. to add one "
        "method's long run to a table whose other runs are gone",
    )
    parser.add_argument(
        "--rows_from",
        default="",
        help="comma-separated tables whose results JSON (same variant) gives the rows of the "
        "runs this table shares with them (same run folder), instead of running them; "
        "e.g. --table sne_inr --rows_from ng_inr_classification",
    )
    parser.add_argument("--runs_dir", default=str(ROOT / "runs"))
    parser.add_argument("--results_dir", default=str(ROOT / "results"))
    args = parser.parse_args(argv)
    names = sorted(TABLES) if args.table == "all" else [args.table]
    if unknown := [n for n in names if n not in TABLES]:
        print(
            f"error: unknown table {unknown[0]!r}; choose one of {sorted(TABLES)} or 'all'",
            file=sys.stderr,
        )
        return 2
    status = 0
    for name in names:
        if args.table == "all" and (why := missing_variant(TABLES[name], args.variant)):
            print(f"skipping {name}: {why}", flush=True)
            continue
        try:
            record = reproduce(
                name,
                args.variant,
                args.runs_dir,
                args.results_dir,
                sys.argv[1:] if argv is None else argv,
                datasets=set(args.datasets.split(",")) if args.datasets else None,
                methods=set(args.methods.split(",")) if args.methods else None,
                merge=args.merge,
                rows_from=[t for t in args.rows_from.split(",") if t],
            )
            for row in record["rows"]:
                value = "failed" if row["mean"] is None else f"{row['mean']:.4f} ± {row['std']:.4f}"
                print(
                    f"{name}: {row['method']} {row['dataset']} {row['metric']} = "
                    f"{value} ({row['n_seeds']} seeds)"
                )
        except RuntimeError as e:
            print(f"error: {name}: {e}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
