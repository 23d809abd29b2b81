"""The federated training loop: clients as a leading axis, one vmapped (and, with several devices, sharded)
client update per round, server aggregation as a pure function (the method contract is
:mod:`emtdamp.methods.federated`).

A federated method is a :class:`FedMethod`, built into a :class:`FedAlgorithm`: ``init`` gives the server
state; ``client_update`` maps
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
from emtdamp.loops.centralised import default_sparsity, evaluate, warm_evaluation
from emtdamp.methods.base import ModelSpec
from emtdamp.methods.federated import FedAlgorithm, FedMethod

PyTree = Any


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


def make_round_fn(fm: FedAlgorithm, n_selected: int, devices: list | None = None) -> Callable:
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


def python_loop_round(fm: FedAlgorithm, server, key, X, Y, M, counts, sel: np.ndarray):
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
    algorithm: FedAlgorithm | None = None   # the built method the server state belongs to


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
    algo = fm.build(model, data.spec, hp, batch_size)
    server = algo.init(k_init)
    round_fn = make_round_fn(algo, n_sel, devices)
    t0 = time.perf_counter()
    compiled = round_fn.lower(server, k_loop, X, Y, M, counts).compile()
    compile_s = time.perf_counter() - t0
    compile_eval_s = warm_evaluation(algo, server, data)
    upload = int(algo.upload_bytes(server))
    history, test, hit, times = [], {}, None, []
    bar = tqdm(range(1, rounds + 1), desc=fm.name, unit="round", disable=not progress, leave=False, mininterval=0.5)
    t_start = time.perf_counter()
    for r in bar:
        tr = time.perf_counter()
        server, _ = compiled(server, jax.random.fold_in(k_loop, r), X, Y, M, counts)
        jax.block_until_ready(server)
        times.append(time.perf_counter() - tr)
        test = evaluate(algo, server, data)
        upload = int(algo.upload_bytes(server))
        rec = {"round": r, "wall_s": time.perf_counter() - t_start, "test": test,
               "sparsity": default_sparsity(algo, server), "bytes_per_client": upload}
        if hit is None and reached(data.spec.task, test, hp.target):
            hit = r
        history.append(rec)
        if on_round is not None:
            on_round(rec)
        bar.set_postfix({k: f"{v:.4g}" for k, v in test.items() if k in ("rmse", "accuracy")}, refresh=False)
    return FedResult(state=server, history=history, test=test, sparsity=default_sparsity(algo, server),
                     time={"total_s": time.perf_counter() - t0, "epochs_s": float(np.sum(times)),
                           "per_round_s": float(np.median(times)), "compile_s": compile_s,
                           "compile_eval_s": compile_eval_s, "per_epoch_s": float(np.median(times))},
                     rounds_to_target=hit, bytes_per_round=upload * n_sel, algorithm=algo)
