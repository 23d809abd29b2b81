"""Predictive mixtures (:mod:`emtdamp.predictive`): quantiles against the Gaussian closed form and an
independent mixture CDF (scipy), draws against their own distribution with tolerances from the sample
size, and ``Run.predict``'s intervals and samples against the method's own predictive moments."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from emtdamp.methods.base import Mixture
from emtdamp.predictive import central_intervals, entropy, mixture_moments, mixture_quantiles, sample_mixture


def _two_components():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(3, 7, 2)) * 2.0
    var = rng.uniform(0.1, 2.0, size=(3, 7, 2))
    return Mixture(weights=np.array([0.5, 0.3, 0.2]), mean=mean, var=var)


def test_one_component_quantiles_are_the_gaussian_ones():
    mean, sd = np.array([[1.0, -2.0]]), np.array([[0.5, 3.0]])
    mix = Mixture(weights=np.ones(1), mean=mean[None], var=(sd**2)[None])
    q = mixture_quantiles(mix, [0.05, 0.5, 0.975])
    for i, p in enumerate([0.05, 0.5, 0.975]):
        np.testing.assert_allclose(q[i], mean + sd * norm.ppf(p), rtol=1e-10, atol=1e-10)


def test_mixture_quantiles_invert_the_mixture_cdf():
    mix = _two_components()
    q = mixture_quantiles(mix, [0.05, 0.25, 0.9])
    for i, p in enumerate([0.05, 0.25, 0.9]):
        cdf = sum(w * norm.cdf(q[i], mix.mean[s], np.sqrt(mix.var[s])) for s, w in enumerate(mix.weights))
        np.testing.assert_allclose(cdf, p, atol=1e-10)
    lo, hi = central_intervals(mix, [0.5])[0.5]
    np.testing.assert_allclose(lo, q[1], atol=1e-9)
    assert np.all(hi > lo)


def test_zero_weight_components_are_ignored():
    mix = _two_components()
    padded = Mixture(weights=np.array([0.5, 0.3, 0.2, 0.0]), mean=np.concatenate([mix.mean, mix.mean[:1] + 100]),
                     var=np.concatenate([mix.var, mix.var[:1]]))
    np.testing.assert_allclose(mixture_quantiles(padded, [0.9]), mixture_quantiles(mix, [0.9]), atol=1e-12)
    np.testing.assert_allclose(mixture_moments(padded).mean, mixture_moments(mix).mean, atol=1e-12)


def test_regression_draws_cover_the_central_interval_at_its_level():
    """20,000 draws per cell: the share inside the 90 % interval has sd sqrt(0.09 / 20000) = 0.0021;
    the bound is 5 sd."""
    mix = _two_components()
    n = 20_000
    draws = sample_mixture(mix, n, seed=1)
    assert draws.shape == (n, 7, 2)
    lo, hi = central_intervals(mix, [0.9])[0.9]
    inside = np.mean((draws >= lo) & (draws <= hi), axis=0)
    assert np.all(np.abs(inside - 0.9) < 5 * np.sqrt(0.09 / n))
    mom = mixture_moments(mix)
    np.testing.assert_allclose(draws.mean(0), mom.mean, atol=5 * np.sqrt(mom.var.max() / n))
    np.testing.assert_array_equal(sample_mixture(mix, 5, seed=3), sample_mixture(mix, 5, seed=3))


def test_label_draws_follow_the_mixed_probabilities():
    """Frequencies of 20,000 label draws per row vs the mixed probabilities: sd <= 0.5/sqrt(n), bound 5 sd."""
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(4), size=(2, 5))                 # (S=2, n=5, K=4)
    mix = Mixture(weights=np.array([0.7, 0.3]), probs=probs)
    n = 20_000
    labels = sample_mixture(mix, n, seed=0)
    assert labels.shape == (n, 5) and labels.min() >= 0 and labels.max() <= 3
    freq = np.stack([(labels == k).mean(0) for k in range(4)], axis=-1)
    np.testing.assert_allclose(freq, mixture_moments(mix).probs, atol=5 * 0.5 / np.sqrt(n))
    np.testing.assert_allclose(entropy(np.array([[0.5, 0.5], [1.0, 0.0]])), [np.log(2.0), 0.0], atol=1e-12)


def test_bad_levels_are_refused():
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        central_intervals(_two_components(), [0.9, 1.0])


def test_run_predict_intervals_and_samples_match_the_method(tmp_path):
    """A 2-chain sghmc run on Boston: the mixture's moments are the method's own predictive, its 90 %
    interval brackets the mean, and the draws' spread matches the predictive variance."""
    import emtdamp

    cfg = {"data": {"name": "boston"}, "model": {"hidden": [16]}, "method": {"name": "sghmc", "burn_in": 20,
                                                                           "thin": 2, "n_samples": 5},
           "train": {"epochs": 8, "batch_size": 64, "chains": 2, "progress": False},
           "output": {"plots": False}}
    run = emtdamp.fit(cfg, run_dir=tmp_path / "r")
    tr = run.data.info["x_transform"]   # raw rows from the standardised test inputs and the recorded transform
    x_raw = run.data.x_test * np.asarray(tr["std"]) + np.asarray(tr["mean"])
    pred = run.predict(x_raw, levels=(0.5, 0.9), n_samples=4000, seed=0)
    mix = run.mixture(run.data.x_test)
    assert mix.weights.shape == (2 * 5,) and abs(mix.weights.sum() - 1) < 1e-6
    mom = mixture_moments(mix)
    y_std = run.data.y_std
    np.testing.assert_allclose(mom.mean * y_std + run.data.y_mean, pred.mean, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(mom.var * y_std**2, pred.var, rtol=1e-3)
    lo9, hi9 = pred.intervals[0.9]
    lo5, hi5 = pred.intervals[0.5]
    assert np.all((lo9 < lo5) & (lo5 < pred.mean) & (pred.mean < hi5) & (hi5 < hi9))
    assert pred.samples.shape == (4000, *pred.mean.shape)
    # sample variance of 4000 draws: relative sd ~ sqrt(2/4000 * kurtosis) < 0.1; bound 0.25 on every row
    np.testing.assert_allclose(pred.samples.var(0), pred.var, rtol=0.25)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        run.predict(x_raw[:2], levels=(1.5,))
