"""Metrics shared by every method: accuracy, MSE, R^2, Kendall's tau, and mean +- std over
seeds. Plain numpy/scipy on host arrays (the jitted steps compute their own sums)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.stats


def accuracy(logits_or_labels, labels) -> float:
    """Fraction of correct predictions; the first argument is logits (N, C) or labels (N,)."""
    pred = np.asarray(logits_or_labels)
    if pred.ndim > 1:
        pred = pred.argmax(-1)
    return float(np.mean(pred == np.asarray(labels)))


def mse(pred, target) -> float:
    return float(np.mean((np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2))


def r2(pred, target) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot (nan for a constant target)."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    ss_tot = np.sum((target - target.mean()) ** 2)
    return float(1.0 - np.sum((target - pred) ** 2) / ss_tot) if ss_tot > 0 else float("nan")


def kendall_tau(pred, target) -> float:
    """Kendall's rank correlation tau-b (scipy.stats.kendalltau)."""
    return float(scipy.stats.kendalltau(np.ravel(pred), np.ravel(target)).statistic)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard deviation over seeds (ddof=0; std 0 for a single seed)."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std())


def format_mean_std(values: Sequence[float], digits: int = 3) -> str:
    """'0.912 ± 0.004' over seeds ('0.912' for a single value)."""
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" if len(values) == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"
