"""The contract of a federated method, and the helpers method authors build client updates from.

A federated method is a :class:`FedMethod`; its ``build`` gives a :class:`FedAlgorithm`: ``init`` gives the
server state; ``client_update`` maps
(server state, one client's padded data, key) to the message that client uploads; ``aggregate``
combines the stacked messages of the selected clients into the next server state. The round runner
(:func:`emtdamp.loops.federated.make_round_fn`) selects clients, runs ``vmap(client_update)`` over them and
aggregates, in one jitted call. Register one with :func:`emtdamp.methods.registry.register_fed`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from emtdamp.methods.base import hparam

PyTree = Any


@dataclasses.dataclass(frozen=True)
class FedAlgorithm:
    """A federated method bound to one model, data spec, hyperparameters and local batch size.

    ``init(key) -> server_state``;
    ``client_update(server_state, x (n_max, d), y (n_max, ...), mask (n_max,), key) -> msg`` (pure,
    vmappable over a leading client axis; padding rows, mask 0, change nothing);
    ``aggregate(server_state, msgs, weights (m,)) -> server_state`` with ``msgs`` stacked over the
    ``m`` selected clients and ``weights`` their data counts (0 for filler clients);
    ``predict(server_state, x) -> Predictive``; ``upload_bytes(server_state) -> int`` bytes one
    client sends per round; optional ``sparsity(server_state) -> dict``.
    The static configuration is closed over (fixed by :attr:`FedMethod.build`), so a client process
    that built the same algorithm runs ``client_update`` on a received server state without ``init``.
    """

    init: Callable
    client_update: Callable
    aggregate: Callable
    predict: Callable
    upload_bytes: Callable
    sparsity: Callable | None = None


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
    Python control flow, so it vmaps)."""

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


def weighted_mean(tree: PyTree, weights: jax.Array) -> PyTree:
    """Mean over the leading (client) axis of every leaf, weighted by ``weights (m,)``."""
    w = weights / jnp.maximum(weights.sum(), 1e-30)
    return jax.tree_util.tree_map(lambda a: jnp.tensordot(w.astype(a.dtype), a, axes=1), tree)
