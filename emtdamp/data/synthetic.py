"""Synthetic data with known ground truth (pruning and recovery tests)."""

from __future__ import annotations

import numpy as np

from emtdamp.data.base import Dataset, make_regression
from emtdamp.data.registry import register_dataset


@register_dataset("teacher_student")
def teacher_student(seed: int = 0, n_inputs: int = 20, n_hidden: int = 64, n_dead: int = 48,
                    n_train: int = 2000, n_test: int = 1000, noise_std: float = 0.1) -> Dataset:
    """A one-hidden-layer ReLU teacher of which ``n_dead`` hidden neurons are dead.

    A dead neuron has zero outgoing weight (its group in the EM-TDAMP sense is all zero), so a
    student of the same size should prune it. ``x ~ N(0, I)``, ``y = v^T relu(W x + b) + noise``
    with noise ``N(0, noise_std^2)``. ``info`` holds the teacher, the alive mask and the noise floor
    in standardised target units (``noise_var_std``): the best achievable test MSE there.
    """
    if not 0 <= n_dead < n_hidden:
        raise ValueError(f"n_dead must be in [0, n_hidden), got {n_dead} of {n_hidden}")
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 1 / np.sqrt(n_inputs), (n_inputs, n_hidden))
    b1 = rng.normal(0, 0.1, n_hidden)
    alive = np.zeros(n_hidden, bool)
    alive[rng.permutation(n_hidden)[: n_hidden - n_dead]] = True
    w2 = rng.normal(0, 1 / np.sqrt(n_hidden - n_dead), n_hidden) * alive

    def sample(n):
        x = rng.normal(size=(n, n_inputs))
        f = np.maximum(x @ w1 + b1, 0) @ w2
        return x, f + noise_std * rng.normal(size=n)

    xtr, ytr = sample(n_train)
    xte, yte = sample(n_test)
    ds = make_regression("teacher_student", xtr, ytr, xte, yte, standardize_x=False,
                         info={"alive": alive, "w1": w1, "b1": b1, "w2": w2, "noise_var": noise_std ** 2})
    ds.info["noise_var_std"] = float(noise_std ** 2 / ds.y_std[0] ** 2)
    return ds


@register_dataset("linear_gaussian")
def linear_gaussian(seed: int = 0, n_train: int = 200, n_test: int = 1000, p: int = 10, density: float = 1.0,
                    noise_std: float = 0.5) -> Dataset:
    """Linear regression ``y = x^T beta + noise`` with ``x ~ N(0, I)``; a ``density`` share of ``beta``
    is non-zero (``N(0, 1)`` entries). Features are not standardised; ``info["beta"]`` is the truth."""
    rng = np.random.default_rng(seed)
    beta = rng.normal(size=p) * (rng.permutation(p) < max(1, round(density * p)))
    xtr, xte = rng.normal(size=(n_train, p)), rng.normal(size=(n_test, p))
    ytr = xtr @ beta + noise_std * rng.normal(size=n_train)
    yte = xte @ beta + noise_std * rng.normal(size=n_test)
    return make_regression("linear_gaussian", xtr, ytr, xte, yte, standardize_x=False,
                           info={"beta": beta, "noise_var": noise_std ** 2})
