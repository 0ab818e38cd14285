"""scripts/launch/launch.py --dry-run prints the SLURM script and the TPU pod commands."""

import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "scripts" / "launch" / "launch.py"
SLURM = [
    "--target",
    "slurm",
    "--config",
    "experiments/classify_mnist.py:paper",
    "--workdir",
    "/shared/runs/classify_mnist",
    "--dry-run",
]
TPU = [
    "--target",
    "tpu",
    "--config",
    "experiments/classify_mnist.py:paper",
    "--workdir",
    "/mnt/shared/runs/classify_mnist",
    "--dry-run",
]


def dry_run(*args):
    out = subprocess.run(
        [sys.executable, str(LAUNCH), *args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def launch():
    spec = importlib.util.spec_from_file_location("launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_slurm_dry_run():
    out = dry_run(
        *SLURM,
        "--nodes",
        "4",
        "--gpus_per_node",
        "4",
        "--partition",
        "gpu",
        "--",
        "--config.train.batch_size=1024",
    )
    assert out.startswith("#!/bin/bash\n")
    for line in [
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --partition=gpu",
        'cd "$SLURM_SUBMIT_DIR"',
    ]:
        assert line + "\n" in out
    (srun,) = [line for line in out.splitlines() if line.startswith("srun ")]
    assert shlex.split(srun)[1:] == [
        "python3",
        "-m",
        "wsl.main",
        "--config=experiments/classify_mnist.py:paper",
        "--workdir=/shared/runs/classify_mnist",
        "--config.distributed=on",
        "--config.train.batch_size=1024",
    ]
    assert "sbatch /shared/runs/classify_mnist/launch.sbatch" in out


def test_tpu_dry_run():
    out = dry_run(*TPU, "--tpu", "pod", "--zone", "europe-west4-a")
    setup, run = [shlex.split(line) for line in out.splitlines() if line.startswith("gcloud")]
    prefix = [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "ssh",
        "pod",
        "--zone=europe-west4-a",
        "--worker=all",
        "--command",
    ]
    assert setup[:-1] == prefix and run[:-1] == prefix
    assert "jax[tpu]" in setup[-1]
    assert "python3 -m wsl.main --config=experiments/classify_mnist.py:paper" in run[-1]
    assert "--config.distributed=on" in run[-1]


def test_examples_are_current_dry_run_outputs(launch, capsys):
    for args, example in [(SLURM, "slurm_example.sbatch"), (TPU, "tpu_example.sh")]:
        assert launch.main(args) == 0
        assert capsys.readouterr().out == (LAUNCH.parent / example).read_text(), example


def test_bad_arguments(launch):
    with pytest.raises(SystemExit):
        launch.main([*SLURM, "stray"])
    with pytest.raises(SystemExit):
        launch.main(["--target", "k8s", "--config", "x", "--workdir", "y"])
