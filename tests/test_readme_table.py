"""scripts/readme_table.py: the README's results block is generated from results/*.json
and kept current (a re-run table whose README block was not regenerated fails here)."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("readme_table", ROOT / "scripts/readme_table.py")
rt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rt)


def test_block_reads_results_and_paper_values(tmp_path):
    record = {
        "variant": "smoke",
        "command": "python scripts/reproduce.py --table ng_inr_classification",
        "rows": [
            {"method": "NG-GNN", "dataset": "MNIST", "metric": "test_accuracy", "mean": 0.5},
            {"method": "NG-GNN", "dataset": "MNIST", "metric": "test_loss", "mean": 1.5},
            {"method": "MLP", "dataset": "Fashion-MNIST", "metric": "test_accuracy", "mean": None},
        ],
        "paper": [
            {"method": "NG-GNN", "dataset": "MNIST", "metric": "test_accuracy", "value": 0.914}
        ],
    }
    (tmp_path / "ng_inr_classification.json").write_text(json.dumps(record))
    text = rt.block(tmp_path)
    line = next(x for x in text.splitlines() if "[ng_inr_classification]" in x)
    assert line.endswith("| MNIST, test_accuracy | NG-GNN 0.500 | NG-GNN 0.914 |")
    assert "test_loss" not in text and "Fashion" not in text  # not a headline / not run
    assert "| canon_mnist | `python scripts/reproduce.py --table canon_mnist` | not run" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{rt.START}\nold\n{rt.END}\nrest\n")
    assert rt.main(["--readme", str(readme), "--results_dir", str(tmp_path), "--check"]) == 1
    assert rt.main(["--readme", str(readme), "--results_dir", str(tmp_path)]) == 0
    assert readme.read_text() == f"intro\n{text}\nrest\n"


def test_readme_is_current():
    assert rt.main(["--check"]) == 0, "run: python scripts/readme_table.py"
