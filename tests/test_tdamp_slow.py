"""Long EM-TDAMP acceptance runs (``pytest -m slow tests/test_tdamp_slow.py``)."""

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _train(name, hidden, epochs, hp_kwargs, batch_size=32, dtype="float32", **data_opts):
    from emtdamp import data as D
    from emtdamp.methods import ModelSpec, get_method
    from emtdamp.train import train

    ds = D.load(name, seed=0, **data_opts)
    m = get_method("emtdamp")
    res = train(m, m.hparams_cls(**hp_kwargs), ModelSpec(hidden=hidden), ds, epochs=epochs,
                batch_size=batch_size, seed=0, dtype=dtype, progress=False, eval_every=epochs)
    return ds, m, res


def _nmse(m, res, ds):
    pred = m.predict(res.state, ds.x_test)
    y = ds.y_test
    return float(np.sum((np.asarray(pred.mean) - y) ** 2) / np.sum((y - y.mean()) ** 2))


def test_boston_final_epoch_nmse():
    """Boston 13-64-1, 90/10 split seed 0, bs 32, 1000 epochs (the paper's horizon), defaults:
    test NMSE at the final epoch <= 0.132 (the paper's EM-TDAMP figure). Measured: 0.0997 (float32)."""
    ds, m, res = _train("boston", (64,), 1000, {})
    assert _nmse(m, res, ds) <= 0.132


def test_teacher_student_prunes_dead_neurons():
    """20-64-1 ReLU teacher with 48 of 64 hidden neurons dead (noise sd 0.1, 2000 training rows):
    the student trained by EM-TDAMP with a 25% kept-group target on the hidden layer prunes >= 40
    hidden neurons and its test MSE is within 20% of the noise floor.

    Status when written: prunes 48, test MSE = 1.99 x floor (fails the 20% criterion; see the report)."""
    ds, m, res = _train("teacher_student", (64,), 150,
                        {"sigma0_sq": 0.01, "prune": "target", "target_density": 0.25, "prune_inputs": False,
                         "warm": 20, "ramp": 30})
    pruned = res.sparsity["neurons_pruned_frac"] * 64
    assert pruned >= 40 - 1e-9
    pred = m.predict(res.state, ds.x_test)
    mse = float(np.mean((np.asarray(pred.mean) - ds.y_test) ** 2))
    assert mse <= 1.2 * ds.info["noise_var_std"], (mse, ds.info["noise_var_std"])


@pytest.mark.parametrize("name,hidden,bs,subset_epochs", [("boston", (64,), 32, 50), ("mnist5k", (128,), 100, 50),
                                                          ("teacher_student", (64,), 32, 50)])
def test_no_nan_full_data_50_epochs(name, hidden, bs, subset_epochs):
    """Full data sets, float32, 50 epochs: every state array finite (the loop checks after every epoch)."""
    import jax
    import jax.numpy as jnp

    _, _, res = _train(name, hidden, subset_epochs, {}, batch_size=bs)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(res.state))
