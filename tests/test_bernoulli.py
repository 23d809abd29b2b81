"""Bernoulli messages in logits against brute-force probability algebra."""

import jax.numpy as jnp
import numpy as np
import pytest

from emtdamp.tdamp.bernoulli import Bernoulli, divide, logit, product


def _brute_product(p1, p2):
    return p1 * p2 / (p1 * p2 + (1 - p1) * (1 - p2))


def test_product_matches_normalized_probability_product(x64):
    rng = np.random.default_rng(0)
    p1, p2 = rng.uniform(0.01, 0.99, 500), rng.uniform(0.01, 0.99, 500)
    c = Bernoulli.from_prob(jnp.asarray(p1)) * Bernoulli.from_prob(jnp.asarray(p2))
    np.testing.assert_allclose(c.prob, _brute_product(p1, p2), rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_product_then_division_is_identity(dtype, x64):
    rng = np.random.default_rng(1)
    a = Bernoulli(logit=jnp.asarray(rng.normal(size=300) * 20, dtype))
    b = Bernoulli(logit=jnp.asarray(rng.normal(size=300) * 20, dtype))
    back = divide(product(a, b), b)
    np.testing.assert_allclose(back.logit, a.logit, rtol=1e-5 if dtype == "float32" else 1e-12, atol=1e-4)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_extremes_stay_finite(dtype, x64):
    big = np.finfo(dtype).max
    lg = jnp.asarray([np.inf, -np.inf, big, -big, 1e4, -1e4, 0.0], dtype)
    a = Bernoulli(logit=lg)
    for out in (a * a, a / a, a * Bernoulli(logit=-lg), a.clip()):
        assert bool(jnp.all(jnp.isfinite(out.logit)))
        assert bool(jnp.all(jnp.isfinite(out.prob)))
        assert bool(jnp.all((out.prob >= 0) & (out.prob <= 1)))
    assert bool(jnp.all(jnp.isfinite(a.clip().log_prob))) and bool(jnp.all(jnp.isfinite(a.clip().log_prob0)))
    # probabilities at 0 and 1 give finite logits
    b = Bernoulli.from_prob(jnp.asarray([0.0, 1.0, 0.5], dtype))
    assert bool(jnp.all(jnp.isfinite(b.logit)))
    np.testing.assert_allclose(np.asarray(b.prob), [0.0, 1.0, 0.5], atol=1e-6)


def test_logit_roundtrip_and_log_probs(x64):
    p = np.linspace(0.001, 0.999, 101)
    lg = logit(jnp.asarray(p))
    np.testing.assert_allclose(Bernoulli(logit=lg).prob, p, rtol=1e-12)
    np.testing.assert_allclose(Bernoulli(logit=lg).log_prob, np.log(p), rtol=1e-12)
    np.testing.assert_allclose(Bernoulli(logit=lg).log_prob0, np.log1p(-p), rtol=1e-10)
