"""Numerical robustness of the SSGL latents (issue 16 item 4): ρ and δ live as ``(log p, log(1 − p))`` pairs,
the SA step is a log-sum-exp, and the E-step reads ``log δ`` directly (emtdamp/sgmcmc/ssgl.py).

References are independent NumPy / SciPy transcriptions: the plain formulas ``(1 − ω) p + ω t`` and
``δ* = (Σρ + a − 1)/(a + b + p − 2)`` in float64 where they are finite, and the log-space recurrence in
float64 where the plain values underflow. All tests are deterministic (fixed NumPy seeds, no sampling).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
import scipy.stats

from emtdamp.sgmcmc import ssgl


def _log_uniform(rng, lo, hi, size):
    """Values with log10 uniform in ``[lo, hi]``."""
    return 10.0 ** rng.uniform(lo, hi, size)


# --------------------------------------------------------------------------------------------------
# the log-space SA step equals the plain formula where the plain formula is finite (float64)
# --------------------------------------------------------------------------------------------------
def test_log_mix_equals_plain_convex_combination(x64):
    rng = np.random.default_rng(0)
    n = 4000
    # probabilities over 300 decades, both tails (p and 1 − p small), and ω including 0 and 1
    p = _log_uniform(rng, -300, 0, n)
    t = _log_uniform(rng, -300, 0, n)
    flip_p, flip_t = rng.random(n) < 0.3, rng.random(n) < 0.3
    lp, l1p = np.where(flip_p, np.log1p(-p), np.log(p)), np.where(flip_p, np.log(p), np.log1p(-p))
    lt, l1t = np.where(flip_t, np.log1p(-t), np.log(t)), np.where(flip_t, np.log(t), np.log1p(-t))
    omega = np.concatenate([[0.0, 1.0], rng.random(n - 2)])
    got_l, got_l1 = jax.jit(ssgl.log_mix)(*(jnp.asarray(v) for v in (lp, l1p, lt, l1t, omega)))
    pv, tv = np.exp(lp), np.exp(lt)
    qv, uv = -np.expm1(lp), -np.expm1(lt)              # 1 − p, 1 − t, exact from the logs
    want = (1 - omega) * pv + omega * tv
    want1 = (1 - omega) * qv + omega * uv
    ok = (want > 1e-290) & (want1 > 1e-290)           # where the plain value is a normal float64
    assert ok.mean() > 0.9
    np.testing.assert_allclose(np.exp(np.asarray(got_l))[ok], want[ok], rtol=1e-12)
    np.testing.assert_allclose(np.exp(np.asarray(got_l1))[ok], want1[ok], rtol=1e-12)
    assert np.all(np.isfinite(got_l)) and np.all(np.isfinite(got_l1))
    # ω = 0 keeps the inputs, ω = 1 returns the target, bit for bit
    assert float(got_l[0]) == lp[0] and float(got_l1[0]) == l1p[0]
    assert float(got_l[1]) == lt[1] and float(got_l1[1]) == l1t[1]


def _np_plain_update(betas, rho, delta, sigma2, omega, *, v0, v1, a, b):
    """Steps 4 and 6 with the plain formulas (SciPy densities), float64."""
    sig = np.sqrt(sigma2)
    new_rho, new_delta = [], []
    for i, beta in enumerate(betas):
        la = scipy.stats.norm.logpdf(beta, 0.0, sig * np.sqrt(v1)) + np.log(delta[i])
        lb = scipy.stats.laplace.logpdf(beta, 0.0, sig * v0) + np.log(1 - delta[i])
        r = (1 - omega) * rho[i] + omega * scipy.special.expit(la - lb)
        new_rho.append(r)
        new_delta.append((1 - omega) * delta[i] + omega * (r.sum() + (a - 1)) / (a + b + beta.size - 2))
    return new_rho, np.array(new_delta)


def test_sa_update_matches_plain_formula_at_extreme_latents(x64):
    """Random cases with ρ and δ spread over 200 decades (tiny, but normal float64 numbers)."""
    for seed in range(6):
        rng = np.random.default_rng(seed)
        shapes = [(30, 4), (4, 1)]
        betas = [rng.normal(scale=0.3, size=s) * (rng.random(s) < 0.5) for s in shapes]
        rho = [_log_uniform(rng, -200, -1e-9, s) for s in shapes]
        delta = _log_uniform(rng, -200, np.log10(0.5), 2)
        sigma2 = float(rng.uniform(0.2, 2.0))
        omega = float(rng.uniform(0.01, 0.99))
        a = float(rng.choice([1.0, 1.5]))
        b = 120.0
        ref_rho, ref_delta = _np_plain_update(betas, rho, delta, sigma2, omega, v0=0.1, v1=10.0, a=a, b=b)
        lat = ssgl.latents_from_values(rho=[jnp.asarray(r) for r in rho],
                                       kappa0=[jnp.ones(s) for s in shapes], kappa1=[jnp.ones(s) for s in shapes],
                                       delta=jnp.asarray(delta), sigma2=jnp.asarray(sigma2))
        hyper = ssgl.ssgl_hyper(2, v0=0.1, v1=10.0, a=a, b=b)
        out = ssgl.sa_update(lat, [jnp.asarray(x) for x in betas], jnp.asarray(omega), hyper)
        for got, want in zip(out.rho, ref_rho, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-10)
        np.testing.assert_allclose(out.delta, ref_delta, rtol=1e-10)
        # the stored complements agree with the values
        for l1, want in zip(out.log1m_rho, ref_rho, strict=True):
            # an absolute error of log(1 − ρ) is a relative error of 1 − ρ
            np.testing.assert_allclose(l1, np.log1p(-want), rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(out.log1m_delta, np.log1p(-ref_delta), rtol=1e-10, atol=1e-14)


def test_delta_target_log_space_vs_numpy(x64):
    """``(log δ*, log(1 − δ*))`` against the plain M-step, for a ≥ 1 and for a < 1 (floored, never −inf)."""
    rng = np.random.default_rng(3)
    rho = [rng.random((50, 2)), _log_uniform(rng, -40, -20, (10,))]
    for a, b in [(1.0, 100.0), (3.0, 3.0), (1.0, 1.0)]:
        hyper = ssgl.ssgl_hyper(2, a=a, b=b)
        ld, l1d = ssgl.log_delta_target([jnp.log(r) for r in rho], [jnp.log1p(-r) for r in rho], hyper)
        want = np.array([(r.sum() + (a - 1)) / (a + b + r.size - 2) for r in rho])
        np.testing.assert_allclose(np.exp(ld), want, rtol=1e-12)
        np.testing.assert_allclose(np.exp(l1d), 1 - want, rtol=1e-12)
        np.testing.assert_allclose(ssgl.delta_target([jnp.asarray(r) for r in rho], hyper), want, rtol=1e-12)
    # a < 1 with Σρ < 1 − a: the plain M-step is negative; the log form floors it at the smallest normal
    ld, l1d = ssgl.log_delta_target([jnp.log(r) for r in rho], [jnp.log1p(-r) for r in rho],
                                    ssgl.ssgl_hyper(2, a=0.5, b=2.0))
    assert np.all(np.isfinite(ld)) and float(ld[1]) < -700 and abs(float(l1d[1])) < 1e-300


# --------------------------------------------------------------------------------------------------
# float32: δ* far below the float32 range — δ stays finite in log space and comes back
# --------------------------------------------------------------------------------------------------
def test_delta_survives_underflow_in_float32_and_comes_back():
    """10,000 SA updates at β = 0 with ρ ≈ 0: with a = 1 every step multiplies δ by about 0.9, so δ
    passes 1e-45 (float32's smallest subnormal) within ~1,000 steps, where the plain float32 update
    stores 0.0 for good (log 0 = −∞ makes ρ̃ = 0). In log space log δ follows the float64 recurrence
    and, once three weights become large, δ returns to the M-step value."""
    p, steps, omega = 1000, 10_000, 0.1
    hyper = ssgl.ssgl_hyper(1, v0=0.01, v1=10.0, a=1.0, b=float(p), learn_sigma=False, dtype=jnp.float32)
    xs = [jnp.zeros((p,), jnp.float32)]
    lat = ssgl.latents_from_values(rho=[jnp.full((p,), 1e-30, jnp.float32)], kappa0=[jnp.ones((p,), jnp.float32)],
                                   kappa1=[jnp.ones((p,), jnp.float32)], delta=jnp.full((1,), 0.5, jnp.float32),
                                   sigma2=jnp.asarray(1.0, jnp.float32))
    upd = jax.jit(lambda la, x: ssgl.sa_update(la, x, jnp.float32(omega), hyper))
    run = jax.jit(lambda la: jax.lax.scan(lambda c, _: (upd(c, xs), c.log_delta[0]), la, None, length=steps))
    lat, traj = run(lat)
    traj = np.asarray(traj, np.float64)
    assert lat.log_delta.dtype == jnp.float32
    for leaf in jax.tree_util.tree_leaves(lat):
        assert bool(jnp.all(jnp.isfinite(leaf)))
    assert traj[-1] < -900                                  # e^-900: far below float32's range
    assert np.all(np.diff(traj) < 0)                        # monotone: never stuck at a floor

    # float64 NumPy log-space recurrence of the same map (β = 0, σ = 1: log ρ̃ = log_sigmoid(c + logit δ))
    c = -0.5 * np.log(2 * np.pi * 10.0) + np.log(2 * 0.01)
    lr, l1r = np.full(p, np.log(1e-30)), np.full(p, np.log1p(-1e-30))
    ld, l1d = np.log(0.5), np.log(0.5)
    ref = []
    lw, l1w = np.log(omega), np.log1p(-omega)
    for _ in range(steps):
        z = c + ld - l1d
        lr, l1r = (np.logaddexp(l1w + lr, lw - np.logaddexp(0, -z)),
                   np.logaddexp(l1w + l1r, lw - np.logaddexp(0, z)))
        num, den = scipy.special.logsumexp(lr), np.log(2.0 * p - 1)      # a = 1: δ* = Σρ/(a + b + p − 2)
        t = num - den
        ld, l1d = np.logaddexp(l1w + ld, lw + t), np.logaddexp(l1w + l1d, lw + np.log1p(-np.exp(t)))
        ref.append(ld)
    # float32 rounding accumulates over 10^4 steps: relative error of log δ well below 1e-3
    np.testing.assert_allclose(traj[1:], np.asarray(ref)[:-1], rtol=1e-3)

    # the plain float32 formula (the former implementation) underflows: δ leaves the float32 range (with
    # XLA's flush-to-zero on CPU it is exactly 0.0, and then log δ = −∞ keeps ρ̃ = 0 for ever)
    def plain(carry, _):
        r, d = carry
        z = jnp.float32(c) + jnp.log(d) - jnp.log1p(-d)
        r = (1 - jnp.float32(omega)) * r + jnp.float32(omega) * jax.nn.sigmoid(z)
        d = (1 - jnp.float32(omega)) * d + jnp.float32(omega) * (jnp.sum(r) + 1.0 - 1.0) / (2.0 * p - 1)
        return (r, d), None
    (_, d32), _ = jax.jit(lambda cr: jax.lax.scan(plain, cr, None, length=steps))(
        (jnp.full((p,), 1e-30, jnp.float32), jnp.float32(0.5)))
    assert float(d32) < np.finfo(np.float32).tiny

    # three large weights: ρ̃ → 1 for them and δ returns to δ* = 3 / (2p − 1) (nulls add ~1e-6 relative)
    big = [jnp.zeros((p,), jnp.float32).at[:3].set(50.0)]
    upd_big = jax.jit(lambda la: jax.lax.fori_loop(0, 300, lambda _, c: ssgl.sa_update(c, big, jnp.float32(omega),
                                                                                        hyper), la))
    back = upd_big(lat)
    d = 3.0 / (2 * p - 1)                     # fixed point of δ = (3 + 997 sigmoid(c + logit δ)) / (2p − 1)
    for _ in range(50):
        d = (3.0 + (p - 3) * scipy.special.expit(c + np.log(d / (1 - d)))) / (2 * p - 1)
    np.testing.assert_allclose(float(back.delta[0]), d, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(back.rho[0][:3]), 1.0, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# E-step: ρ̃ in float32 against float64 NumPy
# --------------------------------------------------------------------------------------------------
def _z_scale(z64, log_delta, beta, sig, v0, v1):
    """Size of the largest float32 term in ``la − lb`` (its rounding error is a few ulps of it)."""
    return np.abs(z64) + np.abs(log_delta) + np.abs(beta) / (sig * v0) + beta ** 2 / (sig ** 2 * v1) + 10


def test_rho_tilde_float32_matches_float64_numpy():
    """``rho_tilde_logit`` from the stored logs (δ down to e^-500, not a float32 number) and ``rho_tilde``
    from values, both in float32, against SciPy log densities in float64."""
    rng = np.random.default_rng(7)
    shapes = [(40, 8), (8, 3)]
    betas = [rng.normal(scale=0.4, size=s) * (rng.random(s) < 0.7) for s in shapes]
    sigma2 = 0.37
    for v0, v1, scale_by_sigma in [(0.1, 10.0, True), (0.005, 1e-5, False)]:
        for log_delta in ([-0.3, -2.0], [-80.0, -500.0]):
            log_delta = np.asarray(log_delta)
            log1m_delta = np.log1p(-np.exp(log_delta))
            hyper = ssgl.ssgl_hyper(2, v0=v0, v1=v1, scale_by_sigma=scale_by_sigma, dtype=jnp.float32)
            z = ssgl.rho_tilde_logit([jnp.asarray(x, jnp.float32) for x in betas], jnp.asarray(log_delta, jnp.float32),
                                     jnp.asarray(log1m_delta, jnp.float32), jnp.float32(sigma2), hyper)
            sig = np.sqrt(sigma2) if scale_by_sigma else 1.0
            for i, beta in enumerate(betas):
                z64 = (scipy.stats.norm.logpdf(beta, 0.0, sig * np.sqrt(v1)) + log_delta[i]
                       - scipy.stats.laplace.logpdf(beta, 0.0, sig * v0) - log1m_delta[i])
                assert z[i].dtype == jnp.float32
                # float32 terms of size up to max|term|: a few ulps of the largest one
                scale = _z_scale(z64, log_delta[i], beta, sig, v0, v1)
                assert np.all(np.abs(np.asarray(z[i], np.float64) - z64) <= 1e-6 * scale)
                # log ρ̃ and log(1 − ρ̃) (the quantities the SA step uses) to the same accuracy
                np.testing.assert_allclose(jax.nn.log_sigmoid(z[i]), -np.logaddexp(0, -z64), rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(jax.nn.log_sigmoid(-z[i]), -np.logaddexp(0, z64), rtol=1e-5, atol=1e-5)
            if log_delta[0] > -50:     # δ representable in float32: the value form agrees
                rt = ssgl.rho_tilde([jnp.asarray(x, jnp.float32) for x in betas],
                                    jnp.asarray(np.exp(log_delta), jnp.float32), jnp.float32(sigma2), hyper)
                for i, beta in enumerate(betas):
                    z64 = (scipy.stats.norm.logpdf(beta, 0.0, sig * np.sqrt(v1)) + log_delta[i]
                           - scipy.stats.laplace.logpdf(beta, 0.0, sig * v0) - log1m_delta[i])
                    e = scipy.special.expit(z64)
                    scale = _z_scale(z64, log_delta[i], beta, sig, v0, v1)
                    tol = e * (1 - e) * 1e-6 * scale + 1e-6 * e + 1e-37     # dρ̃/dz · (z error) + rounding
                    assert np.all(np.abs(np.asarray(rt[i], np.float64) - e) <= tol)


def test_accessors_and_init_roundtrip(x64):
    xs = [jnp.zeros((3, 2)), jnp.zeros((2, 1))]
    lat = ssgl.init_latents(xs, rho=0.25, delta=1e-3, sigma=2.0)
    np.testing.assert_allclose(lat.rho[0], 0.25, rtol=1e-14)
    np.testing.assert_allclose(lat.delta, [1e-3, 1e-3], rtol=1e-14)
    np.testing.assert_allclose(lat.log1m_delta, np.log1p(-1e-3), rtol=1e-15)
    np.testing.assert_allclose(lat.sigma2, 4.0)
    empty = ssgl.init_latents([], dtype=jnp.float32)
    assert empty.rho == [] and empty.delta.shape == (0,) and empty.delta.dtype == jnp.float32


# --------------------------------------------------------------------------------------------------
# the cheaper elementwise forms (issue 17): Kahan's log1p and the one-exp-one-log SA mixture
# --------------------------------------------------------------------------------------------------
def _ulp_error(got: np.ndarray, ref: np.ndarray, dtype) -> np.ndarray:
    """|got − ref| in units of the spacing of ``ref`` rounded to ``dtype`` (``ref`` in higher precision)."""
    return np.abs(got.astype(np.longdouble) - ref) / np.spacing(np.abs(ref).astype(dtype)).astype(np.longdouble)


def test_log1p_unit_as_accurate_as_jnp_log1p():
    """u ∈ [0, 1] (a dense grid and 40 decades of tiny values): ≤ 4 ulp in float32 and float64 against a long-double
    reference, as jnp.log1p; 0 ↦ 0 and a u below the rounding of 1 + u ↦ u exactly. Also guards against XLA's
    simplifier rewriting (1 + u) − 1 as u, which would cancel Kahan's correction (errors of ~10^7 ulp)."""
    rng = np.random.default_rng(0)
    for dtype, tiny in ((np.float32, -37), (np.float64, -300)):
        with jax.enable_x64(dtype == np.float64):
            u = np.concatenate([np.linspace(0, 1, 1_000_001), 10.0 ** rng.uniform(tiny, 0, 1_000_000)]).astype(dtype)
            ref = np.log1p(u.astype(np.longdouble))
            got = np.asarray(jax.jit(ssgl.log1p_unit)(jnp.asarray(u)))
            assert got.dtype == dtype
            ok = ref > np.finfo(dtype).tiny
            assert _ulp_error(got[ok], ref[ok], dtype).max() <= 4.0
            assert got[0] == 0.0
            small = u[(u > 0) & (u < np.finfo(dtype).eps / 4)]
            np.testing.assert_array_equal(np.asarray(ssgl.log1p_unit(jnp.asarray(small))), small)


def test_logaddexp_matches_jnp_including_infinities(x64):
    rng = np.random.default_rng(1)
    a, b = rng.uniform(-800, 5, 100_000), rng.uniform(-800, 5, 100_000)
    np.testing.assert_allclose(ssgl.logaddexp(jnp.asarray(a), jnp.asarray(b)), np.logaddexp(a, b), rtol=4e-16,
                               atol=4e-16)
    inf = np.inf
    a = jnp.asarray([-inf, -inf, 3.0, inf, -2.5])
    b = jnp.asarray([-inf, 1.5, -inf, 7.0, -2.5])
    np.testing.assert_array_equal(ssgl.logaddexp(a, b), np.logaddexp(np.asarray(a), np.asarray(b)))


def test_sa_log_rho_float32_against_float64_log_mix():
    """The rearranged SA step (one exp and one log per output) in float32 against the log-space recurrence in
    float64 (np.logaddexp of log(1 − ω) + log p and log ω + log_sigmoid(±z)), with ρ, 1 − ρ and ρ̃ over 300
    decades and ω in [0, 1]. Error bound from the rounding: each input to the log-sum carries a relative error
    of ≈ eps (so ≤ eps·|a| absolute), the log of an argument in [1/2, 2] ≤ 2 eps; tolerance 4 eps·(1 + |a| + |b|)
    with a, b the two terms. ω = 0 returns the inputs bit for bit."""
    rng = np.random.default_rng(2)
    n = 200_000
    lp = -10.0 ** rng.uniform(-8, np.log10(700.0), n)                  # log ρ in [−700, −1e-8]
    flip = rng.random(n) < 0.5
    lq = np.log(-np.expm1(lp))                                        # log(1 − ρ), exact from log ρ
    lp, lq = np.where(flip, lq, lp), np.where(flip, lp, lq)
    z = rng.choice([-1, 1], n) * 10.0 ** rng.uniform(-3, np.log10(700.0), n)
    omega = np.concatenate([[0.0, 1.0], rng.random(n - 2)])
    f32 = lambda v: jnp.asarray(v, jnp.float32)
    lp32, lq32, z32, om32 = (np.asarray(f32(v)).astype(np.float64) for v in (lp, lq, z, omega))
    got_r, got_q = jax.jit(jax.vmap(lambda p, q, v, w: tuple(x[0] for x in ssgl.sa_log_rho([p], [q], [v], w))))(
        f32(lp), f32(lq), f32(z), f32(omega))
    with np.errstate(divide="ignore"):
        l1w, lw = np.log1p(-om32), np.log(om32)
    ls_pos, ls_neg = -np.logaddexp(0.0, -z32), -np.logaddexp(0.0, z32)   # log_sigmoid(z), log_sigmoid(−z)
    eps = np.finfo(np.float32).eps
    for got, lo, lt in ((got_r, lp32, ls_pos), (got_q, lq32, ls_neg)):
        a, b = l1w + lo, lw + lt
        want = np.logaddexp(a, b)
        fin = lambda v: np.where(np.isfinite(v), np.abs(v), 0.0)
        tol = 4 * eps * (1.0 + fin(a) + fin(b))
        assert np.all(np.isfinite(np.asarray(got)))
        np.testing.assert_array_less(np.abs(np.asarray(got, np.float64) - want), tol)
    assert float(got_r[0]) == np.float32(lp[0]) and float(got_q[0]) == np.float32(lq[0])
