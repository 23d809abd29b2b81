"""The Python API: emtdamp.fit / emtdamp.load_run / Run.predict, against the CLI and the run's own metrics."""

from __future__ import annotations

import subprocess
import sys

import jax
import numpy as np
import pytest

import emtdamp
from emtdamp import cli
from emtdamp.config import ConfigError
from emtdamp.data import load, model_inputs
from emtdamp.methods import Predictive
from emtdamp.metrics import regression_metrics

BOSTON_ADAM = {"data": {"name": "boston"}, "model": {"hidden": [8]}, "method": {"name": "adam"},
               "train": {"epochs": 3, "batch_size": 64, "progress": False}, "output": {"plots": False}}


def _raw_test_inputs(data) -> np.ndarray:
    tf = data.info["x_transform"]
    return data.x_test.astype(np.float64) * tf["std"] + tf["mean"]


def test_fit_returns_the_run_and_load_run_reopens_it(tmp_path):
    run = emtdamp.fit(BOSTON_ADAM, "method.learning_rate=0.01", run_dir=tmp_path / "r", **{"train.epochs": 4})
    assert run.dir == tmp_path / "r" and run.config.train.epochs == 4
    assert run.config.method.hparams.learning_rate == 0.01
    assert [h["epoch"] for h in run.history] == [1, 2, 3, 4]
    assert np.isfinite(run.summary["test"]["rmse"]) and run.summary["method"] == "adam"
    again = emtdamp.load_run(run.dir)
    assert again.summary == run.summary and again.history == run.history
    for u, v in zip(jax.tree_util.tree_leaves(again.state), jax.tree_util.tree_leaves(run.state), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    # predict on raw test rows reproduces the run's own test metrics (original units)
    data = load("boston", seed=0)
    pred = again.predict(_raw_test_inputs(data))
    assert pred.mean.shape == (51, 1) and pred.sd.shape == (51, 1) and pred.probs is None
    std = Predictive(mean=(pred.mean - data.y_mean) / data.y_std, var=pred.var / data.y_std ** 2)
    m = regression_metrics(std, data.y_test, data.y_mean, data.y_std)
    assert m["rmse"] == pytest.approx(run.summary["test"]["rmse"], rel=1e-5)
    assert m["nll"] == pytest.approx(run.summary["test"]["nll"], rel=1e-5)


def test_load_run_predict_equals_the_cli(tmp_path):
    run = emtdamp.fit(BOSTON_ADAM, run_dir=tmp_path / "r")
    x = np.random.default_rng(0).normal(size=(7, 13)) * 5 + load("boston").info["x_transform"]["mean"]
    np.savez(tmp_path / "x.npz", x=x)
    assert cli.main(["predict", str(run.dir), str(tmp_path / "x.npz"), "--out", str(tmp_path / "p.npz")]) == 0
    p = np.load(tmp_path / "p.npz")
    q = emtdamp.load_run(run.dir).predict(x)   # the same float64 rows the CLI reads from x.npz
    np.testing.assert_array_equal(p["mean"], q.mean)
    np.testing.assert_array_equal(p["var"], q.var)


def test_keyword_overrides_and_config_objects(tmp_path):
    run = emtdamp.fit(BOSTON_ADAM, run_dir=tmp_path / "a", train__epochs=2, model__hidden=[4])
    assert run.config.train.epochs == 2 and run.config.model.hidden == (4,)
    # a Config object and a YAML path go through the same validation
    run2 = emtdamp.fit(run.config, run_dir=tmp_path / "b", **{"train.seed": 3})
    assert run2.config.train.seed == 3 and run2.config.model.hidden == (4,)
    (tmp_path / "c.yaml").write_text("data: {name: boston}\nmethod: {name: adam}\n"
                                     "train: {epochs: 1, progress: false}\n")
    assert emtdamp.fit(tmp_path / "c.yaml", run_dir=tmp_path / "c").config.name == "c"
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['epoch'\]"):
        emtdamp.fit(BOSTON_ADAM, run_dir=tmp_path / "d", train__epoch=2)
    with pytest.raises(TypeError, match="config must be a YAML path"):
        emtdamp.fit(3)
    with pytest.raises(ConfigError, match="resume=True needs the run folder"):
        emtdamp.fit(BOSTON_ADAM, resume=True)


def test_predict_errors_name_the_problem(tmp_path):
    run = emtdamp.fit(BOSTON_ADAM, run_dir=tmp_path / "r")
    with pytest.raises(ValueError, match=r"expects \(n, 13\)"):
        run.predict(np.ones((2, 5)))
    x = np.ones((3, 13))
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match="1 rows of x hold NaN/inf"):
        run.predict(x)
    with pytest.raises(FileNotFoundError, match="is .* a run folder"):
        emtdamp.load_run(tmp_path / "nothing")


def test_run_without_periodic_checkpoints_still_keeps_its_final_state(tmp_path):
    """output.checkpoint: false switches the per-epoch checkpoints off; the final state is written anyway, so
    the folder predicts as the in-memory run does. A folder without it says so in one line."""
    run = emtdamp.fit(BOSTON_ADAM, run_dir=tmp_path / "r", **{"output.checkpoint": False})
    x = np.zeros((2, 13))
    assert run.predict(x).mean.shape == (2, 1)
    assert not (run.dir / "progress.json").exists() and not (run.dir / "checkpoint.prev.npz").exists()
    again = emtdamp.load_run(run.dir)
    assert again.state is not None and again.summary is not None
    np.testing.assert_array_equal(again.predict(x).mean, run.predict(x).mean)
    (run.dir / "checkpoint.npz").unlink()
    with pytest.raises(FileNotFoundError, match="train it again"):
        emtdamp.load_run(run.dir).predict(x)


def test_classification_run_predicts_raw_pixels(tmp_path):
    """mnist5k's raw unit is the 0-255 pixel: predict maps it the way the loader did (x / 255)."""
    cfg = {"data": {"name": "mnist5k"}, "model": {"hidden": [8]}, "method": {"name": "adam"},
           "train": {"epochs": 1, "batch_size": 200, "progress": False}, "output": {"plots": False}}
    run = emtdamp.fit(cfg, run_dir=tmp_path / "m")
    data = run.data
    raw = np.rint(data.x_test[:20].astype(np.float64) * 255.0)
    np.testing.assert_allclose(model_inputs(data, raw), data.x_test[:20], atol=1e-6)
    p = run.predict(raw).probs
    q = run.predictive(data.x_test[:20]).probs
    assert p.shape == (20, 10)
    np.testing.assert_allclose(p, q, atol=1e-5)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)


def test_standardised_pixel_transform_round_trips():
    d = load("mnist5k", standardize=True)
    raw = np.rint(load("mnist5k").x_test[:5].astype(np.float64) * 255.0)
    np.testing.assert_allclose(model_inputs(d, raw), d.x_test[:5], atol=1e-5)


def test_import_emtdamp_does_not_load_jax():
    code = "import sys, emtdamp; print('jax' in sys.modules, callable(emtdamp.fit), 'jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "True"]
