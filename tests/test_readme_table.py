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
    record["merged_from"] = [{"command": "python scripts/reproduce.py --methods MLP"}]
    (tmp_path / "ng_inr_classification.json").write_text(json.dumps(record))
    text = rt.block(tmp_path)  # rows merged from another run: both commands
    assert "--table ng_inr_classification` + `python scripts/reproduce.py --methods MLP` |" in text
    zoos = {
        "rows": [
            {"folder": "zoos/mnist", "kind": "small_cnn", "n": 2000, "wall_s": 600.0,
             "test_accuracy_min": 0.1, "test_accuracy_median": 0.5, "test_accuracy_max": 0.9},
            {"folder": "inrs/mnist", "kind": "inr", "n": 10, "wall_s": None, "psnr_min": 30.0,
             "psnr_median": 40.0, "psnr_max": 50.0, "psnr_mean": 41.0},
        ]
    }  # fmt: skip
    (tmp_path / "zoos.json").write_text(json.dumps(zoos))
    ztext = rt.zoo_block(tmp_path)
    assert "| zoos/mnist | 2,000 | test accuracy 0.100 / 0.500 / 0.900 | 10 min |" in ztext
    assert "| inrs/mnist | 10 | PSNR 30.0 / 40.0 / 50.0 dB (mean 41.0) | - |" in ztext
    bench = {"command": "python scripts/bench_x.py", "commit": "abcdef123", "speedup": {
        "a": 2.0, "b": {"c": 0.5}}, "baseline": {"what": "torch"}}  # fmt: skip
    (tmp_path / "bench_x.json").write_text(json.dumps(bench))
    btext = rt.bench_block(tmp_path)
    assert "| `python scripts/bench_x.py` | a 2.00x, b c 0.50x | torch | `abcdef1` |" in btext
    readme = tmp_path / "README.md"
    readme.write_text(
        f"intro\n{rt.START}\nold\n{rt.END}\nmid\n{rt.ZOO_START}\n{rt.ZOO_END}\n"
        f"{rt.BENCH_START}{rt.BENCH_END}\n{rt.PRE_START}{rt.PRE_END}\n"
    )
    assert rt.main(["--readme", str(readme), "--results_dir", str(tmp_path), "--check"]) == 1
    assert rt.main(["--readme", str(readme), "--results_dir", str(tmp_path)]) == 0
    ptext = rt.pretrained_block(tmp_path)  # no results/pretrained_resnet.json here
    assert "not run: `python scripts/eval_pretrained.py`" in ptext
    assert readme.read_text() == f"intro\n{text}\nmid\n{ztext}\n{btext}\n{ptext}\n"
    readme.write_text(f"{rt.START}\n{rt.END}\n")  # no zoo / bench markers: one clear error
    assert rt.main(["--readme", str(readme), "--results_dir", str(tmp_path)]) == 2


def test_readme_is_current():
    assert rt.main(["--check"]) == 0, "run: python scripts/readme_table.py"
