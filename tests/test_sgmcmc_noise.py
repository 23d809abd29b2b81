"""Learned observation noise of the SG-MCMC regression methods, and their defaults on tabular data.

- :func:`emtdamp.sgmcmc.kernels.sample_noise_variance` against the exact conjugate InvGamma posterior
  of a noise variance (scipy), at temperature 1 and tempered;
- :func:`emtdamp.sgmcmc.kernels.update_noise_variance_halfnormal` (HalfNormal prior on the noise sd,
  independence Metropolis) against the exact target by numerical quadrature, untempered and tempered;
- a chain of the registered ``sghmc`` method whose weights cannot move (step size 1e-14) only
  samples the noise variance given fixed residuals: its draws must have the moments of the exact
  conditional, for both noise priors;
- the predictive adds the *mean* noise variance of the kept samples;
- ``likelihood_var`` / ``noise`` validation;
- defaults of every SG-MCMC method stay finite and do not blow up on standardised synthetic
  regression of 100 and 3,000 rows (the issue's report: ``sghmc_sa`` defaults diverged on a
  user's 300-row CSV; a 10,000-row CSV diverged with the old ``learning_rate = 1e-5``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from emtdamp.data.base import make_regression
from emtdamp.loops.centralised import train
from emtdamp.methods import DataSpec, ModelSpec, get_method
from emtdamp.methods.base import Batch
from emtdamp.methods.sgmcmc_methods import _VARIANTS, SGMCMCHParams
from emtdamp.models import mlp
from emtdamp.sgmcmc.kernels import noise_conditional, sample_noise_variance, update_noise_variance_halfnormal


def _z_bound(n_tests: int = 1, false_rate: float = 1e-6) -> float:
    """Two-sided normal quantile so that ``n_tests`` checks together fail with prob. ``false_rate``."""
    return float(stats.norm.isf(false_rate / (2 * n_tests)))


# --------------------------------------------------------------------------------------------------
# the Gibbs draw against the exact conjugate posterior
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_obs,rss", [(10.0, 4.0), (455.0, 17.0)])
def test_noise_draw_matches_conjugate_invgamma(n_obs, rss):
    nu, lam = 1.0, 1.0
    shape, scale = (nu + n_obs) / 2, (nu * lam + rss) / 2     # exact posterior InvGamma(shape, scale)
    n = 40_000
    keys = jax.random.split(jax.random.key(0), n)
    draws = np.asarray(jax.jit(jax.vmap(lambda k: sample_noise_variance(
        k, jnp.asarray(rss, jnp.float32), n_obs, jnp.asarray(nu), jnp.asarray(lam))))(keys))
    ref = stats.invgamma(shape, scale=scale)
    # mean: CLT with the exact sd (needs shape > 2 for a finite variance: both cases have it);
    # two moments (mean, mean of log) per case, false-failure rate 1e-6 overall
    z = _z_bound(2)
    assert abs(draws.mean() - ref.mean()) < z * ref.std() / np.sqrt(n)
    logs = np.log(draws)   # E[log s²] = log scale − ψ(shape), Var = ψ'(shape): finite for every shape
    from scipy.special import digamma, polygamma
    assert abs(logs.mean() - (np.log(scale) - digamma(shape))) < z * np.sqrt(polygamma(1, shape) / n)
    # the whole distribution: KS test, false-failure rate 1e-4
    assert stats.kstest(draws, ref.cdf).pvalue > 1e-4


def test_tempered_noise_conditional_is_normalised_power():
    """At inverse temperature τ the draw must follow p(s²)^τ normalised (numerical integral)."""
    n_obs, rss, nu, lam, tau = 20.0, 9.0, 1.0, 1.0, 3.0
    a, b = (nu + n_obs) / 2, (nu * lam + rss) / 2
    shape, scale = map(float, noise_conditional(jnp.asarray(rss), n_obs, nu, lam, tau))
    logp = lambda s: tau * stats.invgamma(a, scale=b).logpdf(s)
    z = integrate.quad(lambda s: np.exp(logp(s)), 0, np.inf)[0]
    m1 = integrate.quad(lambda s: s * np.exp(logp(s)), 0, np.inf)[0] / z
    np.testing.assert_allclose(shape, tau * (a + 1) - 1)
    np.testing.assert_allclose(scale, tau * b)
    np.testing.assert_allclose(stats.invgamma(shape, scale=scale).mean(), m1, rtol=1e-6)
    # τ = 1 is the untempered conjugate posterior
    np.testing.assert_allclose(noise_conditional(jnp.asarray(rss), n_obs, nu, lam, 1.0), (a, b), rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# the registered method: a chain that only samples s² given fixed residuals
# --------------------------------------------------------------------------------------------------
def _tiny_regression(n: int = 64, p: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p)).astype(np.float32)
    y = (np.sin(x[:, :1]) + 0.3 * rng.normal(size=(n, 1))).astype(np.float32)
    return x, y


def _frozen_weight_noise_chain(steps: int, **hp_kwargs):
    """A full-batch ``sghmc`` chain whose weights cannot move (ε = 1e-14: injected noise sd ≈ 1.4e-8), so it only
    samples s² given fixed residuals. Returns the ``(steps,)`` s² draws, the residual sum at the start and at
    the end, and the number of rows."""
    x, y = _tiny_regression()
    n = len(x)
    spec = DataSpec("regression", x.shape[1], 1, n)
    m = get_method("sghmc")
    hp = SGMCMCHParams(learning_rate=1e-14, momentum=0.0, burn_in=0, n_samples=1, **hp_kwargs)
    algo = m.build(ModelSpec(hidden=(8,)), spec, hp)
    st0 = algo.init(jax.random.key(1))
    batch = Batch(x=jnp.asarray(x), y=jnp.asarray(y), w=jnp.ones(n))

    def body(st, _):
        st, met = algo.step(st, batch)
        return st, met["noise_var"]

    st, draws = jax.jit(lambda s: jax.lax.scan(body, s, None, length=steps))(st0)
    rss = lambda params: float(np.sum((np.asarray(mlp.apply(params, jnp.asarray(x), "relu")) - y) ** 2))
    return np.asarray(draws, np.float64), rss(st0.params), rss(st.params), n


def test_method_chain_samples_noise_from_conditional():
    draws, rss, rss_end, n = _frozen_weight_noise_chain(20_000, noise_prior="invgamma", nu=2.0, lam=0.5)
    ref = stats.invgamma((2.0 + n) / 2, scale=(2.0 * 0.5 + rss) / 2)
    # iid draws given fixed residuals (fresh key per step): CLT on the mean and on the variance
    # (delta-method sd of the sample variance from the exact 4th moment), false-failure rate 1e-6 overall
    z = _z_bound(2)
    assert abs(draws.mean() - ref.mean()) < z * ref.std() / np.sqrt(len(draws))
    mu4 = ref.expect(lambda s: (s - ref.mean()) ** 4)
    assert abs(draws.var() - ref.var()) < z * np.sqrt((mu4 - ref.var() ** 2) / len(draws))
    # the residuals really stayed fixed (weights move by a random walk of sd ≈ 1.4e-7·√20000 ≈ 2e-5)
    assert abs(rss_end - rss) < 1e-3 * rss


def _halfnormal_target(n_obs: float, rss: float, c: float, tau: float):
    """Unnormalised log density of s² for the HalfNormal(c) prior on s, tempered by τ in s²-space, and its
    first two moments by quadrature (the independent reference)."""
    logp = lambda s2: tau * (-0.5 * (n_obs + 1) * np.log(s2) - rss / (2 * s2) - s2 / (2 * c * c))
    mode = max(rss / (n_obs + 1), 1e-12)
    shift = logp(mode)
    z = _integrate(lambda s2: np.exp(logp(s2) - shift), mode)
    m1 = _integrate(lambda s2: s2 * np.exp(logp(s2) - shift), mode) / z
    m2 = _integrate(lambda s2: s2**2 * np.exp(logp(s2) - shift), mode) / z
    return logp, m1, m2 - m1**2


def _integrate(f, mode: float, upper: float = np.inf) -> float:
    """∫_0^upper f, split at the density's mode (quadpack takes no break points on infinite ranges)."""
    if upper <= mode:
        return integrate.quad(f, 0, upper, limit=200)[0]
    return integrate.quad(f, 0, mode, limit=200)[0] + integrate.quad(f, mode, upper, limit=200)[0]


@pytest.mark.parametrize("n_obs,rss,c,tau", [(4.0, 3.0, 0.5, 1.0), (30.0, 2.0, 1.0, 1.0), (10.0, 6.0, 0.7, 3.0)])
def test_halfnormal_noise_update_leaves_the_exact_target_invariant(n_obs, rss, c, tau):
    """20,000 independent chains, 150 Metropolis-within-Gibbs steps each from s² = 10 (far out): the final
    states are iid draws of the target. Mean and variance by CLT (variance: delta method with the 4th moment
    by quadrature), KS against the quadrature CDF; false-failure rate 1e-6 for the moments, 1e-4 for KS."""
    n, steps = 20_000, 150
    logp, m1, var = _halfnormal_target(n_obs, rss, c, tau)

    def chain(k):
        def body(s2, kk):
            return update_noise_variance_halfnormal(kk, s2, jnp.asarray(rss, jnp.float32), n_obs,
                                                    jnp.asarray(c, jnp.float32), tau), None
        return jax.lax.scan(body, jnp.asarray(10.0, jnp.float32), jax.random.split(k, steps))[0]

    draws = np.asarray(jax.jit(jax.vmap(chain))(jax.random.split(jax.random.key(3), n)), np.float64)
    z = _z_bound(2)
    assert abs(draws.mean() - m1) < z * np.sqrt(var / n)
    mode = rss / (n_obs + 1)
    shift = logp(mode)
    dens = lambda s2: np.exp(logp(s2) - shift)
    norm = _integrate(dens, mode)
    mu4 = _integrate(lambda s2: (s2 - m1) ** 4 * dens(s2), mode) / norm
    assert abs(draws.var() - var) < z * np.sqrt((mu4 - var**2) / n)
    grid = np.quantile(draws, np.linspace(0.01, 0.99, 99))
    cdf = lambda t: _integrate(dens, mode, t) / norm
    ref = np.array([cdf(t) for t in grid])
    # KS-type bound on the empirical CDF at 99 points (DKW inequality: P(sup|F_n − F| > ε) ≤ 2 exp(−2nε²))
    eps = np.sqrt(np.log(2 / 1e-4) / (2 * n))
    assert np.max(np.abs(ref - np.linspace(0.01, 0.99, 99))) < eps + 1.0 / n


def test_method_chain_samples_noise_under_the_halfnormal_prior():
    """The default noise prior in the registered method, weights frozen: the draws' mean is the exact one
    (quadrature), within z x the batch-means standard error (100 batches of 200; false-failure rate 1e-6)."""
    assert SGMCMCHParams().noise_prior == "halfnormal"
    draws, rss, _, n = _frozen_weight_noise_chain(20_200, noise_sd_scale=0.2)
    draws = draws[200:]
    _, m1, _ = _halfnormal_target(float(n), rss, 0.2, 1.0)
    se = draws.reshape(100, -1).mean(1).std(ddof=1) / np.sqrt(100)
    assert abs(draws.mean() - m1) < _z_bound(1) * se
    # the InvGamma(ν/2, νλ/2) prior's conditional has a visibly different mean here (the test can tell them apart)
    ig_mean = stats.invgamma((1.0 + n) / 2, scale=(1.0 + rss) / 2).mean()
    assert abs(ig_mean - m1) > 10 * se


def test_predictive_adds_mean_noise_of_kept_samples():
    x, y = _tiny_regression(32)
    spec = DataSpec("regression", x.shape[1], 1, len(x))
    m = get_method("sghmc")
    hp = SGMCMCHParams(learning_rate=1e-14, momentum=0.0, burn_in=0, thin=1, n_samples=5)
    algo = m.build(ModelSpec(hidden=(4,)), spec, hp)
    st = algo.init(jax.random.key(0))
    batch = Batch(x=jnp.asarray(x), y=jnp.asarray(y), w=jnp.ones(len(x)))
    pred0 = algo.predict(st, jnp.asarray(x))      # nothing kept: the current noise variance (noise_init = 1)
    np.testing.assert_allclose(np.asarray(pred0.var), 1.0, rtol=1e-6)
    kept = []
    for _ in range(8):
        st, met = algo.step(st, batch)
        kept.append(float(met["noise_var"]))
    pred = algo.predict(st, jnp.asarray(x))
    # weights frozen: the epistemic part is ~0, the noise part is the mean of the last 5 kept s²
    np.testing.assert_allclose(np.asarray(pred.var), np.mean(kept[-5:]), rtol=1e-4)
    assert not np.allclose(np.mean(kept[-5:]), float(st.noise_var), rtol=1e-3)   # not the current value


def test_noise_options_are_validated():
    spec = DataSpec("regression", 3, 1, 50)
    model = ModelSpec(hidden=(4,))
    with pytest.raises(ValueError, match="only used with noise='fixed'"):
        get_method("sghmc_sa").build(model, spec, SGMCMCHParams(likelihood_var=0.01))
    with pytest.raises(ValueError, match="needs likelihood_var > 0"):
        get_method("sghmc_sa").build(model, spec, SGMCMCHParams(noise="fixed"))
    with pytest.raises(ValueError, match="never updates"):
        get_method("sghmc").build(model, spec, SGMCMCHParams(noise="sa"))
    st = get_method("sghmc_sa").build(model, spec, SGMCMCHParams(noise="fixed", likelihood_var=0.3)).init(
        jax.random.key(0))
    assert float(st.noise_var) == pytest.approx(0.3)
    st = get_method("sghmc_sa").build(model, spec, SGMCMCHParams(noise="sa", sigma_init=0.5)).init(jax.random.key(0))
    assert float(st.noise_var) == pytest.approx(0.25)
    # auto step size: 1e-3 / N on the sum-scale energy
    st = get_method("sghmc").build(model, spec, SGMCMCHParams()).init(jax.random.key(0))
    assert float(st.lr.a) == pytest.approx(1e-3 / 50)


# --------------------------------------------------------------------------------------------------
# defaults must not diverge on standardised tabular data
# --------------------------------------------------------------------------------------------------
def _synthetic(n: int, p: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + 200, p)) * rng.uniform(0.5, 20, size=p) + rng.normal(size=p) * 5
    z = (x - x.mean(0)) / x.std(0)
    y = 50 + 20 * (np.sin(z[:, 0]) + 0.5 * z[:, 1] * z[:, 2] + 0.3 * rng.normal(size=n + 200))
    return make_regression(f"syn{n}", x[:n], y[:n], x[n:], y[n:])   # standardised with train statistics


_FAST = ("sghmc_sa", "sgld_sa")   # the reported method and the SGLD kind; the other seven in the slow tier


@pytest.mark.parametrize("n,epochs", [(100, 30), (3000, 4)])
@pytest.mark.parametrize("name", [n if n in _FAST else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(_VARIANTS)])
def test_defaults_do_not_diverge(name, n, epochs):
    """Default hparams, the default 13-64-1-like MLP, batch 32: finite, and the test RMSE (standardised
    targets; the mean predictor scores ≈ 1) stays below 1.5 (the reported divergence reached 3.4e4 $1000s)."""
    data = _synthetic(n)
    m = get_method(name)
    r = train(m, SGMCMCHParams(), ModelSpec(hidden=(64,)), data, epochs=epochs, batch_size=32, seed=0,
              progress=False, eval_every=epochs)
    losses = np.asarray([h["train_loss"] for h in r.history])
    assert np.all(np.isfinite(losses))
    rmse_std = r.test["rmse"] / float(data.y_std[0])
    assert np.isfinite(rmse_std) and rmse_std < 1.5, (name, n, rmse_std)
    assert r.diverged_at is None
    assert losses[-1] < 10 * losses.min()


@pytest.mark.slow
@pytest.mark.parametrize("n,epochs", [(100, 30), (3000, 4), (10000, 2)])
@pytest.mark.parametrize("name", ["em_mcmc", "emtdamp"])
def test_other_methods_defaults_do_not_diverge(name, n, epochs):
    """The same check for the two other Bayesian families with their own default hparams (issue 16: defaults
    of every method must not diverge on standardised tabular data of 100-10,000 rows). Measured: test RMSE
    (standardised) em_mcmc 0.80 / 0.61 / 0.54, emtdamp 0.59 / 0.48 / 0.42 at n = 100 / 3,000 / 10,000."""
    data = _synthetic(n)
    m = get_method(name)
    r = train(m, m.hparams_cls(), ModelSpec(hidden=(64,)), data, epochs=epochs, batch_size=32, seed=0,
              progress=False, eval_every=epochs)
    losses = np.asarray([h["train_loss"] for h in r.history])
    assert np.all(np.isfinite(losses)) and r.diverged_at is None
    rmse_std = r.test["rmse"] / float(data.y_std[0])
    assert np.isfinite(rmse_std) and rmse_std < 1.5, (name, n, rmse_std)
    assert losses[-1] < 10 * losses.min()


# --------------------------------------------------------------------------------------------------
# lr_units='curvature': ε_k = lr·s²_k/N
# --------------------------------------------------------------------------------------------------
def _scan_steps(name: str, hp: SGMCMCHParams, steps: int = 30):
    x, y = _tiny_regression()
    n = len(x)
    algo = get_method(name).build(ModelSpec(hidden=(8,)), DataSpec("regression", x.shape[1], 1, n), hp)
    st0 = algo.init(jax.random.key(3))
    batch = Batch(x=jnp.asarray(x), y=jnp.asarray(y), w=jnp.ones(n))

    def body(st, _):
        s2_before = st.noise_var
        st, met = algo.step(st, batch)
        return st, (s2_before, met["step_size"], met["loss"])

    st, out = jax.jit(lambda s: jax.lax.scan(body, s, None, length=steps))(st0)
    return st, [np.asarray(o, np.float64) for o in out], n


def test_curvature_step_follows_the_current_noise_variance():
    """With sampled noise the step of iteration k is lr·s²_k/N, s²_k the noise variance the move is conditioned
    on (the draw of the previous iteration), so it changes from step to step as s² does."""
    hp = SGMCMCHParams(learning_rate=0.02, lr_units="curvature", momentum=0.9, burn_in=0, n_samples=2)
    _, (s2, eps, _), n = _scan_steps("sghmc", hp)
    np.testing.assert_allclose(eps, 0.02 * s2 / n, rtol=1e-6)
    assert np.ptp(s2) > 0.01 * s2.mean()     # the noise really moved, so this is not a constant step


def test_curvature_units_with_fixed_noise_equal_the_energy_step():
    """Fixed noise v: lr_units='curvature' with lr = c is the same chain (same keys) as ε = c·v/N in energy units."""
    v, c = 0.3, 0.05
    common = dict(momentum=0.9, burn_in=0, n_samples=2, noise="fixed", likelihood_var=v)
    st_a, (_, eps_a, loss_a), n = _scan_steps("sghmc_sa", SGMCMCHParams(learning_rate=c, lr_units="curvature",
                                                                        **common))
    st_b, (_, eps_b, loss_b), _ = _scan_steps("sghmc_sa", SGMCMCHParams(learning_rate=c * v / n, **common))
    np.testing.assert_allclose(eps_a, eps_b, rtol=1e-6)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-4)
    for a, b in zip(jax.tree_util.tree_leaves(st_a.params), jax.tree_util.tree_leaves(st_b.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_curvature_units_need_a_learning_rate():
    x, y = _tiny_regression()
    with pytest.raises(ValueError, match="lr_units='curvature' needs learning_rate > 0"):
        get_method("sghmc").build(ModelSpec(hidden=(4,)), DataSpec("regression", 3, 1, len(x)),
                                  SGMCMCHParams(lr_units="curvature"))
