"""Numerical health: every registered method runs 200 epochs on Boston in float32 with no NaN/inf in
its state (slow). Methods run with their default hyperparameters, except where a shipped Boston
config gives the method's settings (the same settings a user starts from)."""

import pytest

from emtdamp import config as C
from emtdamp.data import load
from emtdamp.loops.centralised import train
from emtdamp.methods import ModelSpec, get_method, method_names
from emtdamp.methods.registry import fed_method_names


def _boston_hparams(name: str):
    """The method block for ``name`` from a shipped Boston config, if one names it."""
    for path in ("configs/emtdamp_boston.yaml", "configs/sghmc_sa_boston.yaml", "configs/boston.yaml"):
        raw = C.read_yaml(path)
        base = C.from_dict({k: v for k, v in raw.items() if k != "sweep"}, "h")  # the config's own run first
        for cfg in [base, *(c for _, c in C.expand_sweep(raw, "h"))]:
            if cfg.method.name == name:
                return cfg.method.hparams
    return get_method(name).hparams_cls()


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in method_names() if n not in fed_method_names()])
def test_200_epochs_on_boston_float32_stay_finite(name):
    m = get_method(name)
    res = train(m, _boston_hparams(name), ModelSpec((64,)), load("boston"), epochs=200, batch_size=32,
                dtype="float32", eval_every=20, progress=False)  # train() raises on any non-finite leaf
    assert res.test["rmse"] < 10.0, res.test  # and the model is still a regressor (target sd ~ 9.2)
