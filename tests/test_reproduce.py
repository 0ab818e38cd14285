"""scripts/reproduce.py on a tiny registered table (two quickstart seeds; the same
num_steps as test_main, so the step compiled there comes from the compilation cache)."""

import importlib.util
import json
import sys
from pathlib import Path

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
    (row,) = record["rows"]
    assert set(row) == {"method", "dataset", "metric", "mean", "std", "n_seeds"}
    assert row["n_seeds"] == 2 and 0.0 <= row["mean"] <= 1.0 and row["std"] >= 0.0
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
