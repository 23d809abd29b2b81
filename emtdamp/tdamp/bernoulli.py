"""Bernoulli messages in logits.

A message on a binary support variable ``s`` is ``p(s=1) / p(s=0) = exp(logit)``. Products of
messages add logits and divisions subtract them, so the group evidence of Module B (sums of
thousands of per-weight log-likelihood ratios, reaching +-1e4) never passes through a probability.
Probabilities are taken with the numerically stable logistic function and clipped on request.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def _eps(dtype) -> float:
    """Default probability clip: 1e-12 in float64, 1e-7 in float32 (so that ``1 - eps != 1``)."""
    return 1e-12 if jnp.finfo(dtype).bits >= 64 else 1e-7


def logit(p: jax.Array, eps: float | None = None) -> jax.Array:
    """``log p - log(1 - p)`` with ``p`` clipped to ``[eps, 1 - eps]`` (finite for p = 0 or 1)."""
    p = jnp.asarray(p)
    dtype = p.dtype if jnp.issubdtype(p.dtype, jnp.floating) else jnp.result_type(float)
    p = p.astype(dtype)
    e = _eps(dtype) if eps is None else eps
    p = jnp.clip(p, e, 1.0 - e)
    return jnp.log(p) - jnp.log1p(-p)


@chex.dataclass(frozen=True)
class Bernoulli:
    """Factorized Bernoulli message with ``P(s=1) = sigmoid(logit)``.

    Attributes
    ----------
    logit: array of any shape (float). ``+-inf`` are allowed on input to :func:`product`/
        :func:`divide`, which clip their outputs to ``+-max_logit``.
    """

    logit: jax.Array

    @staticmethod
    def from_prob(p: jax.Array, eps: float | None = None) -> Bernoulli:
        """Message with probability ``p`` (clipped to ``[eps, 1-eps]``)."""
        return Bernoulli(logit=logit(p, eps))

    @property
    def prob(self) -> jax.Array:
        """``P(s = 1)``, computed stably (no overflow for any logit)."""
        return jax.nn.sigmoid(self.logit)

    @property
    def log_prob(self) -> jax.Array:
        """``log P(s = 1)``."""
        return jax.nn.log_sigmoid(self.logit)

    @property
    def log_prob0(self) -> jax.Array:
        """``log P(s = 0)``."""
        return jax.nn.log_sigmoid(-self.logit)

    def __mul__(self, other: Bernoulli) -> Bernoulli:
        return product(self, other)

    def __truediv__(self, other: Bernoulli) -> Bernoulli:
        return divide(self, other)

    def clip(self, max_logit: float = 1e4) -> Bernoulli:
        """Logits clipped to ``[-max_logit, max_logit]`` (NaN-free for infinite inputs)."""
        return Bernoulli(logit=jnp.clip(self.logit, -max_logit, max_logit))


def product(a: Bernoulli, b: Bernoulli, max_logit: float = 1e4) -> Bernoulli:
    """Product of two messages: logits add (clipped to ``+-max_logit``; ``inf + (-inf)`` gives 0)."""
    la, lb = jnp.clip(a.logit, -max_logit, max_logit), jnp.clip(b.logit, -max_logit, max_logit)
    return Bernoulli(logit=jnp.clip(la + lb, -max_logit, max_logit))


def divide(a: Bernoulli, b: Bernoulli, max_logit: float = 1e4) -> Bernoulli:
    """Quotient ``a / b``: logits subtract (clipped to ``+-max_logit``)."""
    la, lb = jnp.clip(a.logit, -max_logit, max_logit), jnp.clip(b.logit, -max_logit, max_logit)
    return Bernoulli(logit=jnp.clip(la - lb, -max_logit, max_logit))
