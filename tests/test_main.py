"""The command line end to end, in subprocesses: kill and resume, NaN, user errors."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from wsl.train import checkpoint, loop

ROOT = Path(__file__).resolve().parents[1]
QUICK = [
    "--config=experiments/quickstart.py",
    "--config.train.num_steps=1500",
    "--config.train.checkpoint_every=100",
    "--config.train.eval_every=500",
]


def cli(*args, env=None):
    """Command and environment for `python -m wsl.main args` from the repo root."""
    return [sys.executable, "-m", "wsl.main", *args], {**os.environ, **(env or {})}


def run(*args, env=None, timeout=300):
    cmd, env = cli(*args, env=env)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def final_params(workdir):
    step, state = checkpoint.load(workdir)
    return step, state["params"]


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.array_equal(x, y)


def test_kill_and_resume_is_bit_identical(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = run(*QUICK, f"--workdir={whole}")
    assert done.returncode == 0, done.stderr

    cmd, env = cli(*QUICK, f"--workdir={killed}")
    # kill twice, each time as soon as a new entry appears in checkpoints/: a finished
    # checkpoint or the temporary folder of one being written (a kill mid-save)
    for _ in range(2):
        seen = {p.name for p in (killed / "checkpoints").glob("[0-9]*")}
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            now = {p.name for p in (killed / "checkpoints").glob("[0-9]*")}
            if now - seen:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (killed / "results.json").exists()

    resumed = run(*QUICK, f"--workdir={killed}")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step" in resumed.stdout
    step_a, a = final_params(whole)
    step_b, b = final_params(killed)
    assert step_a == step_b == 1500
    assert_trees_equal(a, b)
    # the metrics log of the resumed run has each step once
    lines = (killed / "metrics.jsonl").read_text().splitlines()
    steps = [r["step"] for r in map(json.loads, lines) if r["split"] == "train"]
    assert steps == sorted(set(steps))


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path):
    out = run(*QUICK, "--config.train.nan_at_step=250", f"--workdir={tmp_path}")
    assert out.returncode == 1
    assert "error: loss is nan at step 250" in out.stderr
    assert "Traceback" not in out.stderr
    step, params = final_params(tmp_path)
    assert step == 200
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config=experiments/quickstart.py:huge"], "unknown variant 'huge'"),
        (
            ["--config=experiments/quickstart.py", "--config.train.nmu=3"],
            "unknown config key 'train.nmu'; valid keys:",
        ),
        (
            ["--config=experiments/quickstart.py", "--config.method=nope"],
            "unknown method 'nope' (config.method); choose one of [*'classify'",
        ),
        (["--config=experiments/none.py"], "config file not found"),
    ],
)
def test_user_errors_are_one_line(tmp_path, args, message):
    out = run(*args, f"--workdir={tmp_path}")
    assert out.returncode != 0
    assert all(part in out.stderr for part in message.split("*"))  # "*": anything between
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: ")


def test_missing_data_is_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = run(
        "--config=experiments/classify_mnist.py",
        f"--workdir={tmp_path / 'w'}",
        env={"WSL_DATA_DIR": str(empty)},
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: data file not found") and "WSL_DATA_DIR" in last
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_workdir_of_another_config_is_refused_and_kept(tmp_path):
    # a workdir left by a run with 8 features (the training itself is tested in test_loop)
    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "experiments/quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = loop.config_dict(module.get_config())
    config["model"]["kwargs"]["features"] = 8
    checkpoint.write_config(tmp_path, config)
    before = (tmp_path / "config.json").read_text()
    out = run("--config=experiments/quickstart.py", f"--workdir={tmp_path}")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "holds a run of another config" in last
    assert "model.kwargs.features: workdir has 8, this run has 32" in last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    assert (tmp_path / "config.json").read_text() == before


def test_every_experiment_config_loads_in_each_variant():
    """experiments/*.py through wsl.configs (configs that extend another load it the same
    way): every config declares its VARIANTS, each of them builds (as does the default);
    a variant it does not declare (one of scripts/reproduce.py's, or any other) is refused
    with an error naming the variant and the ones it accepts."""
    import ml_collections

    from wsl import configs

    def refusal(path, variant):
        try:
            configs.load(path, variant)
        except ValueError as e:
            return str(e)
        return None

    paths = sorted((ROOT / "experiments").glob("*.py"))
    assert len(paths) > 10
    missing = [p.name for p in paths if not getattr(configs.load_module(p), "VARIANTS", ())]
    assert not missing, f"experiments without a module-level VARIANTS: {missing}"
    for path in paths:
        variants = configs.load_module(path).VARIANTS
        assert isinstance(variants, tuple) and len(set(variants)) == len(variants), path.name
        assert all(isinstance(v, str) and v for v in variants), path.name
        assert isinstance(configs.load(path), ml_collections.ConfigDict), path.name
        for variant in variants:
            config = configs.load(path, variant)
            assert isinstance(config, ml_collections.ConfigDict), (path.name, variant)
        undeclared = {"smoke", "cpu", "paper", "no-such-variant"} - set(variants)
        for variant in sorted(undeclared):
            error = refusal(path, variant)
            assert error is not None, f"{path.name} builds undeclared variant {variant!r}"
            assert error.startswith(f"unknown variant {variant!r}"), (path.name, error)
            assert all(v in error for v in variants), (path.name, error)
    with pytest.raises(FileNotFoundError, match="config file not found"):
        configs.load_module(ROOT / "experiments" / "missing.py")
