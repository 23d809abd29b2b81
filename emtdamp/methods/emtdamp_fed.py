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
   The aggregate is ``finish(reduce(...))``: ``reduce`` sums over clients (natural parameters, logits,
   evidence, v statistics, weight sum, live count; additive, so rounds can stream chunks of clients,
   ``client_chunk``), ``finish`` applies the rule and the M-step.
5. pruning (spec §4) runs at the server after each round, on the summed client evidence.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emtdamp import tdamp
from emtdamp.methods.base import DataSpec, ModelSpec, Predictive, hparam
from emtdamp.methods.emtdamp_method import EmtdampHParams, tdamp_hparams, tdamp_predictive
from emtdamp.methods.federated import (
    FedAlgorithm,
    FedMethod,
    FedSettings,
    MessageCodec,
    decode_delta,
    decode_log_ratio,
    encode_delta,
    encode_log_ratio,
    flat_bytes,
    half_dtype,
    roundtrip_delta,
    roundtrip_log_ratio,
    scan_local,
    streaming_aggregate,
)
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


def client_sum(x, prior_x, weights, rule: str):
    """The additive part of a server rule for one natural parameter: ``sum_k c_k d_k`` over the leading
    (client) axis of ``x (m, ...)``, with ``c_k = w_k`` (``geometric``, ``tempered``) or ``c_k = [w_k > 0]``
    (``product``), and ``d_k = x_k - prior_x`` (``tempered``) or ``x_k``. Returns ``x``'s shape less axis 0."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    c = ((weights > 0) if rule == "product" else weights).astype(x.dtype).reshape(shape)
    return jnp.sum(c * (x - prior_x if rule == "tempered" else x), axis=0)


def finish_sum(part, prior_x, weight_sum, n_live, rule: str, step: float = 1.0):
    """The server rule from :func:`client_sum`'s ``part`` summed over all clients (``weight_sum = sum_k w_k``,
    ``n_live`` = clients with ``w_k > 0``): ``geometric`` the weighted mean ``part / weight_sum``;
    ``tempered`` ``prior + step * n_live * part / weight_sum``; ``product`` ``part - (n_live - 1) prior``."""
    if rule == "geometric":
        return part / jnp.maximum(weight_sum, 1e-30)
    if rule == "tempered":
        return prior_x + (step * n_live / jnp.maximum(weight_sum, 1e-30)) * part
    return part - (n_live - 1.0) * prior_x


def reduce_gaussian(m, v, prior_m, prior_v, weights, rule: str) -> tuple[jax.Array, jax.Array]:
    """The additive partial of :func:`aggregate_gaussian`: :func:`client_sum` of the natural parameters
    ``(1 / v_k, m_k / v_k)`` of K Gaussians stacked on axis 0 (prior ``(1 / prior_v, prior_m / prior_v)``).
    Returns ``(precision part, precision-mean part)``, each of ``m``'s shape less axis 0."""
    lam = client_sum(1.0 / v, 1.0 / prior_v, weights, rule)
    eta = client_sum(m / v, prior_m / prior_v, weights, rule)
    return lam, eta


def finish_gaussian(lam_part, eta_part, prior_m, prior_v, weight_sum, n_live, rule: str, step: float = 1.0):
    """Mean and variance from summed :func:`reduce_gaussian` parts (:func:`finish_sum` on each natural
    parameter); the precision is clipped to the dtype's safe range."""
    lo, hi = bounds(lam_part.dtype)
    lam = finish_sum(lam_part, 1.0 / prior_v, weight_sum, n_live, rule, step)
    eta = finish_sum(eta_part, prior_m / prior_v, weight_sum, n_live, rule, step)
    lam = jnp.clip(lam, 1.0 / hi, 1.0 / lo)
    return eta / lam, clip_var(1.0 / lam)


def aggregate_gaussian(m, v, prior_m, prior_v, weights, rule: str, step: float = 1.0):
    """Combine K Gaussians ``N(m_k, v_k)`` (stacked on axis 0) into one, in natural parameters.

    ``geometric``: precision ``sum_k w_k / v_k`` and precision-mean ``sum_k w_k m_k / v_k`` with
    normalized weights (``w`` sums to one over the clients that count). ``product``: the product of
    the local posteriors over the prior counted K - 1 times (``K`` = clients with weight > 0).
    ``tempered``: prior + ``step * K`` times the weighted mean of the local natural-parameter updates.
    Returns mean and variance (:func:`finish_gaussian` of :func:`reduce_gaussian`); the precision is clipped
    to the dtype's safe range.
    """
    lam, eta = reduce_gaussian(m, v, prior_m, prior_v, weights, rule)
    n_live = (weights > 0).astype(m.dtype).sum()
    return finish_gaussian(lam, eta, prior_m, prior_v, weights.sum(), n_live, rule, step)


class LayerPartial(NamedTuple):
    """One layer's additive aggregation partial (:func:`client_sum` parts): slab natural parameters
    ``lam, eta (N_in, N_out)``, bias ``b_lam, b_eta (N_out,)``, support ``logit (G,)`` and the live-client
    sum of the group evidence ``lam_acc (G,)``."""

    lam: jax.Array
    eta: jax.Array
    b_lam: jax.Array
    b_eta: jax.Array
    logit: jax.Array
    lam_acc: jax.Array


class FedPartial(NamedTuple):
    """``emtdamp_fed``'s reduce output, additive over clients: per-layer :class:`LayerPartial`, the weight sum
    ``sum_k w_k``, the live count ``#{k: w_k > 0}`` and the live sums of the v statistics (scalars)."""

    layers: list
    weight: jax.Array
    live: jax.Array
    v_stat: jax.Array
    v_count: jax.Array


BROADCAST_LAYER = ("mu0", "s0", "b0", "vb0", "rho", "pi", "mask")
"""Per layer, what the server broadcasts; ``W, V_W, slab_m, slab_v, b, v_b`` are derived (:func:`derive_moments`)
and ``lam_acc`` is zero at every round end."""
BROADCAST_SCALARS = ("v", "v_stat", "v_count", "count")
UPLOAD_WEIGHTS = ("mu0", "s0")     # weight-sized (N_in, N_out): compressible
UPLOAD_SMALL = ("b0", "vb0", "rho", "lam_acc")   # per bias / per group: always float32
UPLOAD_SCALARS = ("v_stat_acc", "v_count_acc")


def derive_moments(lay, count):
    """The leaves of a server layer that follow from its prior: a fresh state (``count == 0``, :func:`tdamp.init`)
    has ``W = mu0, V_W = s0``; after a round (:func:`aggregate`, then pruning) ``W = rho mu0`` and
    ``V_W = clip(rho (s0 + mu0^2) - W^2)``; always ``slab = (mu0, s0)`` and ``b = b0, v_b = vb0``."""
    rho = lay.rho[:, None]
    W = rho * lay.mu0
    VW = clip_var(rho * (lay.s0 + lay.mu0**2) - W**2)
    fresh = count == 0
    return lay.replace(W=jnp.where(fresh, lay.mu0, W), VW=jnp.where(fresh, lay.s0, VW), slab_m=lay.mu0,
                       slab_v=lay.s0, b=lay.b0, vb=lay.vb0, lam_acc=jnp.zeros_like(lay.rho))


def tdamp_codec(like: TdampState, compress: str) -> MessageCodec:
    """Flat messages of ``emtdamp_fed`` for states shaped like ``like`` (see :data:`BROADCAST_LAYER`,
    :data:`UPLOAD_WEIGHTS`); ``compress`` as :data:`emtdamp.methods.federated.COMPRESS`."""
    half = half_dtype(compress)
    active = compress.startswith("active")
    derive = jax.jit(lambda st: st.replace(layers=[derive_moments(lay, st.count) for lay in st.layers]))

    def pack_broadcast(server: TdampState) -> dict:
        out = {k: np.asarray(getattr(server, k)) for k in BROADCAST_SCALARS}
        for i, lay in enumerate(server.layers):
            out.update({f"layers/{i}/{k}": np.asarray(getattr(lay, k)) for k in BROADCAST_LAYER})
        return out

    def unpack_broadcast(flat: dict) -> TdampState:
        layers = []
        for i, ref in enumerate(like.layers):
            kw = {k: jnp.asarray(flat[f"layers/{i}/{k}"], getattr(ref, k).dtype) for k in BROADCAST_LAYER}
            z = jnp.zeros(ref.W.shape, ref.W.dtype)
            layers.append(ref.replace(W=z, VW=z, slab_m=z, slab_v=z, b=kw["b0"], vb=kw["vb0"],
                                      lam_acc=jnp.zeros(ref.lam_acc.shape, ref.lam_acc.dtype), **kw))
        z = jnp.zeros((), like.v.dtype)
        st = like.replace(layers=layers, v=jnp.asarray(flat["v"], like.v.dtype),
                          v_stat=jnp.asarray(flat["v_stat"], like.v.dtype),
                          v_count=jnp.asarray(flat["v_count"], like.v.dtype), v_stat_acc=z, v_count_acc=z,
                          count=jnp.asarray(flat["count"], like.count.dtype),
                          epochs=jnp.zeros((), like.epochs.dtype))   # (v_warm is not used by the server's v)
        return derive(st)

    def pack_upload(server: TdampState, msg: TdampState) -> dict:
        out = {k: np.asarray(getattr(msg, k)) for k in UPLOAD_SCALARS}
        for i, (g, loc) in enumerate(zip(server.layers, msg.layers, strict=True)):
            keep = np.asarray(g.mask) > 0 if active else slice(None)
            out.update({f"layers/{i}/{k}": np.asarray(getattr(loc, k)) for k in UPLOAD_SMALL})
            if active:
                out.update({f"layers/{i}/{k}": out[f"layers/{i}/{k}"][keep] for k in ("rho", "lam_acc")})
            m, s0 = np.asarray(loc.mu0)[keep], np.asarray(loc.s0)[keep]
            if half is None:
                out[f"layers/{i}/mu0"], out[f"layers/{i}/s0"] = m, s0
            else:
                out[f"layers/{i}/mu0"] = encode_delta(m, np.asarray(g.mu0)[keep], half)
                out[f"layers/{i}/s0"] = encode_log_ratio(s0, np.asarray(g.s0)[keep], half)
        return out

    def unpack_upload(server: TdampState, flat: dict) -> TdampState:
        layers = []
        for i, g in enumerate(server.layers):
            keep = np.asarray(g.mask) > 0 if active else np.ones(g.mask.shape, bool)

            def full(name, rows, fill, g=g, keep=keep):
                out = np.array(np.asarray(fill), copy=True)
                out[keep] = rows
                return jnp.asarray(out, getattr(g, name).dtype)

            m, s0 = flat[f"layers/{i}/mu0"], flat[f"layers/{i}/s0"]
            if half is not None:
                m = decode_delta(m, np.asarray(g.mu0)[keep], half)
                s0 = decode_log_ratio(s0, np.asarray(g.s0)[keep], half)
            kw = {k: jnp.asarray(flat[f"layers/{i}/{k}"], getattr(g, k).dtype) for k in ("b0", "vb0")}
            layers.append(g.replace(mu0=full("mu0", m, g.mu0), s0=full("s0", s0, g.s0),
                                    rho=full("rho", flat[f"layers/{i}/rho"], g.rho),
                                    lam_acc=full("lam_acc", flat[f"layers/{i}/lam_acc"], jnp.zeros_like(g.lam_acc)),
                                    **kw))
        return server.replace(layers=layers, **{k: jnp.asarray(flat[k], server.v.dtype) for k in UPLOAD_SCALARS})

    def roundtrip_upload(server: TdampState, msg: TdampState) -> TdampState:
        layers = []
        for g, loc in zip(server.layers, msg.layers, strict=True):
            m = roundtrip_delta(loc.mu0, g.mu0, half)
            s0 = roundtrip_log_ratio(loc.s0, g.s0, half)
            if active:
                keep = g.mask > 0
                m, s0 = jnp.where(keep[:, None], m, g.mu0), jnp.where(keep[:, None], s0, g.s0)
                loc = loc.replace(rho=jnp.where(keep, loc.rho, g.rho), lam_acc=jnp.where(keep, loc.lam_acc, 0.0))
            layers.append(loc.replace(mu0=m, s0=s0))
        return msg.replace(layers=layers)

    return MessageCodec(pack_broadcast=pack_broadcast, unpack_broadcast=unpack_broadcast, pack_upload=pack_upload,
                        unpack_upload=unpack_upload, roundtrip_upload=roundtrip_upload)


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

        rule, eps = hp.aggregation, thp.rho_clip

        def reduce(server: TdampState, msgs: TdampState, weights) -> FedPartial:
            """Sums over the clients (axis 0 of ``msgs``) of everything :func:`finish` needs (additive)."""
            live = (weights > 0).astype(server.v.dtype)
            layers = []
            for g, loc in zip(server.layers, msgs.layers, strict=True):
                lam, eta = reduce_gaussian(loc.mu0, loc.s0, g.mu0, g.s0, weights, rule)
                b_lam, b_eta = reduce_gaussian(loc.b0, loc.vb0, g.b0, g.vb0, weights, rule)
                logit = client_sum(_logit(loc.rho, eps), _logit(g.rho, eps), weights, rule)
                layers.append(LayerPartial(lam=lam, eta=eta, b_lam=b_lam, b_eta=b_eta, logit=logit,
                                           lam_acc=jnp.tensordot(live, loc.lam_acc, axes=1)))
            return FedPartial(layers=layers, weight=weights.sum().astype(server.v.dtype), live=live.sum(),
                              v_stat=jnp.tensordot(live, msgs.v_stat_acc, axes=1),
                              v_count=jnp.tensordot(live, msgs.v_count_acc, axes=1))

        def finish(server: TdampState, part: FedPartial) -> TdampState:
            """The server rule on the summed partial, then the M-step (rho, v) and pruning."""
            layers = []
            for g, p in zip(server.layers, part.layers, strict=True):
                mu0, s0 = finish_gaussian(p.lam, p.eta, g.mu0, g.s0, part.weight, part.live, rule, hp.server_step)
                b0, vb0 = finish_gaussian(p.b_lam, p.b_eta, g.b0, g.vb0, part.weight, part.live, rule,
                                          hp.server_step)
                logit_pi = finish_sum(p.logit, _logit(g.rho, eps), part.weight, part.live, rule, hp.server_step)
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
                                        vb0=vb0, rho=rho, pi=pi, lam_acc=p.lam_acc))
            stat, count = part.v_stat, part.v_count
            new = server.replace(layers=layers, v_stat_acc=jnp.zeros_like(stat), v_count_acc=jnp.zeros_like(count),
                                 count=server.count + 1)
            v = em.new_v(new, thp, None, stat, count)
            new = new.replace(v=em.v_ema(server.v, v, thp.v_ema))
            return prune.end_epoch(new, new.count, mode=hp.prune, kappa=hp.target_density, warm=hp.warm,
                                   ramp=hp.ramp, prune_inputs=hp.prune_inputs)

        def predict(state: TdampState, x) -> Predictive:
            return tdamp_predictive(state, x, task, hp.plug_in, hp.class_rule, hp.output_model)

        codec = tdamp_codec(jax.eval_shape(init, jax.random.PRNGKey(0)), hp.compress)

        def upload_bytes(state: TdampState) -> int:
            """Bytes one client uploads (:func:`tdamp_codec`'s packed upload): slab mean + variance per weight
            (float32, or half-precision deltas with ``compress``; unpruned groups only with ``compress=active``),
            support and evidence per group, bias mean + variance, and the two v statistics."""
            return flat_bytes(codec.pack_upload(state, state))

        return FedAlgorithm(init=init, client_update=client_update, aggregate=streaming_aggregate(reduce, finish),
                            predict=predict, upload_bytes=upload_bytes, sparsity=prune.sparsity, codec=codec,
                            reduce=reduce, finish=finish)

    return FedMethod(name="emtdamp_fed", hparams_cls=EmtdampFedHParams, build=build,
                     description="Bayesian FL with EM-TDAMP: clients run TDAMP, server aggregates posteriors + EM")


register_fed("emtdamp_fed")(build_emtdamp_fed)
