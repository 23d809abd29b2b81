"""EM-TDAMP's softmax output model (``TdampHParams.output_model = "softmax"``).

References: automatic differentiation of the approximate log partition for the output messages ``S = d log Z / dP``
and ``T_S = -d^2 log Z / dP^2`` (diagonal), the plain softmax at zero variance, and a Monte-Carlo estimate of
``E[softmax(z)]`` for the mean-field predictive (tolerance: the approximation's error, measured below, plus five
Monte-Carlo standard errors).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emtdamp import tdamp
from emtdamp.tdamp import em
from emtdamp.tdamp.class_probs import softmax_probs
from emtdamp.tdamp.module_a import softmax_output_and_log_lik, softmax_scale
from emtdamp.tdamp.state import TdampHParams


def _moments(n: int, K: int, seed: int, vmax: float = 1.5):
    rng = np.random.default_rng(seed)
    P = rng.normal(scale=2.0, size=(n, K))
    VP = rng.uniform(0.0, vmax, size=(n, K))
    c = rng.integers(0, K, size=n)
    return P, VP, c


def test_messages_are_the_derivatives_of_the_log_partition(x64):
    """S and T_S against jax.grad / jax.hessian of ``log softmax(kappa(VP) o P)_c`` row by row, times the row
    weights; the log-score is that log partition."""
    P, VP, c = _moments(7, 5, 0)
    w = np.array([1.0, 0.0, 2.5, 1.0, 0.3, 1.0, 1.0])
    S, TS, stat, count, log_lik = softmax_output_and_log_lik(jnp.asarray(P), jnp.asarray(VP), jnp.asarray(c),
                                                              jnp.asarray(w))

    def log_z(p, vp, label):
        kap = 1.0 / jnp.sqrt(1.0 + jnp.pi / 8.0 * vp)
        return jax.nn.log_softmax(kap * p)[label]

    for m in range(P.shape[0]):
        args = (jnp.asarray(P[m]), jnp.asarray(VP[m]), int(c[m]))
        np.testing.assert_allclose(S[m], w[m] * np.asarray(jax.grad(log_z)(*args)), rtol=1e-12, atol=1e-14)
        hess = np.asarray(jax.hessian(log_z)(*args))
        np.testing.assert_allclose(TS[m], -w[m] * np.diag(hess), rtol=1e-12, atol=1e-14)
        assert float(log_lik[m]) == pytest.approx(float(log_z(*args)), rel=1e-13)
    assert np.all(np.asarray(TS) >= 0.0)
    assert float(stat) == 0.0 and float(count) == 0.0


def test_zero_variance_is_the_plain_softmax(x64):
    P, _, c = _moments(6, 4, 1)
    VP = np.zeros_like(P)
    ref = np.exp(P - P.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    np.testing.assert_allclose(softmax_probs(jnp.asarray(P), jnp.asarray(VP)), ref, rtol=1e-13)
    log_lik = softmax_output_and_log_lik(jnp.asarray(P), jnp.asarray(VP), jnp.asarray(c), jnp.ones(6))[4]
    np.testing.assert_allclose(log_lik, np.log(ref[np.arange(6), c]), rtol=1e-13)
    np.testing.assert_allclose(softmax_scale(jnp.asarray([0.0, 8.0 / np.pi])), [1.0, 1.0 / np.sqrt(2.0)])


@pytest.mark.parametrize("vmax,tol", [(0.1, 0.02), (1.0, 0.10)])
def test_mean_field_predictive_against_monte_carlo(vmax, tol, x64):
    """``softmax(kappa o P)`` against ``E[softmax(z)]``, ``z ~ N(P, diag VP)``, 10 classes, 200,000 draws (MC
    standard error <= 1.1e-3 per entry). The approximation's own error on ``_moments`` seeds 0-4 (400,000 draws
    each) was at most 0.0115 (VP <= 0.1) and 0.089 (VP <= 1); the tolerances add five MC standard errors and a
    small margin. Trained EM-TDAMP
    output variances sit in the first regime (the posterior of the last layer is tight)."""
    n, K, N = 20, 10, 200_000
    P, VP, _ = _moments(n, K, 2, vmax)
    rng = np.random.default_rng(3)
    z = P[None] + np.sqrt(VP)[None] * rng.standard_normal((N, n, K))
    e = np.exp(z - z.max(-1, keepdims=True))
    mc = (e / e.sum(-1, keepdims=True)).mean(0)
    approx = np.asarray(softmax_probs(jnp.asarray(P), jnp.asarray(VP)))
    np.testing.assert_allclose(approx.sum(1), 1.0, atol=1e-12)
    assert np.abs(approx - mc).max() <= tol


def test_softmax_output_leaves_v_alone_and_trains(x64):
    """A classification minibatch step of the softmax model: finite messages, the v M-step (closed form, per
    minibatch and per epoch) keeps v0, and ten epochs on a linearly separable 3-class problem fit it; the same
    run with the probit model moves v."""
    rng = np.random.default_rng(5)
    n, d, K = 300, 4, 3
    centres = rng.normal(scale=3.0, size=(K, d))
    y = rng.integers(0, K, size=n)
    x = centres[y] + rng.normal(size=(n, d))
    xs, ys = jnp.asarray(x.reshape(10, 30, d)), jnp.asarray(y.reshape(10, 30))
    base = TdampHParams(task="classification", output_model="softmax", gamma=2.0, dtype="float64")
    for hp in (base, dataclasses.replace(base, v_schedule="epoch")):
        st = tdamp.init(jax.random.PRNGKey(0), (d, 16, K), hp)
        for _ in range(10):
            st, metrics = tdamp.epoch(st, xs, ys, None, hp)
            st = em.end_epoch_v(st, hp)
        assert float(st.v) == hp.v0
        assert np.all(np.isfinite(np.asarray(metrics["loss"])))
        probs = np.asarray(tdamp.predict(st, jnp.asarray(x), task="classification", output_model="softmax"))
        assert np.mean(probs.argmax(1) == y) >= 0.95
    probit = dataclasses.replace(base, output_model="probit")
    st = tdamp.init(jax.random.PRNGKey(0), (d, 16, K), probit)
    st, _ = tdamp.epoch(st, xs, ys, None, probit)
    assert float(st.v) != probit.v0


def test_unknown_output_model_is_refused():
    with pytest.raises(ValueError, match="output_model"):
        TdampHParams(task="classification", output_model="logit")
    hp = TdampHParams(task="classification")
    st = tdamp.init(jax.random.PRNGKey(0), (3, 4, 2), hp)
    with pytest.raises(ValueError, match="output_model"):
        tdamp.predict(st, jnp.ones((2, 3)), task="classification", output_model="logit")
