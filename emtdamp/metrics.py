"""Test metrics from a predictive distribution, in the data's original units.

Regression: RMSE and Gaussian NLL in original target units (per test point, averaged), and the
EM-TDAMP paper's NMSE = Σ(y − ŷ)² / Σ(y − ȳ)² (unit free). Classification: accuracy, NLL (mean
−log p(true class)) and ECE (15 equal-width confidence bins).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:   # annotations only: this module stays free of JAX (emtdamp.plots imports it)
    from emtdamp.methods.base import Predictive


def regression_metrics(pred: Predictive, y_std_units: np.ndarray, y_mean: np.ndarray,
                       y_std: np.ndarray) -> dict:
    """``pred.mean/var`` and ``y_std_units`` are ``(n, d)`` in standardised units."""
    mean = np.asarray(pred.mean, np.float64) * y_std + y_mean
    var = np.maximum(np.asarray(pred.var, np.float64), 1e-12) * y_std**2
    y = np.asarray(y_std_units, np.float64) * y_std + y_mean
    err = y - mean
    nll = 0.5 * (np.log(2 * np.pi * var) + err**2 / var)
    denom = np.sum((y - y.mean(0)) ** 2)
    z90 = 1.6448536269514722  # central 90 % interval of a Gaussian predictive: mean +- z90 * sd
    return {"rmse": float(np.sqrt(np.mean(err**2))), "nll": float(np.mean(np.sum(nll, axis=1))),
            "nmse": float(np.sum(err**2) / denom) if denom > 0 else float("nan"),
            "mae": float(np.mean(np.abs(err))),
            "coverage90": float(np.mean(np.abs(err) <= z90 * np.sqrt(var)))}


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15):
    """Per equal-width confidence bin: (share of points, mean confidence, accuracy); empty bins NaN."""
    conf = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(np.float64)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    share, mconf, acc = np.zeros(n_bins), np.full(n_bins, np.nan), np.full(n_bins, np.nan)
    for b in range(n_bins):
        m = bins == b
        if m.any():
            share[b], mconf[b], acc[b] = m.mean(), conf[m].mean(), correct[m].mean()
    return share, mconf, acc


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width bins on the top-class confidence."""
    share, mconf, acc = reliability_bins(probs, labels, n_bins)
    ok = share > 0
    return float(np.sum(share[ok] * np.abs(acc[ok] - mconf[ok])))


def classification_metrics(pred: Predictive, labels: np.ndarray) -> dict:
    probs = np.asarray(pred.probs, np.float64)
    labels = np.asarray(labels)
    p_true = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    return {"accuracy": float(np.mean(probs.argmax(1) == labels)), "nll": float(-np.mean(np.log(p_true))),
            "ece": expected_calibration_error(probs, labels)}


def headline(task: str) -> str:
    """The metric a run is judged by: ``rmse`` (regression) or ``accuracy`` (classification)."""
    return "rmse" if task == "regression" else "accuracy"
