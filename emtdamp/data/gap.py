"""A 1-D regression with a gap in the training inputs: does predictive uncertainty grow between the data?

``y = f(x) + noise`` with ``f(x) = x sin x`` and noise ``N(0, noise^2)`` (raw units). Training inputs are
drawn half from ``U[-4, -gap]`` and half from ``U[gap, 4]`` (defaults: ``gap = 1.5``, ``noise = 0.1``), so the
interval ``(-gap, gap)`` holds no training point; test inputs are an evenly spaced grid over ``[-4, 4]`` (both
clusters and the gap) with their own noise draws. A posterior that knows what it has not seen (NUTS on a small
ReLU MLP) has a predictive sd in the gap well above its sd on the training inputs ("in-between uncertainty",
Foong et al. 2019); a point estimate plus residual variance has the same sd everywhere.

Why these defaults: ``x sin x`` is non-monotone on each cluster (a network needs hidden units for it, a
line does not fit), and inside the gap it dips from 1.5 at the edges to 0 at the centre, away from the
straight line between the clusters, so a confident interpolation is wrong there. Noise sd 0.1 and gap
``(-1.5, 1.5)`` (3/8 of the input range, 120 training points) make the check sensitive: the predictive sd
on the training inputs is then mostly noise, so the gap / train sd ratio measures the epistemic part. A
BlackJAX NUTS probe (1-50-1 ReLU, all weights N(0, 1), noise sd HalfNormal(1) in standardised units,
3 chains x 600 draws after 600 warm-up) gave a gap / train predictive-sd ratio of 3.5 with these
defaults, 1.5 with ``gap=1, noise=0.3`` and 2.1 with ``gap=1, noise=0.15``.
"""

from __future__ import annotations

import numpy as np

from emtdamp.data.base import Dataset, make_regression
from emtdamp.data.registry import register_dataset

X_MAX = 4.0  # inputs live in [-X_MAX, X_MAX] (raw units)


def gap_function(x: np.ndarray) -> np.ndarray:
    """The noise-free target ``f(x) = x sin x`` (raw units), elementwise."""
    return x * np.sin(x)


@register_dataset("gap_1d")
def gap_1d(seed: int = 0, n_train: int = 120, n_test: int = 201, noise: float = 0.1, gap: float = 1.5) -> Dataset:
    """1-D regression with no training input in ``(-gap, gap)``.

    Parameters
    ----------
    seed: draws the training inputs and all noise.
    n_train: training rows; ``n_train // 2`` in ``U[-4, -gap]``, the rest in ``U[gap, 4]``.
    n_test: points of the evenly spaced test grid on ``[-4, 4]`` (covers both clusters and the gap).
    noise: observation noise sd (raw target units).
    gap: half-width of the empty interval around 0 (raw input units), in ``(0, 4)``.

    Returns
    -------
    Dataset with ``x_*`` ``(n, 1)`` and ``y_*`` ``(n, 1)`` standardised with train statistics (like every
    regression set). ``info`` holds ``gap`` = ``(lo, hi)`` in raw input units, ``gap_std`` the same
    interval in model-input (standardised) units, ``test_in_gap`` ``(n_test,)`` bool (test point strictly
    inside the gap), ``x_train_raw`` / ``x_test_raw`` ``(n,)``, ``f_test`` ``(n_test,)`` the noise-free
    target on the grid (raw units), ``noise_var`` (raw) and ``noise_var_std`` (standardised units).
    """
    if not 0 < gap < X_MAX:
        raise ValueError(f"gap_1d: gap must be in (0, {X_MAX}), got {gap}")
    if n_train < 4 or n_test < 2:
        raise ValueError(f"gap_1d: need n_train >= 4 and n_test >= 2, got {n_train}, {n_test}")
    if not noise > 0:
        raise ValueError(f"gap_1d: noise must be > 0, got {noise}")
    rng = np.random.default_rng(seed)
    n_left = n_train // 2
    x_tr = np.concatenate([rng.uniform(-X_MAX, -gap, n_left), rng.uniform(gap, X_MAX, n_train - n_left)])
    x_te = np.linspace(-X_MAX, X_MAX, n_test)
    y_tr = gap_function(x_tr) + noise * rng.normal(size=n_train)
    y_te = gap_function(x_te) + noise * rng.normal(size=n_test)
    info = {"gap": (-float(gap), float(gap)), "test_in_gap": (x_te > -gap) & (x_te < gap),
            "x_train_raw": x_tr, "x_test_raw": x_te, "f_test": gap_function(x_te), "noise_var": noise**2,
            "function": "x sin x"}
    ds = make_regression("gap_1d", x_tr[:, None], y_tr, x_te[:, None], y_te, info=info)
    mx, sx = ds.info["x_transform"]["mean"][0], ds.info["x_transform"]["std"][0]
    ds.info["gap_std"] = (float((-gap - mx) / sx), float((gap - mx) / sx))
    ds.info["noise_var_std"] = float(noise**2 / ds.y_std[0] ** 2)
    return ds
