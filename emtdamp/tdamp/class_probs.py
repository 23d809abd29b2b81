"""Class probabilities of the probit output model at test time (spec section 6): two rules.

The output model scores every pair of classes: for label ``c`` the likelihood is ``prod_{i != c}
Phi((z_c - z_i) / sqrt(v))``, and at a test input the moment propagation gives independent Gaussian
scores ``z_i ~ N(P_i, VP_i)``. Two ways to turn that into ``p(c | x)``:

- ``"product"`` (the spec's rule): ``p(c) propto prod_{i != c} Phi((P_c - P_i) / sqrt(v + VP_c + VP_i))``,
  normalised over ``c``. Each factor is the exact probability that ``c`` beats ``i``, but the product
  treats the ``K - 1`` pairwise events as independent, while they share ``z_c``: the winner's
  probability is over-counted and a confident mistake gets a tiny probability for its true class
  (on mnist5k the worst test rows have ``-log p`` of 12-18 nats).
- ``"max"``: the probability that ``c`` has the largest noisy score, ``p(c) = P(c = argmax_i (z_i +
  e_i))`` with independent ``e_i ~ N(0, v/2)``, i.e. the multinomial probit whose pairwise marginals are
  exactly the factors above (``e_c - e_i ~ N(0, v)``)::

      p(c) = E_{t ~ N(P_c, s_c^2)} [ prod_{i != c} Phi((t - P_i) / s_i) ],   s_i^2 = VP_i + v/2,

  a one-dimensional integral per class, computed by Gauss-Hermite quadrature (``nodes`` points; the
  ``K`` results sum to 1 up to the quadrature error and are renormalised). For ``K = 2`` both rules are
  the same closed form ``Phi((P_0 - P_1) / sqrt(v + VP_0 + VP_1))``.

Both are pure functions of ``(P, VP, v)``; shapes ``(n, K)``.

The softmax output model (``TdampHParams.output_model = "softmax"``) has one predictive, :func:`softmax_probs`:
``p = softmax(kappa o P)``, ``kappa = 1/sqrt(1 + pi VP/8)``, the same mean-field approximation of
``E[softmax(z)]`` its E-step uses (:func:`emtdamp.tdamp.module_a.softmax_output_and_log_lik`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from emtdamp.tdamp import module_a
from emtdamp.tdamp.gaussian import log_ndtr

CLASS_RULES = ("product", "max")
NODES = 48  # Gauss-Hermite points: within 1e-5 of 128 points (tests/test_tdamp_class_probs.py)


def product_rule(P: jax.Array, VP: jax.Array, v: jax.Array) -> jax.Array:
    """The spec's normalised product of pairwise probits: the softmax over ``c`` of the label-``c`` log-score
    :func:`emtdamp.tdamp.module_a.probit_log_lik` (the same function the E-step's loss uses).

    Parameters
    ----------
    P, VP: ``(n, K)`` mean and variance of the output scores ``z_L``; v: scalar probit noise variance.

    Returns
    -------
    ``(n, K)`` probabilities (rows sum to 1).
    """
    n, K = P.shape
    logits = jnp.stack([module_a.probit_log_lik(P, VP, jnp.full((n,), c, jnp.int32), v) for c in range(K)], axis=1)
    return jax.nn.softmax(logits, axis=1)


def max_rule(P: jax.Array, VP: jax.Array, v: jax.Array, nodes: int = NODES) -> jax.Array:
    """``p(c) = P(c = argmax_i (z_i + e_i))``, ``z_i ~ N(P_i, VP_i)``, ``e_i ~ N(0, v/2)``, all independent.

    Parameters
    ----------
    P, VP: ``(n, K)`` mean and variance of the output scores; v: scalar probit noise variance.
    nodes: Gauss-Hermite quadrature points (probabilists' weight ``exp(-t^2/2)``).

    Returns
    -------
    ``(n, K)`` probabilities (rows sum to 1).
    """
    t, w = np.polynomial.hermite_e.hermegauss(nodes)
    t = jnp.asarray(t, P.dtype)
    w = jnp.asarray(w / w.sum(), P.dtype)
    s = jnp.sqrt(VP + 0.5 * v)                              # (n, K)
    tc = P[:, :, None] + s[:, :, None] * t                  # (n, c, T): the winner's score at the nodes
    z = (tc[:, :, None, :] - P[:, None, :, None]) / s[:, None, :, None]   # (n, c, i, T)
    off = (1.0 - jnp.eye(P.shape[1], dtype=P.dtype))[None, :, :, None]
    log_beats = jnp.sum(log_ndtr(z) * off, axis=2)          # (n, c, T)
    p = jnp.exp(log_beats) @ w                              # (n, c)
    return p / jnp.sum(p, axis=1, keepdims=True)


def softmax_probs(P: jax.Array, VP: jax.Array) -> jax.Array:
    """``(n, K)`` ``softmax(kappa o P)`` with ``kappa = 1/sqrt(1 + pi VP/8)``: the mean-field approximation of
    ``E[softmax(z)]`` for independent ``z_i ~ N(P_i, VP_i)`` (the softmax output model's predictive)."""
    return jax.nn.softmax(module_a.softmax_scale(VP) * P, axis=1)


def class_probs(P: jax.Array, VP: jax.Array, v: jax.Array, rule: str = "product") -> jax.Array:
    """``(n, K)`` class probabilities by ``rule`` (one of :data:`CLASS_RULES`)."""
    if rule == "product":
        return product_rule(P, VP, v)
    if rule == "max":
        return max_rule(P, VP, v)
    raise ValueError(f"class probability rule must be one of {CLASS_RULES}, got {rule!r}")


__all__ = ["CLASS_RULES", "NODES", "class_probs", "max_rule", "product_rule", "softmax_probs"]
