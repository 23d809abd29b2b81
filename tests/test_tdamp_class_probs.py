"""Class probabilities of the probit output model (:mod:`emtdamp.tdamp.class_probs`).

References: the closed form for K = 2 (both rules are ``Phi((P_0 - P_1) / sqrt(v + VP_0 + VP_1))``) and a
Monte-Carlo estimate of ``P(c = argmax_i (z_i + e_i))``
for the max rule (tolerance from the binomial standard error of the estimate). The product rule for K > 2 is
checked against a SciPy transcription through ``tdamp.predict`` in tests/test_tdamp.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from emtdamp.tdamp.class_probs import class_probs, max_rule, product_rule


def _moments(n: int, K: int, seed: int):
    rng = np.random.default_rng(seed)
    P = rng.normal(scale=2.0, size=(n, K))
    VP = rng.uniform(0.05, 1.5, size=(n, K))
    return P, VP


def test_two_classes_both_rules_are_the_pairwise_probit(x64):
    P, VP = _moments(30, 2, 0)
    v = 0.4
    ref = norm.cdf((P[:, 0] - P[:, 1]) / np.sqrt(v + VP[:, 0] + VP[:, 1]))
    for rule in (product_rule, max_rule):
        p = np.asarray(rule(jnp.asarray(P), jnp.asarray(VP), jnp.asarray(v)))
        np.testing.assert_allclose(p[:, 0], ref, atol=1e-9)
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)


def test_max_rule_against_monte_carlo(x64):
    """N = 400,000 draws per row: the MC standard error of a probability p is sqrt(p(1-p)/N) <= 7.9e-4;
    the tolerance 5 standard errors (two-sided false-failure rate < 1e-6 per entry, 40 entries)."""
    n, K, N = 4, 10, 400_000
    P, VP = _moments(n, K, 2)
    P[:, :3] += 1.5   # a few close contenders per row, so several probabilities are far from 0 and 1
    v = 0.6
    got = np.asarray(max_rule(jnp.asarray(P), jnp.asarray(VP), jnp.asarray(v)))
    rng = np.random.default_rng(3)
    for r in range(n):
        scores = P[r] + rng.normal(size=(N, K)) * np.sqrt(VP[r] + v / 2)
        freq = np.bincount(np.argmax(scores, axis=1), minlength=K) / N
        se = np.sqrt(np.maximum(freq * (1 - freq), 1.0 / N) / N)
        assert np.all(np.abs(got[r] - freq) <= 5 * se + 1e-12), (r, got[r], freq)


def test_max_rule_quadrature_is_converged_and_normalised(x64):
    P, VP = _moments(50, 10, 4)
    v = 0.3
    a = np.asarray(max_rule(jnp.asarray(P), jnp.asarray(VP), jnp.asarray(v)))
    b = np.asarray(max_rule(jnp.asarray(P), jnp.asarray(VP), jnp.asarray(v), nodes=128))
    np.testing.assert_allclose(a, b, atol=1e-5)   # measured: max 2e-6 here
    np.testing.assert_allclose(a.sum(1), 1.0, atol=1e-12)


def test_max_rule_is_less_extreme_than_the_product_on_a_confident_row(x64):
    """One clear winner and nine equal losers: the product multiplies nine nearly-equal factors for the
    winner, so a loser's probability is far smaller than under the max rule (which knows the losers share
    the winner's score)."""
    P = jnp.asarray([[3.0] + [0.0] * 9])
    VP = jnp.full((1, 10), 0.5)
    pp, pm = (np.asarray(f(P, VP, jnp.asarray(0.5))) for f in (product_rule, max_rule))
    assert pm[0, 1] > 2 * pp[0, 1]
    assert np.argmax(pm) == np.argmax(pp) == 0


def test_float32_jit_and_unknown_rule():
    P, VP = (jnp.asarray(a, jnp.float32) for a in _moments(8, 4, 5))
    p = jax.jit(lambda a, b: class_probs(a, b, jnp.float32(0.5), "max"))(P, VP)
    assert p.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(p)))
    np.testing.assert_allclose(np.asarray(p).sum(1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="one of"):
        class_probs(P, VP, 0.5, "softmax")
