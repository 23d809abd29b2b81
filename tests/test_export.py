"""``emtdamp export`` + ``emtdamp.load_exported``: the compacted network equals the run's own plug-in network
(1e-5) with fewer parameters than the dense one, for pruned EM-TDAMP and pruned EM-MCMC; ``compact_dense``
against a brute-force forward pass."""

from __future__ import annotations

import numpy as np
import pytest

import emtdamp
from emtdamp import cli
from emtdamp.models import mlp
from emtdamp.models.mlp import compact_dense


def _raw_rows(run, n=20):
    rng = np.random.default_rng(0)
    rec = run.record
    return np.asarray(rec.x_mean) + np.asarray(rec.x_std) * rng.normal(size=(n, rec.spec.n_features))


def test_compact_dense_is_exact_on_a_network_with_dead_units():
    rng = np.random.default_rng(0)
    layers = [{"kernel": rng.normal(size=(5, 6)), "bias": rng.normal(size=6)},
              {"kernel": rng.normal(size=(6, 4)), "bias": rng.normal(size=4)},
              {"kernel": rng.normal(size=(4, 2)), "bias": rng.normal(size=2)}]
    layers[0]["kernel"][[1, 3]] = 0.0          # inputs 1 and 3 unused
    layers[1]["kernel"][[0, 5]] = 0.0          # hidden units 0 and 5 of layer 1 dead
    layers[2]["kernel"][2] = 0.0               # hidden unit 2 of layer 2 dead
    small, inputs = compact_dense(layers)
    assert list(inputs) == [0, 2, 4]
    assert [p["kernel"].shape for p in small] == [(3, 4), (4, 3), (3, 2)]
    x = rng.normal(size=(9, 5))
    np.testing.assert_allclose(np.asarray(mlp.apply(small, x[:, inputs], "relu")),
                               np.asarray(mlp.apply(layers, x, "relu")), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["emtdamp", "em_mcmc"])
def test_export_round_trip_equals_the_runs_plug_in_network(method, tmp_path):
    if method == "emtdamp":
        cfg = {"data": {"name": "boston"}, "model": {"hidden": [32]},
               "method": {"name": "emtdamp", "prune": "target", "target_density": 0.5, "warm": 1, "ramp": 2},
               "train": {"epochs": 6, "batch_size": 64, "progress": False}, "output": {"plots": False}}
    else:
        cfg = {"data": {"name": "boston"}, "model": {"hidden": [32]},
               "method": {"name": "em_mcmc", "warm_up": 1, "prune_target": 0.5, "steps_per_epoch": 6},
               "train": {"epochs": 4, "batch_size": 64, "progress": False}, "output": {"plots": False}}
    run = emtdamp.fit(cfg, run_dir=tmp_path / "run")
    assert cli.main(["export", str(run.dir), "--out", str(tmp_path / "net")]) == 0
    net = emtdamp.load_exported(tmp_path / "net")
    x_raw = _raw_rows(run)
    x = run.record.model_inputs(x_raw)
    y_mean, y_std = run.record.y_scale
    if method == "emtdamp":
        from emtdamp.tdamp import predict as tdamp_predict
        from emtdamp.tdamp.prune import masked_state  # groups with π < 0.5 dropped, as sparsity counts them
        plug_in = np.asarray(tdamp_predict(masked_state(run.state), x, plug_in=True, task="regression")[0])
    else:
        plug_in = np.asarray(mlp.apply(run.state.params, x, "relu"))
    np.testing.assert_allclose(net.apply(x_raw), plug_in * y_std + y_mean, rtol=1e-5, atol=1e-5)
    dense = 13 * 32 + 32 + 32 + 1
    assert net.n_params == run.summary["sparsity"]["params_remaining"] < dense
    assert net.meta["layer_sizes"][1] < 32 or len(net.meta["inputs"]) < 13   # something was physically removed


def test_export_refuses_what_it_cannot_write(tmp_path, capsys):
    cfg = {"data": {"name": "boston"}, "model": {"hidden": [4]}, "method": {"name": "sghmc"},
           "train": {"epochs": 2, "batch_size": 64, "chains": 2, "progress": False}, "output": {"plots": False}}
    run = emtdamp.fit(cfg, run_dir=tmp_path / "run")
    assert cli.main(["export", str(run.dir), "--out", str(tmp_path / "net")]) == 2
    assert "train.chains=1" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="emtdamp export RUN --out DIR"):
        emtdamp.load_exported(tmp_path)
