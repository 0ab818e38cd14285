"""scripts/diagnostics/record_eval.py: a run folder's rows of one split become a results
record with its command and commit; a split the run never logged is an error."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "record_eval", ROOT / "scripts/diagnostics/record_eval.py"
)
record_eval = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(record_eval)


def test_records_the_rows_of_the_chosen_split(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [
        {"step": 50, "split": "train", "recon": 0.5, "steps_per_s": 3.0},
        {"step": 100, "split": "train", "recon": 0.25, "steps_per_s": 3.5},
        {"step": 100, "split": "eval", "acc_c0": 0.8, "recon_rel_error": 0.1},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = [str(run), "--commit", "abc1234", "--command", "python -m wsl.main --x=1"]
    argv += ["--out", str(tmp_path)]
    record_eval.main(["fit", *argv, "--split", "train", "--metrics", "recon"])
    rec = json.loads((tmp_path / "fit.json").read_text())
    assert rec["rows"] == [{"step": 50, "recon": 0.5}, {"step": 100, "recon": 0.25}]
    assert rec["commit"] == "abc1234" and rec["command"] == "python -m wsl.main --x=1"
    md = (tmp_path / "fit.md").read_text()
    assert "| 100 | 0.2500 |" in md and "`python -m wsl.main --x=1`" in md
    record_eval.main(["ev", *argv])  # default: the eval rows, every metric
    assert json.loads((tmp_path / "ev.json").read_text())["rows"] == [
        {"step": 100, "acc_c0": 0.8, "recon_rel_error": 0.1}
    ]
    with pytest.raises(SystemExit, match="no test rows"):
        record_eval.main(["none", *argv, "--split", "test"])
    assert not (tmp_path / "none.json").exists()


def test_write_tables_rows_with_different_columns(tmp_path):
    rows = [{"params": "raw", "acc": 0.5, "err": 0.25}, {"params": "pretrained", "acc": 0.8}]
    record_eval.write(tmp_path, "probe", rows, "python x.py 1", "abc1234", "what", step=7)
    rec = json.loads((tmp_path / "probe.json").read_text())
    assert rec["rows"] == rows and rec["step"] == 7 and rec["commit"] == "abc1234"
    md = (tmp_path / "probe.md").read_text().splitlines()
    assert "| params | acc | err |" in md
    assert "| raw | 0.5000 | 0.2500 |" in md and "| pretrained | 0.8000 |  |" in md
