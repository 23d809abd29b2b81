"""Module B: the group-sparse support prior and the turbo exchange with Module A (spec 2.2d, 2.4).

Module A sees every weight with an independent Bernoulli-Gaussian prior: support probability
``pi_ext`` from Module B and slab ``N(mu0, s0)``. Module B holds one support variable per group
(row ``j`` of a kernel = all outgoing weights of unit ``j``) with prior ``rho_j`` and ties the
per-weight supports of the group together. On this tree sum-product is exact:

    Lambda_j   = sum_i llr_ji                         (group log-evidence of the minibatch)
    logit pi_j = logit rho_j + Lambda_j               (group posterior; 0 for masked groups)
    pi_ext_ji  = sigmoid(logit rho_j + Lambda_j - llr_ji)   (extrinsic message B -> A)

Feeding ``pi_ext_ji`` to the weight denoiser gives the posterior support ``pi_j`` for every weight
of the group, so we use ``pi_j`` directly (no cancellation, spec 2.4). All support quantities are
:class:`~emtdamp.tdamp.bernoulli.Bernoulli` logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from emtdamp.tdamp.bernoulli import Bernoulli
from emtdamp.tdamp.bernoulli import product as bern_product
from emtdamp.tdamp.gaussian import Gaussian, bounds, clip_finite, clip_var
from emtdamp.tdamp.gaussian import product as gauss_product
from emtdamp.tdamp.module_a import weight_llr
from emtdamp.tdamp.state import LayerState


def group_evidence(llr: jax.Array) -> jax.Array:
    """``(N_in,)`` group log-evidence ``Lambda_j = sum_i llr_ji`` from per-weight ratios ``(N_in, N_out)``."""
    return jnp.sum(llr, axis=1)


def group_posterior(rho: jax.Array, evidence: jax.Array, mask: jax.Array) -> Bernoulli:
    """Posterior support message ``logit rho + Lambda`` (before masking)."""
    return bern_product(Bernoulli.from_prob(rho), Bernoulli(logit=evidence))


def extrinsic_support(rho: jax.Array, evidence: jax.Array, llr: jax.Array) -> Bernoulli:
    """``(N_in, N_out)`` leave-one-out message ``pi_ext`` from Module B to each weight (for reference;
    the denoiser uses the equivalent group posterior)."""
    return Bernoulli(logit=Bernoulli.from_prob(rho).logit[:, None] + evidence[:, None] - llr)


def denoise_weights(lik: Gaussian, mu0: jax.Array, s0: jax.Array, rho: jax.Array, mask: jax.Array
                    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """Turbo exchange + Bernoulli-Gaussian weight denoiser for one layer.

    Parameters
    ----------
    lik: ``(N_in, N_out)`` likelihood message ``N(w; Q, V_Q)`` from Module A.
    mu0, s0: ``(N_in, N_out)`` slab prior; rho, mask: ``(N_in,)``.

    Returns
    -------
    W_new, VW_new: ``(N_in, N_out)`` posterior mixture mean and variance (undamped);
    slab_m, slab_v: ``(N_in, N_out)`` slab posterior (given active);
    pi: ``(N_in,)`` group posterior support probabilities (masked);
    evidence: ``(N_in,)`` the minibatch group log-evidence ``Lambda``.
    """
    Q, VQ = lik.mean, lik.var
    slab = gauss_product(Gaussian.from_mean_var(mu0, s0), lik)
    m_pl, v_pl = slab.mean, slab.var
    llr = weight_llr(Q, VQ, mu0, s0)
    lam = group_evidence(llr)
    pi = group_posterior(rho, lam, mask).prob * mask
    W_new = pi[:, None] * m_pl
    VW_new = pi[:, None] * (v_pl + m_pl * m_pl) - W_new * W_new
    return W_new, VW_new, m_pl, v_pl, pi, lam


def denoise_bias(lik: Gaussian, b0: jax.Array, vb0: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Gaussian bias posterior ``N(b0, vb0) x N(q_b, v_qb)``: mean and variance ``(N_out,)``."""
    post = gauss_product(Gaussian.from_mean_var(b0, vb0), lik)
    return post.mean, clip_var(post.var)


def group_evidence_from_message(Q: jax.Array, pq: jax.Array, mu0: jax.Array, s0: jax.Array) -> jax.Array:
    """``(N_in,)`` group log-evidence ``Lambda_j = sum_i llr_ji`` of the messages ``N(Q, 1/pq)`` ``(N_in, N_out)``
    under the slab ``N(mu0, s0)`` (:func:`emtdamp.tdamp.module_a.weight_llr` with ``V_Q = 1/pq``, summed).

    The llr from the precisions: with ``x = s0/V_Q = s0 pq`` and ``1/(s0 + V_Q) = pq/(1 + x)``,
    ``llr = -log1p(x)/2 - (mu0 (mu0 - 2Q) - x Q^2) pq/(1 + x)/2``. Columns ``i`` and ``i + N_out/2`` are summed
    before the row sum, their ``log1p`` terms as one, ``log1p(x) + log1p(x') = log1p(x + x' + x x')`` (``x <=
    hi^2``, so the argument stays finite): half the ``log1p`` evaluations (XLA's costs about 1.5 ``log``s on CPU).
    The row sums are a matrix-vector product (XLA's CPU reduction of a fused ``(N_in, N)`` expression was 2-3x
    slower).
    """
    x = s0 * pq
    rest = -0.5 * (mu0 * (mu0 - 2.0 * Q) - x * Q * Q) * (pq / (1.0 + x))
    n = Q.shape[1]
    if n % 2:
        llr = rest - 0.5 * jnp.log1p(x)
    else:
        h = n // 2
        xa, xb = x[:, :h], x[:, h:]
        llr = rest[:, :h] + rest[:, h:] - 0.5 * jnp.log1p(xa + xb + xa * xb)
    return llr @ jnp.ones(llr.shape[1:], llr.dtype)


def after(x: jax.Array, *deps: jax.Array) -> jax.Array:
    """``x`` made data-dependent on ``deps``: ``x + 0 * t`` with ``t = d[0, ..., 0] + ...`` replaced by 0 where it is
    not finite, so ``x`` comes back unchanged whatever the ``deps`` hold (an inf or NaN there must not spread
    into ``x``).

    XLA updates a loop-carried array (the state inside the epoch's ``scan``) in place only when every reader
    of its old value is an ancestor of the new value; otherwise it copies the whole array first. Tying the
    new value to results computed by the old one's other readers (``deps``; best arrays XLA materialises
    anyway, so that the tie reads one element of a buffer) removes those copies.
    """
    t = sum(d.reshape(-1)[0] for d in deps)
    return x + jnp.zeros((), x.dtype) * jnp.where(jnp.isfinite(t), t, 0.0).astype(x.dtype)


def denoise_layer(layer: LayerState, uu_ts: jax.Array, tu_ts: jax.Array | None, u_s: jax.Array, beta: float,
                  dep: jax.Array | None = None
                  ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """Module A's likelihood message to the weights, the turbo exchange and the damped denoiser of one layer.

    The same values (up to float rounding) as :func:`emtdamp.tdamp.module_a.message_to_weights`, then
    :func:`denoise_weights` and the damping ``W <- beta W_new + (1 - beta) W``,
    ``VW <- max(beta VW_new + (1 - beta) VW, lo)``, written for few passes over the weight-sized arrays and
    few divisions:

    * the message ``N(Q, 1/pq)``, ``pq = clip(prec)``, and the weight llr from the precisions
      (``s0 / V_Q = s0 pq``, ``1/(s0 + V_Q) = pq/(1 + s0 pq)``);
    * the slab posterior ``N(mu0, s0) x N(Q, 1/pq)`` without the prior precision ``p0 = 1/s0``: with
      ``x = s0 pq`` and ``den = s0 clip(p0 + pq) = min(1 + x, s0 hi)`` (``p0 + pq >= 2 lo``, so only the upper
      clip can act), ``m+ = (mu0 + Q x) / den`` and ``v+ = s0 / den``;
    * ``VW_new = pi v+ + pi (1 - pi) m+^2`` with ``1 - pi`` taken from the logit (the form
      ``pi (v+ + m+^2) - (pi m+)^2`` cancels in float32 when ``pi ~ 1`` and ``m+^2 >> v+``).

    Parameters
    ----------
    layer: the layer's state (``W, VW, mu0, s0, rho, mask``; ``s0`` clipped to the dtype's interval).
    uu_ts, tu_ts, u_s: ``(N_in, N_out)`` the products ``(U^2)^T T_S``, ``T_U^T T_S`` (None for known
        inputs) and ``U^T S``.
    beta: damping.
    dep: optional array computed from the old ``W, VW`` by their other readers (the message to the layer
        input); the new ``W, VW`` are made to depend on it (:func:`after`).

    Returns
    -------
    W, VW: ``(N_in, N_out)`` damped posterior mean / variance; slab_m, slab_v: ``(N_in, N_out)`` slab
    posterior; pi: ``(N_in,)`` masked group posterior; evidence: ``(N_in,)`` the group log-evidence ``Lambda``.
    """
    lo, hi = bounds(layer.W.dtype)
    W, mu0, s0 = layer.W, layer.mu0, layer.s0
    prec_c = jnp.maximum(uu_ts, lo)
    corr = prec_c if tu_ts is None else prec_c - tu_ts
    # Q, m+ and v+ are each read by several consumers; written as divisions (not products with a shared
    # reciprocal) XLA materialises them once instead of re-deriving them from their inputs in every consumer
    Q = clip_finite((W * corr + u_s) / prec_c)     # message mean, V_Q = 1 / pq
    pq = jnp.minimum(prec_c, hi)               # its (clipped) precision
    lam = group_evidence_from_message(Q, pq, mu0, s0)
    post = group_posterior(layer.rho, lam, layer.mask)
    pi = post.prob * layer.mask
    one_m_pi = jax.nn.sigmoid(-post.logit) * layer.mask + (1.0 - layer.mask)
    # slab posterior (gaussian.product of N(mu0, s0) and N(Q, 1/pq), both clipped), scaled by s0
    s0c = clip_var(s0)
    x = s0c * pq
    den = jnp.minimum(1.0 + x, s0c * hi)
    eta = clip_finite(mu0 + Q * x)                 # s0 x (natural mean of the slab posterior)
    v_pl = s0c / den
    m_pl = eta / den
    W_new = pi[:, None] * m_pl
    VW_new = pi[:, None] * v_pl + (pi * one_m_pi)[:, None] * (m_pl * m_pl)
    W = beta * W_new + (1.0 - beta) * W
    VW = jnp.maximum(beta * VW_new + (1.0 - beta) * layer.VW, lo)
    if dep is not None:
        W, VW = after(W, dep), after(VW, dep)
    return W, VW, m_pl, v_pl, pi, lam
