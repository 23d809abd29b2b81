"""Module A: deep approximate message passing over the network for one minibatch (spec 2.2-2.3).

All arrays use the batch-major layout: activations ``(B, N)``, kernels ``(N_in, N_out)``. In that
layout the spec's matrix products of section 2.3 read (``X^2`` elementwise)::

    forward   Vbar = T_U W^2 + U^2 V_W,   V_P = Vbar + T_U V_W + 1 v_b^T,   P = U W + 1 b^T - S_prev o Vbar
    backward  V_R = 1 / (T_S (W^2)^T),    R = U o (1 - V_R o (T_S V_W^T)) + V_R o (S W^T)
              V_Q = 1 / ((U^2)^T T_S),    Q = W o (1 - V_Q o (T_U^T T_S)) + V_Q o (U^T S)
              v_qb = 1 / (1^T T_S),        q_b = b + v_qb o (1^T S)

Row weights ``w (B,)`` multiply ``S`` and ``T_S`` at every layer, so a padding row (w = 0) sends no
message to any weight, bias or lower layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from emtdamp.tdamp.gaussian import Gaussian, bounds, log_ndtr, log_ndtr_and_mills, relu_posterior_offset
from emtdamp.tdamp.state import LayerState


def forward_layer(layer: LayerState, U: jax.Array, TU: jax.Array | None, S_prev: jax.Array | None,
                  W2: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Forward message to the pre-activations of one layer.

    Parameters
    ----------
    layer: the layer's state (uses ``W, VW, b, vb``).
    U, TU: ``(B, N_in)`` mean / variance of the layer input; ``TU=None`` for known inputs (layer 0).
    S_prev: ``(B, N_out)`` the layer's ``S`` of the previous DAMP iteration, or None on the first iteration
        (``S = 0``: no Onsager term; then ``Vbar`` is not formed and ``V_P`` takes two products,
        ``(U^2 + T_U) V_W + T_U W^2``, instead of three).
    W2: optional ``W * W`` (shared with the backward message to the input).

    Returns
    -------
    P, VP, Vbar: ``(B, N_out)`` forward mean, variance (clipped) and the Onsager variance ``Vbar`` (None
    when ``S_prev`` is None).
    """
    lo, hi = bounds(U.dtype)
    W, VW = layer.W, layer.VW
    uu = U * U
    if TU is None:
        vbar = uu @ VW
        VP = vbar + layer.vb
    elif S_prev is None:
        vbar = None
        VP = (uu + TU) @ VW + TU @ (W * W if W2 is None else W2) + layer.vb
    else:
        vbar = uu @ VW + TU @ (W * W if W2 is None else W2)
        VP = vbar + TU @ VW + layer.vb
    VP = jnp.clip(VP, lo, hi)
    P = U @ W + layer.b
    if S_prev is not None:
        P = P - S_prev * vbar
    return P, VP, vbar


def gaussian_output(P: jax.Array, VP: jax.Array, y: jax.Array, v: jax.Array, w: jax.Array
                    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Gaussian likelihood ``N(y; z, v)`` (spec 2.2c).

    Parameters
    ----------
    P, VP, y: ``(B, K)``; v: scalar; w: ``(B,)`` row weights.

    Returns
    -------
    S, TS: ``(B, K)`` (multiplied by ``w``); stat, count: E-step statistic for v,
    ``sum_m w_m sum_i (y - z_hat)^2 + T_Z`` and ``sum_m w_m K``.
    """
    den = VP + v
    S, TS = (y - P) / den, 1.0 / den
    zh, tz = (P * v + y * VP) / den, VP * v / den
    wc = w[:, None]
    stat = jnp.sum(wc * ((y - zh) ** 2 + tz))
    return S * wc, TS * wc, stat, jnp.sum(w) * y.shape[1]


def probit_pairs(P: jax.Array, VP: jax.Array, c: jax.Array, v: jax.Array
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Pairwise margins of the probit-product likelihood (spec 2.2c).

    Returns ``mu (B, K) = P_c - P_i``, ``s (B, K) = VP_c + VP_i`` and the mask ``(B, K)`` of the
    pairs ``i != c`` (zero in the label column).
    """
    onehot = jax.nn.one_hot(c, P.shape[1], dtype=P.dtype)
    pc = jnp.sum(P * onehot, axis=1, keepdims=True)
    vc = jnp.sum(VP * onehot, axis=1, keepdims=True)
    return pc - P, vc + VP, 1.0 - onehot


def probit_output(P: jax.Array, VP: jax.Array, c: jax.Array, v: jax.Array, w: jax.Array
                  ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Probit-product likelihood ``prod_{i != c} Phi((z_c - z_i)/sqrt(v))`` (spec 2.2c).

    Parameters
    ----------
    P, VP: ``(B, K)`` forward messages; c: ``(B,)`` int labels; v: scalar; w: ``(B,)`` row weights.

    Returns
    -------
    S, TS: ``(B, K)`` (multiplied by ``w``); stat, count: the augmented-model E-step statistic
    ``sum w E[e^2]`` over pairs ``i != c`` (spec section 3) and the weighted number of pairs.
    """
    return probit_output_and_log_lik(P, VP, c, v, w)[:4]


def probit_output_and_log_lik(P: jax.Array, VP: jax.Array, c: jax.Array, v: jax.Array, w: jax.Array
                              ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """:func:`probit_output` and, from the same ``log Phi`` evaluations, the ``(B,)`` predictive log-score
    :func:`probit_log_lik` (unweighted)."""
    mu, s, mask = probit_pairs(P, VP, c, v)
    sig = jnp.sqrt(v + s)
    kap = mu / sig
    lphi, lam = log_ndtr_and_mills(kap)
    g = lam / sig * mask
    h = g * (g + kap / sig) * mask
    onehot = 1.0 - mask
    S = -g + onehot * jnp.sum(g, axis=1, keepdims=True)
    TS = h + onehot * jnp.sum(h, axis=1, keepdims=True)
    ee2 = v * s / (s + v) + v * v / (s + v) * (1.0 - kap * lam)
    wc = w[:, None]
    return S * wc, TS * wc, jnp.sum(ee2 * mask * wc), jnp.sum(mask * wc), jnp.sum(lphi * mask, axis=1)


def probit_log_lik(P: jax.Array, VP: jax.Array, c: jax.Array, v: jax.Array) -> jax.Array:
    """``(B,)`` ``sum_{i != c} log Phi((P_c - P_i) / sqrt(v + VP_c + VP_i))`` (predictive log-score)."""
    mu, s, mask = probit_pairs(P, VP, c, v)
    return jnp.sum(log_ndtr(mu / jnp.sqrt(v + s)) * mask, axis=1)


def softmax_scale(VP: jax.Array) -> jax.Array:
    """``kappa = 1 / sqrt(1 + pi VP / 8)``: the probit approximation's shrink factor of a Gaussian score.

    MacKay (1992) for the logistic sigmoid, ``E[sigma(z)] ~ sigma(kappa(VP) P)`` for ``z ~ N(P, VP)``; applied per
    class to the softmax (Lu, Ie & Sha 2020, "mean-field softmax"), ``E[softmax(z)] ~ softmax(kappa(VP) o P)``.
    """
    return jax.lax.rsqrt(1.0 + (jnp.pi / 8.0) * VP)


def softmax_output_and_log_lik(P: jax.Array, VP: jax.Array, c: jax.Array, w: jax.Array
                               ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """Softmax likelihood ``softmax(z)_c`` with the mean-field approximation of its Gaussian average.

    With independent scores ``z_i ~ N(P_i, VP_i)`` the log partition is approximated by ``log Z = log
    softmax(kappa o P)_c``, ``kappa = 1/sqrt(1 + pi VP/8)`` (:func:`softmax_scale`); the output messages are its
    derivatives in ``P``, with ``p = softmax(kappa o P)``::

        S_i = d log Z / dP_i = kappa_i (1[i = c] - p_i),   T_S,i = -d^2 log Z / dP_i^2 = kappa_i^2 p_i (1 - p_i)

    (the diagonal of the Hessian, as the probit-product's messages). The model has no noise variance: the scale
    of the scores is the network's own, so no v statistic is produced (``stat = count = 0``; the v M-step
    leaves v alone).

    Parameters
    ----------
    P, VP: ``(B, K)`` forward messages; c: ``(B,)`` int labels; w: ``(B,)`` row weights.

    Returns
    -------
    S, TS: ``(B, K)`` (multiplied by ``w``); stat, count: zeros; log_lik: ``(B,)`` ``log softmax(kappa o P)_c``
    (unweighted; the predictive log-score).
    """
    kap = softmax_scale(VP)
    logp = jax.nn.log_softmax(kap * P, axis=1)
    p = jnp.exp(logp)
    onehot = jax.nn.one_hot(c, P.shape[1], dtype=P.dtype)
    wc = w[:, None]
    S = kap * (onehot - p)
    TS = kap * kap * p * (1.0 - p)
    zero = jnp.zeros((), P.dtype)
    return S * wc, TS * wc, zero, zero, jnp.sum(logp * onehot, axis=1)


def hidden_output(P: jax.Array, VP: jax.Array, R: jax.Array, VR: jax.Array, w: jax.Array, neg: tuple | None = None
                  ) -> tuple[jax.Array, jax.Array]:
    """``S, T_S`` of a hidden layer from its ReLU node posterior (spec 2.3 backward, l < L); ``neg``: the
    forward sweep's :func:`emtdamp.tdamp.gaussian.relu_negative_branch` of ``(P, VP)``."""
    dz, vz, _, _ = relu_posterior_offset(P, VP, R, VR, neg)
    inv = 1.0 / VP
    wc = w[:, None]
    return dz * inv * wc, jnp.maximum((1.0 - vz * inv) * inv, 0.0) * wc


def message_to_input(layer: LayerState, U: jax.Array, S: jax.Array, TS: jax.Array, W2: jax.Array | None = None
                     ) -> tuple[jax.Array, jax.Array]:
    """Backward message ``N(u; R, V_R)`` to the layer input (``(B, N_in)`` each), before the update.

    Computed through its natural parameters: with ``prec = T_S (W^2)^T``, ``a = T_S V_W^T`` and
    ``c = S W^T``, the spec's ``R = U (1 - V_R a) + V_R c`` is ``R = (U (prec - a) + c) / prec``, with
    ``prec`` clipped below at the dtype's bound (``V_R = 1 / prec``). The self-correction ``prec - a``
    is often negative (``V_W > W^2``, e.g. early in training); that is BiG-AMP's, and kept.
    ``W2``: optional ``W * W`` (shared with the forward sweep).
    """
    lo, _ = bounds(U.dtype)
    W, VW = layer.W, layer.VW
    prec_c = jnp.maximum(TS @ (W * W if W2 is None else W2).T, lo)
    inv = 1.0 / prec_c
    return (U * (prec_c - TS @ VW.T) + S @ W.T) * inv, inv


def weight_products(U: jax.Array, TU: jax.Array | None, S: jax.Array, TS: jax.Array
                    ) -> tuple[jax.Array, jax.Array | None, jax.Array]:
    """The products the likelihood messages to the weights are made of: ``(U^2)^T T_S``, ``T_U^T T_S`` (None
    for known inputs) and ``U^T S``, each ``(N_in, N_out)`` (see :func:`message_to_weights`)."""
    return (U * U).T @ TS, None if TU is None else TU.T @ TS, U.T @ S


def bias_message(b: jax.Array, S: jax.Array, TS: jax.Array) -> Gaussian:
    """Likelihood message ``N(b; q_b, v_qb)`` ``(N_out,)`` to the biases (as in :func:`message_to_weights`)."""
    lo, _ = bounds(S.dtype)
    sb = jnp.sum(TS, axis=0)
    precb = jnp.maximum(sb, lo)
    qb = (b * sb + jnp.sum(S, axis=0)) / precb
    return Gaussian.from_mean_var(qb, 1.0 / precb)


def message_to_weights(layer: LayerState, U: jax.Array, TU: jax.Array | None, S: jax.Array,
                       TS: jax.Array) -> tuple[Gaussian, Gaussian]:
    """Likelihood messages ``N(w; Q, V_Q)`` ``(N_in, N_out)`` and ``N(b; q_b, v_qb)`` ``(N_out,)``.

    Natural-parameter form of the spec's ``Q = W (1 - V_Q (T_U^T T_S)) + V_Q (U^T S)``:
    ``Q = (W (prec - a) + U^T S) / prec`` with ``prec = (U^2)^T T_S`` (clipped below) and
    ``a = T_U^T T_S`` (``a = 0`` for known inputs). This is the spec-form message;
    :func:`emtdamp.tdamp.module_b.denoise_layer` fuses it with the denoiser for the training step, and
    ``tests/test_tdamp_fused.py`` checks the fused form against this one.
    """
    lo, _ = bounds(U.dtype)
    uu_ts, tu_ts, u_s = weight_products(U, TU, S, TS)
    prec_c = jnp.maximum(uu_ts, lo)
    corr = prec_c if tu_ts is None else prec_c - tu_ts
    Q = (layer.W * corr + u_s) / prec_c
    return Gaussian.from_mean_var(Q, 1.0 / prec_c), bias_message(layer.b, S, TS)


def weight_llr(lik_mean: jax.Array, lik_var: jax.Array, mu0: jax.Array, s0: jax.Array) -> jax.Array:
    """Per-weight log-likelihood ratio active/inactive ``log N(Q; mu0, s0+V_Q) - log N(Q; 0, V_Q)``.

    Evaluated in the algebraically identical, cancellation-free form
    ``-0.5 log1p(s0/V_Q) - 0.5 [mu0 (mu0 - 2Q)/(s0 + V_Q) - s0 Q^2 / (V_Q (s0 + V_Q))]``.
    The difference of the two log-densities cancels catastrophically when a unit is (nearly) dead:
    then ``V_Q`` sits at the clip (1e12) and ``Q`` is a ratio of two tiny sums of order 1e9-1e11, so
    each log-density is ~1e10 while their difference is O(1e-3).
    """
    Q, VQ = lik_mean, lik_var
    tot = s0 + VQ
    return -0.5 * jnp.log1p(s0 / VQ) - 0.5 * (mu0 * (mu0 - 2.0 * Q) / tot - s0 * Q * Q / (VQ * tot))
