"""Variable-selection simulations of Ke & Fan's notebooks (spec B.5), with known support.

``r ~ truncnorm(-10, 10)`` of shape ``(n, P + 1)``; ``x_j = (r_0 + r_j) / sqrt(2)`` (pairwise
correlation 0.5), ``e ~ N(0, 1)``:

- ``em_mcmc_ex1``: ``y = tanh(2 tanh(2 x1 - x2)) + 2 tanh(tanh(x3 - 2 x4)) - tanh(2 x5) + e``, P = 1000.
- ``em_mcmc_ex2``: ``y = 5 x2 / (1 + x1^2) + 5 sin(x3 x4) + 2 x5 + e``, P = 2000.
- ``em_mcmc_ex3``: ``y = 1[exp(x1) + x2^2 + 5 sin(x3 x4) - 3 > 0]`` (classification, 2 classes), P = 1000.

The notebooks reseed the generator identically for train and test, so their test noise equals the
first training noise draws (spec B.6.6); here the test set comes from an independent stream
(``SeedSequence(seed).spawn(2)``). ``info["support"]`` lists the 0-based indices of the true inputs;
``info["noise_var"]`` is the noise variance in original units (regression). Regression targets are
standardised by the data module; multiply a standardised MSE by ``y_std**2`` for original units.
"""

from __future__ import annotations

import numpy as np

from emtdamp.data.base import Dataset, make_classification, make_regression
from emtdamp.data.registry import register_dataset


def _design(rng: np.random.Generator, n: int, p: int) -> np.ndarray:
    from scipy.stats import truncnorm  # here, not at import: scipy.stats costs ~1 s (emtdamp list)

    r = truncnorm.rvs(-10.0, 10.0, size=(n, p + 1), random_state=rng)
    return (r[:, :1] + r[:, 1:]) / np.sqrt(2.0)


def _f1(x: np.ndarray) -> np.ndarray:
    return (np.tanh(2 * np.tanh(2 * x[:, 0] - x[:, 1])) + 2 * np.tanh(np.tanh(x[:, 2] - 2 * x[:, 3]))
            - np.tanh(2 * x[:, 4]))


def _f2(x: np.ndarray) -> np.ndarray:
    return 5 * x[:, 1] / (1 + x[:, 0] ** 2) + 5 * np.sin(x[:, 2] * x[:, 3]) + 2 * x[:, 4]


def _f3(x: np.ndarray) -> np.ndarray:
    return np.exp(x[:, 0]) + x[:, 1] ** 2 + 5 * np.sin(x[:, 2] * x[:, 3]) - 3


def _split(seed: int, n_train: int, n_test: int, p: int):
    rng_tr, rng_te = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    x_tr, x_te = _design(rng_tr, n_train, p), _design(rng_te, n_test, p)
    e_tr, e_te = rng_tr.standard_normal(n_train), rng_te.standard_normal(n_test)
    return x_tr, e_tr, x_te, e_te


def _regression(name: str, f, seed: int, n_train: int, n_test: int, p: int) -> Dataset:
    if p < 5:
        raise ValueError(f"{name}: p must be at least 5 (the true inputs are x1..x5), got {p}")
    x_tr, e_tr, x_te, e_te = _split(seed, n_train, n_test, p)
    info = {"support": [0, 1, 2, 3, 4], "noise_var": 1.0, "p": p, "seed": seed,
            "source": "Ke & Fan notebooks (spec B.5), independent test stream"}
    return make_regression(name, x_tr, f(x_tr) + e_tr, x_te, f(x_te) + e_te, info=info, standardize_x=True)


@register_dataset("em_mcmc_ex1")
def em_mcmc_ex1(seed: int = 0, n_train: int = 10240, n_test: int = 1024, p: int = 1000) -> Dataset:
    """Ex1 regression, support x1..x5 (0-based 0..4)."""
    return _regression("em_mcmc_ex1", _f1, seed, n_train, n_test, p)


@register_dataset("em_mcmc_ex2")
def em_mcmc_ex2(seed: int = 0, n_train: int = 10240, n_test: int = 1024, p: int = 2000) -> Dataset:
    """Ex2 regression, support x1..x5 (0-based 0..4)."""
    return _regression("em_mcmc_ex2", _f2, seed, n_train, n_test, p)


@register_dataset("em_mcmc_ex3")
def em_mcmc_ex3(seed: int = 0, n_train: int = 10240, n_test: int = 1024, p: int = 1000) -> Dataset:
    """Ex3 classification (labels 0/1), support x1..x4 (0-based 0..3); features as generated
    (already unit variance)."""
    if p < 5:
        raise ValueError(f"em_mcmc_ex3: p must be at least 5, got {p}")
    x_tr, _, x_te, _ = _split(seed, n_train, n_test, p)
    y_tr, y_te = (_f3(x_tr) > 0).astype(np.int32), (_f3(x_te) > 0).astype(np.int32)
    info = {"support": [0, 1, 2, 3], "p": p, "seed": seed,
            "source": "Ke & Fan notebooks (spec B.5), independent test stream"}
    return make_classification("em_mcmc_ex3", x_tr, y_tr, x_te, y_te, n_classes=2, info=info)
