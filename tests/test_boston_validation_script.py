"""scripts/boston_validation.py: the validation rows come from the training split only, and a variant runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from emtdamp.data import load

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("boston_validation", ROOT / "scripts" / "boston_validation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_validation_rows_are_training_rows_only(tmp_path):
    mod = _script()
    d = load("boston", seed=1, test_fraction=0.1)
    a = np.load(mod.validation_npz(1, tmp_path))
    assert a["x_train"].shape == (455 - 91, 13) and a["x_test"].shape == (91, 13)
    rows = {tuple(np.round(r, 9)) for r in np.asarray(d.x_train, np.float64)}
    fit_val = np.concatenate([a["x_train"], a["x_test"]])
    assert all(tuple(np.round(r, 9)) in rows for r in fit_val)          # every row is a training row
    assert len({tuple(np.round(r, 9)) for r in fit_val}) == 455          # each once: fit and validation disjoint
    np.testing.assert_allclose(np.sort(np.concatenate([a["y_train"], a["y_test"]]).ravel()),
                               np.sort(np.asarray(d.y_train).ravel() * d.y_std[0] + d.y_mean[0]), rtol=1e-6)


def test_one_variant_prints_its_validation_figures(capsys):
    mod = _script()
    assert mod.main([str(ROOT / "configs" / "boston.yaml"), "train.epochs=2", "--data-seeds", "0"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("train.epochs=2 | ") and "mean" in line
