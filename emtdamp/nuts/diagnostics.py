"""MCMC convergence diagnostics in NumPy: rank-normalised split R-hat and bulk ESS.

Formulas of Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021), "Rank-normalization, folding, and
localization: an improved R-hat for assessing convergence of MCMC", Bayesian Analysis 16(2):

- split: each chain of ``N`` draws becomes two chains of ``N // 2`` (the middle draw of an odd
  chain is dropped, as in ArviZ / Stan);
- rank-normalise: ``z = Φ⁻¹((r − 3/8) / (S + 1/4))`` with ``r`` the average rank of a draw among
  all ``S`` pooled draws;
- R-hat of ``M`` chains of ``n`` draws: ``W`` = mean within-chain variance, ``B/n`` = variance of the
  chain means, ``R̂ = sqrt(((n − 1)/n · W + B/n) / W)``; the rank-normalised split R-hat is
  ``max(R̂(z), R̂(z of the folded draws |x − median x|))``;
- bulk ESS: ``M n / τ̂`` on the rank-normalised split chains, with ``τ̂ = −1 + 2 Σ ρ̂_t`` summed by
  Geyer's initial monotone sequence (Stan's estimator, ``ρ̂_t = 1 − (W − mean_m acov_m(t)) / var⁺``).

All functions take draws shaped ``(chains, draws, ...)`` and return one value per trailing element.
"""

from __future__ import annotations

import numpy as np


def split_chains(x: np.ndarray) -> np.ndarray:
    """``(M, N, ...) -> (2M, N // 2, ...)``: first and last halves of every chain (odd N: middle dropped)."""
    x = np.asarray(x, np.float64)
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half:]], axis=0)


def rank_normalise(x: np.ndarray) -> np.ndarray:
    """Normal scores ``Φ⁻¹((r − 3/8) / (S + 1/4))`` of the average ranks over all ``S = M·N`` pooled draws."""
    x = np.asarray(x, np.float64)
    m, n = x.shape[:2]
    flat = x.reshape(m * n, -1)
    from scipy import special, stats  # here, not at import: scipy.stats costs ~1 s (emtdamp list)

    r = stats.rankdata(flat, axis=0, method="average")
    z = special.ndtri((r - 0.375) / (m * n + 0.25))
    return z.reshape(x.shape)


def _rhat(x: np.ndarray) -> np.ndarray:
    """Classical R-hat of the chains ``x (M, n, ...)`` (no splitting)."""
    n = x.shape[1]
    w = x.var(axis=1, ddof=1).mean(axis=0)
    b_over_n = x.mean(axis=1).var(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(((n - 1) / n * w + b_over_n) / w)


def split_rhat(x: np.ndarray) -> np.ndarray:
    """Rank-normalised split R-hat ``max(bulk, folded)`` of draws ``(M, N, ...)`` (needs ``N >= 4``).

    Returns an array of shape ``x.shape[2:]``; NaN where every draw of an element is equal.
    """
    x = np.asarray(x, np.float64)
    if x.shape[1] < 4:
        raise ValueError(f"split R-hat needs at least 4 draws per chain, got {x.shape[1]}")
    s = split_chains(x)
    bulk = _rhat(rank_normalise(s))
    folded = np.abs(s - np.median(s, axis=(0, 1)))
    tail = _rhat(rank_normalise(folded))
    return np.fmax(bulk, tail)


def _autocov(x: np.ndarray) -> np.ndarray:
    """Biased autocovariance of every chain along axis 1 (FFT), ``(M, n, k) -> (M, n, k)``."""
    n = x.shape[1]
    xc = x - x.mean(axis=1, keepdims=True)
    nfft = 1 << int(np.ceil(np.log2(2 * n)))
    f = np.fft.rfft(xc, n=nfft, axis=1)
    return np.fft.irfft(f * np.conj(f), n=nfft, axis=1)[:, :n] / n


def ess(x: np.ndarray) -> np.ndarray:
    """Effective sample size of the chains ``x (M, n, ...)`` as they are (no splitting/normalising):
    Stan's estimator with Geyer's initial positive and monotone sequences."""
    x = np.asarray(x, np.float64)
    m, n = x.shape[:2]
    out_shape = x.shape[2:]
    xf = x.reshape(m, n, -1)
    acov = _autocov(xf)                                   # (M, n, k)
    mean_var = acov[:, 0].mean(axis=0) * n / (n - 1.0)    # W
    var_plus = mean_var * (n - 1.0) / n
    if m > 1:
        var_plus = var_plus + xf.mean(axis=1).var(axis=0, ddof=1)
    res = np.empty(xf.shape[2])
    for j in range(xf.shape[2]):
        if not np.isfinite(var_plus[j]) or var_plus[j] <= 0:
            res[j] = np.nan
            continue
        rho = 1.0 - (mean_var[j] - acov[:, :, j].mean(axis=0)) / var_plus[j]     # (n,), rho[0] = 1
        rho_t = np.zeros(n)
        rho_t[0] = 1.0
        even, odd = 1.0, rho[1]
        rho_t[1] = odd
        t = 1
        while t < n - 3 and even + odd > 0.0:          # initial positive sequence
            even, odd = rho[t + 1], rho[t + 2]
            if even + odd >= 0:
                rho_t[t + 1], rho_t[t + 2] = even, odd
            t += 2
        max_t = t - 2
        if even > 0:
            rho_t[max_t + 1] = even
        t = 1
        while t <= max_t - 2:                           # initial monotone sequence
            if rho_t[t + 1] + rho_t[t + 2] > rho_t[t - 1] + rho_t[t]:
                rho_t[t + 1] = rho_t[t + 2] = (rho_t[t - 1] + rho_t[t]) / 2.0
            t += 2
        tau = -1.0 + 2.0 * rho_t[: max_t + 1].sum() + rho_t[max_t + 1: max_t + 2].sum()
        tau = max(tau, 1.0 / np.log10(m * n))
        res[j] = m * n / tau
    return res.reshape(out_shape)


def ess_bulk(x: np.ndarray) -> np.ndarray:
    """Bulk ESS of draws ``(M, N, ...)``: :func:`ess` of the rank-normalised split chains (needs ``N >= 4``)."""
    x = np.asarray(x, np.float64)
    if x.shape[1] < 4:
        raise ValueError(f"bulk ESS needs at least 4 draws per chain, got {x.shape[1]}")
    return ess(rank_normalise(split_chains(x)))


def summarise(x: np.ndarray) -> dict:
    """R-hat and bulk-ESS summary over the trailing elements of draws ``(M, N, k)``:
    ``rhat_median``, ``rhat_max``, ``ess_bulk_median``, ``ess_bulk_min`` (floats; constant elements,
    whose R-hat is undefined, are left out; all None when fewer than 4 draws per chain)."""
    x = np.asarray(x, np.float64).reshape(x.shape[0], x.shape[1], -1)
    keys = ("rhat_median", "rhat_max", "ess_bulk_median", "ess_bulk_min")
    if x.shape[1] < 4:
        return dict.fromkeys(keys)
    r, e = split_rhat(x), ess_bulk(x)
    ok = np.isfinite(r) & np.isfinite(e)
    if not ok.any():
        return dict.fromkeys(keys)
    r, e = r[ok], e[ok]
    return {"rhat_median": float(np.median(r)), "rhat_max": float(np.max(r)),
            "ess_bulk_median": float(np.median(e)), "ess_bulk_min": float(np.min(e))}
