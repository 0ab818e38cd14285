"""wsl.train.loop on a toy regression task, in process (the CLI tests are in test_main)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from wsl.train import checkpoint, loop

N, D = 64, 3


def toy_config(**train):
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.train = ml_collections.ConfigDict(
        {
            "num_steps": 12,
            "batch_size": 8,
            "eval_every": 4,
            "log_every": 2,
            "checkpoint_every": 5,
            "keep_checkpoints": 2,
            "async_checkpoints": True,
            "nan_at_step": 0,
            "lr": 0.1,
        }
    )
    c.train.update(train)
    return c


def toy_task(config, crash_at=None, poison_at=None, extra=1):
    """Linear regression with a noisy step (the key matters) and a counter in model_state.
    `crash_at`: batch() raises at that step (a simulated kill); `poison_at`: the update
    makes the parameters NaN while the loss stays finite; `extra`: size of an unused
    parameter (another "architecture")."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5], np.float32)
    tx = optax.sgd(config.train.lr)

    def init(key):
        params = {"w": jax.random.normal(key, (D,)), "b": jnp.zeros(()), "e": jnp.zeros(extra)}
        return loop.new_state(params, tx.init(params), key, model_state={"count": jnp.zeros(())})

    def train_step(state, batch, key):
        def loss_fn(p):
            pred = batch["x"] @ p["w"] + p["b"]
            return jnp.mean((pred - batch["y"]) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        grads = jax.tree.map(lambda g: g + 0.01 * jax.random.normal(key, g.shape), grads)
        updates, opt_state = tx.update(grads, state.opt_state)
        params = optax.apply_updates(state.params, updates)
        if poison_at is not None:
            params["b"] = jnp.where(state.step + 1 >= poison_at, jnp.nan, params["b"])
        model_state = {"count": state.model_state["count"] + 1}
        new = state.replace(params=params, opt_state=opt_state, model_state=model_state)
        return new, {"loss": loss}

    def batch(step):
        if crash_at is not None and step == crash_at:
            raise KeyboardInterrupt("simulated kill")
        idx = loop.batch_indices(N, config.train.batch_size, config.seed, step)
        return {"x": x[idx], "y": y[idx]}

    def evaluate(state):
        w = np.asarray(state.params["w"])
        return {"err": float(np.abs(w - [1.0, -2.0, 0.5]).sum())}

    return loop.Task(init, train_step, batch, config.train.batch_size, evaluate)


def test_batch_indices_are_epoch_permutations_and_pure():
    a = [loop.batch_indices(10, 3, 7, s) for s in range(3)]
    assert sorted(np.concatenate(a)) == sorted(np.random.default_rng((7, 0)).permutation(10)[:9])
    assert np.array_equal(
        loop.batch_indices(10, 3, 7, 4), np.random.default_rng((7, 1)).permutation(10)[3:6]
    )
    assert np.array_equal(loop.batch_indices(10, 3, 7, 4), loop.batch_indices(10, 3, 7, 4))
    with pytest.raises(ValueError, match="exceeds"):
        loop.batch_indices(2, 3, 0, 0)


def test_train_writes_metrics_checkpoints_and_config(tmp_path):
    config = toy_config()
    state, final = loop.train(toy_task(config), config, tmp_path)
    assert int(state.step) == 12 and float(state.model_state["count"]) == 12
    assert final["err"] < 1.0
    rows = loop.read_metrics(tmp_path)
    assert [r["step"] for r in rows if r["split"] == "eval"] == [4, 8, 12]
    assert [r["step"] for r in rows if r["split"] == "train"] == [2, 4, 5, 6, 8, 10, 12]
    assert all(np.isfinite(r["loss"]) for r in rows if r["split"] == "train")
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [10, 12]
    assert json.loads((tmp_path / "config.json").read_text())["train"]["num_steps"] == 12
    step, saved = checkpoint.load(tmp_path)
    assert step == 12
    np.testing.assert_array_equal(saved["params"]["w"], state.params["w"])


def test_resume_after_crash_is_bit_identical(tmp_path):
    config = toy_config()
    whole, _ = loop.train(toy_task(config), config, tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        loop.train(toy_task(config, crash_at=8), config, tmp_path / "crash")
    assert checkpoint.load(tmp_path / "crash")[0] == 5
    resumed, _ = loop.train(toy_task(config), config, tmp_path / "crash")
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed), strict=True):
        assert np.array_equal(a, b)
    steps = [r["step"] for r in loop.read_metrics(tmp_path / "crash", "train")]
    assert steps == [2, 4, 5, 6, 8, 10, 12]  # the lines after step 5 were written once


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = toy_config(nan_at_step=7)
    with pytest.raises(loop.NonFiniteError, match="loss is nan at step 7.*step 5"):
        loop.train(toy_task(config), config, tmp_path)
    step, state = checkpoint.load(tmp_path)
    assert step == 5 and all(np.isfinite(x).all() for x in jax.tree.leaves(state))


def test_nan_state_is_never_saved(tmp_path):
    config = toy_config()
    with pytest.raises(loop.NonFiniteError, match="state became NaN or inf at step 10"):
        loop.train(toy_task(config, poison_at=10), config, tmp_path)
    assert checkpoint.load(tmp_path)[0] == 5


def test_workdir_of_another_config_or_architecture(tmp_path):
    config = toy_config(num_steps=5)
    loop.train(toy_task(config), config, tmp_path)
    files = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(
        loop.WorkdirMismatchError, match="train.lr: workdir has 0.1, this run has 0.2"
    ):
        loop.train(
            toy_task(toy_config(num_steps=5, lr=0.2)), toy_config(num_steps=5, lr=0.2), tmp_path
        )
    # same config, other architecture: caught from the checkpoint's shapes
    with pytest.raises(loop.WorkdirMismatchError, match=r"params/e: expected \(\(2,\)"):
        loop.train(toy_task(config, extra=2), config, tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == files


def test_a_task_with_variants_runs_each_step_with_its_own_static_variant(tmp_path):
    """`Task.variant(step)` reaches `train_step` as a static Python value (one compiled
    step per variant), also after a resume."""
    config = toy_config(num_steps=9, eval_every=0)

    def task(crash_at=None):
        base = toy_task(config, crash_at=crash_at)

        def train_step(state, batch, key, variant):
            assert isinstance(variant, int)  # static, not traced
            new, m = base.train_step(state, batch, key)
            count = state.model_state["count"] + 10**variant
            return new.replace(model_state={"count": count}), m

        return dataclasses.replace(base, train_step=train_step, variant=lambda step: step // 3)

    state, _ = loop.train(task(), config, tmp_path / "whole")
    assert float(state.model_state["count"]) == 3 * 1 + 3 * 10 + 3 * 100
    with pytest.raises(KeyboardInterrupt):
        loop.train(task(crash_at=7), config, tmp_path / "crash")
    assert checkpoint.load(tmp_path / "crash")[0] == 5
    resumed, _ = loop.train(task(), config, tmp_path / "crash")
    assert float(resumed.model_state["count"]) == 3 * 1 + 3 * 10 + 3 * 100
