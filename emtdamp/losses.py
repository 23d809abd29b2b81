"""Point-estimate networks (adam/sgd, FedAvg, EM-MCMC): their data loss and their predictive."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from emtdamp.methods.base import Batch, Predictive


def data_loss(apply_fn: Callable, params, batch: Batch, task: str) -> jax.Array:
    """Weighted minibatch mean of the per-row loss: MSE over outputs (regression, standardised targets)
    or softmax cross-entropy (classification). Rows with ``batch.w = 0`` (padding) count for nothing."""
    out = apply_fn(params, batch.x)
    if task == "regression":
        per_row = jnp.mean((out - batch.y) ** 2, axis=-1)
    else:
        per_row = optax.softmax_cross_entropy_with_integer_labels(out, batch.y)
    return jnp.sum(per_row * batch.w) / jnp.maximum(batch.w.sum(), 1.0)


def point_predictive(out: jax.Array, task: str, noise_var: jax.Array) -> Predictive:
    """Predictive of a point-estimate network with outputs ``out (n, d)``: regression ``N(out, noise_var)``
    (the residual variance estimate), classification ``softmax(out)``."""
    if task == "regression":
        return Predictive(mean=out, var=jnp.broadcast_to(noise_var, out.shape))
    return Predictive(probs=jax.nn.softmax(out, axis=-1))
