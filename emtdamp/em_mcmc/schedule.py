"""Cyclical step size (cSG-MCMC, Zhang et al. 2020) and the EM warm-up gate of EM-MCMC (spec B.3).

Unlike the reference notebooks (spec B.6), the step counter is the true step ``t = count`` (no
``(epoch + 1)`` offset, no ``N/n + 1`` batches per epoch), so a cycle of ``cycle_epochs`` epochs
covers exactly ``cycle_epochs * steps_per_epoch`` steps and cycles line up with epochs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cyclical_lr(count: jax.Array, c2_peak: jax.Array, cycle_steps: jax.Array) -> jax.Array:
    """``lr_t = c2_peak / 2 * (cos(pi * (t mod L) / L) + 1)`` with ``L = cycle_steps``.

    ``cycle_steps <= 0`` gives the constant ``c2_peak``. ``C = sqrt(lr_t)`` in the update.
    """
    L = jnp.maximum(cycle_steps, 1.0)
    pos = jnp.mod(count.astype(c2_peak.dtype), L) / L
    lr = 0.5 * c2_peak * (jnp.cos(jnp.pi * pos) + 1.0)
    return jnp.where(cycle_steps > 0, lr, c2_peak)


def em_gate(count: jax.Array, steps_per_epoch: jax.Array, warm_up: jax.Array) -> jax.Array:
    """True at the first step of every epoch ``e > warm_up`` (EM and pruning run there, spec B.3/B.4).

    ``steps_per_epoch <= 0`` (not known yet) gives False.
    """
    spe = jnp.maximum(steps_per_epoch, 1)
    epoch = count // spe
    return (steps_per_epoch > 0) & (count % spe == 0) & (epoch > warm_up)
