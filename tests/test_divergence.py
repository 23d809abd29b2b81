"""The divergence guard (`train.on_divergence`): the rule itself, and a deliberately unstable run
stopped by the CLI with exit code 2, a one-line message and the last good checkpoint intact."""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emtdamp import config as C
from emtdamp.data import load
from emtdamp.divergence import DivergenceError, DivergenceGuard, DivergenceMonitor, grew_past
from emtdamp.loops.centralised import train
from emtdamp.methods import ModelSpec
from emtdamp.methods import registry as method_registry
from emtdamp.methods.base import Algorithm, Method, Predictive, hparam
from emtdamp.methods.registry import register
from emtdamp.runs import load_checkpoint


# --------------------------------------------------------------------------------------------------
# A linear model trained by full-batch gradient descent with a step size past the stability limit
# 2 / λ_max(XᵀX / n): the error along the top eigenvector is multiplied by |1 − lr λ_max| > 1 each
# step, so the loss grows geometrically — a real instability, not a scripted loss curve.
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class UnstableHParams:
    learning_rate: float = hparam(1.0, range=(0.0, 1e6), doc="gradient-descent step size")


def _unstable_method() -> Method:
    def build(model, data, hp) -> Algorithm:
        def init(key):
            return {"w": jnp.zeros((data.n_features, data.n_outputs)), "lr": jnp.asarray(hp.learning_rate)}

        def step(state, batch):
            def loss_fn(w):
                r = (batch.x @ w - batch.y) * batch.w[:, None]
                return jnp.sum(r ** 2) / jnp.maximum(jnp.sum(batch.w), 1.0)

            loss, g = jax.value_and_grad(loss_fn)(state["w"])
            return {"w": state["w"] - state["lr"] * g / 2, "lr": state["lr"]}, {"loss": loss}

        def predict(state, x):
            mean = x @ state["w"]
            return Predictive(mean=mean, var=jnp.ones_like(mean))

        return Algorithm(init=init, step=step, predict=predict)

    return Method(name="unstable_gd", hparams_cls=UnstableHParams, build=build)


def register_unstable() -> None:
    """Register ``unstable_gd`` for the CLI subprocess below (its own process: nothing leaks)."""
    register("unstable_gd")(_unstable_method)


@pytest.fixture
def unstable(monkeypatch):
    """``unstable_gd`` in this process's registry for one test only (other tests list all methods)."""
    monkeypatch.setitem(method_registry._CENTRAL, "unstable_gd", _unstable_method)
    return method_registry.get_method("unstable_gd")


def _unstable_lr(factor: float = 1.6) -> float:
    """Step size with |1 − lr λ_max| = ``factor`` on Boston's standardised training inputs."""
    x = load("boston").x_train.astype(np.float64)
    lam = np.linalg.eigvalsh(x.T @ x / len(x)).max()
    return (1.0 + factor) / lam


# --------------------------------------------------------------------------------------------------
def test_growth_rule():
    assert grew_past(1001.0, 1.0, 1000.0) and not grew_past(999.0, 1.0, 1000.0)
    # a best <= 0 has no ratio: the first value sets the scale
    assert grew_past(10.0, -1.0, 10.0, first=1.0) and not grew_past(8.0, -1.0, 10.0, first=1.0)
    assert not grew_past(50.0, -0.001, 10.0, first=20.0) and grew_past(181.0, 0.0, 10.0, first=20.0)
    m = DivergenceMonitor(DivergenceGuard("stop", 10.0), "m")
    assert m.update(1, 2.0) is None and m.update(2, 1.0) is None and m.update(3, 9.0) is None
    msg = m.update(4, 11.0)
    assert msg is not None and "epoch 4" in msg and "11" in msg and "epoch 2" in msg and m.diverged_at == 4
    assert "nan" in m.update(5, math.nan)
    assert m.update_metric(5, "rmse", 3.0) is None and m.update_metric(6, "rmse", 31.0) is not None
    assert DivergenceMonitor(DivergenceGuard("ignore"), "m").update(1, math.inf) is None
    with pytest.raises(ValueError):
        DivergenceGuard("halt")
    with pytest.raises(ValueError):
        DivergenceGuard("stop", 1.0)


def test_config_rejects_bad_guard_settings():
    base = {"data": {"name": "boston"}, "method": {"name": "adam"}}
    with pytest.raises(C.ConfigError, match="on_divergence"):
        C.from_dict({**base, "train": {"on_divergence": "halt"}}, "x")
    with pytest.raises(C.ConfigError, match="divergence_factor"):
        C.from_dict({**base, "train": {"divergence_factor": 0.5}}, "x")


def test_stop_warn_ignore_in_the_loop(unstable):
    data = load("boston")
    m, hp = unstable, UnstableHParams(learning_rate=_unstable_lr())
    saved = []
    with pytest.raises(DivergenceError) as e:
        train(m, hp, ModelSpec(()), data, epochs=60, batch_size=10_000, progress=False,
              on_checkpoint=lambda s, ep: saved.append(ep), divergence=DivergenceGuard("stop", 1e3))
    # ~1.6² = 2.6-fold growth per epoch: 1000-fold within a dozen epochs, never checkpointed itself
    assert 2 <= e.value.epoch <= 30 and saved == list(range(1, e.value.epoch))
    warned = train(m, hp, ModelSpec(()), data, epochs=e.value.epoch + 2, batch_size=10_000, progress=False,
                   divergence=DivergenceGuard("warn", 1e3))
    assert warned.diverged_at == e.value.epoch and warned.history[-1]["diverged"]
    ignored = train(m, hp, ModelSpec(()), data, epochs=e.value.epoch + 2, batch_size=10_000, progress=False,
                    divergence=DivergenceGuard("ignore"))
    assert ignored.diverged_at is None


def test_cli_stops_an_unstable_run_keeps_last_good_checkpoint(tmp_path, unstable):
    run = tmp_path / "run"
    argv = ["train", str(Path(__file__).parents[1] / "configs" / "boston.yaml"), "method={name: unstable_gd, "
            f"learning_rate: {_unstable_lr()}}}", "model.hidden=[]", "train.epochs=60", "train.batch_size=10000",
            "train.progress=false", "output.checkpoint_every=1", "output.plots=false", f"output.dir={run}"]
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_divergence as t; t.register_unstable(); "
            "from emtdamp.cli import main; sys.exit(main(sys.argv[2:]))")
    p = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), *argv], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    err = [ln for ln in p.stderr.splitlines() if not ln.startswith("note:")]
    assert len(err) == 1 and "Traceback" not in p.stderr, p.stderr
    assert err[0].startswith("emtdamp train: error: unstable_gd diverged at epoch ")
    assert "train loss" in err[0] and "last good" in err[0]
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    bad = records[-1]["epoch"]
    assert records[-1]["diverged"] and f"epoch {bad}:" in err[0]
    assert json.loads((run / "progress.json").read_text())["epoch"] == bad - 1
    assert not (run / "summary.json").exists()
    # the kept checkpoint is exactly the state after the last good epoch
    data = load("boston")
    m = unstable
    hp = UnstableHParams(learning_rate=_unstable_lr())
    ref = train(m, hp, ModelSpec(()), data, epochs=bad - 1, batch_size=10_000, progress=False)
    got = load_checkpoint(run / "checkpoint.npz", ref.state)
    np.testing.assert_allclose(np.asarray(got["w"]), np.asarray(ref.state["w"]), rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(got["w"])))


def test_vmapped_group_stops_naming_the_run(unstable):
    from emtdamp.loops.centralised import train_group

    data = load("boston")
    hp = UnstableHParams(learning_rate=_unstable_lr())
    with pytest.raises(DivergenceError, match=r"run 0 of the vmapped group, train seed 3"):
        train_group(unstable, hp, ModelSpec(()), data, seeds=[3, 4], epochs=60, batch_size=10_000,
                    divergence=DivergenceGuard("stop", 1e3))
