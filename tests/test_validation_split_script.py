"""scripts/validation_split.py: the validation rows come from the training split only, and a variant runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from emtdamp.data import load
from emtdamp.data.real import FASHION_MNIST_DIR

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("validation_split", ROOT / "scripts" / "validation_split.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(x) -> list[tuple]:
    return [tuple(np.round(r, 9)) for r in np.asarray(x, np.float64).reshape(len(x), -1)]


def test_validation_rows_are_training_rows_only(tmp_path):
    mod = _script()
    d = load("boston", seed=1, test_fraction=0.1)
    a = np.load(mod.validation_npz(1, tmp_path))
    assert a["x_train"].shape == (455 - 91, 13) and a["x_test"].shape == (91, 13)
    rows = set(_rows(d.x_train))
    fit_val = np.concatenate([a["x_train"], a["x_test"]])
    assert all(r in rows for r in _rows(fit_val))          # every row is a training row
    assert len(set(_rows(fit_val))) == 455                  # each once: fit and validation disjoint
    np.testing.assert_allclose(np.sort(np.concatenate([a["y_train"], a["y_test"]]).ravel()),
                               np.sort(np.asarray(d.y_train).ravel() * d.y_std[0] + d.y_mean[0]), rtol=1e-6)


def test_mnist5k_validation_images_are_training_images_stratified(tmp_path):
    mod = _script()
    d = load("mnist5k", seed=2)
    a = np.load(mod.validation_npz(2, tmp_path, "mnist5k"))
    assert a["x_train"].shape == (3000, 784) and a["x_test"].shape == (1000, 784)
    y = np.asarray(d.y_train).reshape(-1)
    train_rows = {r: label for r, label in zip(_rows(d.x_train), y, strict=True)}
    test_rows = set(_rows(d.x_test))
    for xs, ys in ((a["x_train"], a["y_train"]), (a["x_test"], a["y_test"])):
        for r, label in zip(_rows(xs), ys, strict=True):
            assert train_rows.get(r) == label and r not in test_rows
    # fit and validation are disjoint and together the whole training split
    assert len(set(_rows(a["x_train"])) | set(_rows(a["x_test"]))) == len(set(train_rows))
    # stratified: each class's validation share within one image of 1,000 x its training share
    share = np.bincount(y, minlength=10) / len(y)
    assert np.all(np.abs(np.bincount(a["y_test"], minlength=10) - 1000 * share) <= 1.0)


FASHION = Path(FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz"


@pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed (make fashion-data)")
def test_fashion_mnist_validation_images_are_training_images_stratified(tmp_path):
    """48,000 fit / 12,000 validation images: together the 60,000 training images (as a multiset of (image, label)
    pairs, compared through their 0-255 pixel bytes), stratified by class."""
    mod = _script()
    d = load("fashion_mnist")
    a = np.load(mod.validation_npz(0, tmp_path, "fashion_mnist"))
    assert a["x_train"].shape == (48000, 784) and a["x_test"].shape == (12000, 784)

    def keys(x, y):
        px = np.rint(np.asarray(x, np.float64) * 255).astype(np.uint8)
        return sorted(r.tobytes() + bytes([int(c)]) for r, c in zip(px, np.asarray(y).reshape(-1), strict=True))

    assert keys(np.concatenate([a["x_train"], a["x_test"]]), np.concatenate([a["y_train"], a["y_test"]])) == \
        keys(d.x_train, d.y_train)
    share = np.bincount(np.asarray(d.y_train).reshape(-1), minlength=10) / 60000
    assert np.all(np.abs(np.bincount(a["y_test"], minlength=10) - 12000 * share) <= 1.0)


def test_one_variant_prints_its_validation_figures(capsys):
    mod = _script()
    assert mod.main([str(ROOT / "configs" / "boston.yaml"), "train.epochs=2", "--data-seeds", "0"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("train.epochs=2 | ") and "mean" in line


def test_a_mnist5k_variant_prints_accuracy_nll_ece(capsys):
    mod = _script()
    assert mod.main([str(ROOT / "configs" / "mnist5k.yaml"), "train.epochs=1", "--dataset", "mnist5k",
                     "--data-seeds", "0"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    acc, nll, ece = (float(v) for v in line.split("| mean ")[1].split(" / "))
    assert 0.5 < acc <= 1.0 and 0.0 < nll < 2.0 and 0.0 <= ece < 0.5, line


def test_mnist5k_standardised_carve_uses_the_fit_images_statistics(tmp_path):
    mod = _script()
    raw = np.load(mod.validation_npz(0, tmp_path, "mnist5k"))
    std = np.load(mod.validation_npz(0, tmp_path, "mnist5k", standardize=True))
    # the spec's (x - mean) / (sd + 0.1), with the mean and sd of the 3,000 fit images only (NumPy by hand)
    mu, sd = raw["x_train"].mean(0), raw["x_train"].std(0) + 0.1
    np.testing.assert_allclose(std["x_train"], (raw["x_train"] - mu) / sd, atol=1e-5)
    np.testing.assert_allclose(std["x_test"], (raw["x_test"] - mu) / sd, atol=1e-5)
    np.testing.assert_array_equal(std["y_test"], raw["y_test"])


def test_standardize_outside_mnist5k_is_a_one_line_usage_error(capsys):
    mod = _script()
    with pytest.raises(SystemExit) as e:
        mod.main([str(ROOT / "configs" / "paper" / "curves_mnist5k_emtdamp.yaml"), "", "--dataset", "boston"])
    assert e.value.code == 2
    assert "standardize" in capsys.readouterr().err.strip().splitlines()[-1]
