"""The 1-D gap regression set: shapes, an empty gap, the test grid and its gap mask, standardisation."""

import numpy as np
import pytest

from emtdamp.data import dataset_names, load
from emtdamp.data.gap import gap_function


def test_registered_with_its_options():
    assert "gap_1d" in dataset_names()
    with pytest.raises(TypeError, match="unknown option"):
        load("gap_1d", width=2.0)


def test_shapes_dtypes_and_determinism():
    d = load("gap_1d", seed=3, n_train=50, n_test=101, noise=0.2)
    assert d.x_train.shape == (50, 1) and d.y_train.shape == (50, 1)
    assert d.x_test.shape == (101, 1) and d.y_test.shape == (101, 1)
    assert d.x_train.dtype == np.float32 and d.y_test.dtype == np.float32
    assert d.spec.task == "regression" and d.spec.n_features == 1 and d.spec.n_train == 50
    np.testing.assert_array_equal(d.y_train, load("gap_1d", seed=3, n_train=50, n_test=101, noise=0.2).y_train)
    assert not np.array_equal(d.y_train, load("gap_1d", seed=4, n_train=50, n_test=101, noise=0.2).y_train)


def test_gap_holds_no_training_point_and_the_grid_covers_it():
    d = load("gap_1d", seed=0, gap=1.2)
    lo, hi = d.info["gap"]
    assert (lo, hi) == (-1.2, 1.2)
    xr = d.info["x_train_raw"]
    assert not np.any((xr > lo) & (xr < hi))
    assert np.sum(xr < 0) == np.sum(xr > 0) == 60  # two clusters of n_train / 2
    assert xr.min() >= -4 and xr.max() <= 4
    xt = d.info["x_test_raw"]
    np.testing.assert_allclose(xt, np.linspace(-4, 4, len(xt)))
    np.testing.assert_array_equal(d.info["test_in_gap"], (xt > lo) & (xt < hi))
    assert d.info["test_in_gap"].sum() > 0.25 * len(xt)  # the gap is 2.4 / 8 of the grid
    # the same gap in the model's (standardised) input units
    glo, ghi = d.info["gap_std"]
    assert not np.any((d.x_train[:, 0] > glo) & (d.x_train[:, 0] < ghi))
    away = np.minimum(np.abs(xt - lo), np.abs(xt - hi)) > 1e-4  # grid points on an edge: float32 rounding
    in_std = (d.x_test[:, 0] > glo) & (d.x_test[:, 0] < ghi)
    np.testing.assert_array_equal(in_std[away], d.info["test_in_gap"][away])


def test_standardised_with_train_statistics():
    d = load("gap_1d", seed=1, noise=0.3)
    np.testing.assert_allclose(d.x_train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(d.x_train.std(0), 1, atol=1e-5)
    np.testing.assert_allclose(d.y_train.mean(), 0, atol=1e-5)
    np.testing.assert_allclose(d.y_train.std(), 1, atol=1e-5)
    # raw units come back through x_transform / y_mean, y_std
    tr = d.info["x_transform"]
    np.testing.assert_allclose(d.x_test[:, 0] * tr["std"][0] + tr["mean"][0], d.info["x_test_raw"], atol=1e-5)
    assert d.info["noise_var_std"] == pytest.approx(0.09 / d.y_std[0] ** 2)


def test_targets_are_the_function_plus_noise_of_the_stated_sd():
    # 4,000 residuals: the sample sd of N(0, 0.3^2) noise is within 0.3 * (1 +- 5 / sqrt(2 * 4000)) with
    # probability 1 - 6e-7 (5 standard errors), so this bound fails falsely about once in a million runs
    d = load("gap_1d", seed=2, n_train=4000, n_test=11, noise=0.3)
    x = d.info["x_train_raw"]
    y = d.y_train[:, 0].astype(np.float64) * d.y_std[0] + d.y_mean[0]
    sd = np.std(y - gap_function(x))
    assert abs(sd - 0.3) <= 0.3 * 5 / np.sqrt(2 * 4000)
    np.testing.assert_allclose(d.info["f_test"], d.info["x_test_raw"] * np.sin(d.info["x_test_raw"]))


@pytest.mark.parametrize("bad", [{"gap": 0.0}, {"gap": 4.5}, {"noise": 0.0}, {"n_train": 2}])
def test_bad_options_raise(bad):
    with pytest.raises(ValueError, match="gap_1d"):
        load("gap_1d", **bad)
