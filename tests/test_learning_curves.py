"""scripts/diagnostics/learning_curves.py: a table's runs' evaluations become curves (mean
and std over the seeds that logged each step), runs not started are named, bad tables fail
clearly."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "learning_curves", ROOT / "scripts/diagnostics/learning_curves.py"
)
lc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lc)


def _log(workdir: Path, rows) -> None:
    workdir.mkdir(parents=True)
    rows = [{"step": 1, "split": "train", "loss": 2.0}, *rows]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_curves_average_the_seeds_of_each_step(tmp_path, monkeypatch):
    R = lc.reproduce
    table = R.Table(
        runs=(
            R.Run("A", "D", "c.py", "test_acc", seeds=(0, 1), folder="t/A"),
            R.Run("A", "D", "c.py", "test_gap", seeds=(0, 1), folder="t/A"),
            R.Run("B", "D", "c.py", "test_acc", seeds=(0, 1)),  # default folder, never run
        )
    )
    monkeypatch.setitem(R.TABLES, "tiny", table)
    runs = tmp_path / "runs"
    ev = lambda step, acc, gap: {"step": step, "split": "eval", "test_acc": acc, "test_gap": gap}
    _log(runs / "t/A/cpu/seed0", [ev(10, 0.5, 0.1), ev(20, 0.7, 0.2)])
    _log(runs / "t/A/cpu/seed1", [ev(10, 0.6, 0.3)])  # stopped before step 20
    out = tmp_path / "res"
    out.mkdir()
    lc.main(["--table", "tiny", "--runs_dir", str(runs), "--out", str(out)])
    rec = json.loads((out / "tiny_curves_cpu.json").read_text())
    got = {(r["metric"], r["step"]): r for r in rec["rows"]}
    assert set(got) == {("test_acc", 10), ("test_acc", 20), ("test_gap", 10), ("test_gap", 20)}
    assert got["test_acc", 10]["mean"] == pytest.approx(np.mean([0.5, 0.6]))
    assert got["test_acc", 10]["std"] == pytest.approx(np.std([0.5, 0.6]))
    assert got["test_acc", 20] == {
        "method": "A", "dataset": "D", "metric": "test_acc", "step": 20, "mean": 0.7,
        "std": 0.0, "n_seeds": 1,
    }  # fmt: skip
    assert got["test_gap", 10]["mean"] == pytest.approx(0.2)
    assert rec["missing"] == [str(runs / "tiny/B-D/cpu" / f"seed{s}") for s in (0, 1)]
    assert "learning_curves.py" in rec["command"] and rec["table"] == "tiny"
    assert (out / "tiny_curves_cpu.png").stat().st_size > 0
    # one metric for every run, under another name
    lc.main(["--table", "tiny", "--runs_dir", str(runs), "--out", str(out), "--metrics",
             "test_gap", "--name", "gaps"])  # fmt: skip
    rows = json.loads((out / "gaps.json").read_text())["rows"]
    assert [(r["metric"], r["step"]) for r in rows] == [("test_gap", 10), ("test_gap", 20)]


def test_unknown_table_or_no_runs_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="unknown table 'nope'"):
        lc.main(["--table", "nope", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="no evaluations of table sne_cnn"):
        lc.main(["--table", "sne_cnn", "--runs_dir", str(tmp_path), "--out", str(tmp_path)])
    assert not list(tmp_path.glob("*.json"))


def test_merge_keeps_the_curves_of_runs_no_longer_found(tmp_path, monkeypatch):
    """--merge: rows whose runs are gone come from the existing record (with the command
    and commit that made them); rows found now replace theirs; runs kept are not 'missing'."""
    R = lc.reproduce
    table = R.Table(
        runs=(
            R.Run("A", "D", "c.py", "test_acc", seeds=(0,), folder="t/A"),
            R.Run("B", "D", "c.py", "test_acc", seeds=(0,), folder="t/B"),
        )
    )
    monkeypatch.setitem(R.TABLES, "tiny", table)
    runs, out = tmp_path / "runs", tmp_path / "res"
    out.mkdir()
    ev = lambda step, acc: {"step": step, "split": "eval", "test_acc": acc}
    _log(runs / "t/A/cpu/seed0", [ev(10, 0.5)])
    args = ["--table", "tiny", "--runs_dir", str(runs), "--out", str(out)]
    with pytest.raises(SystemExit, match="--merge: .* does not exist"):
        lc.main([*args, "--merge"])
    lc.main(args)
    first = json.loads((out / "tiny_curves_cpu.json").read_text())
    # A's run folder is lost, B has run, A's seed is not rerun
    (runs / "t/A/cpu/seed0/metrics.jsonl").unlink()
    _log(runs / "t/B/cpu/seed0", [ev(10, 0.7), ev(20, 0.8)])
    lc.main([*args, "--merge"])
    rec = json.loads((out / "tiny_curves_cpu.json").read_text())
    got = [(r["method"], r["step"], r["mean"]) for r in rec["rows"]]
    assert got == [("A", 10, 0.5), ("B", 10, 0.7), ("B", 20, 0.8)]
    (src,) = rec["merged_from"]
    assert src["rows"] == ["A/D"] and src["commit"] == first["commit"]
    assert rec["missing"] == []
    assert first["command"] in (out / "tiny_curves_cpu.md").read_text()
    # without --merge the lost run's curve is gone
    lc.main(args)
    rec = json.loads((out / "tiny_curves_cpu.json").read_text())
    assert {r["method"] for r in rec["rows"]} == {"B"} and "merged_from" not in rec
