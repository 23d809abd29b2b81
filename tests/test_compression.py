"""The paper's compression baselines (group_lasso, group_snip, adam_prune): the κ cut keeps exactly
ceil(κ n) groups per kernel and removed groups stay exactly zero; the group-lasso proximal step and the
group SNIP saliency against NumPy closed forms; the shared target_density knob (EM-MCMC included)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emtdamp import config as C
from emtdamp.data import load
from emtdamp.loops.centralised import train
from emtdamp.methods import Batch, DataSpec, ModelSpec, get_method
from emtdamp.methods.compression import group_norms


@pytest.fixture(scope="module")
def boston():
    return load("boston")


@pytest.mark.parametrize("name,extra", [("group_lasso", {"lam": 0.01, "warm": 2}), ("group_snip", {}),
                                        ("adam_prune", {"prune_epoch": 3})])
def test_cut_hits_the_target_share_and_removed_groups_stay_zero(boston, name, extra):
    m = get_method(name)
    hp = m.hparams_cls(learning_rate=0.01, target_density=0.3, **extra)
    res = train(m, hp, ModelSpec((20, 10)), boston, epochs=8, batch_size=64, progress=False)
    st, algo = res.state, res.algorithm
    n = [13, 20, 10]
    kept = [int(jnp.sum(mk)) for mk in st.masks]
    assert kept == [math.ceil(0.3 * k - 1e-6) for k in n] == [4, 6, 3]
    ks = [p["kernel"] for p in st.params]
    for k, mk in zip(ks, st.masks, strict=True):
        assert np.all(np.asarray(k)[~np.asarray(mk)] == 0.0)        # removed groups are exactly zero
    # more steps on the cut network: masks unchanged, removed groups still zero
    x, y = jnp.asarray(boston.x_train[:64]), jnp.asarray(boston.y_train[:64])
    step = jax.jit(algo.step)
    st2 = st
    for _ in range(5):
        st2, _ = step(st2, Batch(x, y, jnp.ones(64)))
    st2 = jax.jit(algo.end_epoch)(st2, jnp.asarray(9))
    for mk, mk2, k2 in zip(st.masks, st2.masks, [p["kernel"] for p in st2.params], strict=True):
        np.testing.assert_array_equal(np.asarray(mk), np.asarray(mk2))
        assert np.all(np.asarray(k2)[~np.asarray(mk2)] == 0.0)
    sp = algo.sparsity(st2)
    assert sp["group_density"] == pytest.approx(13 / 43)
    # the compacted network: 4 inputs -> 6 -> 3 -> 1 (hidden units of the cut layers' outputs go too)
    assert sp["params_remaining"] <= 4 * 6 + 6 + 6 * 3 + 3 + 3 * 1 + 1


def _linear_spec(d=3):
    return DataSpec(task="regression", n_features=d, n_outputs=1, n_train=8)


def test_group_lasso_proximal_step_matches_numpy():
    """One step from known weights: adam's first update is lr * g / (|g| + eps) per entry, then the group
    soft-threshold w_g (1 - lr λ sqrt(p_g) / ||w_g||)_+ (p_g = 1 output here, so sqrt(p_g) = 1)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    y = rng.normal(size=(8, 1)).astype(np.float32)
    m = get_method("group_lasso")
    hp = m.hparams_cls(learning_rate=0.05, lam=11.0)
    algo = m.build(ModelSpec(()), _linear_spec(), hp)
    st = algo.init(jax.random.PRNGKey(0))
    w0 = np.asarray(st.params[0]["kernel"], np.float64)
    b0 = float(st.params[0]["bias"][0])
    new, _ = algo.step(st, Batch(jnp.asarray(x), jnp.asarray(y), jnp.ones(8)))
    r = x @ w0 + b0 - y                                           # residuals (8, 1)
    g = 2 * x.T @ r / 8                                           # d MSE / dW
    w1 = w0 - 0.05 * g / (np.abs(g) + 1e-8)
    shrink = np.maximum(0.0, 1 - 0.05 * 11.0 * 1.0 / np.linalg.norm(w1, axis=1, keepdims=True))
    np.testing.assert_allclose(np.asarray(new.params[0]["kernel"]), w1 * shrink, rtol=1e-5, atol=1e-6)
    assert np.any(shrink == 0) and np.any(shrink > 0)            # groups reached exact zero, not all


def test_group_snip_keeps_the_groups_with_the_largest_saliency():
    """Saliency of input group i of a linear model = Σ_out |dL/dW_io W_io| on the first minibatch (NumPy)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 5)).astype(np.float32) * np.array([1, 3, 0.1, 2, 0.5], np.float32)
    y = rng.normal(size=(8, 2)).astype(np.float32)
    spec = DataSpec(task="regression", n_features=5, n_outputs=2, n_train=8)
    m = get_method("group_snip")
    algo = m.build(ModelSpec(()), spec, m.hparams_cls(target_density=0.4))
    st = algo.init(jax.random.PRNGKey(3))
    w0 = np.asarray(st.params[0]["kernel"], np.float64)
    r = x @ w0 + np.asarray(st.params[0]["bias"]) - y
    g = 2 * x.T @ r / (8 * 2)                                    # d mean-squared-error / dW
    sal = np.sum(np.abs(g * w0), axis=1)
    new, _ = algo.step(st, Batch(jnp.asarray(x), jnp.asarray(y), jnp.ones(8)))
    assert set(np.flatnonzero(np.asarray(new.masks[0]))) == set(np.argsort(-sal)[:2])
    np.testing.assert_allclose(np.asarray(group_norms(new.params[0]["kernel"]))[~np.asarray(new.masks[0])], 0.0)


def test_adam_prune_epoch_comes_from_the_train_block():
    base = {"data": {"name": "boston"}, "method": {"name": "adam_prune", "finetune_epochs": 3},
            "train": {"epochs": 10}}
    assert C.from_dict(base).method.hparams.prune_epoch == 7
    with pytest.raises(C.ConfigError, match="finetune_epochs=10 >= train.epochs=10"):
        C.from_dict({**base, "method": {"name": "adam_prune", "finetune_epochs": 10}})
    with pytest.raises(ValueError, match="prune_epoch is 0"):
        get_method("adam_prune").build(ModelSpec((4,)), _linear_spec(), get_method("adam_prune").hparams_cls())


def test_em_mcmc_target_density_is_one_minus_prune_target(boston):
    m = get_method("em_mcmc")
    kw = {"warm_up": 1, "steps_per_epoch": 8}
    a = train(m, m.hparams_cls(target_density=0.6, **kw), ModelSpec((10,)), boston, epochs=3, batch_size=64,
              progress=False)
    b = train(m, m.hparams_cls(prune_target=0.4, **kw), ModelSpec((10,)), boston, epochs=3, batch_size=64,
              progress=False)
    assert a.sparsity == b.sparsity and a.sparsity["neurons_pruned_frac"] > 0
    with pytest.raises(ValueError, match="set the same cut twice"):
        m.build(ModelSpec((10,)), boston.spec, m.hparams_cls(target_density=0.6, prune_target=0.4))
