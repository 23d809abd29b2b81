"""Numerical health: every registered method runs 200 epochs on Boston in float32 with no NaN/inf in
its state (slow). Methods run with their default hyperparameters, except where a shipped Boston
config gives the method's settings (the same settings a user starts from)."""

import dataclasses

import pytest

from emtdamp import config as C
from emtdamp.data import load
from emtdamp.loops.centralised import train
from emtdamp.methods import ModelSpec, get_method, method_names
from emtdamp.methods.registry import fed_method_names


def _boston_hparams(name: str):
    """The method block for ``name`` from a shipped Boston config, if one names it."""
    for path in ("configs/emtdamp_boston.yaml", "configs/sghmc_sa_boston.yaml", "configs/boston.yaml",
                 "configs/nuts_boston.yaml", "configs/paper/kappa_boston_adam_prune.yaml"):
        raw = C.read_yaml(path)
        base = C.from_dict({k: v for k, v in raw.items() if k != "sweep"}, "h")  # the config's own run first
        for cfg in [base, *(c for _, c in C.expand_sweep(raw, "h"))]:
            if cfg.method.name == name:
                return cfg.method.hparams
    return get_method(name).hparams_cls()


def _boston_setup(name: str, data, epochs: int):
    """``(hparams, batch_size)`` for ``epochs`` epochs: batch 32 and the hparams above, resolved against the train
    block as the config loader does (``with_train``: adam_prune's cut at ``epochs - finetune_epochs``); nuts is
    full-batch (one epoch = one transition of every chain), its warm-up and draws fitted into the epochs."""
    hp = _boston_hparams(name)
    batch = 32
    if name == "nuts":
        batch = len(data.x_train)
        hp = dataclasses.replace(hp, warmup=epochs // 2, draws=epochs // 2 // hp.thin)
    resolve = getattr(hp, "with_train", None)
    if callable(resolve):
        hp = resolve(C.TrainConfig(epochs=epochs, batch_size=batch))
    return hp, batch


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in method_names() if n not in fed_method_names()])
def test_200_epochs_on_boston_float32_stay_finite(name):
    m = get_method(name)
    data = load("boston")
    hp, batch = _boston_setup(name, data, 200)
    res = train(m, hp, ModelSpec((64,)), data, epochs=200, batch_size=batch,
                dtype="float32", eval_every=20, progress=False)  # train() raises on any non-finite leaf
    assert res.test["rmse"] < 10.0, res.test  # and the model is still a regressor (target sd ~ 9.2)
