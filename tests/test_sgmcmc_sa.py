"""SSGL prior, SA latent updates and pruning vs NumPy transcriptions of spec A.3 / A.4 and the
cross-checks of spec part D (σ̃ solves its quadratic, ω = 1 is the EM fixed point, ω = 0 is a no-op)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from emtdamp import sgmcmc
from emtdamp.sgmcmc import ssgl


# --------------------------------------------------------------------------------------------------
# NumPy transcription of Algorithm 1, steps 4-7 (spec baselines.md A.3), written independently
# --------------------------------------------------------------------------------------------------
def np_sa(betas, rho, k0, k1, delta, sigma2, omega, *, v0, v1, a, b, nu, lam, scale_by_sigma=True,
          sa_on_sigma=False, n_obs=None, rss=None):
    sig = np.sqrt(sigma2) if scale_by_sigma else 1.0
    new_rho, new_k0, new_k1, new_delta = [], [], [], []
    for l, beta in enumerate(betas):
        la = scipy.stats.norm.logpdf(beta, 0.0, sig * np.sqrt(v1)) + np.log(delta[l])
        lb = scipy.stats.laplace.logpdf(beta, 0.0, sig * v0) + np.log(1 - delta[l])
        rt = scipy.special.expit(la - lb)
        r = (1 - omega) * rho[l] + omega * rt
        new_rho.append(r)
        new_k0.append((1 - omega) * k0[l] + omega * (1 - r) / v0)
        new_k1.append((1 - omega) * k1[l] + omega * r / v1)
        p_l = beta.size
        new_delta.append((1 - omega) * delta[l] + omega * (r.sum() + a[l] - 1) / (a[l] + b[l] + p_l - 2))
    rb = sum((k * np.abs(x)).sum() for k, x in zip(new_k0, betas, strict=True))
    jj = sum((k * x ** 2).sum() for k, x in zip(new_k1, betas, strict=True))
    p_x = sum(x.size for x in betas)
    if rss is None:
        ra, rc = p_x + nu + 2, jj + nu * lam
    else:
        ra, rc = n_obs + p_x + nu, rss + jj + nu * lam
    st = (rb + np.sqrt(rb ** 2 + 4 * ra * rc)) / (2 * ra)
    if sa_on_sigma:
        s2 = ((1 - omega) * np.sqrt(sigma2) + omega * st) ** 2
    else:
        s2 = (1 - omega) * sigma2 + omega * st ** 2
    return new_rho, new_k0, new_k1, np.array(new_delta), s2, (ra, rb, rc, st)


def _random_state(seed=0, shapes=((7, 5), (5, 3))):
    rng = np.random.default_rng(seed)
    betas = [rng.normal(scale=0.5, size=s) * (rng.random(s) < 0.6) for s in shapes]
    rho = [rng.random(s) for s in shapes]
    k0 = [rng.random(s) * 3 for s in shapes]
    k1 = [rng.random(s) * 0.2 for s in shapes]
    delta = rng.uniform(0.1, 0.9, len(shapes))
    sigma2 = float(rng.uniform(0.2, 2.0))
    return betas, rho, k0, k1, delta, sigma2


HYPS = [dict(v0=0.1, v1=10.0, a=1.0, b=50.0, nu=1.0, lam=1.0),          # UCI / sim roles
        dict(v0=0.005, v1=1e-5, a=2.7e5, b=2.7e5, nu=1000.0, lam=1000.0)]  # CIFAR (roles inverted)


def _to_jax(betas, rho, k0, k1, delta, sigma2):
    j = lambda xs: [jnp.asarray(x) for x in xs]
    lat = ssgl.latents_from_values(rho=j(rho), kappa0=j(k0), kappa1=j(k1), delta=jnp.asarray(delta),
                                   sigma2=jnp.asarray(sigma2))
    return j(betas), lat


@pytest.mark.parametrize("hyp", HYPS)
@pytest.mark.parametrize("task", ["regression", "classification"])
@pytest.mark.parametrize("scale_by_sigma,sa_on_sigma", [(True, False), (False, True)])
@pytest.mark.parametrize("omega", [0.0, 0.1, 0.73, 1.0])
def test_sa_update_matches_numpy(x64, hyp, task, scale_by_sigma, sa_on_sigma, omega):
    betas, rho, k0, k1, delta, sigma2 = _random_state(1)
    kw = dict(n_obs=400.0, rss=123.4) if task == "regression" else {}
    ref = np_sa(betas, rho, k0, k1, delta, sigma2, omega, a=[hyp["a"]] * 2, b=[hyp["b"]] * 2,
                **{k: hyp[k] for k in ("v0", "v1", "nu", "lam")}, scale_by_sigma=scale_by_sigma,
                sa_on_sigma=sa_on_sigma, **kw)
    xs, lat = _to_jax(betas, rho, k0, k1, delta, sigma2)
    hyper = ssgl.ssgl_hyper(2, **hyp, scale_by_sigma=scale_by_sigma, sa_on_sigma=sa_on_sigma)
    kwj = {k: jnp.asarray(v) for k, v in kw.items()}
    out = jax.jit(lambda la, x, w: ssgl.sa_update(la, x, w, hyper, **kwj))(lat, xs, jnp.asarray(omega))
    for got, want in zip(out.rho + out.kappa0 + out.kappa1, ref[0] + ref[1] + ref[2], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out.delta, ref[3], rtol=1e-10)
    np.testing.assert_allclose(out.sigma2, ref[4], rtol=1e-10)


def test_sa_update_float32_no_overflow():
    """CIFAR roles (v1 = 1e-5) with large |β| overflow a naive density ratio; log space stays finite."""
    betas, rho, k0, k1, delta, sigma2 = _random_state(2)
    betas = [5.0 * b for b in betas]
    xs, lat = _to_jax(betas, rho, k0, k1, delta, sigma2)
    xs = [x.astype(jnp.float32) for x in xs]
    lat = jax.tree_util.tree_map(lambda v: v.astype(jnp.float32), lat)
    out = ssgl.sa_update(lat, xs, jnp.float32(0.5), ssgl.ssgl_hyper(2, **HYPS[1], dtype=jnp.float32))
    for leaf in jax.tree_util.tree_leaves(out):
        assert leaf.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(leaf)))


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_sigma_tilde_solves_its_quadratic(x64, task):
    betas, rho, k0, k1, *_ = _random_state(3)
    hyper = ssgl.ssgl_hyper(2, **HYPS[0])
    kw = dict(n_obs=jnp.asarray(300.0), rss=jnp.asarray(77.0)) if task == "regression" else {}
    ra, rb, rc = ssgl.sigma_coefficients([jnp.asarray(b) for b in betas], [jnp.asarray(k) for k in k0],
                                         [jnp.asarray(k) for k in k1], hyper, **kw)
    st = ssgl.sigma_root(ra, rb, rc)
    assert float(st) > 0
    resid = ra * st ** 2 - rb * st - rc
    assert abs(float(resid)) < 1e-12 * float(ra * st ** 2 + rb * st + rc)
    # it is the maximiser of the σ-part of Q1: −Ra log σ − Rb/σ − Rc/(2σ²)
    q = lambda s: -ra * jnp.log(s) - rb / s - rc / (2 * s ** 2)
    np.testing.assert_allclose(jax.grad(q)(st), 0.0, atol=1e-9 * float(ra / st))
    assert float(jax.grad(jax.grad(q))(st)) < 0


def test_omega_one_is_em_fixed_point(x64):
    """ω = 1 forgets the previous latents (pure EM maps); δ* maximises Q2; iterating ω = 1 at fixed β
    converges to a fixed point of the SA map."""
    betas, rho, k0, k1, delta, sigma2 = _random_state(4)
    hyper = ssgl.ssgl_hyper(2, v0=0.1, v1=10.0, a=1.0, b=20.0, nu=1.0, lam=1.0)
    xs, lat = _to_jax(betas, rho, k0, k1, delta, sigma2)
    one = jnp.asarray(1.0)
    a_out = ssgl.sa_update(lat, xs, one, hyper, n_obs=jnp.asarray(200.0), rss=jnp.asarray(50.0))
    # different previous ρ, κ (same δ, σ used by ρ̃) give the same output
    lat2 = ssgl.latents_from_values(rho=[r * 0 + 0.3 for r in lat.rho], kappa0=[k * 7 for k in lat.kappa0],
                                    kappa1=[k * 0 for k in lat.kappa1], delta=jnp.asarray(delta),
                                    sigma2=jnp.asarray(sigma2))
    b_out = ssgl.sa_update(lat2, xs, one, hyper, n_obs=jnp.asarray(200.0), rss=jnp.asarray(50.0))
    for u, v in zip(jax.tree_util.tree_leaves(a_out), jax.tree_util.tree_leaves(b_out), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-12)
    np.testing.assert_allclose(a_out.kappa0[0], (1 - a_out.rho[0]) / 0.1, rtol=1e-12)
    np.testing.assert_allclose(a_out.kappa1[1], a_out.rho[1] / 10.0, rtol=1e-12)
    # δ* is the stationary point of Q2 = Σρ logit δ + (a−1) log δ + (p+b−1) log(1−δ)
    for l in range(2):
        s, p = float(jnp.sum(a_out.rho[l])), a_out.rho[l].size
        q2 = lambda d, s=s, p=p: s * jnp.log(d / (1 - d)) + 0.0 * jnp.log(d) + (p + 20.0 - 1) * jnp.log1p(-d)
        np.testing.assert_allclose(jax.grad(q2)(a_out.delta[l]), 0.0, atol=1e-8)
    # iterate the EM map at fixed β: converges, and the limit is a fixed point
    upd = jax.jit(lambda la, w: ssgl.sa_update(la, xs, w, hyper, n_obs=jnp.asarray(200.0), rss=jnp.asarray(50.0)))
    cur = lat
    for _ in range(200):
        cur = upd(cur, one)
    nxt = upd(cur, one)
    for u, v in zip(jax.tree_util.tree_leaves(cur), jax.tree_util.tree_leaves(nxt), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-9, atol=1e-12)
    # and a small-ω SA run at fixed β converges to the same point
    sa = lat
    for k in range(3000):
        sa = upd(sa, jnp.asarray(min(1.0, 5.0 / (k + 5))))
    np.testing.assert_allclose(sa.sigma2, cur.sigma2, rtol=1e-2)
    np.testing.assert_allclose(sa.delta, cur.delta, rtol=1e-2)


def test_omega_zero_leaves_latents_unchanged(x64):
    betas, rho, k0, k1, delta, sigma2 = _random_state(5)
    xs, lat = _to_jax(betas, rho, k0, k1, delta, sigma2)
    out = ssgl.sa_update(lat, xs, jnp.asarray(0.0), ssgl.ssgl_hyper(2, **HYPS[0]),
                         n_obs=jnp.asarray(10.0), rss=jnp.asarray(3.0))
    for u, v in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(lat), strict=True):
        np.testing.assert_array_equal(u, v)


def test_frozen_delta_sigma_flags(x64):
    betas, rho, k0, k1, delta, sigma2 = _random_state(6)
    xs, lat = _to_jax(betas, rho, k0, k1, delta, sigma2)
    hyper = ssgl.ssgl_hyper(2, **HYPS[0], learn_delta=False, learn_sigma=False)
    out = ssgl.sa_update(lat, xs, jnp.asarray(0.5), hyper)
    np.testing.assert_array_equal(out.delta, lat.delta)
    np.testing.assert_array_equal(out.sigma2, lat.sigma2)
    assert not np.allclose(out.rho[0], lat.rho[0])


def test_penalty_gradient(x64):
    betas, rho, k0, k1, delta, sigma2 = _random_state(7)
    xs, lat = _to_jax(betas, rho, k0, k1, delta, sigma2)
    g = jax.grad(ssgl.ssgl_penalty)(xs, lat)
    for l in range(2):
        want = k1[l] * betas[l] / sigma2 + k0[l] * np.sign(betas[l]) / np.sqrt(sigma2)
        np.testing.assert_allclose(g[l], want, rtol=1e-12)
        assert np.all(np.asarray(g[l])[betas[l] == 0] == 0)  # subgradient 0 at exact zeros


def test_omega_schedules():
    k = jnp.arange(0, 2000, 7)
    r = ssgl.omega_value(ssgl.omega_schedule("sa", A=1000.0, Z=100.0, alpha=0.7, cap=0.1), k)
    np.testing.assert_allclose(r, np.minimum(0.1, 1000 / (100 + np.asarray(k)) ** 0.7), rtol=1e-5)
    u = ssgl.omega_value(ssgl.omega_schedule("sa", A=1.0, Z=100.0, alpha=0.7), k)
    np.testing.assert_allclose(u, (100 + np.asarray(k)) ** -0.7, rtol=1e-5)
    np.testing.assert_array_equal(ssgl.omega_value(ssgl.omega_schedule("em"), k), 1.0)
    np.testing.assert_array_equal(ssgl.omega_value(ssgl.omega_schedule("none"), k), 0.0)


# --------------------------------------------------------------------------------------------------
# pruning
# --------------------------------------------------------------------------------------------------
def test_prune_schedule_formula():
    s = sgmcmc.prune_schedule(0.9, 0.99, 50.0)
    k = np.array([0, 1, 50, 1000, 22_900])
    np.testing.assert_allclose(sgmcmc.prune_fraction(s, jnp.asarray(k)), 0.9 * (1 - 0.99 ** (k / 50)), rtol=1e-5)


def test_magnitude_mask_permanent_and_hits_target():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(40, 25)), jnp.float32)
    mask = jnp.ones(x.shape, bool)
    sched = sgmcmc.prune_schedule(0.9, 0.9, 5.0)
    f = jax.jit(sgmcmc.magnitude_mask)
    history = []
    for k in range(1, 400):
        frac = sgmcmc.prune_fraction(sched, jnp.asarray(k))
        new = f(x, mask, frac)
        assert not bool(jnp.any(new & ~mask))                  # never regrows
        n_zero = int(jnp.sum(~new))
        assert n_zero == max(int(np.floor(float(frac) * x.size + 0.5)), int(jnp.sum(~mask)))
        mask = new
        history.append(n_zero)
        # the weights move between prunings (as under sampling): the old mask must still hold
        x = sgmcmc.apply_masks([x + 0.3 * jnp.asarray(rng.normal(size=x.shape), jnp.float32)], [mask])[0]
    assert history == sorted(history)
    assert abs(float(sgmcmc.zero_fraction([x])) - 0.9) <= 1e-3
    # the first pruning removes the smallest magnitudes
    x0 = jnp.asarray(rng.normal(size=(100,)), jnp.float32)
    m0 = sgmcmc.magnitude_mask(x0, jnp.ones(100, bool), jnp.asarray(0.3))
    assert float(jnp.max(jnp.abs(x0[~m0]))) < float(jnp.min(jnp.abs(x0[m0])))


def test_rho_mask_one_shot():
    rho = jnp.asarray([0.1, 0.6, 0.4, 0.9])
    m = jnp.ones(4, bool)
    assert bool(jnp.all(sgmcmc.rho_mask(m, rho, 0.5, jnp.asarray(3), jnp.asarray(4))))
    m4 = sgmcmc.rho_mask(m, rho, 0.5, jnp.asarray(4), jnp.asarray(4))
    np.testing.assert_array_equal(m4, [False, True, False, True])
    # later iterations keep it even if ρ rises again
    m5 = sgmcmc.rho_mask(m4, jnp.ones(4), 0.5, jnp.asarray(5), jnp.asarray(4))
    np.testing.assert_array_equal(m5, m4)


def test_inflated_target():
    assert sgmcmc.inflated_target(0.5, 1000, 800) == pytest.approx(0.625)
    with pytest.raises(ValueError, match="prunable"):
        sgmcmc.inflated_target(0.9, 1000, 500)


# --------------------------------------------------------------------------------------------------
# the registered methods (emtdamp.methods.sgmcmc_methods)
# --------------------------------------------------------------------------------------------------
from emtdamp.methods import Batch, DataSpec, ModelSpec, get_method  # noqa: E402
from emtdamp.methods.sgmcmc_methods import SGMCMCHParams  # noqa: E402

NAMES = ["sgld", "sghmc", "sgld_sa", "sghmc_sa", "sgld_em", "sghmc_em", "a_sghmc", "a_sghmc_em", "a_sghmc_sa"]


def _toy(task, n=64, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    if task == "regression":
        y = (x[:, :1] - 0.5 * x[:, 1:2] + 0.1 * rng.normal(size=(n, 1))).astype(np.float32)
        spec = DataSpec("regression", d, 1, n)
    else:
        y = np.argmax(x[:, :k], axis=1).astype(np.int32)
        spec = DataSpec("classification", d, k, n)
    return jnp.asarray(x), jnp.asarray(y), spec


_RUNNERS: dict = {}


def _run_epochs(algo, state, x, y, bs, n_epochs, key=0):
    """``n_epochs`` shuffled epochs in one jit (compiled once per built algorithm and shape)."""
    n = x.shape[0]
    tag = (id(algo), n, bs, n_epochs)
    if tag not in _RUNNERS:
        def epoch(st, k, x, y):
            perm = jax.random.permutation(k, n).reshape(n // bs, bs)
            return jax.lax.scan(algo.step, st, Batch(x[perm], y[perm], jnp.ones((n // bs, bs), x.dtype)))

        _RUNNERS[tag] = (algo, jax.jit(lambda st, k, x, y: jax.lax.scan(
            lambda s_, k_: epoch(s_, k_, x, y), st, jax.random.split(k, n_epochs))))
    return _RUNNERS[tag][1](state, jax.random.key(key), x, y)


def _leaves(tree):
    return [jax.random.key_data(v) if jnp.issubdtype(v.dtype, jax.dtypes.prng_key) else v
            for v in jax.tree_util.tree_leaves(tree)]


def test_all_variants_registered_with_their_schedules():
    """Every name builds; ω mode and annealing default differ as documented (init only, no compile)."""
    x, y, spec = _toy("regression")
    for name in NAMES:
        st = get_method(name).build(ModelSpec(hidden=(8,)), spec, SGMCMCHParams()).init(jax.random.key(0))
        om = float(sg_omega(st, 0))
        want = 0.0 if name in ("sgld", "sghmc", "a_sghmc") else 1.0 if name.endswith("_em") else 100 ** -0.7
        np.testing.assert_allclose(om, want, rtol=1e-6)
        np.testing.assert_allclose(st.anneal_rate, 1.003 if name.startswith("a_") else 1.0, rtol=1e-7)


def sg_omega(st, k):
    return sgmcmc.omega_value(st.omega, jnp.asarray(k))


@pytest.mark.parametrize("name,task", [("sgld", "regression"), ("sghmc_sa", "classification"),
                                       ("sgld_em", "classification"), ("a_sghmc_sa", "regression")])
def test_methods_run_and_predict(name, task):
    x, y, spec = _toy(task)
    m = get_method(name)
    # lr 5e-4: at 1e-3 the regression chains diverge for ~10% of init seeds with either noise generator
    # (2/24 with jax.random.normal, 3/24 with sgmcmc.kernels.normal; 0/32 at 5e-4): a smoke test must be stable
    hp = SGMCMCHParams(learning_rate=5e-4, burn_in=20, thin=2, n_samples=5, sigma_init=0.5)
    algo = m.build(ModelSpec(hidden=(8,)), spec, hp)
    st = algo.init(jax.random.key(0))
    st, met = _run_epochs(algo, st, x, y, 16, 10)
    assert set(met) >= {"loss", "energy", "omega", "sigma2"}
    assert int(st.count) == 40 and int(st.samples.n_collected) == 10
    pred = jax.jit(algo.predict)(st, x)
    if task == "regression":
        assert pred.mean.shape == (64, 1) and bool(jnp.all(pred.var > 0))
    else:
        np.testing.assert_allclose(pred.probs.sum(-1), 1.0, rtol=1e-5)
    for leaf in _leaves(st):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert bool(jnp.all(jnp.isfinite(leaf)))
    omega = np.asarray(met["omega"]).ravel()
    if name in ("sgld", "sghmc", "a_sghmc"):
        assert np.all(omega == 0)
        np.testing.assert_array_equal(st.latents.rho[0], 0.5)       # frozen at init
    elif name.endswith("_em"):
        assert np.all(omega == 1)
    else:
        np.testing.assert_allclose(omega, (100 + np.arange(40)) ** -0.7, rtol=1e-5)
    want_rate = 1.003 if name.startswith("a_") else 1.0
    np.testing.assert_allclose(st.inv_temp, want_rate ** 40, rtol=1e-5)


def test_padding_rows_change_nothing():
    x, y, spec = _toy("regression")
    m = get_method("sghmc_sa")
    algo = m.build(ModelSpec(hidden=(8,)), spec, SGMCMCHParams(learning_rate=1e-3))
    st = algo.init(jax.random.key(0))
    # same shapes (one compile): the 6 weight-0 rows hold the real rows 10..15 in one batch and garbage
    # in the other, so any leak of padding rows into the step would change the result
    w = jnp.concatenate([jnp.ones(10), jnp.zeros(6)])
    step = jax.jit(algo.step)
    a, ma = step(st, Batch(x[:16], y[:16], w))
    xp = jnp.concatenate([x[:10], 50 * jnp.ones((6, x.shape[1]))])
    yp = jnp.concatenate([y[:10], -30 * jnp.ones((6, 1))])
    b, mb = step(st, Batch(xp, yp, w))
    np.testing.assert_allclose(ma["loss"], jnp.mean((algo.predict(st, x[:10]).mean - y[:10]) ** 2), rtol=1e-5)
    np.testing.assert_allclose(ma["energy"], mb["energy"], rtol=1e-6)
    for u, v in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


def test_no_recompile_across_hparam_values():
    """Step sizes, temperatures, ω and prior hyperparameters are arrays: one trace serves all values."""
    x, y, spec = _toy("classification")
    m = get_method("sghmc_sa")
    hps = [SGMCMCHParams(learning_rate=lr, v0=v0, inv_temp=it, omega_a=2.0)
           for lr, v0, it in [(1e-3, 0.1, 1.0), (1e-4, 0.01, 1000.0), (5e-4, 0.5, 3.0)]]
    algo = m.build(ModelSpec(hidden=(8,)), spec, hps[0])     # one step function for the states of every value
    traced = []

    def step(st, b):
        traced.append(1)
        return algo.step(st, b)

    f = jax.jit(step)
    batch = Batch(x[:16], y[:16], jnp.ones(16))
    for hp in hps:
        st = m.build(ModelSpec(hidden=(8,)), spec, hp).init(jax.random.key(0))
        f(st, batch)
    assert len(traced) == 1


def test_variants_vmap_over_one_step_function():
    """sgld_sa / sgld_em / sgld states differ only in arrays: one vmapped step runs all three."""
    x, y, spec = _toy("regression")
    names = ["sgld_sa", "sgld_em", "sgld"]
    hp = SGMCMCHParams(learning_rate=1e-3)
    ms = [get_method(n).build(ModelSpec(hidden=(8,)), spec, hp) for n in names]
    sts = [mm.init(jax.random.key(0)) for mm in ms]
    stacked = jax.tree_util.tree_map(lambda *v: jnp.stack(v), *sts)
    out, met = jax.jit(jax.vmap(ms[0].step, in_axes=(0, None)))(stacked, Batch(x[:16], y[:16], jnp.ones(16)))
    for i in (0,):     # the SA row against its own (unbatched) method
        ref, _ = jax.jit(ms[i].step)(sts[i], Batch(x[:16], y[:16], jnp.ones(16)))
        got = jax.tree_util.tree_map(lambda v, i=i: v[i], out)
        for u, v in zip(_leaves(got), _leaves(ref), strict=True):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(met["omega"], [100 ** -0.7, 1.0, 0.0], rtol=1e-5)


@pytest.mark.parametrize("ssgl_layers,target", [((), 0.5), ((0,), 0.3)])
def test_method_pruning_hits_target_and_stays_zero(ssgl_layers, target):
    x, y, spec = _toy("classification", d=20, k=5)
    m = get_method("sghmc_sa")
    hp = SGMCMCHParams(learning_rate=1e-3, prune_target=target, prune_damping=0.5, prune_gap=1.0,
                       ssgl_layers=ssgl_layers)
    algo = m.build(ModelSpec(hidden=(30,)), spec, hp)
    st = algo.init(jax.random.key(0))
    st, met = _run_epochs(algo, st, x, y, 16, 6)                        # 24 steps: s_k = S (1 − 2^−k)
    sp = algo.sparsity(st)
    assert abs(sp["weights_zero_frac"] - target) <= 1e-3
    masks = [np.asarray(mk) for mk in st.masks]
    st2, _ = _run_epochs(algo, st, x, y, 16, 6, key=1)
    for i, mk in zip(m_layers(ssgl_layers), masks, strict=True):
        assert np.all(np.asarray(st2.params[i]["kernel"])[~mk] == 0)      # pruned weights stay zero
        assert np.all(np.asarray(st2.params[i]["kernel"])[mk] != 0)
    assert abs(algo.sparsity(st2)["weights_zero_frac"] - target) <= 1e-3
    assert sp["params_remaining"] == 20 * 30 + 30 + 30 * 5 + 5 - round(target * 750)


def m_layers(sel):
    return (0, 1) if not sel else sel


def test_pruning_target_too_large_for_layers():
    x, y, spec = _toy("classification", d=20, k=5)
    m = get_method("sghmc_sa")
    with pytest.raises(ValueError, match="prunable"):
        m.build(ModelSpec(hidden=(30,)), spec, SGMCMCHParams(prune_target=0.9, ssgl_layers=(1,)))


def test_rho_pruning_through_method():
    x, y, spec = _toy("regression", d=20)
    m = get_method("sgld_sa")
    hp = SGMCMCHParams(learning_rate=1e-4, rho_prune_threshold=0.5, rho_prune_step=12, ssgl_layers=(0,),
                       v0=0.01, v1=1.0)
    algo = m.build(ModelSpec(hidden=(30,)), spec, hp)
    st = algo.init(jax.random.key(0))
    st, _ = _run_epochs(algo, st, x, y, 16, 4)
    mask = np.asarray(st.masks[0])
    assert not mask.all()
    st2, _ = _run_epochs(algo, st, x, y, 16, 4, key=1)
    np.testing.assert_array_equal(np.asarray(st2.masks[0]), mask)      # one-shot, then kept
    assert np.all(np.asarray(st2.params[0]["kernel"])[~mask] == 0)


# --------------------------------------------------------------------------------------------------
# slow acceptance runs (issue 5): `pytest -m slow tests/test_sgmcmc_sa.py`
# --------------------------------------------------------------------------------------------------
_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _load_script(name):
    import importlib.util

    path = _ROOT / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_p1000_simulation_acceptance():
    """500k iterations x 3 methods x 8 data draws, one vmapped program (see scripts/run_p1000.py for the
    time). SGLD-SA must beat SGLD-EM and SGLD on every draw, keep >= 99 % of the 997 nulls below 0.1, and
    its posterior means of b1..b3 must be within 0.3 of the truth on average over the draws. One draw
    alone cannot decide "within 0.3 of the truth": the oracle least-squares fit on the true support misses
    by more on about half the draws (6 of data seeds 0-7). Measured (seeds 0-7): mean errors +0.17,
    -0.28, +0.05; the -0.28 carries data seed 5, where SA locks b2 out (standard error over 8 draws
    about 0.28 with such draws, 0.085 without)."""
    out, checks = _load_script("run_p1000").main(["--draws", "8", "--seed", "0"])
    assert all(checks.values()), checks
    sa = out["summary"]["sgld_sa"]
    assert sa["mae"] < 2.0 and sa["mse"] < 4.5      # reference (one draw) 1.71 / 4.08


@pytest.mark.slow
def test_mnist5k_pruning_to_90_percent(tmp_path):
    """S = 0.9 magnitude pruning through the CLI run folder (~3 min): summary.json's weights_zero_frac is
    0.9 ± 0.001 and accuracy stays above 80 % (permanence of the mask: test_method_pruning_hits_target...)."""
    import json

    from emtdamp import config as cfgmod
    from emtdamp.runs import run_config

    cfg = cfgmod.load_config(_ROOT / "configs" / "sghmc_sa_mnist5k.yaml", [
        "train.epochs=100", "method.prune_target=0.9", "method.prune_layers=[0,1]", "method.prune_gap=4",
        "method.prune_every=10", "method.burn_in=3200", f"output.dir={tmp_path}", "train.eval_every=100"])
    run_dir, summary, _ = run_config(cfg, tmp_path / "run")
    s = json.loads((run_dir / "summary.json").read_text())
    assert abs(s["sparsity"]["weights_zero_frac"] - 0.9) <= 1e-3
    assert s["test"]["accuracy"] > 0.8


# --------------------------------------------------------------------------------------------------
# sa_every: one latent update standing for several iterations
# --------------------------------------------------------------------------------------------------
def test_omega_compounded_against_numpy_product(x64):
    """``1 − Π_j (1 − ω_j)`` over the window ending at ``count``, against the plain product in float64."""
    s = ssgl.omega_schedule("sa", A=3.0, Z=10.0, alpha=0.6, cap=0.5)
    for every in (1, 2, 4, 7):
        for count in (every - 1, 50, 999):
            om = 3.0 * (10.0 + np.arange(count - every + 1, count + 1)) ** -0.6
            want = 1.0 - np.prod(1.0 - np.minimum(0.5, om))
            np.testing.assert_allclose(ssgl.omega_compounded(s, jnp.asarray(count), every), want, rtol=1e-12)
    np.testing.assert_array_equal(ssgl.omega_compounded(ssgl.omega_schedule("em"), jnp.asarray(9), 4), 1.0)
    np.testing.assert_array_equal(ssgl.omega_compounded(ssgl.omega_schedule("none"), jnp.asarray(9), 4), 0.0)
    np.testing.assert_array_equal(ssgl.omega_compounded(s, jnp.asarray(9), 1), ssgl.omega_value(s, jnp.asarray(9)))
    # small steps keep their relative precision in float32 (no 1 − (1 − ω) cancellation)
    tiny = ssgl.omega_schedule("sa", A=1e-6, Z=1.0, alpha=0.0, cap=1.0, dtype=jnp.float32)
    got = float(ssgl.omega_compounded(tiny, jnp.asarray(3), 4))
    np.testing.assert_allclose(got, 1.0 - (1.0 - 1e-6) ** 4, rtol=1e-6)


def test_compounded_step_moves_rho_as_the_steps_it_stands_for(x64):
    """With the sample fixed (ρ̃ constant), ``every`` SA steps on ρ equal one step with the compounded ω."""
    rng = np.random.default_rng(5)
    xs = [jnp.asarray(rng.normal(scale=0.3, size=(20, 3)))]
    lat = ssgl.latents_from_values(rho=[jnp.asarray(rng.uniform(0.01, 0.99, (20, 3)))],
                                   kappa0=[jnp.ones((20, 3))], kappa1=[jnp.ones((20, 3))],
                                   delta=jnp.asarray([0.3]), sigma2=jnp.asarray(0.7))
    hyper = ssgl.ssgl_hyper(1, learn_delta=False, learn_sigma=False)
    s = ssgl.omega_schedule("sa", A=1.0, Z=5.0, alpha=0.7)
    many = lat
    for k in range(8, 12):
        many = ssgl.sa_update(many, xs, ssgl.omega_value(s, jnp.asarray(k)), hyper)
    one = ssgl.sa_update(lat, xs, ssgl.omega_compounded(s, jnp.asarray(11), 4), hyper)
    np.testing.assert_allclose(one.rho[0], many.rho[0], rtol=1e-12)
    np.testing.assert_allclose(one.log1m_rho[0], many.log1m_rho[0], rtol=1e-12)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_sa_every_updates_latents_on_every_kth_step_only(task):
    """The method's latents stay put between updates and, on every ``sa_every``-th step, move by one
    :func:`ssgl.sa_update` at the new sample with the compounded step (recomputed here from the state)."""
    x, y, spec = _toy(task)
    every = 3
    hp = SGMCMCHParams(learning_rate=1e-4, sa_every=every, noise="sa" if task == "regression" else "sample")
    algo = get_method("sghmc_sa").build(ModelSpec(hidden=(8,)), spec, hp)
    st = algo.init(jax.random.key(0))
    step = jax.jit(algo.step)
    for i in range(7):
        b = Batch(x[8 * i:8 * i + 16], y[8 * i:8 * i + 16], jnp.ones(16))
        new, _ = step(st, b)
        if (i + 1) % every:
            for u, v in zip(_leaves(new.latents), _leaves(st.latents), strict=True):
                np.testing.assert_array_equal(u, v)
        else:
            xs = [new.params[j]["kernel"] for j in range(len(new.params))]
            w = sgmcmc.omega_compounded(st.omega, st.count, every)
            kw = {}
            if task == "regression":   # the residuals of the same minibatch at the new sample, NumPy forward
                p = [{k: np.asarray(v, np.float64) for k, v in layer.items()} for layer in new.params]
                h = np.maximum(np.asarray(b.x, np.float64) @ p[0]["kernel"] + p[0]["bias"], 0.0)
                out = h @ p[1]["kernel"] + p[1]["bias"]
                rss = spec.n_train / 16.0 * np.sum((out - np.asarray(b.y)) ** 2)
                kw = {"n_obs": float(spec.n_train), "rss": jnp.asarray(rss, jnp.float32)}
            want = ssgl.sa_update(st.latents, xs, w, st.hyper, **kw)
            for u, v in zip(_leaves(new.latents), _leaves(want), strict=True):
                np.testing.assert_allclose(u, v, rtol=2e-5, atol=1e-6)
            assert not np.allclose(new.latents.rho[0], st.latents.rho[0])
        st = new
