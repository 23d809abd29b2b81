"""Long EM-TDAMP acceptance runs (``pytest -m slow tests/test_tdamp_slow.py``)."""

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _train(name, hidden, epochs, hp_kwargs, batch_size=32, dtype="float32", **data_opts):
    from emtdamp import data as D
    from emtdamp.loops.centralised import train
    from emtdamp.methods import ModelSpec, get_method

    ds = D.load(name, seed=0, **data_opts)
    m = get_method("emtdamp")
    res = train(m, m.hparams_cls(**hp_kwargs), ModelSpec(hidden=hidden), ds, epochs=epochs,
                batch_size=batch_size, seed=0, dtype=dtype, progress=False, eval_every=epochs)
    return ds, res.algorithm, res


def _nmse(algo, res, ds):
    pred = algo.predict(res.state, ds.x_test)
    y = ds.y_test
    return float(np.sum((np.asarray(pred.mean) - y) ** 2) / np.sum((y - y.mean()) ** 2))


def test_boston_final_epoch_nmse():
    """Boston 13-64-1, 90/10 split seed 0, bs 32, 1000 epochs (the paper's horizon), defaults:
    test NMSE at the final epoch <= 0.132 (the paper's EM-TDAMP figure). Measured: 0.0997 (float32)."""
    ds, algo, res = _train("boston", (64,), 1000, {})
    assert _nmse(algo, res, ds) <= 0.132


def test_teacher_student_prunes_dead_neurons():
    """20-64-1 ReLU teacher with 48 of 64 hidden neurons dead (noise sd 0.1): the student trained by
    EM-TDAMP prunes >= 40 hidden neurons and its test MSE is within 20% of the noise floor.

    Settings (configs/emtdamp_teacher_student.yaml): 10,000 training rows, bs 32, 100 epochs, slab 0.01,
    PasP forgetting lambda_f = 1 - B/n = 0.997 (prior keeps ~1 epoch of evidence; pure PasP re-counts every
    epoch, the slab variances shrink ~1/epochs and the weights freeze before fitting: 1.96-2.3 x floor),
    30% kept-group target on the hidden layer (20 units kept, 44 pruned; input features not pruned).
    Why 10,000 rows: with the spec's 2,000 rows even the least-squares fit of the true 16-unit network
    started *at the teacher* reaches only 1.21 x floor on this test set (353 parameters: excess ~ p/n =
    0.18), so "within 20%" is beyond the statistical limit there; with 10,000 rows that oracle gets 1.03.
    Measured (float32): 1.130 / 1.138 / 1.118 x floor for train seeds 0 / 1 / 2, 44 pruned, ~20-30 s.
    The floor is the noise variance; the 1000-row test set's own noise mean-square deviates from it by
    sd sqrt(2/1000) = 4.5% (teacher itself: 0.98 x floor here), hence the margin 1.13 vs 1.2 is ~1.6 sd.
    """
    ds, algo, res = _train("teacher_student", (64,), 100,
                           {"sigma0_sq": 0.01, "lambda_f": 0.997, "prune": "target", "target_density": 0.3,
                            "prune_inputs": False, "warm": 20, "ramp": 30}, n_train=10000)
    pruned = res.sparsity["neurons_pruned_frac"] * 64
    assert pruned >= 40 - 1e-9
    pred = algo.predict(res.state, ds.x_test)
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
