"""SGLD / SGHMC kernels against the exact posterior of Bayesian linear regression.

Model: ``y = X β + e``, ``e ~ N(0, s² I)`` (s² known), prior ``β ~ N(0, I / α)``; posterior
``N(μ, H⁻¹)`` with ``H = XᵀX / s² + α I``, ``μ = H⁻¹ Xᵀ y / s²``.

Tolerances. With a full-batch gradient both samplers are *linear* Gaussian chains, so in the
eigenbasis of ``H`` each coordinate is an exact AR(1) (SGLD) / AR(2) (SGHMC) process whose stationary
variance ``P_i`` and autocovariances ``γ_i(k)`` follow from a discrete Lyapunov equation. For a
marginal ``β_j = Σ_i U_ji z_i`` we get, over ``n = chains · steps`` kept draws:

- discretisation bias of the variance: ``Σ_i U_ji² P_i − (H⁻¹)_jj`` (asserted < 2 % of the posterior
  variance, then added to the tolerance);
- sd of the sample mean: ``sqrt(Σ_i U_ji² P_i τ_i / n)`` with ``τ_i = Σ_k ρ_i(k)`` the integrated
  autocorrelation time (so ``n / τ`` is the effective sample size);
- sd of the sample variance: ``sqrt(2 Σ_k γ_j(k)² / n)`` (Gaussian process, Bartlett).

Each check uses ``z = 5`` standard deviations: false-failure rate ≲ 6e-7 per check (< 1e-5 for
the whole file). The seeds are fixed, so the default tier is deterministic.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from emtdamp import sgmcmc

Z = 5.0


class _B(NamedTuple):
    x: jax.Array
    y: jax.Array
    w: jax.Array


def _problem(n=40, d=3, noise_var=1.0, alpha=1.0, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    x[:, 1] += 0.5 * x[:, 0]  # some posterior correlation
    beta = rng.normal(size=d)
    y = x @ beta + np.sqrt(noise_var) * rng.normal(size=n)
    h = x.T @ x / noise_var + alpha * np.eye(d)
    cov = np.linalg.inv(h)
    mu = cov @ x.T @ y / noise_var
    return x, y, h, mu, cov, noise_var, alpha


def _grad_fn(x, y, noise_var, alpha):
    loglik = lambda b, batch: -0.5 * (batch.y - batch.x @ b) ** 2 / noise_var
    logprior = lambda b: -0.5 * alpha * jnp.sum(b ** 2)
    return sgmcmc.grad_estimator(loglik, logprior, x.shape[0])


def _chain_moments(a_mat, q_mat, kmax):
    """Stationary cov P of s' = A s + noise(Q) and the autocovariance of component 0 for lags 0..kmax."""
    p = scipy.linalg.solve_discrete_lyapunov(a_mat, q_mat)
    gam = np.empty(kmax + 1)
    m = p.copy()
    for k in range(kmax + 1):
        gam[k] = m[0, 0]
        m = a_mat @ m
    return p[0, 0], gam


def _tolerances(h, cov, n_kept, eig_chain):
    """Per-coordinate (bias of var, sd of mean, sd of var) from the eigen-direction chains."""
    lam, u = np.linalg.eigh(h)
    stats = [eig_chain(li) for li in lam]            # (P_i, γ_i(k))
    p = np.array([s[0] for s in stats])
    gam = np.stack([s[1] for s in stats])           # (d, K)
    w = u ** 2                                       # (j, i)
    var_chain = w @ p
    gam_j = w @ gam                                  # (j, K) autocovariance of β_j
    two_sided = lambda g: g[:, 0] + 2 * g[:, 1:].sum(1)
    sd_mean = np.sqrt(two_sided(gam_j) / n_kept)
    sd_var = np.sqrt(2 * two_sided(gam_j ** 2) / n_kept)
    bias = var_chain - np.diag(cov)
    return bias, sd_mean, sd_var


def _run(step, init_state, keys, n_steps, burn):
    def chain(state, key):
        def body(s, k):
            s, _ = step(k, s)
            return s, s.position
        _, path = jax.lax.scan(body, state, jax.random.split(key, n_steps))
        return path[burn:]
    return np.asarray(jax.jit(jax.vmap(chain, in_axes=(None, 0)))(init_state, keys))


@pytest.mark.parametrize("noise_dist", ["three_point", "gaussian"])
def test_sgld_matches_exact_posterior(x64, noise_dist):
    x, y, h, mu, cov, nv, al = _problem()
    lam_max = np.linalg.eigvalsh(h).max()
    eps = 0.02 / lam_max
    grad_fn = _grad_fn(x, y, nv, al)
    batch = _B(jnp.asarray(x), jnp.asarray(y), jnp.ones(len(y)))
    algo = sgmcmc.sgld(grad_fn, noise_dist=noise_dist)
    state = algo.init(jnp.zeros(3), sgmcmc.polynomial_schedule(eps))
    chains, n_steps, burn = 32, 60_000, 5_000
    path = _run(lambda k, s: algo.step(k, s, batch), state, jax.random.split(jax.random.key(1), chains),
                n_steps, burn)
    draws = path.reshape(-1, 3)

    def eig_chain(li):
        rho = 1 - eps * li
        return _chain_moments(np.array([[rho]]), np.array([[2 * eps]]), 20_000)

    bias, sd_mean, sd_var = _tolerances(h, cov, draws.shape[0], eig_chain)
    assert np.all(np.abs(bias) < 0.02 * np.diag(cov))
    np.testing.assert_array_less(np.abs(draws.mean(0) - mu), Z * sd_mean)
    np.testing.assert_array_less(np.abs(draws.var(0) - np.diag(cov)), np.abs(bias) + Z * sd_var)
    # the tolerance is tight enough to matter: a 10% error in the variance would be detected
    assert np.all(np.abs(bias) + Z * sd_var < 0.1 * np.diag(cov))


@pytest.mark.parametrize("noise_dist", ["three_point", "gaussian"])
def test_sghmc_matches_exact_posterior(x64, noise_dist):
    x, y, h, mu, cov, nv, al = _problem()
    lam_max = np.linalg.eigvalsh(h).max()
    m = 0.9
    eps = 4e-3 / lam_max
    grad_fn = _grad_fn(x, y, nv, al)
    batch = _B(jnp.asarray(x), jnp.asarray(y), jnp.ones(len(y)))
    algo = sgmcmc.sghmc(grad_fn, noise_dist=noise_dist)
    state = algo.init(jnp.zeros(3), sgmcmc.polynomial_schedule(eps), momentum_decay=m)
    chains, n_steps, burn = 32, 60_000, 5_000
    path = _run(lambda k, s: algo.step(k, s, batch), state, jax.random.split(jax.random.key(2), chains),
                n_steps, burn)
    draws = path.reshape(-1, 3)
    s2 = float(sgmcmc.sghmc_noise_std(eps, m, 1.0)) ** 2

    def eig_chain(li):
        # (x, v): v' = m v − ε λ x + s ξ ;  x' = x + v'
        a_mat = np.array([[1 - eps * li, m], [-eps * li, m]])
        q_mat = s2 * np.ones((2, 2))
        return _chain_moments(a_mat, q_mat, 30_000)

    bias, sd_mean, sd_var = _tolerances(h, cov, draws.shape[0], eig_chain)
    assert np.all(np.abs(bias) < 0.02 * np.diag(cov))
    np.testing.assert_array_less(np.abs(draws.mean(0) - mu), Z * sd_mean)
    np.testing.assert_array_less(np.abs(draws.var(0) - np.diag(cov)), np.abs(bias) + Z * sd_var)
    assert np.all(np.abs(bias) + Z * sd_var < 0.1 * np.diag(cov))


def test_sgld_minibatch_posterior(x64):
    """Minibatch gradients (10 of 40 rows): unbiased mean; the variance carries an extra O(ε) bias from
    gradient noise, so the tolerance is the full-batch one plus 5 % of the posterior variance
    (measured excess ≈ 1 %)."""
    x, y, h, mu, cov, nv, al = _problem()
    lam_max = np.linalg.eigvalsh(h).max()
    eps = 0.01 / lam_max
    grad_fn = _grad_fn(x, y, nv, al)
    algo = sgmcmc.sgld(grad_fn)
    xb, yb = jnp.asarray(x), jnp.asarray(y)

    def step(key, s):
        kb, ks = jax.random.split(key)
        idx = jax.random.choice(kb, 40, (10,), replace=False)
        return algo.step(ks, s, _B(xb[idx], yb[idx], jnp.ones(10)))

    state = algo.init(jnp.zeros(3), sgmcmc.polynomial_schedule(eps))
    path = _run(step, state, jax.random.split(jax.random.key(3), 16), 30_000, 3_000)
    draws = path.reshape(-1, 3)

    def eig_chain(li):
        return _chain_moments(np.array([[1 - eps * li]]), np.array([[2 * eps]]), 30_000)

    bias, sd_mean, sd_var = _tolerances(h, cov, draws.shape[0], eig_chain)
    # gradient noise makes consecutive draws no less correlated; allow 1.5x the full-batch mean sd
    np.testing.assert_array_less(np.abs(draws.mean(0) - mu), 1.5 * Z * sd_mean)
    np.testing.assert_array_less(np.abs(draws.var(0) - np.diag(cov)),
                                 np.abs(bias) + Z * sd_var + 0.05 * np.diag(cov))


def test_energy_ignores_padding_rows_and_rescales():
    x, y, *_ = _problem()
    loglik = lambda b, batch: -0.5 * (batch.y - batch.x @ b) ** 2
    en = sgmcmc.minibatch_energy(loglik, None, 400)
    b = jnp.array([0.3, -0.2, 1.0], jnp.float32)
    x, y = jnp.asarray(x[:8], jnp.float32), jnp.asarray(y[:8], jnp.float32)
    full = en(b, _B(x, y, jnp.ones(8)))
    xp = jnp.concatenate([x, 100 * jnp.ones((4, 3))])
    yp = jnp.concatenate([y, -50 * jnp.ones(4)])
    padded = en(b, _B(xp, yp, jnp.concatenate([jnp.ones(8), jnp.zeros(4)])))
    np.testing.assert_allclose(padded, full, rtol=1e-6)
    np.testing.assert_allclose(full, 400 / 8 * 0.5 * np.sum((np.asarray(y) - np.asarray(x) @ np.asarray(b)) ** 2),
                               rtol=1e-5)


def test_schedule_annealing_and_dtypes():
    s = sgmcmc.polynomial_schedule(0.001, 1.0, 1 / 3)
    np.testing.assert_allclose(sgmcmc.schedule_value(s, jnp.asarray(7)), 0.001 * 8 ** (-1 / 3), rtol=1e-6)
    grad_fn = lambda p, b: (jnp.zeros(()), jax.tree_util.tree_map(jnp.zeros_like, p))
    pos = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    st = sgmcmc.sghmc_init(pos, s, 0.9, inv_temp=2.0, anneal_rate=1.003)
    st2, info = jax.jit(lambda k, s_: sgmcmc.sghmc_step(k, s_, None, grad_fn))(jax.random.key(0), st)
    assert jax.tree_util.tree_structure(st2.position) == jax.tree_util.tree_structure(pos)
    assert st2.position["w"].dtype == jnp.float32 and int(st2.count) == 1
    np.testing.assert_allclose(st2.inv_temp, 2.0 * 1.003, rtol=1e-6)
    # zero gradient, zero momentum: the move is pure noise with the stated std
    std = float(sgmcmc.sghmc_noise_std(float(info.step_size), 0.9, 2.0))
    assert std > 0
    np.testing.assert_allclose(st2.momentum["w"], st2.position["w"] - 1.0, atol=1e-6)


def test_sample_buffer_thinning_and_ring():
    buf = sgmcmc.buffer_init(jnp.zeros(2), size=3, burn_in=4, thin=2)
    kept = []
    for k in range(1, 15):
        pos = jnp.array([k, -k], jnp.float32)
        buf = jax.jit(sgmcmc.buffer_update)(buf, pos, jnp.asarray(k))
        if k > 4 and (k - 4) % 2 == 0:
            kept.append(k)
    assert kept == [6, 8, 10, 12, 14] and int(buf.n_collected) == 5
    np.testing.assert_allclose(sgmcmc.posterior_mean(buf), [np.mean(kept), -np.mean(kept)])
    np.testing.assert_allclose(sgmcmc.posterior_var(buf)[0], np.var(kept), rtol=1e-6)
    ring = np.asarray(sgmcmc.ring_samples(buf))[:, 0]
    assert sorted(ring.tolist()) == [10, 12, 14]             # last 3 kept draws
    np.testing.assert_allclose(sgmcmc.buffer_weights(buf), np.ones(3) / 3)


def test_sample_buffer_vmapped_equals_unbatched():
    """Unbatched, buffer_update is a lax.cond; vmapped (chains, sweeps) it writes a scratch slot instead
    (custom_vmap rule). Both must give the same ring, sums and counts, also under vmap of vmap and with
    burn-in / thinning that differ between the rows."""
    shapes = [(7, 5), (5,)]
    rng = np.random.default_rng(0)

    def run(seq, burn, thin):
        buf = sgmcmc.buffer_init([jnp.zeros(s) for s in shapes], 3, burn, thin)
        body = lambda b, xk: (sgmcmc.buffer_update(b, xk[0], xk[1]), None)
        return jax.lax.scan(body, buf, (seq, jnp.arange(1, 31)))[0]

    def view(b):   # the whole buffer, scratch slot included (vmapped and unbatched states compare leaf for leaf)
        return jax.tree_util.tree_leaves(b)

    seqs = [[jnp.asarray(rng.normal(size=(30, *s)), jnp.float32) for s in shapes] for _ in range(4)]
    burns, thins = jnp.asarray([4, 0, 4, 29]), jnp.asarray([3, 1, 7, 1])
    single = [jax.jit(run)(q, burns[i], thins[i]) for i, q in enumerate(seqs)]
    assert [int(b.n_collected) for b in single] == [8, 30, 3, 1]
    stack = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *seqs)
    once = jax.jit(jax.vmap(run))(stack, burns, thins)
    twice = jax.jit(jax.vmap(jax.vmap(run)))(*jax.tree_util.tree_map(lambda v: v.reshape(2, 2, *v.shape[1:]),
                                                                    (stack, burns, thins)))
    for i, ref in enumerate(single):
        for got in (jax.tree_util.tree_map(lambda v, i=i: v[i], once),
                    jax.tree_util.tree_map(lambda v, i=i: v[i // 2, i % 2], twice)):
            for a, b in zip(view(ref), view(got), strict=True):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("kind", ["sgld", "sghmc"])
def test_float32_and_pytree_positions(kind):
    """Kernels run in float32 on a dict-of-arrays position and keep the structure."""
    pos = {"a": jnp.ones(3), "b": {"c": jnp.zeros((2, 2))}}
    loglik = lambda p, batch: -0.5 * jnp.sum(p["a"] ** 2) * jnp.ones(batch.w.shape) - jnp.sum(p["b"]["c"] ** 2)
    gf = sgmcmc.grad_estimator(loglik, None, 10)
    algo = sgmcmc.sgld(gf) if kind == "sgld" else sgmcmc.sghmc(gf)
    st = algo.init(pos, sgmcmc.polynomial_schedule(1e-3))
    st, info = jax.jit(algo.step)(jax.random.key(0), st, _B(jnp.zeros((4, 1)), jnp.zeros(4), jnp.ones(4)))
    assert st.position["b"]["c"].dtype == jnp.float32 and info.energy.dtype == jnp.float32
    assert jax.tree_util.tree_structure(st.position) == jax.tree_util.tree_structure(pos)
