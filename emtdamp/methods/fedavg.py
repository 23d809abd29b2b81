"""FedAvg (McMahan et al.): clients run local SGD/Adam (optax) from the global weights; the server
averages the returned weights, weighted by client data counts. The federated baseline."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from emtdamp.losses import data_loss, point_predictive
from emtdamp.methods.base import Batch, DataSpec, ModelSpec, Predictive, hparam
from emtdamp.methods.federated import (
    FedAlgorithm,
    FedMethod,
    FedSettings,
    MessageCodec,
    decode_delta,
    encode_delta,
    finish_weighted_mean,
    flat_bytes,
    from_named,
    half_dtype,
    named_leaves,
    roundtrip_delta,
    scan_local,
    streaming_aggregate,
    weighted_sum,
)
from emtdamp.methods.registry import register_fed
from emtdamp.models.network import build_network


@dataclasses.dataclass(frozen=True)
class FedAvgHParams(FedSettings):
    """Federated settings plus the local optax optimizer."""

    optimizer: str = hparam("adam", choices=("adam", "sgd"), doc="local optimizer")
    learning_rate: float = hparam(1e-3, range=(0.0, 10.0), doc="local step size")
    momentum: float = hparam(0.0, range=(0.0, 1.0), doc="local SGD momentum")


def weights_codec(like, compress: str) -> MessageCodec:
    """Flat messages of FedAvg for server states shaped like ``like``: the broadcast and the upload are the
    weights (and the noise variance) by key path; with ``compress=float16|bfloat16`` the upload sends every
    array of two or more dimensions (kernels) as a half-precision delta against the broadcast (biases stay
    float32). FedAvg has no groups: ``active`` sends everything."""
    half = half_dtype(compress)
    big = {k for k, a in named_leaves(jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), like)).items()
           if a.ndim >= 2}

    def pack_upload(server, msg) -> dict:
        flat = named_leaves(msg)
        if half is None:
            return flat
        ref = named_leaves(server)
        return {k: encode_delta(a, ref[k], half) if k in big else a for k, a in flat.items()}

    def unpack_upload(server, flat: dict):
        if half is not None:
            ref = named_leaves(server)
            flat = {k: decode_delta(a, ref[k], half) if k in big else a for k, a in flat.items()}
        return from_named(like, flat)

    def roundtrip_upload(server, msg):
        if half is None:
            return msg
        return jax.tree_util.tree_map(lambda m, s: roundtrip_delta(m, s, half) if m.ndim >= 2 else m, msg, server)

    return MessageCodec(pack_broadcast=named_leaves, unpack_broadcast=lambda flat: from_named(like, flat),
                        pack_upload=pack_upload, unpack_upload=unpack_upload, roundtrip_upload=roundtrip_upload)


def build_fedavg() -> FedMethod:
    def build(model: ModelSpec, data: DataSpec, hp: FedAvgHParams, batch_size: int) -> FedAlgorithm:
        init_fn, apply_fn = build_network(model, data)   # mlp, cnn or the user's flax module
        if hp.optimizer == "adam":
            tx = optax.adam(hp.learning_rate)
        else:
            tx = optax.sgd(hp.learning_rate, hp.momentum or None)
        task = data.task

        def init(key):
            params = init_fn(key)
            return {"params": params, "noise_var": jnp.asarray(1.0, jax.tree_util.tree_leaves(params)[0].dtype)}

        def client_update(server, x, y, mask, key):
            def step(st, xb, yb, wb):
                params, opt, _ = st
                loss, g = jax.value_and_grad(data_loss, argnums=1)(apply_fn, params, Batch(xb, yb, wb), task)
                upd, opt = tx.update(g, opt, params)
                return optax.apply_updates(params, upd), opt, loss.astype(jax.tree_util.tree_leaves(params)[0].dtype)

            params = server["params"]
            params, _, last_loss = scan_local(step, (params, tx.init(params), jnp.zeros((), x.dtype)), x, y, mask,
                                              key, batch_size, hp.local_epochs)
            return {"params": params, "noise_var": last_loss}

        def reduce(server, msgs, weights):
            """``(sum_k w_k msg_k, sum_k w_k)``: additive over clients."""
            return weighted_sum(msgs, weights)

        def finish(server, partial):
            """The data-weighted mean of the uploaded weights and noise variances."""
            return finish_weighted_mean(partial)

        def predict(server, x) -> Predictive:
            return point_predictive(apply_fn(server["params"], x), task, server["noise_var"])

        codec = weights_codec(jax.eval_shape(init, jax.random.PRNGKey(0)), hp.compress)

        def upload_bytes(server) -> int:
            """Bytes of the packed upload: the weights and the noise variance (kernels in half precision
            with ``compress``)."""
            return flat_bytes(codec.pack_upload(server, server))

        return FedAlgorithm(init=init, client_update=client_update, aggregate=streaming_aggregate(reduce, finish),
                            predict=predict, upload_bytes=upload_bytes, codec=codec, reduce=reduce, finish=finish)

    return FedMethod(name="fedavg", hparams_cls=FedAvgHParams, build=build,
                     description="FedAvg with local adam/sgd (optax); server averages weights by data count")


register_fed("fedavg")(build_fedavg)
