import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import r2_score

from wsl.train import metrics


def test_accuracy_from_logits_and_labels():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([1, 0, 0, 0])
    assert metrics.accuracy(logits, labels) == 0.75
    assert metrics.accuracy(logits.argmax(-1), labels) == 0.75


def test_mse_r2_kendall():
    rng = np.random.default_rng(0)
    target = rng.normal(size=50)
    pred = target + 0.3 * rng.normal(size=50)
    assert metrics.mse(pred, target) == pytest.approx(np.mean((pred - target) ** 2))
    assert metrics.r2(pred, target) == pytest.approx(r2_score(target, pred))
    assert metrics.r2(target, target) == 1.0
    assert np.isnan(metrics.r2(pred, np.ones(50)))
    tau = scipy.stats.kendalltau(pred, target).statistic
    assert metrics.kendall_tau(pred, target) == pytest.approx(tau)
    assert metrics.kendall_tau(target, target) == 1.0
    assert metrics.kendall_tau(-target, target) == -1.0


def test_mean_std_over_seeds():
    assert metrics.mean_std([0.908, 0.916]) == pytest.approx((0.912, 0.004))
    assert metrics.format_mean_std([0.908, 0.916]) == "0.912 ± 0.004"
    assert metrics.format_mean_std([0.9123]) == "0.912"
    assert metrics.format_mean_std([1.0, 2.0], digits=1) == "1.5 ± 0.5"
