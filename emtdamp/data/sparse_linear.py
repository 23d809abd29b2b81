"""Large-p-small-n sparse linear regression of Deng et al. (2019), spec ``baselines.md`` A.5.

``X ~ N_p(0, Σ)`` with ``Σ_ij = corr^{|i−j|}`` (an AR(1) across features, generated exactly by
``x_j = corr·x_{j−1} + sqrt(1 − corr²)·z_j``), ``β = (β1, β2, β3, 0, …, 0)`` with
``β1 ~ N(3, 0.2²)``, ``β2 ~ N(2, 0.2²)``, ``β3 ~ N(1, 0.2²)`` (or exactly 3, 2, 1 with
``random_beta=False``), ``y = Xβ + η``, ``η ~ N(0, noise_var·I)``. No intercept.
"""

from __future__ import annotations

import numpy as np

from emtdamp.data.base import Dataset, make_regression
from emtdamp.data.registry import register_dataset


def ar1_gaussian(rng: np.random.Generator, n: int, p: int, corr: float) -> np.ndarray:
    """``(n, p)`` rows from ``N_p(0, Σ)``, ``Σ_ij = corr^{|i−j|}`` (unit marginal variances)."""
    z = rng.normal(size=(n, p))
    x = np.empty_like(z)
    x[:, 0] = z[:, 0]
    c = np.sqrt(1.0 - corr ** 2)
    for j in range(1, p):
        x[:, j] = corr * x[:, j - 1] + c * z[:, j]
    return x


@register_dataset("sparse_linear")
def sparse_linear(seed: int = 0, n: int = 100, p: int = 1000, n_test: int = 50, corr: float = 0.6,
                  noise_var: float = 3.0, beta_means: tuple[float, ...] = (3.0, 2.0, 1.0),
                  beta_sd: float = 0.2, random_beta: bool = True) -> Dataset:
    """The p = 1000 simulation (defaults: n = 100 train, 50 test rows as in the reference R demo;
    the paper's figure uses 1000 test draws: ``n_test=1000``).

    Features are used as generated (``standardize_x=False``: they already have unit variance);
    targets are standardised by :func:`make_regression` -- the true coefficients in ``info`` are in
    original units (``β_std = β · 1 / y_std``).

    ``info``: ``beta`` (p,), ``support`` (indices of the non-zeros), ``noise_var``, ``corr``.
    """
    if len(beta_means) > p:
        raise ValueError(f"sparse_linear: {len(beta_means)} non-zero coefficients but only p={p} features")
    rng = np.random.default_rng(seed)
    beta = np.zeros(p)
    k = len(beta_means)
    means = np.asarray(beta_means, float)
    beta[:k] = means + (beta_sd * rng.normal(size=k) if random_beta else 0.0)
    x = ar1_gaussian(rng, n + n_test, p, corr)
    y = x @ beta + np.sqrt(noise_var) * rng.normal(size=n + n_test)
    return make_regression("sparse_linear", x[:n], y[:n], x[n:], y[n:], standardize_x=False,
                           info={"beta": beta.tolist(), "support": list(range(k)), "noise_var": noise_var,
                                 "corr": corr, "seed": seed, "n_train": n, "n_test": n_test})
