"""The fused EM-TDAMP kernels of issue 17 against the unfused formulas they replace and SciPy.

``gaussian.log_ndtr_and_mills`` (one erfc for log Phi and the Mills ratio; float32 erfc from the Numerical
Recipes fit), ``module_b.group_evidence_from_message`` (llr from the precisions, paired log1p),
``module_b.denoise_layer`` (message, turbo exchange, denoiser and damping in one pass),
``module_a.probit_output_and_log_lik`` and the shared ReLU negative branch.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from emtdamp.tdamp import gaussian as G
from emtdamp.tdamp import module_a, module_b
from emtdamp.tdamp.state import LayerState


def _mills(a: np.ndarray) -> np.ndarray:
    return np.sqrt(2.0 / np.pi) / special.erfcx(-a / np.sqrt(2.0))


def test_log_ndtr_and_mills_vs_scipy_float64(x64):
    a = np.concatenate([np.linspace(-1000, -19.6, 300), np.linspace(-19.4, 38, 600)])
    lphi, lam = G.log_ndtr_and_mills(jnp.asarray(a))
    ref = special.log_ndtr(a)
    # right of 0, log Phi = log(1 - Phi(-a)) carries the ulp of 1 (as jax.scipy: test_gaussian.test_log_ndtr_accuracy)
    np.testing.assert_allclose(np.asarray(lphi), ref, rtol=1e-13, atol=1e-16)
    # Mills ratio phi/Phi = sqrt(2/pi) / erfcx(-a/sqrt 2) (SciPy's scaled erfc: no exp of large differences)
    np.testing.assert_allclose(np.asarray(lam), _mills(a), rtol=1e-12, atol=1e-300)
    assert np.asarray(lphi).dtype == np.float64


def test_log_ndtr_and_mills_float32_vs_float64_reference():
    a = np.concatenate([np.linspace(-300, -9.6, 200), np.linspace(-9.4, 12, 600)]).astype(np.float32)
    lphi, lam = G.log_ndtr_and_mills(jnp.asarray(a))
    assert np.asarray(lphi).dtype == np.float32
    a64 = a.astype(np.float64)
    ref = special.log_ndtr(a64)
    # float32: a few ulp of log Phi (absolute 1e-7 where log Phi -> 0) and of lam
    np.testing.assert_allclose(np.asarray(lphi), ref, rtol=3e-6, atol=2e-7)
    np.testing.assert_allclose(np.asarray(lam), _mills(a64), rtol=1e-5, atol=1e-30)
    # the two public wrappers return the same numbers
    np.testing.assert_array_equal(np.asarray(G.log_ndtr(jnp.asarray(a))), np.asarray(lphi))
    np.testing.assert_array_equal(np.asarray(G.mills_ratio(jnp.asarray(a))), np.asarray(lam))


def test_float32_erfc_fit_relative_error():
    """Numerical Recipes' erfcc: fractional error < 1.2e-7 in exact arithmetic; in float32 the exp(-z^2)
    rounding adds ~2 z^2 ulp. Checked against SciPy's float64 erfc on z in [0, 9]."""
    z = np.linspace(0.0, 9.0, 4001).astype(np.float32)
    ours = np.asarray(G._erfc_nonneg(jnp.asarray(z)))
    assert ours.dtype == np.float32
    ref = special.erfc(z.astype(np.float64))
    rel = np.abs(ours / ref - 1.0)
    bound = 1.2e-7 + (2.0 * z.astype(np.float64) ** 2 + 4.0) * np.finfo(np.float32).eps
    assert np.all(rel <= bound), float(np.max(rel / bound))


def _layer(rng, n_in, n_out, dtype):
    f = lambda *s: jnp.asarray(rng.normal(size=s), dtype)
    pos = lambda *s: jnp.asarray(np.exp(rng.uniform(-3, 1, size=s)), dtype)
    mask = jnp.asarray((rng.uniform(size=n_in) > 0.2).astype(np.float64), dtype)
    return LayerState(W=f(n_in, n_out) * 0.3, VW=pos(n_in, n_out) * 0.1, mu0=f(n_in, n_out) * 0.1,
                      s0=pos(n_in, n_out), slab_m=f(n_in, n_out), slab_v=pos(n_in, n_out), b=f(n_out),
                      vb=pos(n_out), b0=f(n_out), vb0=pos(n_out),
                      rho=jnp.asarray(rng.uniform(0.05, 0.95, n_in), dtype),
                      pi=jnp.asarray(rng.uniform(size=n_in), dtype), mask=mask, lam_acc=f(n_in))


@pytest.mark.parametrize("n_out", [6, 7])
def test_group_evidence_from_message_equals_sum_of_weight_llr(n_out, x64):
    rng = np.random.default_rng(0)
    lay = _layer(rng, 5, n_out, jnp.float64)
    Q = jnp.asarray(rng.normal(size=(5, n_out)) * 2)
    pq = jnp.asarray(np.exp(rng.uniform(-4, 6, size=(5, n_out))))
    ours = module_b.group_evidence_from_message(Q, pq, lay.mu0, lay.s0)
    ref = module_b.group_evidence(module_a.weight_llr(Q, 1.0 / pq, lay.mu0, lay.s0))
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("known_input", [True, False])
def test_denoise_layer_equals_message_denoiser_and_damping(known_input, x64):
    rng = np.random.default_rng(1)
    B, n_in, n_out, beta = 9, 6, 8, 0.4
    lay = _layer(rng, n_in, n_out, jnp.float64)
    U = jnp.asarray(rng.normal(size=(B, n_in)))
    TU = None if known_input else jnp.asarray(np.exp(rng.uniform(-3, 0, size=(B, n_in))))
    S = jnp.asarray(rng.normal(size=(B, n_out)))
    TS = jnp.asarray(np.exp(rng.uniform(-2, 1, size=(B, n_out))))
    # the unfused path: Module A's message, the denoiser, then damping
    lik, _ = module_a.message_to_weights(lay, U, TU, S, TS)
    W_new, VW_new, m_pl, v_pl, pi, lam = module_b.denoise_weights(lik, lay.mu0, lay.s0, lay.rho, lay.mask)
    lo, _ = G.bounds(jnp.float64)
    W_ref = beta * W_new + (1 - beta) * lay.W
    VW_ref = jnp.maximum(beta * VW_new + (1 - beta) * lay.VW, lo)
    out = module_b.denoise_layer(lay, (U * U).T @ TS, None if TU is None else TU.T @ TS, U.T @ S, beta)
    for got, ref in zip(out, (W_ref, VW_ref, m_pl, v_pl, pi, lam), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-10, atol=1e-12)


def test_probit_output_log_lik_equals_probit_log_lik(x64):
    rng = np.random.default_rng(2)
    B, K = 12, 10
    P = jnp.asarray(rng.normal(size=(B, K)) * 4)
    VP = jnp.asarray(np.exp(rng.uniform(-3, 2, size=(B, K))))
    c = jnp.asarray(rng.integers(0, K, B))
    v, w = jnp.asarray(0.7), jnp.ones((B,))
    out = module_a.probit_output_and_log_lik(P, VP, c, v, w)
    for got, ref in zip(out[:4], module_a.probit_output(P, VP, c, v, w), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
    np.testing.assert_allclose(np.asarray(out[4]), np.asarray(module_a.probit_log_lik(P, VP, c, v)), rtol=1e-13)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_relu_shared_negative_branch_is_the_same_posterior(dtype, x64):
    rng = np.random.default_rng(3)
    p = jnp.asarray(rng.normal(size=200) * 8, dtype)
    vp = jnp.asarray(np.exp(rng.uniform(-4, 3, 200)), dtype)
    r = jnp.asarray(rng.normal(size=200) * 8, dtype)
    vr = jnp.asarray(np.exp(rng.uniform(-4, 6, 200)), dtype)
    shared = G.relu_posterior_offset(p, vp, r, vr, G.relu_negative_branch(p, vp))
    fresh = G.relu_posterior_offset(p, vp, r, vr)
    for a, b in zip(shared, fresh, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_after_returns_x_bit_for_bit_whatever_the_deps_hold():
    """The in-place tie ``after(x, *deps)`` is the identity on ``x``: finite deps, and also an inf or NaN in the
    element it reads (before, ``x + 0 * inf`` turned the whole state NaN)."""
    import jax

    x = jnp.asarray(np.random.default_rng(0).normal(size=(7, 5)), jnp.float32)
    tie = jax.jit(module_b.after)
    for bad in (1.5, np.inf, -np.inf, np.nan):
        d = jnp.full((3, 4), bad, jnp.float32)
        np.testing.assert_array_equal(tie(x, d), x)
        np.testing.assert_array_equal(tie(x, jnp.ones(2), d), x)
