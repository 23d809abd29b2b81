"""Bayesian federated learning with EM-TDAMP (spec section 5): ``method.name: emtdamp_fed``.

Round r:

1. the server broadcasts its state (slab prior ``mu0, s0`` per weight, bias prior ``b0, vb0``,
   support prior ``rho`` and ``mask`` per group, noise variance ``v``);
2. each selected client runs the TDAMP E-step with posterior-as-prior over its local minibatches
   (``local_epochs`` passes) with ``v`` held at the broadcast value and the group supports carried by
   PasP (``rho_g <- pi_g`` between local minibatches, spec §9 item 15);
3. it uploads its local posterior: slab ``(m_k, tau_k)``, bias ``(b_k, v_bk)``, support logits,
   accumulated group evidence and the z_L statistics for the v update;
4. the server aggregates — ``aggregation="geometric"`` (the paper's weighted geometric mean:
   ``Lambda = sum_k w_k / tau_k``, ``eta = sum_k w_k m_k / tau_k``, support logits
   ``sum_k w_k logit pi_k``, with data weights ``w_k = n_k / n``) or ``"product"`` (the exact product
   of the K local posteriors divided by the broadcast prior counted K - 1 times) — and runs the
   M-step: rho from the aggregated supports (group or layer mode), ``v = sum_k stat_k / sum_k count_k``
   (the outputs z_L live on disjoint samples, so their global posterior is the product of the local
   ones). The aggregate with the new rho becomes the next round's prior: ``W_hat = rho mu0``,
   ``V_W = rho (s0 + mu0^2) - W_hat^2``.
5. pruning (spec §4) runs at the server after each round, on the summed client evidence.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from emtdamp import tdamp
from emtdamp.methods.base import DataSpec, ModelSpec, Predictive, hparam
from emtdamp.methods.emtdamp_method import EmtdampHParams, tdamp_hparams, tdamp_predictive
from emtdamp.methods.federated import FedAlgorithm, FedMethod, FedSettings, scan_local
from emtdamp.methods.registry import register_fed
from emtdamp.models import mlp
from emtdamp.tdamp import em, prune
from emtdamp.tdamp.gaussian import bounds, clip_var
from emtdamp.tdamp.state import TdampState


@dataclasses.dataclass(frozen=True)
class EmtdampFedHParams(EmtdampHParams, FedSettings):
    """EM-TDAMP hyperparameters plus the federated settings and the server's aggregation rule."""

    aggregation: str = hparam("geometric", choices=("geometric", "product", "tempered"),
                              doc="server rule: the paper's weighted geometric mean, the exact product, or "
                                  "tempered (prior + server_step * K * weighted mean of the local updates)")
    server_step: float = hparam(0.5, range=(0.0, 1.0),
                                doc="aggregation=tempered: 1/K = geometric mean, 1 = data-weighted product")


def _logit(p, eps):
    p = jnp.clip(p, eps, 1.0 - eps)
    return jnp.log(p) - jnp.log1p(-p)


def aggregate_gaussian(m, v, prior_m, prior_v, weights, rule: str, step: float = 1.0):
    """Combine K Gaussians ``N(m_k, v_k)`` (stacked on axis 0) into one, in natural parameters.

    ``geometric``: precision ``sum_k w_k / v_k`` and precision-mean ``sum_k w_k m_k / v_k`` with
    normalized weights (``w`` sums to one over the clients that count). ``product``: the product of
    the local posteriors over the prior counted K - 1 times (``K`` = clients with weight > 0).
    Returns mean and variance; the precision is clipped to the dtype's safe range.
    """
    lo, hi = bounds(m.dtype)
    shape = (-1,) + (1,) * (m.ndim - 1)
    live = (weights > 0).astype(m.dtype)
    if rule == "geometric":
        c = (weights / jnp.maximum(weights.sum(), 1e-30)).reshape(shape)
        lam = jnp.sum(c / v, axis=0)
        eta = jnp.sum(c * m / v, axis=0)
    elif rule == "tempered":
        c = (weights / jnp.maximum(weights.sum(), 1e-30)).reshape(shape) * (step * live.sum())
        lam = 1.0 / prior_v + jnp.sum(c * (1.0 / v - 1.0 / prior_v), axis=0)
        eta = prior_m / prior_v + jnp.sum(c * (m / v - prior_m / prior_v), axis=0)
    else:
        c = live.reshape(shape)
        k_minus_1 = live.sum() - 1.0
        lam = jnp.sum(c / v, axis=0) - k_minus_1 / prior_v
        eta = jnp.sum(c * m / v, axis=0) - k_minus_1 * prior_m / prior_v
    lam = jnp.clip(lam, 1.0 / hi, 1.0 / lo)
    return eta / lam, clip_var(1.0 / lam)


def build_emtdamp_fed() -> FedMethod:
    def build(model: ModelSpec, data: DataSpec, hp: EmtdampFedHParams, batch_size: int) -> FedAlgorithm:
        mlp.require_mlp(model, "emtdamp_fed", "its message passing runs over the declared MLP's layers")
        if model.activation != "relu":
            raise ValueError(f"emtdamp_fed supports ReLU networks only (got activation {model.activation!r})")
        if getattr(hp, "evidence", "repeat") != "repeat":
            raise ValueError("emtdamp_fed: method.evidence=once needs epochs over one data set (its clients run "
                             "local passes from the broadcast posterior); use method.evidence=repeat")
        dtype = str(jnp.dtype(jnp.result_type(float)))
        thp = tdamp_hparams(hp, data.task, dtype)
        # clients: v held at the broadcast value, supports carried by PasP (rho_g <- pi_g)
        local = dataclasses.replace(thp, v_update="fixed", rho_mode="group", v_schedule="minibatch")
        task, sizes = data.task, model.layer_sizes(data)

        def init(key) -> TdampState:
            return tdamp.init(key, sizes, thp)

        def client_update(server: TdampState, x, y, mask, key) -> TdampState:
            def step(s, xb, yb, wb):
                s, _ = tdamp.step(s, xb, yb, local, wb)
                return em.m_step(s, local)

            zero = jnp.zeros_like(server.v)
            start = server.replace(v_stat_acc=zero, v_count_acc=zero,
                                   layers=[lay.replace(lam_acc=jnp.zeros_like(lay.lam_acc)) for lay in server.layers])
            return scan_local(step, start, x, y, mask, key, batch_size, hp.local_epochs)

        def aggregate(server: TdampState, msgs: TdampState, weights) -> TdampState:
            rule = hp.aggregation
            eps = thp.rho_clip
            live = (weights > 0).astype(server.v.dtype)
            layers = []
            for g, loc in zip(server.layers, msgs.layers, strict=True):
                mu0, s0 = aggregate_gaussian(loc.mu0, loc.s0, g.mu0, g.s0, weights, rule, hp.server_step)
                b0, vb0 = aggregate_gaussian(loc.b0, loc.vb0, g.b0, g.vb0, weights, rule, hp.server_step)
                lg = _logit(loc.rho, eps)
                wn = weights / jnp.maximum(weights.sum(), 1e-30)
                if rule == "geometric":
                    logit_pi = jnp.tensordot(wn, lg, axes=1)
                elif rule == "tempered":
                    g_lg = _logit(g.rho, eps)
                    logit_pi = g_lg + hp.server_step * live.sum() * jnp.tensordot(wn, lg - g_lg, axes=1)
                else:
                    logit_pi = jnp.tensordot(live, lg, axes=1) - (live.sum() - 1.0) * _logit(g.rho, eps)
                pi = jax.nn.sigmoid(logit_pi) * g.mask
                if thp.rho_mode == "group":
                    rho = em.rho_group(pi, g.mask, eps)
                elif thp.rho_mode == "layer":
                    rho = em.rho_layer(pi, g.mask, eps)
                else:
                    rho = g.rho
                W = rho[:, None] * mu0
                VW = clip_var(rho[:, None] * (s0 + mu0**2) - W**2)
                layers.append(g.replace(W=W, VW=VW, mu0=mu0, s0=s0, slab_m=mu0, slab_v=s0, b=b0, vb=vb0, b0=b0,
                                        vb0=vb0, rho=rho, pi=pi, lam_acc=jnp.tensordot(live, loc.lam_acc, axes=1)))
            stat = jnp.tensordot(live, msgs.v_stat_acc, axes=1)
            count = jnp.tensordot(live, msgs.v_count_acc, axes=1)
            new = server.replace(layers=layers, v_stat_acc=jnp.zeros_like(stat), v_count_acc=jnp.zeros_like(count),
                                 count=server.count + 1)
            v = em.new_v(new, thp, None, stat, count)
            new = new.replace(v=em.v_ema(server.v, v, thp.v_ema))
            return prune.end_epoch(new, new.count, mode=hp.prune, kappa=hp.target_density, warm=hp.warm,
                                   ramp=hp.ramp, prune_inputs=hp.prune_inputs)

        def predict(state: TdampState, x) -> Predictive:
            return tdamp_predictive(state, x, task, hp.plug_in)

        def upload_bytes(state: TdampState) -> int:
            """Float32 bytes one client uploads: slab mean+variance of the weights in unpruned groups,
            support logit and evidence per group, bias mean+variance, and the two v statistics."""
            n = 2
            for lay in state.layers:
                alive = float(jnp.sum(lay.mask))
                n += 2 * int(alive * lay.W.shape[1]) + 2 * lay.mask.shape[0] + 2 * lay.b.shape[0]
            return 4 * n

        return FedAlgorithm(init=init, client_update=client_update, aggregate=aggregate, predict=predict,
                            upload_bytes=upload_bytes, sparsity=prune.sparsity)

    return FedMethod(name="emtdamp_fed", hparams_cls=EmtdampFedHParams, build=build,
                     description="Bayesian FL with EM-TDAMP: clients run TDAMP, server aggregates posteriors + EM")


register_fed("emtdamp_fed")(build_emtdamp_fed)
