"""Summaries of a predictive mixture: moments, central intervals (mixture quantiles), predictive draws
and entropy, on the host in float64.

The sampling methods' predictive is a mixture over their kept posterior samples (and chains),
``Σ_s w_s N(mean_s, var_s)`` for regression and ``Σ_s w_s probs_s`` for classification
(:class:`emtdamp.methods.base.Mixture`); a Gaussian method (EM-TDAMP, adam) is the one-component case.
Quantiles of a Gaussian mixture have no closed form: :func:`mixture_quantiles` solves
``F(t) = p`` by bisection on the mixture CDF, elementwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import ndtr

from emtdamp.methods.base import Mixture, Predictive

BISECTION_STEPS = 64
"""Halvings of the bracket in :func:`mixture_quantiles` (from ±12 component sd: error < 1e-17 of its width)."""


def as_mixture(pred: Predictive) -> Mixture:
    """A :class:`Predictive` as a one-component mixture (numpy arrays, leading axis of size 1)."""
    if pred.probs is not None:
        return Mixture(weights=np.ones(1), probs=np.asarray(pred.probs)[None])
    return Mixture(weights=np.ones(1), mean=np.asarray(pred.mean)[None], var=np.asarray(pred.var)[None])


def _live(mix: Mixture) -> Mixture:
    """Drop weight-0 components and renormalise (float64 numpy)."""
    w = np.asarray(mix.weights, np.float64)
    keep = w > 0
    if not keep.any():
        raise ValueError("the predictive mixture has no component with positive weight")
    pick = lambda a: None if a is None else np.asarray(a, np.float64)[keep]
    return Mixture(weights=w[keep] / w[keep].sum(), mean=pick(mix.mean), var=pick(mix.var), probs=pick(mix.probs))


def mixture_moments(mix: Mixture) -> Predictive:
    """Mean and variance ``(n, d)`` of a regression mixture (law of total variance), or the mixed ``probs``."""
    m = _live(mix)
    w = m.weights
    if m.probs is not None:
        return Predictive(probs=np.einsum("s,snk->nk", w, m.probs))
    mean = np.einsum("s,snd->nd", w, m.mean)
    var = np.einsum("s,snd->nd", w, m.var + (m.mean - mean) ** 2)
    return Predictive(mean=mean, var=var)


def mixture_cdf(mix: Mixture, t: np.ndarray) -> np.ndarray:
    """``F(t) = Σ_s w_s Φ((t − mean_s) / sd_s)`` elementwise for ``t (n, d)`` (regression mixtures)."""
    m = _live(mix)
    return _cdf(m.weights, m.mean, np.sqrt(np.maximum(m.var, 1e-300)), t)


def _cdf(w: np.ndarray, mean: np.ndarray, sd: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.einsum("s,snd->nd", w, ndtr((np.asarray(t, np.float64)[None] - mean) / sd))


def mixture_quantiles(mix: Mixture, probs: Sequence[float]) -> np.ndarray:
    """Quantiles ``(len(probs), n, d)`` of a regression mixture: ``F(q) = p`` solved by bisection.

    The bracket ``[min_s(mean_s − 12 sd_s), max_s(mean_s + 12 sd_s)]`` holds every quantile with
    ``1e-30 < p < 1 − 1e-30``; :data:`BISECTION_STEPS` halvings pin it to float64 precision.
    """
    if mix.mean is None:
        raise ValueError("quantiles need a regression predictive (classification has probabilities)")
    p = np.asarray(probs, np.float64)
    if np.any((p <= 0) | (p >= 1)):
        raise ValueError(f"quantile levels must lie strictly between 0 and 1, got {list(p)}")
    m = _live(mix)
    sd = np.sqrt(np.maximum(m.var, 1e-300))
    lo0, hi0 = (m.mean - 12 * sd).min(0), (m.mean + 12 * sd).max(0)
    out = []
    for pk in p:
        lo, hi = lo0.copy(), hi0.copy()
        for _ in range(BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            below = _cdf(m.weights, m.mean, sd, mid) < pk
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        out.append(0.5 * (lo + hi))
    return np.stack(out)


def central_intervals(mix: Mixture, levels: Sequence[float]) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """``{level: (lower, upper)}`` central predictive intervals ``(n, d)``: quantiles ``(1 ∓ level) / 2``."""
    lv = [float(v) for v in levels]
    if any(not 0 < v < 1 for v in lv):
        raise ValueError(f"interval levels must lie strictly between 0 and 1 (e.g. 0.5,0.9), got {lv}")
    q = mixture_quantiles(mix, [p for v in lv for p in ((1 - v) / 2, (1 + v) / 2)])
    return {v: (q[2 * i], q[2 * i + 1]) for i, v in enumerate(lv)}


def sample_mixture(mix: Mixture, n_samples: int, seed: int = 0) -> np.ndarray:
    """Posterior-predictive draws: pick a component by weight, then draw from it.

    Regression: ``(n_samples, n, d)`` target draws ``mean_s + sd_s ξ``; classification: ``(n_samples, n)``
    int labels drawn from ``probs_s``. The component is drawn per sample and row.
    """
    m = _live(mix)
    rng = np.random.default_rng(seed)
    s = m.weights.shape[0]
    n = (m.mean if m.mean is not None else m.probs).shape[1]
    comp = rng.choice(s, size=(n_samples, n), p=m.weights)               # (n_samples, n)
    rows = np.arange(n)[None, :]
    if m.probs is not None:
        p = m.probs[comp, rows]                                          # (n_samples, n, K)
        u = rng.random((n_samples, n, 1))
        return np.minimum((np.cumsum(p, axis=-1) < u).sum(-1), p.shape[-1] - 1).astype(np.int64)
    mean, var = m.mean[comp, rows], m.var[comp, rows]                    # (n_samples, n, d)
    return mean + np.sqrt(np.maximum(var, 0.0)) * rng.standard_normal(mean.shape)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Predictive entropy ``−Σ_k p_k log p_k`` in nats, ``probs (n, K) -> (n,)``."""
    p = np.asarray(probs, np.float64)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
