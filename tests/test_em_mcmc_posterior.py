"""EM-MCMC as a posterior sampler (issue 16): the sample-averaged predictive, the noise M-step and the
temperature-1 noise, each against an independent reference (NumPy mixture, closed form, the exact
Bayesian linear-regression posterior)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emtdamp.methods import Batch, DataSpec, ModelSpec, get_method
from emtdamp.methods.em_mcmc_method import _loss_fn, noise_mstep
from emtdamp.sgmcmc.samples import buffer_weights, ring_samples


def _np_mlp(params, x):
    """NumPy forward pass of an :mod:`emtdamp.models.mlp` ReLU MLP (list of {"kernel", "bias"})."""
    h = np.asarray(x, np.float64)
    for i, layer in enumerate(params):
        h = h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
        if i + 1 < len(params):
            h = np.maximum(h, 0.0)
    return h


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _toy(task, n=40, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    if task == "regression":
        y = (x[:, :2].sum(1, keepdims=True) + 0.3 * rng.normal(size=(n, 1))).astype(np.float32)
        return x, y, DataSpec("regression", d, 1, n)
    return x, (x[:, 0] > 0).astype(np.int32), DataSpec("classification", d, 2, n)


# ---------------------------------------------------------------------------------------------
# the predictive is the mixture over the collected iterates
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["regression", "classification"])
def test_predictive_is_mixture_of_collected_iterates(task):
    """Step by step: the ring holds exactly the thinned iterates after burn-in (the last n_samples of
    them), and predict equals the NumPy mixture over those iterates (regression: mean of outputs,
    variance across samples + noise variance; classification: mean softmax)."""
    method = get_method("em_mcmc")
    burn_epochs, thin, size, bs = 2, 3, 4, 10
    hp = method.hparams_cls(noise="posterior", learn_noise=task == "regression", sparse=False, c2_peak=0.05,
                            beta1=0.9, burn_in=burn_epochs, thin=thin, n_samples=size)
    x, y, spec = _toy(task)
    algo = method.build(ModelSpec(hidden=(5,)), spec, hp)
    state = algo.init(jax.random.key(0))
    step, end = jax.jit(algo.step), jax.jit(algo.end_epoch)
    nb = len(x) // bs
    trajectory = []                    # params after every step, with the step number k (1-based)
    k = 0
    for epoch in range(6):
        for b in range(nb):
            sl = slice(b * bs, (b + 1) * bs)
            state, _ = step(state, Batch(jnp.asarray(x[sl]), jnp.asarray(y[sl]), jnp.ones(bs)))
            k += 1
            trajectory.append((k, jax.tree_util.tree_map(np.asarray, state.params), float(state.noise_var)))
        state = end(state, jnp.asarray(epoch, jnp.int32))
    # burn-in is measured in epochs: collected are steps k > burn_epochs * nb with (k - burn) % thin == 0
    # (steps_per_epoch is measured after epoch 0, so epoch-0 steps are never collected either)
    burn = burn_epochs * nb
    kept = [(p, v) for kk, p, v in trajectory if kk > burn and (kk - burn) % thin == 0]
    assert int(state.samples.n_collected) == len(kept) > size
    last = kept[-size:]
    ring = jax.tree_util.tree_map(np.asarray, ring_samples(state.samples))
    slots = [(len(kept) - size + i) % size for i in range(size)]   # ring slot of the i-th of the last
    for (p, v), slot in zip(last, slots, strict=True):
        for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(ring["params"]), strict=True):
            np.testing.assert_array_equal(a, b[slot])
        assert ring["noise_var"][slot] == np.float32(v)
    np.testing.assert_allclose(np.asarray(buffer_weights(state.samples)), np.full(size, 1 / size), rtol=1e-6)

    xt = np.random.default_rng(5).normal(size=(7, x.shape[1])).astype(np.float32)
    pred = jax.jit(algo.predict)(state, jnp.asarray(xt))
    outs = np.stack([_np_mlp(p, xt) for p, _ in last])                # (S, n, d)
    if task == "regression":
        noise = np.mean([v for _, v in last])                          # mixture of N(f_s, v_s)
        assert len({v for _, v in last}) > 1                           # the M-step moved v between samples
        mean = outs.mean(0)
        var = ((outs - mean) ** 2).mean(0) + noise
        np.testing.assert_allclose(np.asarray(pred.mean), mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(pred.var), var, rtol=1e-4, atol=1e-6)
        assert np.all(np.asarray(pred.var) > noise)                    # the samples differ
    else:
        np.testing.assert_allclose(np.asarray(pred.probs), _softmax(outs).mean(0), rtol=1e-4, atol=1e-6)


def test_predictive_before_burn_in_is_current_iterate():
    """While nothing is collected the predictive is the current iterate with the noise variance."""
    method = get_method("em_mcmc")
    hp = method.hparams_cls(burn_in=100, learn_noise=True, noise_init=0.7)
    x, y, spec = _toy("regression")
    algo = method.build(ModelSpec(hidden=(5,)), spec, hp)
    state = algo.init(jax.random.key(1))
    state, _ = jax.jit(algo.step)(state, Batch(jnp.asarray(x), jnp.asarray(y), jnp.ones(len(x))))
    assert int(state.samples.n_collected) == 0
    pred = jax.jit(algo.predict)(state, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(pred.mean), _np_mlp(state.params, x), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(pred.var), 0.7, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# observation noise: the likelihood and its M-step
# ---------------------------------------------------------------------------------------------
def test_gaussian_loss_closed_form():
    """learn_noise: lbar = mean_rows sum_d (y - f)^2 / (2 v), padding rows excluded; rss/n_resid exact."""
    rng = np.random.default_rng(2)
    params = [{"kernel": rng.normal(size=(3, 2)).astype(np.float32), "bias": rng.normal(size=2).astype(np.float32)}]
    x = rng.normal(size=(6, 3)).astype(np.float32)
    y = rng.normal(size=(6, 2)).astype(np.float32)
    w = np.array([1, 1, 1, 1, 0, 0], np.float32)
    apply_fn = lambda p, xx: xx @ p[0]["kernel"] + p[0]["bias"]
    loss, (mse, rss, n_res) = _loss_fn(apply_fn, params, Batch(jnp.asarray(x), jnp.asarray(y), jnp.asarray(w)),
                                       "regression", 1.0, jnp.asarray(0.3))
    r2 = ((_np_mlp(params, x) - y) ** 2)[:4]
    np.testing.assert_allclose(float(loss), r2.sum(1).mean() / (2 * 0.3), rtol=1e-5)
    np.testing.assert_allclose(float(rss), r2.sum(), rtol=1e-5)
    assert float(n_res) == 8.0
    np.testing.assert_allclose(float(mse), r2.mean(), rtol=1e-5)


def test_noise_mstep_closed_form_on_fixed_model():
    """With the weights held fixed (zero step size and momentum) one epoch over the training set and the
    end-of-epoch M-step give v = mean squared training residual of that model (MLE of the noise
    variance), padding rows excluded; and the floor and the nothing-seen case hold."""
    method = get_method("em_mcmc")
    hp = method.hparams_cls(learn_noise=True, noise="posterior", c2_peak=0.0, sparse=False)
    x, y, spec = _toy("regression", n=37)
    algo = method.build(ModelSpec(hidden=(5,)), spec, hp)
    state = algo.init(jax.random.key(3))
    state = state.replace(opt=state.opt._replace(momentum=jax.tree_util.tree_map(jnp.zeros_like,
                                                                                 state.opt.momentum)))
    p0 = jax.tree_util.tree_map(np.asarray, state.params)
    bs = 10
    pad = (-len(x)) % bs
    xb = np.concatenate([x, x[:pad]]).reshape(-1, bs, x.shape[1])
    yb = np.concatenate([y, 99 + y[:pad]]).reshape(-1, bs, 1)
    wb = np.r_[np.ones(len(x)), np.zeros(pad)].astype(np.float32).reshape(-1, bs)
    state, _ = jax.lax.scan(algo.step, state, Batch(jnp.asarray(xb), jnp.asarray(yb), jnp.asarray(wb)))
    for a, b in zip(jax.tree_util.tree_leaves(p0), jax.tree_util.tree_leaves(state.params), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))                # the model did not move
    state = jax.jit(algo.end_epoch)(state, jnp.asarray(0, jnp.int32))
    v_closed = np.mean((_np_mlp(p0, x) - y) ** 2)
    np.testing.assert_allclose(float(state.noise_var), v_closed, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(state.rss), 0.0)          # accumulators reset
    v = jnp.asarray(0.5)
    assert float(noise_mstep(jnp.asarray([1e-9, 10.0]), v, 1e-4)) == pytest.approx(1e-4)
    assert float(noise_mstep(jnp.asarray([0.0, 0.0]), v, 1e-4)) == 0.5


def test_learn_noise_refuses_loss_scale():
    method = get_method("em_mcmc")
    x, y, spec = _toy("regression")
    with pytest.raises(ValueError, match="loss_scale"):
        method.build(ModelSpec(hidden=(5,)), spec, method.hparams_cls(learn_noise=True, loss_scale=2.0))


# ---------------------------------------------------------------------------------------------
# temperature-1 noise: the collected iterates sample the exact posterior of Bayesian linear regression
# ---------------------------------------------------------------------------------------------
def _ess(chain: np.ndarray) -> np.ndarray:
    """Effective sample size per column of ``chain (S, p)`` (Geyer initial positive sequence)."""
    s, p = chain.shape
    out = np.empty(p)
    for j in range(p):
        z = chain[:, j] - chain[:, j].mean()
        f = np.fft.rfft(z, 2 * s)
        acf = np.fft.irfft(f * np.conj(f))[:s] / (z @ z)
        tau, k = 1.0, 1
        while k + 1 < s and acf[k] + acf[k + 1] > 0:
            tau += 2 * (acf[k] + acf[k + 1])
            k += 2
        out[j] = s / tau
    return out


def test_posterior_noise_samples_exact_blr_posterior():
    """hidden=[] is the linear model y = x b + c + e, e ~ N(0, v). With noise="posterior" the iterates
    after burn-in target exp(-U), U = sum r^2/(2v) + N eps |w|^2 / 2 (v = 1/(2 loss_scale), prior
    N(0, 1/(N eps)) on kernel and bias): their mean and variance match the exact Gaussian posterior.

    Tolerances: mean error <= 4 sd of the Monte Carlo mean (sd = sqrt(var / ESS), ESS estimated from the
    chain; two-sided normal false-failure 6e-5 per coordinate, ~2e-4 for the 3 coordinates); variance
    relative error <= 4 sqrt(2 / ESS) + 0.04 (MC error of a variance estimate, plus the O(eta h) bias
    of the fixed-step discretisation: eta h = tau C^2 lambda_max(H)/N <= 0.02 here, bias <~ 2 %).
    """
    method = get_method("em_mcmc")
    n, d = 60, 2
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ np.array([[0.8], [-0.5]]) + 0.3 + rng.normal(size=(n, 1))).astype(np.float32)
    eps, loss_scale = 1.0 / n, 0.5                                     # prior N(0, 1), noise v = 1
    steps, burn, thin = 24_000, 2_000, 4
    hp = method.hparams_cls(noise="posterior", sparse=False, c2_peak=0.02, beta1=0.9, eps1=eps, eps_bias=eps,
                            loss_scale=loss_scale, steps_per_epoch=1, burn_in=burn, thin=thin,
                            n_samples=(steps - burn) // thin)
    algo = method.build(ModelSpec(hidden=()), DataSpec("regression", d, 1, n), hp)
    state = algo.init(jax.random.key(7))
    batch = Batch(jnp.asarray(x), jnp.asarray(y), jnp.ones(n))

    def body(s, _):
        return algo.step(s, batch)[0], None

    state, _ = jax.jit(lambda s: jax.lax.scan(body, s, None, length=steps))(state)
    ring = ring_samples(state.samples)
    assert int(state.samples.n_collected) == (steps - burn) // thin
    chain = np.concatenate([np.asarray(ring["params"][0]["kernel"])[:, :, 0],
                            np.asarray(ring["params"][0]["bias"])], axis=1)
    # exact posterior of theta = (b, c): precision X1'X1 / v + N eps I, X1 = [x, 1]
    x1 = np.c_[x, np.ones(n)].astype(np.float64)
    v = 1.0 / (2 * loss_scale)
    prec = x1.T @ x1 / v + n * eps * np.eye(d + 1)
    cov = np.linalg.inv(prec)
    mu = cov @ x1.T @ y[:, 0] / v
    ess = _ess(chain)
    assert np.all(ess > 300), ess
    sd = np.sqrt(np.diag(cov))
    np.testing.assert_array_less(np.abs(chain.mean(0) - mu), 4 * sd / np.sqrt(ess))
    rel = np.abs(chain.var(0) / np.diag(cov) - 1)
    np.testing.assert_array_less(rel, 4 * np.sqrt(2 / ess) + 0.04)


def test_reference_noise_is_colder_than_posterior():
    """The reference noise sqrt(2 + 2 beta1^2) C^1.5 T (T = 1/N) is a near-zero-temperature chain: its
    sample variance on the same linear model is far below the exact posterior variance (documents why
    noise="posterior" exists)."""
    method = get_method("em_mcmc")
    n, d = 60, 2
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ np.array([[0.8], [-0.5]]) + rng.normal(size=(n, 1))).astype(np.float32)
    hp = method.hparams_cls(noise="reference", temperature_power=1.0, sparse=False, c2_peak=0.02, beta1=0.9,
                            eps1=1 / n, eps_bias=1 / n, loss_scale=0.5, steps_per_epoch=1, burn_in=2000,
                            thin=4, n_samples=1000)
    algo = method.build(ModelSpec(hidden=()), DataSpec("regression", d, 1, n), hp)
    state = algo.init(jax.random.key(7))
    batch = Batch(jnp.asarray(x), jnp.asarray(y), jnp.ones(n))
    state, _ = jax.jit(lambda s: jax.lax.scan(lambda c, _: (algo.step(c, batch)[0], None), s, None,
                                              length=6000))(state)
    k = np.asarray(ring_samples(state.samples)["params"][0]["kernel"])[:, :, 0]
    x1 = np.c_[x, np.ones(n)]
    post_var = np.diag(np.linalg.inv(x1.T @ x1 + np.eye(d + 1)))[:d]
    assert np.all(k.var(0) < 0.1 * post_var)


def test_learn_noise_samples_the_blr_posterior_with_the_noise_integrated_out():
    """learn_noise with noise="posterior" on the linear model (hidden=[]), 11 coefficients, 40 rows. The noise
    M-step sets v to the iterate's mean squared residual RSS(w)/n at every full-batch step, so the w-chain's
    drift is grad[(n/2) log RSS(w)] + the prior's: it targets RSS(w)^(-n/2) N(w; 0, I), the marginal posterior
    of w with sigma^2 integrated out under Jeffreys' prior 1/sigma^2. The independent reference is a NumPy Gibbs
    sampler of that joint (w | sigma^2 Gaussian, sigma^2 | w ~ InvGamma(n/2, RSS/2)), in float64.

    Compared: the coefficient means and variances and E[RSS(w)/n] (= E v of the chain). Tolerances from the two
    chains' effective sample sizes: a mean differs by <= 4 sd of the difference of two Monte Carlo means
    (sqrt(var_a/ESS_a + var_b/ESS_b)); a variance ratio by <= 4 sqrt(2/ESS_a + 2/ESS_b) + 0.04 (the fixed
    step's O(eta h) bias, as in test_posterior_noise_samples_exact_blr_posterior); E[RSS/n] by 4 sd of the
    difference plus 2 % (the same bias acting on the residuals).
    """
    method = get_method("em_mcmc")
    n, d = 40, 10
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ (0.3 * rng.normal(size=(d, 1))) + 0.2 + 0.5 * rng.normal(size=(n, 1))).astype(np.float32)
    steps, burn, thin = 24_000, 2_000, 4
    hp = method.hparams_cls(noise="posterior", sparse=False, c2_peak=0.02, beta1=0.9, eps1=1.0 / n,
                            eps_bias=1.0 / n, learn_noise=True, steps_per_epoch=1, burn_in=burn, thin=thin,
                            n_samples=(steps - burn) // thin)
    algo = method.build(ModelSpec(hidden=()), DataSpec("regression", d, 1, n), hp)
    state = algo.init(jax.random.key(11))
    batch = Batch(jnp.asarray(x), jnp.asarray(y), jnp.ones(n))

    def body(s, _):
        return algo.end_epoch(algo.step(s, batch)[0], jnp.asarray(0)), None

    state, _ = jax.jit(lambda s: jax.lax.scan(body, s, None, length=steps))(state)
    ring = ring_samples(state.samples)
    chain = np.concatenate([np.asarray(ring["params"][0]["kernel"], np.float64)[:, :, 0],
                            np.asarray(ring["params"][0]["bias"], np.float64)], axis=1)
    x1 = np.c_[x, np.ones(n)].astype(np.float64)
    yy = y[:, 0].astype(np.float64)

    g = np.random.default_rng(0)
    gram, xty = x1.T @ x1, x1.T @ yy
    s2, draws = 1.0, []
    for t in range(12_000):
        cov = np.linalg.inv(gram / s2 + np.eye(d + 1))
        w = g.multivariate_normal(cov @ xty / s2, cov)
        s2 = 1.0 / g.gamma(n / 2.0, 2.0 / np.sum((yy - x1 @ w) ** 2))
        if t >= 1_000:
            draws.append(w)
    ref = np.asarray(draws)

    def rss_n(ws):
        return np.sum((yy[None] - ws @ x1.T) ** 2, axis=1)[:, None] / n

    def assert_means_agree(a, b, rel_bias=0.0):
        """Column means of chains a (tested) and b (reference) within 4 sd of their difference plus rel_bias of
        the reference mean; returns both ESS."""
        ess_a, ess_b = _ess(a), _ess(b)
        assert np.all(ess_a > 300), ess_a
        sd_diff = np.sqrt(a.var(0) / ess_a + b.var(0) / ess_b)
        np.testing.assert_array_less(np.abs(a.mean(0) - b.mean(0)), 4 * sd_diff + rel_bias * np.abs(b.mean(0)))
        return ess_a, ess_b

    ess_a, ess_b = assert_means_agree(chain, ref)
    np.testing.assert_array_less(np.abs(chain.var(0) / ref.var(0) - 1), 4 * np.sqrt(2 / ess_a + 2 / ess_b) + 0.04)
    assert_means_agree(rss_n(chain), rss_n(ref), rel_bias=0.02)
    # the chain's v is the M-step's RSS / n of the iterate before it
    np.testing.assert_allclose(np.asarray(ring["noise_var"], np.float64).mean(), rss_n(chain).mean(), rtol=0.02)
