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
from emtdamp.tdamp.gaussian import Gaussian, clip_var
from emtdamp.tdamp.gaussian import product as gauss_product
from emtdamp.tdamp.module_a import weight_llr


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
