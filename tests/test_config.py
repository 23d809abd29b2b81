"""Config validation, overrides and sweep expansion."""

import dataclasses
from pathlib import Path

import pytest

from emtdamp import config as C

BASE = {"data": {"name": "boston"}, "model": {"hidden": [8]}, "method": {"name": "adam"},
        "train": {"epochs": 2, "batch_size": 16}}


def test_valid_config_is_typed_and_frozen():
    cfg = C.from_dict(BASE)
    assert cfg.model.hidden == (8,) and cfg.method.hparams.learning_rate == 1e-3
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 3


@pytest.mark.parametrize("patch,msg", [
    ({"train": {"epochs": 2, "batch_size": 16, "epoch": 3}}, r"train: unknown key\(s\) \['epoch'\]; allowed keys"),
    ({"trian": {}}, r"unknown top-level key\(s\) \['trian'\]"),
    ({"train": {"epochs": "ten"}}, r"train.epochs: expected an integer, got 'ten'"),
    ({"train": {"epochs": 0}}, r"train.epochs: 0 is out of range; allowed \[1, "),
    ({"train": {"dtype": "float16"}}, r"train.dtype: 'float16' is not allowed; choose one of"),
    ({"method": {"name": "adma"}}, r"method.name: unknown method 'adma'; choose one of"),
    ({"method": {"name": "adam", "learning_rate": -1}}, r"method.learning_rate: -1.0 is out of range"),
    ({"method": {"name": "adam", "lr": 0.1}}, r"method: unknown key\(s\) \['lr'\]"),
    ({"model": {"hidden": [8, "x"]}}, r"model.hidden\[1\]: expected an integer"),
    ({"model": {"hidden": [0]}}, r"model.hidden: widths must be >= 1"),
    ({"data": {"name": "bostn"}}, r"data.name: unknown dataset 'bostn'"),
    ({"data": {"name": "boston", "options": {"test_frac": 0.2}}}, r"data.options.test_frac: unknown option"),
    ({"data": {"name": "boston", "options": {"test_fraction": "a"}}}, r"data.options.test_fraction: expected float"),
])
def test_bad_configs_name_the_key_and_what_is_allowed(patch, msg):
    with pytest.raises(C.ConfigError, match=msg):
        C.from_dict({**BASE, **patch})


def test_override_parsing():
    assert C.parse_override("model.hidden=[64,64]") == (["model", "hidden"], [64, 64])
    assert C.parse_override("train.seed=3") == (["train", "seed"], 3)
    assert C.parse_override("method.name=sgd") == (["method", "name"], "sgd")
    assert C.parse_override("output.dir=null") == (["output", "dir"], None)
    # YAML 1.1 reads 1e-4 as text; float fields accept it, other fields still reject it
    assert C.from_dict(C.apply_overrides(BASE, ["method.learning_rate=1e-4"])).method.hparams.learning_rate == 1e-4
    with pytest.raises(C.ConfigError, match="train.epochs: expected an integer, got '1e3'"):
        C.from_dict(C.apply_overrides(BASE, ["train.epochs=1e3"]))
    with pytest.raises(C.ConfigError, match="expected KEY.PATH=VALUE"):
        C.parse_override("train.seed")
    with pytest.raises(C.ConfigError, match="malformed key path"):
        C.parse_override("train..seed=1")
    raw = C.apply_overrides(BASE, ["model.hidden=[64,64]", "train.epochs=20", "train.seed=3"])
    cfg = C.from_dict(raw)
    assert cfg.model.hidden == (64, 64) and cfg.train.epochs == 20 and cfg.train.seed == 3
    assert BASE["model"]["hidden"] == [8]  # the original mapping is untouched


def test_sweep_expands_grid_times_seeds():
    raw = {**BASE, "sweep": {"grid": {"method.name": ["adam", "sgd"], "model.hidden": [[4], [8, 8]]},
                             "seeds": [0, 1, 2]}}
    runs = C.expand_sweep(raw)
    assert len(runs) == 2 * 2 * 3
    labels = [r[0] for r in runs]
    assert len(set(labels)) == 12
    combos = {(c.method.name, c.model.hidden, c.train.seed) for _, c in runs}
    assert ("sgd", (8, 8), 2) in combos and all(c.sweep is None for _, c in runs)
    # whole method blocks can be swept when methods take different hyperparameters
    raw = {**BASE, "sweep": {"grid": {"method": [{"name": "adam", "learning_rate": 0.01},
                                                 {"name": "sgd", "momentum": 0.5}]}}}
    (la, a), (ls, s) = C.expand_sweep(raw)
    assert a.method.hparams.learning_rate == 0.01 and s.method.hparams.momentum == 0.5
    assert la == "method=adam(learning_rate=0.01)" and ls == "method=sgd(momentum=0.5)"
    with pytest.raises(C.ConfigError, match="sweep.grid.foo.bar: key paths start with one of"):
        C.from_dict({**BASE, "sweep": {"grid": {"foo.bar": [1]}}})


def test_shipped_configs_validate():
    for path in sorted(Path("configs").glob("*.yaml")):
        raw = C.read_yaml(path)
        runs = C.expand_sweep(raw, path.stem)
        assert runs, path
        assert C.to_dict(runs[0][1])["method"]["name"] == runs[0][1].method.name


def test_method_cross_field_check_reaches_the_user():
    with pytest.raises(C.ConfigError, match=r"method: warm_up=50 >= train.epochs=10: EM and pruning would never run"):
        C.from_dict({"data": {"name": "boston"}, "method": {"name": "em_mcmc", "warm_up": 50}, "train": {"epochs": 10}})
