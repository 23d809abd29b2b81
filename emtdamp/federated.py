"""Federated learning: clients as a leading axis, one vmapped (and, with several devices, sharded)
client update per round, server aggregation as a pure function.

A federated method is a :class:`FedMethod`: ``init`` gives the server state; ``client_update`` maps
(server state, one client's padded data, key) to the message that client uploads; ``aggregate``
combines the stacked messages of the selected clients into the next server state. The round runner
(:func:`make_round_fn`) selects clients, runs ``vmap(client_update)`` over them — inside
``shard_map`` over a 1-D device mesh when several devices are present — and aggregates, all in one
jitted call. There is no Python loop over clients in the hot path.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from emtdamp.data.base import Dataset
from emtdamp.data.partition import PARTITIONERS, ClientData
from emtdamp.methods.base import ModelSpec, hparam
from emtdamp.train import default_sparsity, evaluate

PyTree = Any


@dataclasses.dataclass(frozen=True)
class FedMethod:
    """A federated method as pure functions.

    ``init(key, model, data_spec, hparams, batch_size) -> server_state`` (``batch_size`` = the
    clients' local minibatch size, ``train.batch_size``);
    ``client_update(server_state, x (n_max, d), y (n_max, ...), mask (n_max,), key) -> msg`` (pure,
    vmappable over a leading client axis; padding rows, mask 0, change nothing);
    ``aggregate(server_state, msgs, weights (m,)) -> server_state`` with ``msgs`` stacked over the
    ``m`` selected clients and ``weights`` their data counts (0 for filler clients);
    ``predict(server_state, x) -> Predictive``; ``upload_bytes(server_state) -> int`` bytes one
    client sends per round; optional ``sparsity(server_state) -> dict``.
    The method's ``hparams_cls`` must inherit :class:`FedSettings`.
    """

    name: str
    hparams_cls: type
    init: Callable
    client_update: Callable
    aggregate: Callable
    predict: Callable
    upload_bytes: Callable
    sparsity: Callable | None = None
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


_REGISTRY: dict[str, Callable[[], FedMethod]] = {}


def register_fed(name: str):
    def deco(factory):
        _REGISTRY[name] = factory
        return factory

    return deco


def get_fed_method(name: str) -> FedMethod | None:
    """The federated method called ``name``, or None if it is not a federated method."""
    from emtdamp.methods import load_all  # method modules register their federated variants too

    load_all()
    return _REGISTRY[name]() if name in _REGISTRY else None


def fed_method_names() -> list[str]:
    from emtdamp.methods import load_all

    load_all()
    return sorted(_REGISTRY)


def partition(data: Dataset, hp, seed: int) -> ClientData:
    """Split ``data``'s training set over ``hp.n_clients`` clients with ``hp.partition``."""
    fn = PARTITIONERS.get(hp.partition)
    if fn is None:
        raise ValueError(f"unknown partition {hp.partition!r}; choose one of {sorted(PARTITIONERS)}")
    if hp.partition == "dirichlet":
        if data.spec.task != "classification":
            raise ValueError("partition=dirichlet needs class labels; use partition=iid or shards for regression")
        return fn(data.x_train, data.y_train, hp.n_clients, alpha=hp.alpha, seed=seed)
    return fn(data.x_train, data.y_train, hp.n_clients, seed=seed)


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


def make_round_fn(fm: FedMethod, n_selected: int, devices: list | None = None) -> Callable:
    """``round(server, key, X, Y, M, counts) -> server``: select ``n_selected`` clients, update them
    in parallel (vmap; shard_map over ``devices`` when more than one), aggregate.

    ``X (K, n_max, d)``, ``Y (K, n_max, ...)``, ``M (K, n_max)``, ``counts (K,)`` hold all clients.
    With D devices the selected set is padded to a multiple of D by repeating clients with
    aggregation weight 0.
    """
    devices = list(devices) if devices is not None else jax.devices()
    n_dev = len(devices)
    m_pad = n_dev * math.ceil(n_selected / n_dev)

    def updates(server, xs, ys, ms, keys):
        return jax.vmap(fm.client_update, in_axes=(None, 0, 0, 0, 0))(server, xs, ys, ms, keys)

    if n_dev > 1:
        mesh = Mesh(np.array(devices), ("clients",))
        c = PartitionSpec("clients")
        updates = jax.shard_map(updates, mesh=mesh, in_specs=(PartitionSpec(), c, c, c, c), out_specs=c,
                                check_vma=False)

    def round_fn(server, key, X, Y, M, counts):
        k_sel, k_loc = jax.random.split(key)
        K = X.shape[0]
        sel = jax.random.choice(k_sel, K, (n_selected,), replace=False) if n_selected < K else jnp.arange(K)
        sel = jnp.concatenate([sel, sel[: m_pad - n_selected]])
        weights = counts[sel].astype(X.dtype) * (jnp.arange(m_pad) < n_selected)
        msgs = updates(server, X[sel], Y[sel], M[sel], jax.random.split(k_loc, m_pad))
        return fm.aggregate(server, msgs, weights), sel[:n_selected]

    return jax.jit(round_fn)


def python_loop_round(fm: FedMethod, server, key, X, Y, M, counts, sel: np.ndarray):
    """Reference / benchmark: the same round as :func:`make_round_fn` with a Python loop over clients."""
    upd = jax.jit(fm.client_update)
    k_loc = jax.random.split(jax.random.split(key)[1], len(sel))
    msgs = [upd(server, X[i], Y[i], M[i], k_loc[j]) for j, i in enumerate(sel)]
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *msgs)
    return fm.aggregate(server, stacked, counts[np.asarray(sel)].astype(X.dtype))


@dataclasses.dataclass
class FedResult:
    state: PyTree
    history: list
    test: dict
    sparsity: dict
    time: dict
    rounds_to_target: int | None
    bytes_per_round: int


def reached(task: str, test: dict, target: float) -> bool:
    if target <= 0:
        return False
    return test["accuracy"] >= target if task == "classification" else test["rmse"] <= target


def train_federated(fm: FedMethod, hp, model: ModelSpec, data: Dataset, *, rounds: int, batch_size: int,
                    seed: int = 0,
                    dtype: str = "float32", progress: bool = True, devices: list | None = None,
                    on_round: Callable[[dict], None] | None = None) -> FedResult:
    """Run ``rounds`` federated rounds of ``fm`` on ``data`` split over ``hp.n_clients`` clients."""
    from tqdm.auto import tqdm

    if not 0 < hp.client_fraction <= 1:
        raise ValueError(f"client_fraction must be in (0, 1], got {hp.client_fraction}")
    cd = partition(data, hp, seed)
    npdt = np.float64 if dtype == "float64" else np.float32
    X = jnp.asarray(cd.x.astype(npdt))
    Y = jnp.asarray(cd.y.astype(npdt) if data.spec.task == "regression" else cd.y)
    M = jnp.asarray(cd.mask.astype(npdt))
    counts = jnp.asarray(cd.counts)
    n_sel = max(1, round(hp.client_fraction * hp.n_clients))
    key = jax.random.PRNGKey(seed)
    k_init, k_loop = jax.random.split(key)
    server = fm.init(k_init, model, data.spec, hp, batch_size)
    round_fn = make_round_fn(fm, n_sel, devices)
    t0 = time.perf_counter()
    compiled = round_fn.lower(server, k_loop, X, Y, M, counts).compile()
    compile_s = time.perf_counter() - t0
    upload = int(fm.upload_bytes(server))
    history, test, hit, times = [], {}, None, []
    bar = tqdm(range(1, rounds + 1), desc=fm.name, unit="round", disable=not progress, leave=False, mininterval=0.5)
    t_start = time.perf_counter()
    for r in bar:
        tr = time.perf_counter()
        server, _ = compiled(server, jax.random.fold_in(k_loop, r), X, Y, M, counts)
        jax.block_until_ready(server)
        times.append(time.perf_counter() - tr)
        test = evaluate(fm, server, data)
        upload = int(fm.upload_bytes(server))
        rec = {"round": r, "wall_s": time.perf_counter() - t_start, "test": test,
               "sparsity": default_sparsity(fm, server), "bytes_per_client": upload}
        if hit is None and reached(data.spec.task, test, hp.target):
            hit = r
        history.append(rec)
        if on_round is not None:
            on_round(rec)
        bar.set_postfix({k: f"{v:.4g}" for k, v in test.items() if k in ("rmse", "accuracy")}, refresh=False)
    total = time.perf_counter() - t_start
    return FedResult(state=server, history=history, test=test, sparsity=default_sparsity(fm, server),
                     time={"total_s": total, "per_round_s": float(np.median(times)), "compile_s": compile_s,
                           "per_epoch_s": float(np.median(times))},
                     rounds_to_target=hit, bytes_per_round=upload * n_sel)


def weighted_mean(tree: PyTree, weights: jax.Array) -> PyTree:
    """Mean over the leading (client) axis of every leaf, weighted by ``weights (m,)``."""
    w = weights / jnp.maximum(weights.sum(), 1e-30)
    return jax.tree_util.tree_map(lambda a: jnp.tensordot(w.astype(a.dtype), a, axes=1), tree)
