"""scripts/reproduce.py on a tiny registered table (two quickstart seeds; the same
num_steps as test_main, so the step compiled there comes from the compilation cache)."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def reproduce(monkeypatch):
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "reproduce", module)
    spec.loader.exec_module(module)
    return module


def test_table_runs_collects_and_writes_results(tmp_path, reproduce):
    reproduce.TABLES["tiny"] = reproduce.Table(
        runs=(
            reproduce.Run(
                "SmallCNN",
                "digits",
                "experiments/quickstart.py",
                "test_accuracy",
                overrides=("train.num_steps=1500", "train.eval_every=0"),
                seeds=(0, 1),
            ),
            # left out by --datasets below (it would fail: no such config)
            reproduce.Run("SmallCNN", "elsewhere", "experiments/missing.py", "test_accuracy"),
        ),
        paper=(reproduce.Paper("SmallCNN", "digits", "test_accuracy", 0.9),),
    )
    args = [
        "--table",
        "tiny",
        "--datasets",
        "digits",
        "--runs_dir",
        str(tmp_path / "runs"),
        "--results_dir",
        str(tmp_path / "results"),
    ]
    assert reproduce.main(args) == 0

    record = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert list(record) == [
        "table",
        "variant",
        "rows",
        "paper",
        "command",
        "commit",
        "date",
        "machine",
        "wall_s",
    ]
    assert record["table"] == "tiny" and record["variant"] == "smoke"
    run_dir = tmp_path / "runs" / "tiny" / "SmallCNN-digits" / "smoke"
    (row,) = record["rows"]
    assert set(row) == {"method", "dataset", "metric", "mean", "std", "n_seeds"}
    assert row["n_seeds"] == 2 and 0.0 <= row["mean"] <= 1.0 and row["std"] >= 0.0
    # the row aggregates the seeds' own results: numpy's mean and (population) std of them
    values = [
        json.loads((run_dir / f"seed{s}" / "results.json").read_text())["test_accuracy"]
        for s in (0, 1)
    ]
    assert row["mean"] == pytest.approx(np.mean(values), rel=1e-12, abs=1e-12)
    assert row["std"] == pytest.approx(np.std(values), rel=1e-12, abs=1e-12)
    assert record["paper"] == [
        {"method": "SmallCNN", "dataset": "digits", "metric": "test_accuracy", "value": 0.9}
    ]
    assert record["machine"]["cpu_count"] and record["machine"]["jax_devices"]
    assert record["command"].startswith("python scripts/reproduce.py --table tiny")
    md = (tmp_path / "results" / "tiny.md").read_text()
    assert f"{row['mean']:.4f} ± {row['std']:.4f}" in md and "0.9000" in md
    assert (tmp_path / "results" / "tiny.png").read_bytes()[:4] == b"\x89PNG"
    seeds = sorted(
        p.name for p in (tmp_path / "runs" / "tiny" / "SmallCNN-digits" / "smoke").iterdir()
    )
    assert seeds == ["seed0", "seed1"]

    # a second call skips the finished runs and reports the same numbers
    stamp = (
        (tmp_path / "runs" / "tiny" / "SmallCNN-digits" / "smoke" / "seed0" / "results.json")
        .stat()
        .st_mtime_ns
    )
    assert reproduce.main(args) == 0
    again = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert again["rows"] == record["rows"]
    assert (
        tmp_path / "runs" / "tiny" / "SmallCNN-digits" / "smoke" / "seed0" / "results.json"
    ).stat().st_mtime_ns == stamp

    # a run that repeats the first one's training starts from its model: only the
    # evaluation runs, and it reports what the first one reported
    source = reproduce.TABLES["tiny"].runs[0]
    reproduce.TABLES["tiny"] = reproduce.Table(
        runs=(
            reproduce.Run(
                "again",
                "digits",
                source.config,
                source.metric,
                source.overrides,
                seeds=(0,),
                reuse="tiny/SmallCNN-digits",
            ),
        )  # fmt: skip
    )
    assert reproduce.main(args) == 0
    again_dir = tmp_path / "runs" / "tiny" / "again-digits" / "smoke" / "seed0"
    src_dir = tmp_path / "runs" / "tiny" / "SmallCNN-digits" / "smoke" / "seed0"
    mine, theirs = (json.loads((d / "results.json").read_text()) for d in (again_dir, src_dir))
    assert mine["test_accuracy"] == theirs["test_accuracy"]
    assert json.loads((again_dir / "run.json").read_text())["reused_from"] == str(src_dir)
    logged = (
        (again_dir / "metrics.jsonl").read_text() if (again_dir / "metrics.jsonl").exists() else ""
    )
    assert '"split": "train"' not in logged  # no training step ran


def test_unknown_table(reproduce, capsys):
    assert reproduce.main(["--table", "nope"]) == 2
    assert "unknown table 'nope'; choose one of" in capsys.readouterr().err
    assert reproduce.main(["--table", "redundancy", "--datasets", "SVHN"]) == 1
    assert "no rows of datasets ['SVHN'] / methods []; table redundancy has datasets" in (
        capsys.readouterr().err
    )
    assert reproduce.main(["--table", "redundancy", "--methods", "Nope"]) == 1
    err = capsys.readouterr().err
    assert "no rows of datasets [] / methods ['Nope']" in err and "'RBA'" in err


def test_classify_mnist_is_registered(reproduce):
    table = reproduce.TABLES["classify_mnist"]
    assert table.runs[0].config == "experiments/classify_mnist.py"
    cmd = reproduce.command(table.runs[0], "smoke", 1, Path("/w"))
    assert cmd[1:] == [
        "-m",
        "wsl.main",
        "--config=experiments/classify_mnist.py:smoke",
        "--workdir=/w",
        "--config.seed=1",
    ]


def test_reused_runs_repeat_a_registered_run_but_for_evaluation_only_settings(reproduce):
    """Every `Run.reuse` names a registered run with the same config, seeds and overrides,
    except evaluation-only ones (data.test_path), so its trained model is this run's."""
    by_folder = {r.folder: r for t in reproduce.TABLES.values() for r in t.runs if r.folder}
    reusing = [r for t in reproduce.TABLES.values() for r in t.runs if r.reuse]
    assert reusing, "sne_transfer reuses the sne_cnn runs"
    for r in reusing:
        src = by_folder[r.reuse]
        assert src.folder != r.folder and (src.config, src.seeds) == (r.config, r.seeds)
        train_only = tuple(o for o in r.overrides if not o.startswith("data.test_path="))
        assert train_only == src.overrides and len(train_only) < len(r.overrides)


def _fake_runs(root: Path, table: str, values: dict) -> None:
    """Finished runs (results.json) so reproduce collects them without training."""
    for (method, dataset), value in values.items():
        seed = root / table / f"{method}-{dataset}" / "smoke" / "seed0"
        seed.mkdir(parents=True, exist_ok=True)
        (seed / "results.json").write_text(json.dumps({"acc": value, "loss": 1 - value}))


def test_merge_keeps_rows_not_run_with_their_provenance(tmp_path, reproduce):
    runs = tuple(
        reproduce.Run(m, d, "experiments/none.py", metric, seeds=(0,))
        for m in ("A", "B")
        for d in ("X", "Y")
        for metric in ("acc", "loss")
    )
    reproduce.TABLES["merged"] = reproduce.Table(runs=runs)
    dirs = ["--runs_dir", str(tmp_path / "runs"), "--results_dir", str(tmp_path / "results")]
    _fake_runs(tmp_path / "runs", "merged", {("A", "X"): 0.5, ("A", "Y"): 0.6, ("B", "X"): 0.7})
    assert reproduce.main(["--table", "merged", "--methods", "A", *dirs]) == 0
    first = json.loads((tmp_path / "results" / "merged.json").read_text())
    assert [r["method"] for r in first["rows"]] == ["A"] * 4 and "merged_from" not in first

    # --merge without a previous record, or of another variant: one clear error
    args = ["--table", "merged", "--methods", "B", "--datasets", "X", "--merge"]
    assert reproduce.main([*args, "--runs_dir", "r", "--results_dir", str(tmp_path)]) == 1
    assert reproduce.main([*args, "--variant", "cpu", *dirs]) == 1

    # B/X now, merged: A's rows kept (same values), in the table's order, with A's command
    assert reproduce.main([*args, *dirs]) == 0
    second = json.loads((tmp_path / "results" / "merged.json").read_text())
    got = [(r["method"], r["dataset"], r["metric"], r["mean"]) for r in second["rows"]]
    assert got == [
        ("A", "X", "acc", 0.5),
        ("A", "X", "loss", 0.5),
        ("A", "Y", "acc", 0.6),
        ("A", "Y", "loss", pytest.approx(0.4)),
        ("B", "X", "acc", 0.7),
        ("B", "X", "loss", pytest.approx(0.3)),
    ]
    (src,) = second["merged_from"]
    assert src["rows"] == ["A/X", "A/Y"] and src["command"] == first["command"]
    assert src["commit"] == first["commit"] and "B/X" not in src["rows"]
    md = (tmp_path / "results" / "merged.md").read_text()
    assert f"rows A/X, A/Y merged from: `{first['command']}`" in md

    # merging again (A/X re-run) keeps the first provenance for A/Y only, B/X from the second
    assert reproduce.main(["--table", "merged", "--methods", "A", "--datasets", "X",
                           "--merge", *dirs]) == 0  # fmt: skip
    third = json.loads((tmp_path / "results" / "merged.json").read_text())
    assert [s["rows"] for s in third["merged_from"]] == [["B/X"], ["A/Y"]]
    assert third["merged_from"][1]["command"] == first["command"]
    assert len(third["rows"]) == 6


def test_rows_from_takes_the_shared_runs_rows_from_the_other_tables_record(tmp_path, reproduce):
    """--rows_from T: rows whose run folder T also runs come from T's results JSON (named
    as this table names them, with T's provenance) and are not run; the rest run."""
    base = tuple(
        reproduce.Run(m, "X", "experiments/none.py", "acc", folder=f"shared/{m}")
        for m in ("A", "B")
    )
    reproduce.TABLES["base"] = reproduce.Table(runs=base)
    reproduce.TABLES["user"] = reproduce.Table(
        runs=(
            reproduce.Run("C", "X", "experiments/none.py", "acc"),
            reproduce.Run("A", "X-label", "experiments/none.py", "acc", folder="shared/A"),
            reproduce.Run("B", "X", "experiments/none.py", "loss", folder="shared/B"),
        )
    )
    dirs = ["--runs_dir", str(tmp_path / "runs"), "--results_dir", str(tmp_path / "results")]
    for folder, value in (("shared/A", 0.5), ("shared/B", 0.6), ("user/C-X", 0.7)):
        seed = tmp_path / "runs" / folder / "smoke" / "seed0"
        seed.mkdir(parents=True)
        (seed / "results.json").write_text(json.dumps({"acc": value, "loss": 1 - value}))
    args = ["--table", "user", "--rows_from", "base", *dirs]
    assert reproduce.main(args) == 1  # base has no record yet: one clear error
    assert reproduce.main(["--table", "base", *dirs]) == 0
    base_record = json.loads((tmp_path / "results" / "base.json").read_text())
    # A's run folder is gone: its row must come from base's record, not from a run
    shutil.rmtree(tmp_path / "runs" / "shared" / "A")
    assert reproduce.main(args) == 0
    record = json.loads((tmp_path / "results" / "user.json").read_text())
    got = [(r["method"], r["dataset"], r["metric"], r["mean"]) for r in record["rows"]]
    # B's loss is not a metric base reports for that folder: read from its run
    assert got == [("C", "X", "acc", 0.7), ("A", "X-label", "acc", 0.5),
                   ("B", "X", "loss", pytest.approx(0.4))]  # fmt: skip
    (src,) = record["merged_from"]
    assert src["rows"] == ["A/X-label"] and src["command"] == base_record["command"]
    assert reproduce.main(["--table", "user", "--rows_from", "user", *dirs]) == 1


def test_merge_never_keeps_a_failed_row(tmp_path, reproduce):
    """A row whose seeds all failed (mean None) is not a result: --merge drops it, and the
    rows printed after a merge are all numbers."""
    runs = tuple(reproduce.Run(m, "X", "experiments/none.py", "acc") for m in ("A", "B"))
    reproduce.TABLES["failing"] = reproduce.Table(runs=runs)
    dirs = ["--runs_dir", str(tmp_path / "runs"), "--results_dir", str(tmp_path / "results")]
    _fake_runs(tmp_path / "runs", "failing", {("A", "X"): 0.5})
    assert reproduce.main(["--table", "failing", "--methods", "A", *dirs]) == 0
    path = tmp_path / "results" / "failing.json"
    record = json.loads(path.read_text())
    failed = {"method": "B", "dataset": "X", "metric": "acc", "mean": None, "std": None}
    record["rows"].append(failed | {"n_seeds": 0})
    path.write_text(json.dumps(record))
    assert reproduce.main(["--table", "failing", "--methods", "A", "--merge", *dirs]) == 0
    assert [r["method"] for r in json.loads(path.read_text())["rows"]] == ["A"]


def test_a_variant_a_config_lacks_is_refused_before_any_run(tmp_path, reproduce, capsys):
    """A table whose config has no such variant fails at once, naming the config and its
    variants; `--table all` skips it and runs the others."""
    args = ["--variant", "cpu", "--runs_dir", str(tmp_path), "--results_dir", str(tmp_path)]
    assert reproduce.main(["--table", "classify_mnist", *args]) == 1
    err = capsys.readouterr().err
    assert "experiments/classify_mnist.py has the variants smoke, paper, not 'cpu'" in err
    assert not any(tmp_path.iterdir())
    assert reproduce.missing_variant(reproduce.TABLES["classify_mnist"], "smoke") is None
    assert reproduce.missing_variant(reproduce.TABLES["ng_cnn_generalization"], "cpu") is None
    reproduce.TABLES = {"classify_mnist": reproduce.TABLES["classify_mnist"]}
    assert reproduce.main(["--table", "all", *args]) == 0
    assert "skipping classify_mnist" in capsys.readouterr().out
