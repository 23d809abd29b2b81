"""Gaussian messages and the scalar building blocks (spec 2.2a-b) against independent references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats
from scipy.special import log_ndtr as sp_log_ndtr

from emtdamp.tdamp import gaussian as G


def _rand_msgs(rng, n, dtype):
    m = rng.normal(size=n) * 3
    v = np.exp(rng.uniform(-4, 4, size=n))
    return G.Gaussian.from_mean_var(jnp.asarray(m, dtype), jnp.asarray(v, dtype)), m, v


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_product_then_division_is_identity(dtype, x64):
    rng = np.random.default_rng(0)
    a, _, _ = _rand_msgs(rng, 1000, dtype)
    b, _, _ = _rand_msgs(rng, 1000, dtype)
    back = (a * b) / b
    tol = 1e-4 if dtype == "float32" else 1e-11
    np.testing.assert_allclose(back.prec, a.prec, rtol=tol)
    np.testing.assert_allclose(back.mean, a.mean, rtol=tol, atol=tol * 10)


def test_product_matches_closed_form(x64):
    rng = np.random.default_rng(1)
    a, m1, v1 = _rand_msgs(rng, 100, "float64")
    b, m2, v2 = _rand_msgs(rng, 100, "float64")
    c = G.product(a, b)
    v = 1 / (1 / v1 + 1 / v2)
    np.testing.assert_allclose(c.var, v, rtol=1e-12)
    np.testing.assert_allclose(c.mean, v * (m1 / v1 + m2 / v2), rtol=1e-10, atol=1e-12)
    mm = G.moment_match(jnp.asarray(m1), jnp.asarray(m1 ** 2 + v1))
    np.testing.assert_allclose(mm.var, v1, rtol=1e-9)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_extreme_precisions_stay_finite(dtype, x64):
    lo, hi = G.bounds(jnp.dtype(dtype))
    big = np.finfo(dtype).max
    means = jnp.asarray([0.0, 1.0, -1e30, 1e30, big, -big, 3.0, 0.0], dtype)
    vars_ = jnp.asarray([0.0, np.inf, 1e-300 if dtype == "float64" else 1e-40, 1e300 if dtype == "float64" else 1e38,
                         1.0, 0.0, -1.0, np.inf], dtype)
    g = G.Gaussian.from_mean_var(means, vars_)
    for arr in (g.eta, g.prec, g.mean, g.var):
        assert bool(jnp.all(jnp.isfinite(arr)))
    lo, hi = float(np.asarray(lo, dtype)), float(np.asarray(hi, dtype))
    assert float(g.prec.min()) >= lo and float(g.prec.max()) <= hi
    # products / quotients of extreme messages, including improper results
    h = G.Gaussian.from_mean_var(means[::-1], vars_[::-1])
    for out in (g * h, g / h, h / g, G.divide(g, g)):
        for arr in (out.eta, out.prec, out.mean, out.var):
            assert bool(jnp.all(jnp.isfinite(arr)))
        assert float(out.prec.min()) >= lo
    # ReLU posterior at extreme messages
    p = jnp.asarray([1e6, -1e6, 0.0, 3.0, -40.0], dtype)
    vp = jnp.asarray([lo, lo, hi, 1.0, lo], dtype)
    r = jnp.asarray([-1e10, 1e10, 0.0, 1e6, 5.0], dtype)
    vr = jnp.asarray([hi, lo, lo, hi, hi], dtype)
    for arr in G.relu_posterior(p, vp, r, vr):
        assert bool(jnp.all(jnp.isfinite(arr)))


def test_log_ndtr_accuracy(x64):
    a = np.concatenate([np.linspace(-1000, -19, 400), np.linspace(-19, 8, 400)])
    ours = np.asarray(G.log_ndtr(jnp.asarray(a)))
    # right tail: jax.scipy log_ndtr is accurate to ~5e-17 absolute (log1p of a tiny erfc), enough here
    np.testing.assert_allclose(ours, sp_log_ndtr(a), rtol=1e-13, atol=1e-16)
    a32 = np.linspace(-300, 5, 500).astype(np.float32)
    ours32 = np.asarray(G.log_ndtr(jnp.asarray(a32)))
    assert ours32.dtype == np.float32
    np.testing.assert_allclose(ours32, sp_log_ndtr(a32.astype(np.float64)), rtol=2e-6, atol=1e-6)


def test_truncated_normal_vs_scipy(x64):
    rng = np.random.default_rng(2)
    m = np.concatenate([rng.normal(size=200) * 5, [-30.0, -12.0, 25.0]])
    v = np.exp(rng.uniform(-3, 3, size=m.size))
    for sign in (1.0, -1.0):
        mean, var, lm = G.truncated_normal_moments(jnp.asarray(m), jnp.asarray(v), sign)
        s = np.sqrt(v)
        if sign > 0:
            a, b = -m / s, np.inf
        else:
            a, b = -np.inf, -m / s
        ref_mean, ref_var = stats.truncnorm.stats(a, b, loc=m, scale=s, moments="mv")
        np.testing.assert_allclose(mean, ref_mean, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(var, ref_var, rtol=1e-5)
        np.testing.assert_allclose(lm, sp_log_ndtr(sign * m / s), rtol=1e-12, atol=1e-16)


def test_truncated_normal_float32_tail_branch_vs_float64(x64):
    # float32 path (asymptotic branch below a = -6.5) against the exact float64 formulas
    a = np.linspace(-200, 4, 2000)
    m64, v64, _ = G.truncated_normal_moments(jnp.asarray(a), jnp.ones_like(jnp.asarray(a)), 1.0)
    m32, v32, _ = G.truncated_normal_moments(jnp.asarray(a, jnp.float32), jnp.ones(a.shape, jnp.float32), 1.0)
    assert m32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(m32), np.asarray(m64), rtol=3e-3)
    np.testing.assert_allclose(np.asarray(v32), np.asarray(v64), rtol=5e-3)


def _relu_posterior_quad(p, vp, r, vr):
    """Posterior moments by numerical integration over z (independent reference)."""
    sp = np.sqrt(vp)

    def dens(z):
        u = max(z, 0.0)
        return stats.norm.pdf(z, p, sp) * (stats.norm.pdf(u, r, np.sqrt(vr)) if np.isfinite(vr) else 1.0)

    lo, hi = p - 12 * sp, p + 12 * sp
    pts = [0.0] if lo < 0 < hi else None
    mom = [integrate.quad(lambda z, k=k: dens(z) * z ** k, lo, hi, points=pts, epsabs=0, epsrel=1e-12,
                          limit=400)[0] for k in range(3)]
    umom = [integrate.quad(lambda z, k=k: dens(z) * max(z, 0.0) ** k, lo, hi, points=pts, epsabs=0,
                           epsrel=1e-12, limit=400)[0] for k in range(3)]
    ez, ez2 = mom[1] / mom[0], mom[2] / mom[0]
    eu, eu2 = umom[1] / umom[0], umom[2] / umom[0]
    return ez, ez2 - ez ** 2, eu, eu2 - eu ** 2


@pytest.mark.parametrize("p,vp,r,vr", [(0.3, 1.0, 0.5, 0.7), (-1.2, 0.5, 1.0, 2.0), (2.0, 0.3, -0.5, 1.5),
                                        (-0.5, 2.0, 0.0, 0.1), (0.7, 1.3, 0.0, np.inf)])
def test_relu_posterior_vs_quadrature(p, vp, r, vr, x64):
    hi = G.bounds(jnp.float64)[1]
    out = G.relu_posterior(jnp.asarray(p), jnp.asarray(vp), jnp.asarray(r), jnp.asarray(min(vr, hi)))
    ref = _relu_posterior_quad(p, vp, r, vr)
    np.testing.assert_allclose(np.asarray(out, dtype=float), ref, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("p,vp", [(0.3, 1.0), (-1.2, 0.5), (2.0, 0.3), (-3.0, 0.2), (5.0, 0.01), (0.1, 4.0)])
def test_relu_moments_vs_quadrature(p, vp, x64):
    """``relu_moments`` (no backward message) against numerical integration of ``relu(z)``, ``z ~ N(p, vp)``."""
    eu, vu = G.relu_moments(jnp.asarray(p), jnp.asarray(vp))
    ref = _relu_posterior_quad(p, vp, 0.0, np.inf)
    np.testing.assert_allclose([float(eu), float(vu)], ref[2:], rtol=1e-7, atol=1e-12)


def _relu_grid(n_random=400):
    rng = np.random.default_rng(0)
    a = np.concatenate([np.linspace(-40, 40, 801), rng.normal(size=n_random) * 10])
    vp = np.exp(rng.uniform(np.log(1e-7), np.log(1e3), size=a.size))
    return a * np.sqrt(vp), vp


def test_relu_moments_is_the_posterior_without_message(x64):
    """float64, ``a = p / sqrt(vp)`` in [-40, 40]: ``relu_posterior`` with ``vr`` at the upper bound (its "no
    message") differs from the exact no-message moments by ``O(vp / hi)``."""
    p, vp = _relu_grid()
    hi = G.bounds(jnp.float64)[1]
    eu, vu = map(np.asarray, G.relu_moments(jnp.asarray(p), jnp.asarray(vp)))
    _, _, eu_r, vu_r = map(np.asarray, G.relu_posterior(jnp.asarray(p), jnp.asarray(vp), jnp.zeros(p.size),
                                                        jnp.full(p.size, hi)))
    tol = 10 * vp.max() / hi
    keep = eu_r > 1e-280
    assert np.max(np.abs(eu - eu_r)[keep] / eu_r[keep]) < tol
    assert np.max(np.abs(vu - vu_r) / vu_r) < tol


def test_relu_moments_float32_matches_float64(x64):
    """float32 over ``a`` in [-40, 40] and ``vp`` in [1e-7, 1e3]: finite, ``vu`` at or above the lower clip, and
    within the truncated normal's float32 accuracy (2e-3 relative at the asymptotic switch a = -5, see
    :func:`emtdamp.tdamp.gaussian.truncated_normal_moments`) of float64 wherever the moment is not negligible."""
    p, vp = _relu_grid()
    e64, v64 = map(np.asarray, G.relu_moments(jnp.asarray(p), jnp.asarray(vp)))
    e32, v32 = (np.asarray(x, float) for x in G.relu_moments(jnp.asarray(p, jnp.float32),
                                                            jnp.asarray(vp, jnp.float32)))
    assert np.isfinite(e32).all() and np.isfinite(v32).all() and (e32 >= 0).all()
    assert (v32 >= np.float32(G.bounds(jnp.float32)[0])).all()
    big = e64 > 1e-30 * np.sqrt(vp)
    assert np.max(np.abs(e32 - e64)[big] / e64[big]) < 2e-3
    big = v64 > 1e-6
    assert np.max(np.abs(v32 - v64)[big] / v64[big]) < 2e-3


def test_relu_moment_matching_vs_monte_carlo():
    """ReLU of a Gaussian (no backward message) vs 10^6 draws, relative error < 1e-2.

    Standard error of a sample mean of relu(z) is sd/1000, of a sample variance ~ sqrt(2) var/1000 (times
    a kurtosis factor < 3 here): with these (p, vp) both are < 2.5e-3 relative, so 1e-2 is a 4-sigma bound.
    """
    key = jax.random.PRNGKey(0)
    ps = [-0.5, 0.0, 0.8, 2.0]
    vps = [1.0, 0.5, 2.0, 0.3]
    hi = G.bounds(jnp.float32)[1]
    for i, (p, vp) in enumerate(zip(ps, vps, strict=True)):
        z = p + jnp.sqrt(vp) * jax.random.normal(jax.random.fold_in(key, i), (1_000_000,))
        u = jnp.maximum(z, 0.0)
        _, _, eu, vu = G.relu_posterior(jnp.float32(p), jnp.float32(vp), jnp.float32(0.0), jnp.float32(hi))
        np.testing.assert_allclose(float(eu), float(u.mean()), rtol=1e-2)
        np.testing.assert_allclose(float(vu), float(u.var()), rtol=1e-2)


def test_relu_posterior_float32_matches_float64_small_variance(x64):
    # the float32 path must not lose the posterior variance when vp << p^2 (cancellation guard)
    p, vp = np.array([1.0, 2.0, -0.5, 0.3]), np.array([1e-6, 1e-7, 1e-6, 1e-5])
    r, vr = np.array([1.1, 1.0, 0.0, 0.2]), np.array([0.1, 1.0, 0.5, 0.01])
    o64 = G.relu_posterior(*(jnp.asarray(a) for a in (p, vp, r, vr)))
    o32 = G.relu_posterior(*(jnp.asarray(a, jnp.float32) for a in (p, vp, r, vr)))
    np.testing.assert_allclose(np.asarray(o32[1]), np.asarray(o64[1]), rtol=1e-3)
    dz64 = G.relu_posterior_offset(*(jnp.asarray(a) for a in (p, vp, r, vr)))[0]
    dz32 = G.relu_posterior_offset(*(jnp.asarray(a, jnp.float32) for a in (p, vp, r, vr)))[0]
    np.testing.assert_allclose(np.asarray(dz32), np.asarray(dz64), rtol=1e-3, atol=1e-12)
