""""Data seen once" evidence bookkeeping for PasP across epochs (issue 16, docs/emtdamp.md section 2).

Pure PasP (spec 2.6) multiplies every minibatch's likelihood message into the prior for good, so
after E epochs the weight posterior holds E copies of every training row and its variances shrink
like 1/E. Here the likelihood messages (sites) are kept instead, in natural parameters, in two
buffers per weight and bias:

* ``acc``: the sum of the sites of the minibatches seen so far in the current epoch (fresh);
* ``last``: the sum of the sites of the whole previous epoch (stale), with ``seen_last`` rows.

Before minibatch ``t`` (``B_t`` real rows, ``seen`` rows already seen this epoch) the prior
(the EP cavity) is::

    prior = p0 x acc x last^r,      r = max(0, 1 - (seen + B_t) / seen_last)

i.e. the initial prior, the fresh evidence of the rows already seen this epoch and the share of the
previous epoch's evidence that stands for the rows not seen yet (excluding the current batch).
After the E-step the minibatch's likelihood message is added to ``acc`` and the posterior is
``prior x site``: it always holds ``(seen + B_t) + r seen_last = seen_last`` rows of evidence, one
pass, and at an epoch end (``r = 0``) it is exactly ``p0 x (sum of this epoch's sites)``. At the
epoch end :func:`roll` moves ``acc`` to ``last``. In the first epoch ``last`` is empty and the
scheme is plain PasP, which is the one-pass posterior. For a linear-Gaussian model, whose sites do
not depend on the prior, the posterior at every epoch end equals the exact one-pass posterior
(tests/test_tdamp_evidence.py).

The group supports are book-kept the same way in log-odds: the support prior of a minibatch is
``logit rho0 + acc_Lambda + r last_Lambda`` (the group log-evidence ``Lambda`` of each minibatch is its
Bernoulli site), replacing the ``rho <- pi`` PasP of the group-mode M-step.

Everything is a pure function of arrays; shapes follow :class:`~emtdamp.tdamp.state.LayerState`.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from emtdamp.tdamp.gaussian import bounds, clip_var


@chex.dataclass
class EvidenceLayer:
    """Natural parameters of one layer's prior and stored likelihood messages.

    Attributes
    ----------
    prec0, eta0: ``(N_in, N_out)`` initial slab prior precision ``1/s0`` and ``mu0/s0``.
    prec, eta: ``(N_in, N_out)`` sum of the weight sites seen this epoch (``acc``).
    prec_last, eta_last: ``(N_in, N_out)`` the same summed over the previous epoch (``last``).
    bprec0, beta0, bprec, beta, bprec_last, beta_last: ``(N_out,)`` the same for the biases.
    logit0, lam, lam_last: ``(N_in,)`` initial support log-odds ``logit rho0`` and the group
        log-evidence ``Lambda`` (Bernoulli sites of the supports) summed this / the previous epoch.
    """

    prec0: jax.Array
    eta0: jax.Array
    prec: jax.Array
    eta: jax.Array
    prec_last: jax.Array
    eta_last: jax.Array
    bprec0: jax.Array
    beta0: jax.Array
    bprec: jax.Array
    beta: jax.Array
    bprec_last: jax.Array
    beta_last: jax.Array
    logit0: jax.Array
    lam: jax.Array
    lam_last: jax.Array


@chex.dataclass
class Evidence:
    """Evidence bookkeeping of a whole network.

    Attributes
    ----------
    layers: list of :class:`EvidenceLayer`, input layer first.
    seen: scalar, real rows (sum of row weights) seen this epoch.
    seen_last: scalar, rows seen in the previous epoch (0 before the first epoch end).
    """

    layers: list
    seen: jax.Array
    seen_last: jax.Array


def init_evidence(mu0: list[jax.Array], s0: list[jax.Array], b0: list[jax.Array], vb0: list[jax.Array],
                  rho0: list[jax.Array] | None = None) -> Evidence:
    """Empty bookkeeping for the initial priors ``N(mu0, s0)`` (weights), ``N(b0, vb0)`` (biases) and
    ``Bernoulli(rho0)`` (group supports, default 0.5) per layer."""
    layers = []
    rho0 = [jnp.full(m.shape[:1], 0.5, m.dtype) for m in mu0] if rho0 is None else rho0
    for m, s, bm, bs, r0 in zip(mu0, s0, b0, vb0, rho0, strict=True):
        p, pb = 1.0 / s, 1.0 / bs
        z, zb, zg = jnp.zeros_like(m), jnp.zeros_like(bm), jnp.zeros_like(r0)
        layers.append(EvidenceLayer(prec0=p, eta0=m * p, prec=z, eta=z, prec_last=z, eta_last=z,
                                    bprec0=pb, beta0=bm * pb, bprec=zb, beta=zb, bprec_last=zb, beta_last=zb,
                                    logit0=jnp.log(r0) - jnp.log1p(-r0), lam=zg, lam_last=zg))
    z = jnp.zeros((), mu0[0].dtype)
    return Evidence(layers=layers, seen=z, seen_last=z)


def stale_share(ev: Evidence, batch_rows: jax.Array) -> jax.Array:
    """``r = max(0, 1 - (seen + B_t) / seen_last)``: share of the previous epoch's evidence in the prior (0 if none)."""
    has_last = ev.seen_last > 0
    r = 1.0 - (ev.seen + batch_rows) / jnp.where(has_last, ev.seen_last, 1.0)
    return jnp.where(has_last, jnp.clip(r, 0.0, 1.0), 0.0)


def _to_mean_var(prec: jax.Array, eta: jax.Array) -> tuple[jax.Array, jax.Array]:
    lo, hi = bounds(prec.dtype)
    prec = jnp.clip(prec, 1.0 / hi, 1.0 / lo)
    return eta / prec, clip_var(1.0 / prec)


def cavity(ev: Evidence, batch_rows: jax.Array) -> list[tuple[jax.Array, ...]]:
    """Prior for the next minibatch, per layer ``(mu0, s0, b0, vb0, support_logit)``: ``p0 x acc x last^r``
    (module docstring); ``support_logit (N_in,)`` is the group support prior in log-odds.

    Parameters
    ----------
    ev: the bookkeeping; batch_rows: scalar, real rows ``B_t`` of the coming minibatch.
    """
    r = stale_share(ev, batch_rows)
    out = []
    for e in ev.layers:
        mu0, s0 = _to_mean_var(e.prec0 + e.prec + r * e.prec_last, e.eta0 + e.eta + r * e.eta_last)
        b0, vb0 = _to_mean_var(e.bprec0 + e.bprec + r * e.bprec_last, e.beta0 + e.beta + r * e.beta_last)
        out.append((mu0, s0, b0, vb0, e.logit0 + e.lam + r * e.lam_last))
    return out


def site(post_mean: jax.Array, post_var: jax.Array, prior_mean: jax.Array, prior_var: jax.Array
         ) -> tuple[jax.Array, jax.Array]:
    """Likelihood message ``posterior / prior`` in natural parameters ``(prec, eta)``.

    The precision is clipped at 0 from below: a likelihood message of TDAMP has positive precision
    (its ``V_Q`` is clipped), so a negative difference can only be rounding.
    """
    prec = jnp.maximum(1.0 / post_var - 1.0 / prior_var, 0.0)
    eta = post_mean / post_var - prior_mean / prior_var
    return prec, jnp.where(prec > 0, eta, 0.0)


def add_sites(ev: Evidence, sites: list[tuple[jax.Array, ...]], batch_rows: jax.Array) -> Evidence:
    """Add one minibatch's sites ``(prec_w, eta_w, prec_b, eta_b[, lam])`` per layer to ``acc``; ``seen += B_t``.

    ``lam (N_in,)`` is the minibatch's group log-evidence (support site; zeros when omitted).

    A minibatch without real rows (all padding) adds nothing.
    """
    real = (batch_rows > 0).astype(ev.seen.dtype)
    layers = []
    for e, st in zip(ev.layers, sites, strict=True):
        pw, ew, pb, eb = st[:4]
        lam = st[4] if len(st) > 4 else jnp.zeros_like(e.lam)
        layers.append(e.replace(prec=e.prec + real * pw, eta=e.eta + real * ew, bprec=e.bprec + real * pb,
                                beta=e.beta + real * eb, lam=e.lam + real * lam))
    return ev.replace(layers=layers, seen=ev.seen + batch_rows)


def roll(ev: Evidence) -> Evidence:
    """Epoch end: ``last <- acc``, ``seen_last <- seen``, ``acc <- 0``, ``seen <- 0`` (no-op if nothing was seen)."""
    any_seen = ev.seen > 0
    keep = lambda new, old: jnp.where(any_seen, new, old)
    layers = [e.replace(prec_last=keep(e.prec, e.prec_last), eta_last=keep(e.eta, e.eta_last),
                        bprec_last=keep(e.bprec, e.bprec_last), beta_last=keep(e.beta, e.beta_last),
                        lam_last=keep(e.lam, e.lam_last), prec=jnp.zeros_like(e.prec), eta=jnp.zeros_like(e.eta),
                        bprec=jnp.zeros_like(e.bprec), beta=jnp.zeros_like(e.beta), lam=jnp.zeros_like(e.lam))
              for e in ev.layers]
    return ev.replace(layers=layers, seen=jnp.zeros_like(ev.seen), seen_last=keep(ev.seen, ev.seen_last))


def total_evidence(ev: Evidence, batch_rows: jax.Array | float = 0.0) -> list[tuple[jax.Array, jax.Array]]:
    """Per layer the weight evidence ``(prec, eta)`` the posterior holds after a minibatch of ``batch_rows``
    rows has been added: ``acc + r last`` with ``r`` from the rows seen *before* it (for checks)."""
    r = stale_share(ev.replace(seen=ev.seen - batch_rows), jnp.asarray(batch_rows, ev.seen.dtype))
    return [(e.prec + r * e.prec_last, e.eta + r * e.eta_last) for e in ev.layers]


__all__ = ["Evidence", "EvidenceLayer", "add_sites", "cavity", "init_evidence", "roll", "site", "stale_share",
           "total_evidence"]
