"""M-step of EM-TDAMP (spec section 3): closed-form updates of the support prior rho and the noise
variance v, as separate pure functions, and :func:`m_step` that applies them to a state.

The EM hyperparameters are arrays in the state (``layer.rho`` per group, ``state.v``), so every
function here maps arrays to arrays and nothing recompiles when they change.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from emtdamp.tdamp import module_a
from emtdamp.tdamp.gaussian import log_ndtr, mills_ratio
from emtdamp.tdamp.state import TdampHParams, TdampState, ZStats

_GH_X, _GH_W = np.polynomial.hermite.hermgauss(16)
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


# ------------------------------------------------------------------------------------------------
# rho
# ------------------------------------------------------------------------------------------------
def rho_group(pi: jax.Array, mask: jax.Array, eps: float = 1e-3) -> jax.Array:
    """Group mode: ``rho_g = clip(pi_g, eps, 1 - eps) * mask_g`` (``(N_in,)``)."""
    return jnp.clip(pi, eps, 1.0 - eps) * mask


def rho_layer(pi: jax.Array, mask: jax.Array, eps: float = 1e-3) -> jax.Array:
    """Layer mode: every live group gets ``clip(mean_{mask} pi, eps, 1 - eps)``; masked groups 0."""
    mean = jnp.sum(pi * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    return jnp.full_like(pi, jnp.clip(mean, eps, 1.0 - eps)) * mask


# ------------------------------------------------------------------------------------------------
# v
# ------------------------------------------------------------------------------------------------
def v_regression(stat: jax.Array, count: jax.Array, v: jax.Array, floor: float = 1e-6) -> jax.Array:
    """``v = max(stat / count, floor)`` with ``stat = sum (y - z_hat)^2 + T_Z``; unchanged if count = 0."""
    return jnp.where(count > 0, jnp.maximum(stat / jnp.maximum(count, 1e-30), floor), v)


def _augmented_e2(mu: jax.Array, s: jax.Array, v: jax.Array) -> jax.Array:
    """``E[e^2]`` of ``Phi(d/sqrt v) = P(d + e > 0)``, ``d ~ N(mu, s)``, ``e ~ N(0, v)`` given the event."""
    kap = mu / jnp.sqrt(s + v)
    lam = mills_ratio(kap)
    return v * s / (s + v) + v * v / (s + v) * (1.0 - kap * lam)


def v_classification_closed_form(mu: jax.Array, s: jax.Array, weight: jax.Array, v: jax.Array,
                                 passes: int = 1, floor: float = 1e-6) -> jax.Array:
    """Augmented-EM fixed point for the probit-product noise variance (spec section 3).

    Parameters
    ----------
    mu, s: ``(B, K)`` pairwise forward margins ``P_c - P_i`` and variances ``VP_c + VP_i``.
    weight: ``(B, K)`` pair weights (row weight times ``[i != c]``).
    v: scalar current value; passes: number of fixed-point passes.

    Returns the new v: ``v <- sum weight E[e^2] / sum weight`` iterated ``passes`` times.
    """
    tot = jnp.sum(weight)

    def one(_, vv):
        new = jnp.sum(weight * _augmented_e2(mu, s, vv)) / jnp.maximum(tot, 1e-30)
        return jnp.where(tot > 0, jnp.maximum(new, floor), vv)

    return jax.lax.fori_loop(0, passes, one, v)


def probit_objective(log_v: jax.Array, mu: jax.Array, s: jax.Array, weight: jax.Array) -> jax.Array:
    """``J(v) = sum weight * E_{d ~ N(mu, s)} log Phi(d / sqrt v)`` by 16-point Gauss-Hermite."""
    x = jnp.asarray(_GH_X, mu.dtype)
    wq = jnp.asarray(_GH_W / math.sqrt(math.pi), mu.dtype)
    d = mu[..., None] + jnp.sqrt(2.0 * s)[..., None] * x
    e = jnp.sum(wq * log_ndtr(d / jnp.sqrt(jnp.exp(log_v))), axis=-1)
    return jnp.sum(weight * e)


def v_classification_numerical(mu: jax.Array, s: jax.Array, weight: jax.Array, v: jax.Array,
                               half_width: float = 8.0, n_iter: int = 50, floor: float = 1e-6
                               ) -> jax.Array:
    """Maximize :func:`probit_objective` over ``log v`` by golden-section search.

    Parameters
    ----------
    mu, s: ``(B, K)`` pairwise *posterior* margins ``Z_c - Z_i`` and variances ``T_Z,c + T_Z,i``.
    weight: ``(B, K)`` pair weights. v: current value; the search interval is
    ``log v +- half_width`` (clipped below at ``log floor``); n_iter golden-section steps
    (interval shrinks by 0.618 per step).
    """
    lo = jnp.maximum(jnp.log(v) - half_width, math.log(floor))
    hi = jnp.log(v) + half_width
    f = lambda lv: -probit_objective(lv, mu, s, weight)

    def body(_, c):
        a, b = c
        x1 = b - _GOLDEN * (b - a)
        x2 = a + _GOLDEN * (b - a)
        left = f(x1) < f(x2)
        return jnp.where(left, a, x1), jnp.where(left, x2, b)

    a, b = jax.lax.fori_loop(0, n_iter, body, (lo, hi))
    new = jnp.exp(0.5 * (a + b))
    return jnp.where(jnp.sum(weight) > 0, jnp.maximum(new, floor), v)


def v_ema(v_old: jax.Array, v_new: jax.Array, ema: float) -> jax.Array:
    """Smoothed update ``ema * v_old + (1 - ema) * v_new`` (``ema = 0``: plain EM)."""
    return ema * v_old + (1.0 - ema) * v_new if ema > 0 else v_new


def _pairs_forward(zs: ZStats, v: jax.Array):
    mu, s, mask = module_a.probit_pairs(zs.P, zs.VP, zs.y, v)
    return mu, s, mask * zs.w[:, None]


def _pairs_posterior(zs: ZStats, v: jax.Array):
    ones = jnp.ones_like(zs.w)
    S, TS, _, _ = module_a.probit_output(zs.P, zs.VP, zs.y, v, ones)
    Z = zs.P + zs.VP * S
    TZ = jnp.maximum(zs.VP * (1.0 - zs.VP * TS), 1e-30)
    mu, s, mask = module_a.probit_pairs(Z, TZ, zs.y, v)
    return mu, s, mask * zs.w[:, None]


def new_v(state: TdampState, hparams: TdampHParams, zstats: ZStats | None = None,
          stat: jax.Array | None = None, count: jax.Array | None = None) -> jax.Array:
    """Unsmoothed M-step value of v from the latest minibatch (or the given ``stat``/``count``)."""
    v = state.v
    stat = state.v_stat if stat is None else stat
    count = state.v_count if count is None else count
    if hparams.v_update == "fixed" or (hparams.task == "classification" and hparams.output_model == "softmax"):
        return v   # the softmax output model has no noise variance
    if hparams.task == "regression":
        return v_regression(stat, count, v, hparams.v_floor)
    if hparams.v_update == "numerical" and zstats is not None:
        mu, s, wt = _pairs_posterior(zstats, v)
        return v_classification_numerical(mu, s, wt, v, floor=hparams.v_floor)
    if hparams.v_passes > 1 and zstats is not None:
        mu, s, wt = _pairs_forward(zstats, v)
        return v_classification_closed_form(mu, s, wt, v, hparams.v_passes, hparams.v_floor)
    # one closed-form pass == the statistic the E-step already computed at the current v
    return jnp.where(count > 0, jnp.maximum(stat / jnp.maximum(count, 1e-30), hparams.v_floor), v)


def update_rho(state: TdampState, hparams: TdampHParams) -> TdampState:
    """Apply the rho M-step of ``hparams.rho_mode`` to every layer."""
    if hparams.rho_mode == "fixed":
        return state
    fn = rho_group if hparams.rho_mode == "group" else rho_layer
    layers = [lay.replace(rho=fn(lay.pi, lay.mask, hparams.rho_clip)) for lay in state.layers]
    return state.replace(layers=layers)


def m_step(state: TdampState, hparams: TdampHParams, zstats: ZStats | None = None) -> TdampState:
    """Streaming M-step after a minibatch (spec section 3).

    Returns the updated **state** (the issue's ``m_step(state, hparams) -> hparams``: our EM
    hyperparameters rho and v are arrays inside the state, so the updated state is returned).

    Parameters
    ----------
    state: after :func:`emtdamp.tdamp.step` (uses ``layer.pi``, ``v_stat``, ``v_count``).
    hparams: static settings (``rho_mode``, ``v_update``, ``v_passes``, ``v_ema``, ``v_schedule``).
    zstats: the step's ``info["zstats"]``; needed only for classification with
        ``v_update="numerical"`` or ``v_passes > 1`` (without it one closed-form pass is used).
    """
    state = update_rho(state, hparams)
    if hparams.v_schedule == "minibatch":
        state = state.replace(v=v_ema(state.v, new_v(state, hparams, zstats), hparams.v_ema))
    elif hparams.v_warm > 0:   # epoch schedule after v_warm epochs of per-minibatch updates
        v = v_ema(state.v, new_v(state, hparams, zstats), hparams.v_ema)
        state = state.replace(v=jnp.where(state.epochs < hparams.v_warm, v, state.v))
    return state


def end_epoch_v(state: TdampState, hparams: TdampHParams) -> TdampState:
    """Per-epoch part of the M-step: with ``v_schedule="epoch"`` set v from the statistics summed over
    the epoch (closed form), except at the end of the first ``v_warm`` epochs (their v moved after every
    minibatch); always reset the epoch sums and count the epoch end."""
    if hparams.v_schedule == "epoch":
        v = v_ema(state.v, new_v(state, hparams, None, state.v_stat_acc, state.v_count_acc), hparams.v_ema)
        state = state.replace(v=jnp.where(state.epochs >= hparams.v_warm, v, state.v))
    z = jnp.zeros_like(state.v_stat_acc)
    return state.replace(v_stat_acc=z, v_count_acc=z, epochs=state.epochs + 1)
