"""``model.kind: flax``: the user's own flax.linen / flax.nnx modules in the gradient-based methods.

A temporary module file defines a linen network with a skip connection and an nnx network; each trains with
adam, sghmc_sa and em_mcmc on Boston through the CLI and through ``emtdamp.fit``, reports finite metrics and
sparsity, and ``emtdamp.load_run(dir).predict`` equals ``emtdamp predict``. A flax module with the built-in
MLP's architecture, started from the MLP's initial weights, trains to the same result as ``model.kind: mlp``
(the adapter adds nothing).
"""

from __future__ import annotations

import json
import textwrap

import jax
import numpy as np
import pytest

import emtdamp
from emtdamp import cli
from emtdamp.config import ConfigError
from emtdamp.data import load
from emtdamp.loops.centralised import train
from emtdamp.methods import ModelSpec, get_method
from emtdamp.methods.optax_baselines import OptaxHParams
from emtdamp.models.mlp import to_flax_params

MODULE_SOURCE = textwrap.dedent('''
    import jax
    import flax.linen as nn
    from flax import nnx


    class SkipNet(nn.Module):
        """linen: dense -> dense with a residual skip -> linear output."""
        width: int = 12
        n_outputs: int = 1

        @nn.compact
        def __call__(self, x):
            h = nn.silu(nn.Dense(self.width)(x))
            h = h + nn.silu(nn.Dense(self.width)(h))
            return nn.Dense(self.n_outputs)(h)


    class NnxNet(nnx.Module):
        def __init__(self, n_features, n_outputs, width=12, *, rngs):
            self.inp = nnx.Linear(n_features, width, rngs=rngs)
            self.out = nnx.Linear(width, n_outputs, rngs=rngs)

        def __call__(self, x):
            return self.out(jax.nn.silu(self.inp(x)))


    class MlpLike(nn.Module):
        """the built-in 13-8-1 ReLU MLP's architecture"""
        @nn.compact
        def __call__(self, x):
            return nn.Dense(1, name="Dense_1")(nn.relu(nn.Dense(8, name="Dense_0")(x)))


    class WithBatchNorm(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(1)(nn.BatchNorm(use_running_average=True)(x))


    class WrongOutput(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(x)
''')

BASE = ("data: {name: boston}\nmodel: {kind: flax, module: 'usernets:SkipNet'}\nmethod: {name: adam}\n"
        "train: {epochs: 3, batch_size: 64, progress: false}\noutput: {plots: false}\n")
METHOD_KEYS = {"adam": [], "sghmc_sa": ["method.burn_in=5", "method.thin=2"],
               "em_mcmc": ["method.warm_up=1", "method.burn_in=1", "method.thin=2"]}


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "usernets.py").write_text(MODULE_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.yaml").write_text(BASE)
    return tmp_path


def _raw_test_inputs() -> np.ndarray:
    d = load("boston", seed=0)
    tf = d.info["x_transform"]
    return (d.x_test.astype(np.float64) * tf["std"] + tf["mean"]).astype(np.float32)


@pytest.mark.parametrize("method", list(METHOD_KEYS))
def test_user_flax_modules_train_through_cli_and_fit(user_module, method):
    x_raw = _raw_test_inputs()
    np.savez(user_module / "x.npz", x=x_raw)
    for net in ("SkipNet", "NnxNet"):
        over = [f"method.name={method}", f"model.module=usernets:{net}", *METHOD_KEYS[method]]
        out = user_module / f"cli-{method}-{net}"
        assert cli.main(["train", "base.yaml", *over, f"output.dir={out}"]) == 0
        s = json.loads((out / "summary.json").read_text())
        assert s["model_kind"] == "flax" and s["module"] == f"usernets:{net}"
        assert all(np.isfinite(v) for v in s["test"].values()), s["test"]
        sp = s["sparsity"]
        assert 0.0 <= sp["neurons_pruned_frac"] <= 1.0 and 0.0 <= sp["weights_zero_frac"] <= 1.0
        n_params = 13 * 12 + 12 + 12 * 12 + 12 + 12 + 1 if net == "SkipNet" else 13 * 12 + 12 + 12 + 1
        assert 0 < sp["params_remaining"] <= n_params
        if method == "adam":
            assert sp["params_remaining"] == n_params
        assert cli.main(["predict", str(out), "x.npz", "--out", str(user_module / "p.npz")]) == 0
        p = np.load(user_module / "p.npz")
        q = emtdamp.load_run(out).predict(x_raw)
        np.testing.assert_array_equal(p["mean"], q.mean)
        np.testing.assert_array_equal(p["var"], q.var)
        # the same through the Python API, to the same numbers (same seed, same data order)
        run = emtdamp.fit("base.yaml", *over, run_dir=user_module / f"fit-{method}-{net}")
        assert run.summary["test"] == pytest.approx(s["test"], rel=1e-5)
        np.testing.assert_allclose(run.predict(x_raw).mean, q.mean, rtol=1e-5)


def test_flax_mlp_equals_builtin_mlp_for_adam(user_module):
    """The adapter adds nothing: a flax module with the MLP's architecture, started from the MLP's initial
    weights (flax draws its own initialisation from the key), trains to the same trajectory and predictive."""
    import usernets

    data = load("boston", seed=0)
    hp = OptaxHParams(learning_rate=0.01)
    mlp_spec = ModelSpec(hidden=(8,), activation="relu")
    flax_spec = ModelSpec(kind="flax", module=usernets.MlpLike)
    m_mlp, m_flax = get_method("adam"), get_method("adam")
    kw = dict(epochs=4, batch_size=32, seed=5, eval_every=2, progress=False)
    starts = []   # a host copy of the mlp run's fresh state (the loop donates its device buffers)
    a = train(m_mlp, hp, mlp_spec, data, resume=lambda fresh: (starts.append(jax.device_get(fresh)) or fresh, 0),
              **kw)

    def from_mlp_init(fresh):   # the mlp run's initial weights in the flax layout (adam's moments start at 0)
        return fresh.replace(params=to_flax_params(starts[0].params)["params"]), 0

    b = train(m_flax, hp, flax_spec, data, resume=from_mlp_init, **kw)
    np.testing.assert_allclose([h["train_loss"] for h in a.history], [h["train_loss"] for h in b.history], rtol=1e-5)
    assert b.test == pytest.approx(a.test, rel=1e-5)
    for i, layer in enumerate(a.state.params):
        np.testing.assert_allclose(b.state.params[f"Dense_{i}"]["kernel"], layer["kernel"], rtol=1e-4, atol=1e-6)


def test_flax_model_errors_name_the_fix(user_module, capsys):
    cases = [
        (["model={kind: flax}"], "model.kind=flax needs model.module='package.module:ClassName'"),
        (["model.module=nowhere:Net"], "cannot import 'nowhere'"),
        (["model.module=usernets:Missing"], "has no attribute 'Missing'"),
        (["model.module=usernets"], "give 'package.module:ClassName'"),
        (["model.module=usernets:WithBatchNorm"], "variable collections ['batch_stats'] besides params"),
        (["model.module=usernets:WrongOutput"], "the data need (2, 1)"),
        (["method.name=emtdamp"], "supports model.kind=mlp only (its message passing"),
        (["model.kind=mlp", "model.module=usernets:SkipNet"], "model.module / model.kwargs are for model.kind=flax"),
        (["model.kwargs={depth: 3}"], "cannot build it with model.kwargs={'depth': 3}"),
    ]
    for over, msg in cases:
        assert cli.main(["train", "base.yaml", *over, f"output.dir={user_module / 'bad'}"]) == 2, over
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err, (over, err)
    with pytest.raises(ConfigError, match="needs model.module"):
        emtdamp.fit("base.yaml", "model={kind: flax}")


def test_nnx_instance_is_refused_with_the_reason(user_module):
    import usernets
    from flax import nnx

    from emtdamp.models.flax_adapter import build_flax_network

    spec = ModelSpec(kind="flax", module=usernets.NnxNet(13, 1, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="pass the flax.nnx Module \\*class\\*"):
        build_flax_network(spec, load("boston").spec)


def test_fedavg_trains_a_user_flax_module(user_module):
    out = user_module / "fed"
    assert cli.main(["train", "base.yaml", "method={name: fedavg, n_clients: 3}", "model.module=usernets:NnxNet",
                     "train.epochs=2", f"output.dir={out}"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["method"] == "fedavg" and s["model_kind"] == "flax" and np.isfinite(s["test"]["rmse"])
    assert s["bytes_per_round"] > 0


def test_fit_takes_the_module_class_and_records_its_path(user_module):
    import usernets

    cfg = {"data": {"name": "boston"}, "model": {"kind": "flax", "module": usernets.SkipNet, "kwargs": {"width": 6}},
           "method": {"name": "adam"}, "train": {"epochs": 2, "progress": False}, "output": {"plots": False}}
    run = emtdamp.fit(cfg, run_dir=user_module / "cls")
    assert run.config.model.module == "usernets:SkipNet" and run.summary["module_kwargs"] == {"width": 6}
    assert run.summary["sparsity"]["params_remaining"] == 13 * 6 + 6 + 6 * 6 + 6 + 6 + 1
    again = emtdamp.load_run(run.dir)
    np.testing.assert_array_equal(again.predict(np.zeros((2, 13))).mean, run.predict(np.zeros((2, 13))).mean)

    def local():
        class Inner(usernets.SkipNet):
            pass
        return Inner

    with pytest.raises(ConfigError, match="not a class importable by name"):
        emtdamp.fit({**cfg, "model": {"kind": "flax", "module": local()}}, run_dir=user_module / "bad")
