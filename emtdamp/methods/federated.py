"""The contract of a federated method, and the helpers method authors build client updates from.

A federated method is a :class:`FedMethod`; its ``build`` gives a :class:`FedAlgorithm`: ``init`` gives the
server state; ``client_update`` maps
(server state, one client's padded data, key) to the message that client uploads; ``aggregate``
combines the stacked messages of the selected clients into the next server state. The round runner
(:func:`emtdamp.loops.federated.make_round_fn`) selects clients, runs ``vmap(client_update)`` over them and
aggregates, in one jitted call. Register one with :func:`emtdamp.methods.registry.register_fed`.

Streaming aggregation: a method may split its aggregate into ``reduce(server, msgs, weights) -> partial``, a
pytree *additive* over clients (the reduce of a union of client sets is the sum of their reduces), and
``finish(server, partial) -> server``, with ``aggregate = finish ∘ reduce`` (:func:`streaming_aggregate`).
Then the runner can process the selected clients in chunks (``client_chunk``), summing the chunks'
partials, so memory scales with the chunk and not with the number of clients in a round.

Messages between processes (:mod:`emtdamp.integrations.flower`) are flat named arrays,
``dict[str, np.ndarray]``, made by a method's :class:`MessageCodec`: the broadcast carries only the server
state a client cannot derive, the upload only what ``aggregate`` reads, optionally compressed
(``compress``: weight-sized arrays of active groups only and/or as float16 / bfloat16 deltas against the
broadcast). ``unpack(pack(x))`` is exact without compression.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from emtdamp.methods.base import hparam
from emtdamp.pytrees import path_keys

PyTree = Any
Flat = dict[str, np.ndarray]

COMPRESS = ("none", "active", "float16", "bfloat16", "active+float16", "active+bfloat16")
"""``compress`` settings of the upload: ``active`` drops the weight rows (and group entries) of hard-pruned
groups, ``float16`` / ``bfloat16`` send the weight-sized arrays as half-precision deltas against the broadcast."""


@dataclasses.dataclass(frozen=True)
class MessageCodec:
    """Flat named-array messages of a federated method (pure functions, host side, numpy out).

    ``pack_broadcast(server) -> Flat``: the server state a client cannot derive;
    ``unpack_broadcast(flat) -> server`` rebuilds the whole state (exactly: derived leaves are recomputed
    with the formulas ``aggregate`` used).
    ``pack_upload(broadcast_server, msg) -> Flat``: only the leaves ``aggregate`` reads, compressed per the
    method's ``compress`` setting; ``unpack_upload(broadcast_server, flat) -> msg`` gives a message pytree
    of ``client_update``'s structure (leaves ``aggregate`` does not read are filled from the server).
    ``roundtrip_upload(server, msg) -> msg``: jittable, vmappable ``unpack_upload(server, pack_upload(server,
    msg))`` restricted to what ``aggregate`` reads, so the vmapped simulation sees the same compression
    error as a real federation.
    """

    pack_broadcast: Callable[[PyTree], Flat]
    unpack_broadcast: Callable[[Flat], PyTree]
    pack_upload: Callable[[PyTree, PyTree], Flat]
    unpack_upload: Callable[[PyTree, Flat], PyTree]
    roundtrip_upload: Callable[[PyTree, PyTree], PyTree]


def flat_bytes(flat: Flat) -> int:
    """Bytes of a flat message's arrays (what goes over the wire, headers and names not counted)."""
    return int(sum(np.asarray(a).nbytes for a in flat.values()))


def named_leaves(tree: PyTree, prefix: str = "") -> Flat:
    """The leaves of ``tree`` as numpy arrays named by their key paths (``"params/0/kernel"``)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out[prefix + "/".join(str(k) for k in path_keys(path))] = np.asarray(leaf)
    return out


def from_named(like: PyTree, flat: Flat, prefix: str = "") -> PyTree:
    """Inverse of :func:`named_leaves`: a pytree shaped like ``like`` (a state or its ``eval_shape``)
    from the arrays ``flat`` holds under the same names; ValueError naming a missing or misshaped leaf."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    leaves = []
    for path, ref in paths:
        name = prefix + "/".join(str(k) for k in path_keys(path))
        if name not in flat:
            raise ValueError(f"message lacks array {name!r}; sender and receiver built different methods/networks")
        a = np.asarray(flat[name])
        if a.shape != tuple(ref.shape):
            raise ValueError(f"message array {name!r} has shape {a.shape}, expected {tuple(ref.shape)}")
        leaves.append(jnp.asarray(a, ref.dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def half_dtype(compress: str):
    """The wire dtype of weight-sized arrays under ``compress`` (None = full precision)."""
    if compress.endswith("bfloat16"):
        return jnp.bfloat16
    if compress.endswith("float16"):
        return jnp.float16
    return None


def encode_delta(x, ref, dtype) -> np.ndarray:
    """``x - ref`` rounded to ``dtype`` (float16, or bfloat16 sent as its raw ``uint16`` bits, which every
    wire format carries), the half-precision wire form of a weight-sized array."""
    d = np.asarray(jnp.asarray(np.asarray(x) - np.asarray(ref)).astype(dtype))
    return d.view(np.uint16) if dtype == jnp.bfloat16 else d


def decode_delta(d, ref, dtype) -> np.ndarray:
    """Inverse of :func:`encode_delta` (up to the rounding to ``dtype``), in ``ref``'s dtype."""
    d = np.asarray(d)
    if dtype == jnp.bfloat16:
        d = d.view(jnp.bfloat16)
    ref = np.asarray(ref)
    return np.asarray(jnp.asarray(d).astype(jnp.float32).astype(ref.dtype) + ref)


def roundtrip_delta(x: jax.Array, ref: jax.Array, dtype) -> jax.Array:
    """Jittable :func:`decode_delta` of :func:`encode_delta`: the same rounding, in ``x``'s dtype."""
    if dtype is None:
        return x
    return (x - ref).astype(dtype).astype(jnp.float32).astype(x.dtype) + ref


def encode_log_ratio(v, ref, dtype) -> np.ndarray:
    """A positive weight-sized array (a variance) as ``log(v / ref)`` rounded to ``dtype`` (relative error
    ``<= 2^-11 |log(v / ref)|`` for float16: no underflow for tiny variances, never a negative one)."""
    return encode_delta(jnp.log(jnp.asarray(v)), jnp.log(jnp.asarray(ref)), dtype)


def decode_log_ratio(d, ref, dtype) -> np.ndarray:
    """Inverse of :func:`encode_log_ratio`, in ``ref``'s dtype."""
    ref = np.asarray(ref)
    return np.asarray(jnp.exp(jnp.asarray(decode_delta(d, np.asarray(jnp.log(jnp.asarray(ref))), dtype))), ref.dtype)


def roundtrip_log_ratio(v: jax.Array, ref: jax.Array, dtype) -> jax.Array:
    """Jittable :func:`decode_log_ratio` of :func:`encode_log_ratio`."""
    if dtype is None:
        return v
    return jnp.exp(roundtrip_delta(jnp.log(v), jnp.log(ref), dtype))


@dataclasses.dataclass(frozen=True)
class FedAlgorithm:
    """A federated method bound to one model, data spec, hyperparameters and local batch size.

    ``init(key) -> server_state``;
    ``client_update(server_state, x (n_max, d), y (n_max, ...), mask (n_max,), key) -> msg`` (pure,
    vmappable over a leading client axis; padding rows, mask 0, change nothing);
    ``aggregate(server_state, msgs, weights (m,)) -> server_state`` with ``msgs`` stacked over the
    ``m`` selected clients and ``weights`` their data counts (0 for filler clients);
    ``predict(server_state, x) -> Predictive``; ``upload_bytes(server_state) -> int`` bytes one
    client sends per round; optional ``sparsity(server_state) -> dict``; optional ``codec``
    (:class:`MessageCodec`) for messages between processes, and ``broadcast_bytes(server_state) -> int``.

    Optional streaming aggregation (both or neither): ``reduce(server_state, msgs, weights (m,)) -> partial``,
    a pytree additive over clients — ``reduce`` of the union of two client sets equals the leafwise sum of
    their partials, and clients of weight 0 add nothing — and ``finish(server_state, partial) ->
    server_state``, with ``aggregate(s, msgs, w) == finish(s, reduce(s, msgs, w))`` (build ``aggregate``
    with :func:`streaming_aggregate` so there is one code path). Needed for ``client_chunk > 0``.
    The static configuration is closed over (fixed by :attr:`FedMethod.build`), so a client process
    that built the same algorithm runs ``client_update`` on a received server state without ``init``.
    """

    init: Callable
    client_update: Callable
    aggregate: Callable
    predict: Callable
    upload_bytes: Callable
    sparsity: Callable | None = None
    codec: MessageCodec | None = None
    reduce: Callable | None = None
    finish: Callable | None = None

    def broadcast_bytes(self, server: PyTree) -> int:
        """Bytes the server sends each selected client per round (the packed broadcast; the whole state
        in float32 when the method has no codec)."""
        if self.codec is not None:
            return flat_bytes(self.codec.pack_broadcast(server))
        return flat_bytes(named_leaves(server))


@dataclasses.dataclass(frozen=True)
class FedMethod:
    """A registered federated method: ``build(model, data_spec, hparams, batch_size) -> FedAlgorithm``
    (``batch_size`` = the clients' local minibatch size, ``train.batch_size``).
    The method's ``hparams_cls`` must inherit :class:`FedSettings`.
    """

    name: str
    hparams_cls: type
    build: Callable[..., FedAlgorithm]
    description: str = ""


@dataclasses.dataclass(frozen=True)
class FedSettings:
    """The federated hyperparameters every federated method's hparams class inherits."""

    n_clients: int = hparam(10, range=(1, 1_000_000), doc="number of clients")
    partition: str = hparam("iid", choices=("iid", "dirichlet", "shards"), doc="how data is split")
    alpha: float = hparam(0.5, range=(1e-6, 1e6), doc="Dirichlet concentration (partition=dirichlet)")
    client_fraction: float = hparam(1.0, range=(1e-6, 1.0), doc="share of clients selected per round")
    local_epochs: int = hparam(1, range=(1, 10_000), doc="local passes over each client's data per round")
    target: float = hparam(0.0, range=(0.0, 1e9), doc="accuracy (>=) or RMSE (<=) for rounds_to_target; 0 = none")
    compress: str = hparam("none", choices=COMPRESS,
                           doc="upload compression: active groups only and/or float16/bfloat16 weight deltas")
    client_chunk: int = hparam(0, range=(0, 1_000_000),
                               doc="clients per vmapped chunk of a round (lax.scan over chunks, streaming "
                                   "reduce/finish aggregation: memory scales with the chunk); 0 = all at once")


def local_batches(key: jax.Array, mask: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """One local epoch's minibatches for a padded client: indices and weights ``(n_b, B)``.

    Real rows come first in a random order drawn per row (``fold_in(key, row)``), so the order of a
    client's real rows does not depend on how much padding it carries; batches made only of
    padding have weight 0 everywhere and are skipped by the client update.
    """
    n_max = mask.shape[0]
    rows = jnp.arange(n_max)
    u = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i)))(rows)
    order = jnp.argsort(jnp.where(mask > 0, u, 2.0 + u))
    n_b = math.ceil(n_max / batch_size)
    pad = n_b * batch_size - n_max
    idx = jnp.concatenate([order, jnp.zeros((pad,), order.dtype)]).reshape(n_b, batch_size)
    w = jnp.concatenate([mask[order], jnp.zeros((pad,), mask.dtype)]).reshape(n_b, batch_size)
    return idx, w


def scan_local(step: Callable, state: PyTree, x, y, mask, key, batch_size: int, epochs: int):
    """Run ``step(state, x_b, y_b, w_b) -> state`` over ``epochs`` local epochs of a padded client;
    all-padding batches leave the state untouched (selected with ``jnp.where``, not skipped by
    Python control flow, so it vmaps). A minibatch never has more slots than the client has rows
    (``min(batch_size, n_max)``): a client smaller than the local batch runs its rows as one minibatch
    without weight-0 filler slots (the same update up to float rounding; at 10,000 clients of 6 rows and
    batch 100 the filler was most of the round's arithmetic)."""
    batch_size = min(batch_size, mask.shape[0])

    def one_epoch(st, ek):
        idx, w = local_batches(ek, mask, batch_size)

        def body(s, iw):
            i, wb = iw
            new = step(s, x[i], y[i], wb.astype(x.dtype))
            keep = wb.sum() > 0
            return jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), new, s), None

        st, _ = jax.lax.scan(body, st, (idx, w))
        return st, None

    state, _ = jax.lax.scan(one_epoch, state, jax.random.split(key, epochs))
    return state


def streaming_aggregate(reduce: Callable, finish: Callable) -> Callable:
    """``aggregate(server, msgs, weights) = finish(server, reduce(server, msgs, weights))``: the one-shot
    aggregate of a method with streaming aggregation (:class:`FedAlgorithm`)."""

    def aggregate(server: PyTree, msgs: PyTree, weights: jax.Array) -> PyTree:
        return finish(server, reduce(server, msgs, weights))

    return aggregate


def weighted_sum(tree: PyTree, weights: jax.Array) -> tuple[PyTree, jax.Array]:
    """``(sum_k w_k a_k per leaf, sum_k w_k)`` over the leading (client) axis, ``weights (m,)``: the additive
    partial of :func:`weighted_mean` (leaves lose the client axis; the weight sum is a scalar)."""
    return (jax.tree_util.tree_map(lambda a: jnp.tensordot(weights.astype(a.dtype), a, axes=1), tree),
            weights.sum())


def finish_weighted_mean(partial: tuple[PyTree, jax.Array]) -> PyTree:
    """Every leaf of a :func:`weighted_sum` partial divided by its weight sum (floored at 1e-30)."""
    total, w = partial
    return jax.tree_util.tree_map(lambda a: a / jnp.maximum(w, 1e-30).astype(a.dtype), total)


def weighted_mean(tree: PyTree, weights: jax.Array) -> PyTree:
    """Mean over the leading (client) axis of every leaf, weighted by ``weights (m,)``
    (:func:`finish_weighted_mean` of :func:`weighted_sum`)."""
    return finish_weighted_mean(weighted_sum(tree, weights))
