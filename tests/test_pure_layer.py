"""The public pure layer: SGHMC-SA / SGLD-SA over any params pytree with a user log-likelihood
(:mod:`emtdamp.sgmcmc.sa`) and EM-MCMC's group prior restricted by a filter on the params tree.

References: a closed-form gradient of the energy (one near-noiseless SGLD step, NumPy, float64), the
registered ``sghmc_sa`` method (a separate composition of the same kernels, trajectory for trajectory),
and a short EM-MCMC run checking that only the selected kernel gets groups and is pruned.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from emtdamp.em_mcmc import em_mcmc, flax_group_spec
from emtdamp.methods import Batch, DataSpec, ModelSpec, get_method
from emtdamp.methods.sgmcmc_methods import SGMCMCHParams
from emtdamp.models import mlp
from emtdamp.pytrees import is_kernel
from emtdamp.sgmcmc import sa_sampler, selected_indices, sghmc_sa


def _in(name):
    """A filter picking the leaves under the top-level key ``name``."""
    return lambda path, leaf: getattr(path[0], "key", None) == name


def test_one_step_matches_the_closed_form_energy_gradient():
    """SGLD-SA at inv_temp 1e14 (noise std ~1e-8) moves θ by −ε ∇U; ∇U by hand: Gaussian likelihood,
    SSGL on the selected kernel ``a`` (κ1 θ/σ² + κ0 sign θ/σ), N·wd·θ on the unselected kernel ``b``
    and on the bias."""
    rng = np.random.default_rng(0)
    n_data, n, s2 = 200, 16, 0.7
    x = rng.normal(size=(n, 3))
    y = rng.normal(size=(n,))
    w = np.ones(n)
    w[-3:] = 0.0                                               # padding rows count for nothing
    with jax.enable_x64(True):
        params = {"a": {"kernel": jnp.asarray(rng.normal(size=(3, 2)))},
                  "b": {"kernel": jnp.asarray(rng.normal(size=(2, 1))), "bias": jnp.asarray([0.3])}}

        def loglik(p, batch):
            f = (batch.x @ p["a"]["kernel"]) @ p["b"]["kernel"] + p["b"]["bias"]
            return -((batch.y - f[:, 0]) ** 2) / (2 * s2)

        alg = sa_sampler(loglik, n_data, select=_in("a"), sampler="sgld")
        st = alg.init(params, learning_rate=1e-4, inv_temp=1e14, weight_decay=3e-3, kappa0=0.4, kappa1=2.0,
                      sigma=1.5, omega_mode="none")
        batch = Batch(jnp.asarray(x), jnp.asarray(y), jnp.asarray(w))
        new, info = jax.jit(alg.step)(jax.random.PRNGKey(1), st, batch)
        A, B, c = (np.asarray(params["a"]["kernel"]), np.asarray(params["b"]["kernel"]),
                   float(params["b"]["bias"][0]))
    h = x @ A
    r = (y - (h @ B)[:, 0] - c) * w                            # weighted residuals
    scale = n_data / w.sum()
    gA = -scale * (x.T @ (r[:, None] * B[:, 0][None, :])) / s2 + 2.0 * A / 1.5**2 + 0.4 * np.sign(A) / 1.5
    gB = -scale * (h.T @ r)[:, None] / s2 + n_data * 3e-3 * B
    gc = -scale * r.sum() / s2 + n_data * 3e-3 * c
    np.testing.assert_allclose(np.asarray(new.position["a"]["kernel"]), A - 1e-4 * gA, atol=1e-6)
    np.testing.assert_allclose(np.asarray(new.position["b"]["kernel"]), B - 1e-4 * gB, atol=1e-6)
    np.testing.assert_allclose(float(new.position["b"]["bias"][0]), c - 1e-4 * gc, atol=1e-6)
    assert float(info.step_size) == pytest.approx(1e-4)
    # ω ≡ 0: latents untouched; one latent array per selected leaf
    assert len(new.latents.kappa0) == 1 and new.latents.kappa0[0].shape == (3, 2)
    np.testing.assert_array_equal(np.asarray(new.latents.kappa0[0]), 0.4)


@pytest.mark.parametrize("sa_every", [1, 3])
def test_sghmc_sa_pure_layer_equals_the_registered_method(sa_every):
    """On an MLP classifier with every kernel selected, the pure sampler fed the method's own noise keys
    follows the registered ``sghmc_sa`` exactly (same energy, move, SA update and schedules), also with the
    latents updated every third step only."""
    rng = np.random.default_rng(3)
    n, d, k = 64, 5, 3
    x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    y = jnp.asarray(rng.integers(0, k, size=n), jnp.int32)
    spec = DataSpec(task="classification", n_features=d, n_outputs=k, n_train=n)
    hp = SGMCMCHParams(learning_rate=2e-3, weight_decay=1e-3, omega_z=1.0, sa_every=sa_every)
    algo = get_method("sghmc_sa").build(ModelSpec(hidden=(8,)), spec, hp)
    ms = algo.init(jax.random.PRNGKey(0))

    def loglik(p, batch):
        return -optax.softmax_cross_entropy_with_integer_labels(mlp.apply(p, batch.x, "relu"), batch.y)

    pure = sghmc_sa(loglik, n, sa_every=sa_every)
    ps = pure.init(ms.params, learning_rate=2e-3, weight_decay=1e-3, omega_z=1.0)
    assert selected_indices(ms.params, is_kernel) == (1, 3)   # [bias0, kernel0, bias1, kernel1]
    m_step, p_step = jax.jit(algo.step), jax.jit(pure.step)
    for _ in range(12):
        idx = jnp.asarray(rng.choice(n, 16, replace=False))
        batch = Batch(x[idx], y[idx], jnp.ones(16, jnp.float32))
        k_noise = jax.random.split(ms.rng)[1]
        ms, _ = m_step(ms, batch)
        ps, info = p_step(k_noise, ps, batch)
    for a, b in zip(jax.tree_util.tree_leaves(ms.params), jax.tree_util.tree_leaves(ps.position), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    for a, b in zip(ms.latents.log_rho + ms.latents.kappa0, ps.latents.log_rho + ps.latents.kappa0, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ms.latents.sigma2), np.asarray(ps.latents.sigma2), rtol=1e-6)
    assert int(ps.count) == 12 and float(info.omega) < 1.0


def test_sa_sampler_refuses_bad_arguments():
    with pytest.raises(ValueError, match="sampler must be"):
        sa_sampler(lambda p, b: jnp.zeros(1), 10, sampler="nuts")
    with pytest.raises(ValueError, match="sa_every must be >= 1"):
        sa_sampler(lambda p, b: jnp.zeros(1), 10, sa_every=0)
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        sghmc_sa(lambda p, b: jnp.zeros(1), 10).init({"kernel": jnp.ones((2, 2))}, learning_rate=0.0)


def test_em_mcmc_group_prior_acts_only_on_the_selected_kernels():
    """``flax_group_spec(select=...)``: the unselected kernel is ungrouped (no keep mask, never pruned);
    the one-shot target prunes half of the selected kernel's input groups."""
    rng = np.random.default_rng(1)
    n, d = 128, 6
    x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    y = jnp.asarray(x[:, :1] * 2.0 + 0.1 * rng.normal(size=(n, 1)), jnp.float32)
    params = {"hidden": {"kernel": jnp.asarray(rng.normal(size=(d, 8)) * 0.3, jnp.float32),
                         "bias": jnp.zeros(8, jnp.float32)},
              "out": {"kernel": jnp.asarray(rng.normal(size=(8, 1)) * 0.3, jnp.float32),
                      "bias": jnp.zeros(1, jnp.float32)}}
    spec = flax_group_spec(params, select=_in("hidden"))
    # tree order: hidden/bias, hidden/kernel, out/bias, out/kernel
    assert [g is not None for g in spec.leaves] == [False, True, False, False]
    assert [g is not None for g in flax_group_spec(params).leaves] == [False, True, False, True]
    tx = em_mcmc(spec, jax.random.PRNGKey(0), n_data=n, c2_peak=0.01, prune_target=0.5, warm_up=0,
                 steps_per_epoch=4)

    def loss(p, xb, yb):
        return jnp.mean((jax.nn.relu(xb @ p["hidden"]["kernel"] + p["hidden"]["bias"]) @ p["out"]["kernel"]
                         + p["out"]["bias"] - yb) ** 2)

    @jax.jit
    def update(p, s, xb, yb):
        g = jax.grad(loss)(p, xb, yb)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    state = tx.init(params)
    for i in range(12):            # three "epochs" of four minibatches: EM + the one-shot target at step 4
        sl = slice(32 * (i % 4), 32 * (i % 4) + 32)
        params, state = update(params, state, x[sl], y[sl])
    keep_hidden = np.asarray(state.keep[1][0]).reshape(-1)
    assert keep_hidden.sum() == d // 2                     # half the input groups of the selected kernel
    assert np.all(np.asarray(params["hidden"]["kernel"])[~keep_hidden] == 0)
    assert len(state.keep[3]) == 0                          # the unselected kernel has no groups ...
    assert not np.any(np.all(np.asarray(params["out"]["kernel"]) == 0, axis=1))   # ... and no zeroed row
