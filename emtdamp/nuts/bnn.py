"""The Bayesian MLP that NUTS samples: position pytree, log joint density and predictive moments.

Model (targets standardised with training statistics, so "units" below are standardised units)::

    every kernel and bias entry θ ~ N(0, prior_var)
    regression:      σ_o ~ HalfNormal(noise_scale) per output o,  y_io ~ N(f_o(x_i; θ), σ_o²)
    classification:  y_i ~ Categorical(softmax(f(x_i; θ)))

The position is ``{"params": [{"kernel", "bias"}, ...], "log_sigma": (d_out,)}`` (regression) or
``{"params": [...]}`` (classification): σ is sampled on the log scale, so the log density includes
the Jacobian ``log σ``. Rows of a batch with weight ``w = 0`` (padding) contribute nothing.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from emtdamp.methods.base import Batch
from emtdamp.models import mlp

PyTree = Any
_LOG_2PI = math.log(2.0 * math.pi)


def init_position(key: jax.Array, layer_sizes: tuple[int, ...], task: str, dtype=jnp.float32) -> dict:
    """A starting point: He/LeCun-normal kernels (:func:`emtdamp.models.mlp.init_mlp`), zero biases and
    ``σ = 1`` (the standardised targets' scale, ``log_sigma = 0``)."""
    pos = {"params": mlp.init_mlp(key, layer_sizes, dtype)}
    if task == "regression":
        pos["log_sigma"] = jnp.zeros((layer_sizes[-1],), dtype)
    return pos


def log_prior(position: dict, prior_var: jax.Array, noise_scale: jax.Array) -> jax.Array:
    """``log p(θ) + log p(σ) + log σ`` (normalised Gaussian and half-normal densities, Jacobian of log σ)."""
    leaves = jax.tree_util.tree_leaves(position["params"])
    n = sum(a.size for a in leaves)
    sq = sum(jnp.sum(a**2) for a in leaves)
    lp = -0.5 * sq / prior_var - 0.5 * n * (_LOG_2PI + jnp.log(prior_var))
    if "log_sigma" in position:
        ls = position["log_sigma"]
        sigma = jnp.exp(ls)
        half_normal = math.log(2.0) - 0.5 * _LOG_2PI - jnp.log(noise_scale) - 0.5 * (sigma / noise_scale) ** 2
        lp = lp + jnp.sum(half_normal + ls)
    return lp


def log_likelihood(position: dict, batch: Batch, activation: str, task: str) -> jax.Array:
    """``Σ_i w_i log p(y_i | x_i, θ, σ)`` over the batch (padding rows ``w = 0`` count for nothing)."""
    out = mlp.apply(position["params"], batch.x, activation)
    if task == "regression":
        ls = position["log_sigma"]
        per = -0.5 * ((batch.y - out) * jnp.exp(-ls)) ** 2 - ls - 0.5 * _LOG_2PI
        per_row = jnp.sum(per, axis=-1)
    else:
        per_row = -optax.softmax_cross_entropy_with_integer_labels(out, batch.y)
    return jnp.sum(jnp.where(batch.w > 0, per_row, 0.0) * batch.w)


def log_joint(position: dict, batch: Batch, activation: str, task: str, prior_var: jax.Array,
              noise_scale: jax.Array) -> jax.Array:
    """Unnormalised log posterior: :func:`log_likelihood` + :func:`log_prior`."""
    return log_likelihood(position, batch, activation, task) + log_prior(position, prior_var, noise_scale)


def predictive_moments(draws: dict, valid: jax.Array, x: jax.Array, activation: str, task: str
                       ) -> tuple[jax.Array, jax.Array | None]:
    """Moments of the predictive mixture over the valid draws.

    Parameters
    ----------
    draws:
        Position pytree whose leaves carry leading axes ``(C, S)`` (chains, draw slots).
    valid:
        ``(C, S)`` bool, which slots hold a draw (at least one must).
    x:
        ``(n, d)`` inputs.

    Returns
    -------
    Regression: ``(mean (n, d_out), var (n, d_out))`` with ``var`` = variance of the network
    outputs across draws + mean noise variance σ². Classification: ``(probs (n, K), None)`` where
    ``probs`` is the mean softmax. The draws are scanned one slot at a time (memory ``C·n·d``).
    """
    w = valid.astype(x.dtype)
    total = jnp.maximum(jnp.sum(w), 1.0)
    moved = jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1), draws)     # (S, C, ...)

    def body(acc, slot):
        pos, ws = slot
        out = jax.vmap(lambda p: mlp.apply(p, x, activation))(pos["params"])     # (C, n, d)
        ww = ws[:, None, None]
        if task == "regression":
            s1, s2, nv = acc
            s2_noise = jnp.exp(2.0 * pos["log_sigma"])[:, None, :]              # (C, 1, d)
            return (s1 + jnp.sum(ww * out, 0), s2 + jnp.sum(ww * out**2, 0),
                    nv + jnp.sum(ww * s2_noise, 0)), None
        (sp,) = acc
        return (sp + jnp.sum(ww * jax.nn.softmax(out, axis=-1), 0),), None

    d = jax.eval_shape(lambda p: mlp.apply(p, x, activation),
                       jax.tree_util.tree_map(lambda a: a[0, 0], draws["params"])).shape
    zeros = jnp.zeros(d, x.dtype)
    if task == "regression":
        (s1, s2, nv), _ = jax.lax.scan(body, (zeros, zeros, jnp.zeros((1, d[-1]), x.dtype)), (moved, w.T))
        mean = s1 / total
        var = jnp.maximum(s2 / total - mean**2, 0.0) + nv / total
        return mean, var
    (sp,), _ = jax.lax.scan(body, (zeros,), (moved, w.T))
    return sp / total, None
