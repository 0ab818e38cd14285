"""Data parallelism: 8 forced host devices (in a subprocess: XLA_FLAGS must be set before
jax is imported) give the same step as 1 device on the same global batch."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from wsl.train import parallel

SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import sys
    import jax, ml_collections, numpy as np, optax
    from jax.sharding import PartitionSpec
    from wsl.methods import classify
    from wsl.nn import subjects
    from wsl.train import loop, parallel

    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, 32).astype(np.int32)
    config = ml_collections.ConfigDict(
        {"seed": 0, "train": {"batch_size": 32, "eval_batch_size": 20}})
    models = {
        "SmallCNN+dropout": subjects.SmallCNN(features=8, num_layers=2, dropout=0.3),
        "ResNet+BatchNorm": subjects.ResNet(depth=8, widths=(4, 8, 8)),
    }
    for name, model in models.items():
        out, init = {}, None
        for n in (1, 8):
            mesh = parallel.make_mesh(jax.devices()[:n])
            task = classify.make_task(model, optax.adam(1e-2), (x, y), {"test": (x, y)},
                                      config, mesh)
            if init is None:  # compile init once (slow on CPU), start both from it
                init = jax.device_get(parallel.jit_init(task.init, mesh)(jax.random.key(0)))
            state = parallel.replicate(init, mesh)
            step = parallel.jit_step(loop.make_step(task.train_step), mesh)
            for s in range(3):
                batch = parallel.shard_batch(task.batch(s), mesh)
                assert batch["x"].sharding.spec == PartitionSpec("data")
                assert len(batch["x"].addressable_shards) == n
                state, metrics = step(state, batch)
            assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == n
            out[n] = jax.device_get(
                (state.params, state.model_state, metrics, task.evaluate(state)))
        leaves1, leaves8 = jax.tree.leaves(out[1]), jax.tree.leaves(out[8])
        assert len(leaves1) == len(leaves8) > 0
        for a, b in zip(leaves1, leaves8):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
        print(name, "ok", flush=True)

    try:
        parallel.shard_batch({"x": np.zeros((12, 2))}, parallel.make_mesh())
        sys.exit("no error for a batch of 12 on 8 devices")
    except ValueError as e:
        assert "not divisible by the 8 devices" in str(e), e
    bad = loop.Task(task.init, task.train_step, task.batch, 12)
    try:
        loop.train(bad, ml_collections.ConfigDict({"seed": 0, "train": {"num_steps": 1}}),
                   sys.argv[1])
        sys.exit("no error for a global batch of 12 on 8 devices")
    except loop.UserError as e:
        assert "choose a multiple of 8" in str(e), e
    assert not os.listdir(sys.argv[1])
    print("OK")
    """
)


def test_eight_devices_match_one_device(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1] == "OK"


def test_single_device_batch_checks():
    mesh = parallel.make_mesh()
    parallel.check_batch_size(mesh.devices.size * 4, mesh)
    assert parallel.process_slice(16) == slice(0, 16)


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, False),
        ({"SLURM_NTASKS": "1"}, False),
        ({"SLURM_NTASKS": "16"}, True),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
    ],
)
def test_wants_distributed(env, expected):
    assert parallel.wants_distributed(env) is expected


def test_initialize_off_and_bad_mode():
    assert parallel.initialize("off") is False
    with pytest.raises(ValueError, match="'auto', 'on' or 'off'"):
        parallel.initialize("sometimes")


def test_two_processes_match_one(tmp_path):
    """Multi-host data parallelism, two CPU processes on this machine (gloo collectives):
    each feeds its half of every batch; the result equals a single-process run."""
    import socket

    from wsl.train import checkpoint

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    args = ["--config=experiments/quickstart.py", "--config.train.num_steps=20",
            "--config.train.checkpoint_every=10", "--config.train.eval_every=0"]  # fmt: skip
    cmd = [sys.executable, "-m", "wsl.main", *args]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [
        subprocess.Popen(
            [*cmd, f"--workdir={tmp_path / 'two'}"],
            env={
                **env,
                "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
                "JAX_NUM_PROCESSES": "2",
                "JAX_PROCESS_ID": str(i),
            },  # fmt: skip
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    one = subprocess.run([*cmd, f"--workdir={tmp_path / 'one'}"], env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert one.returncode == 0, one.stderr
    assert [p.returncode for p in procs] == [0, 0], outs
    (step_a, a), (step_b, b) = checkpoint.load(tmp_path / "one"), checkpoint.load(tmp_path / "two")
    assert step_a == step_b == 20
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"]), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
