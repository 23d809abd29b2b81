"""The federated training loop: clients as a leading axis, one vmapped (and, with several devices, sharded)
client update per round, server aggregation as a pure function (the method contract is
:mod:`emtdamp.methods.federated`).

A federated method is a :class:`FedMethod`, built into a :class:`FedAlgorithm`: ``init`` gives the server
state; ``client_update`` maps
(server state, one client's padded data, key) to the message that client uploads; ``aggregate``
combines the stacked messages of the selected clients into the next server state. The round runner
(:func:`make_round_fn`) selects clients, runs ``vmap(client_update)`` over them — inside
``shard_map`` over a 1-D device mesh when several devices are present — and aggregates, all in one
jitted call. There is no Python loop over clients in the hot path. With ``client_chunk > 0`` the selected
clients run as a ``lax.scan`` over chunks of at most that many, each chunk vmapped and folded into the
method's additive ``reduce`` partial, then ``finish``: peak memory scales with the chunk, not with the
number of clients per round.
"""

from __future__ import annotations

import dataclasses
import functools
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


def select_clients(key: jax.Array, n_clients: int, n_selected: int, m_pad: int | None = None
                   ) -> tuple[jax.Array, jax.Array]:
    """The clients of one round and their local keys, as every round runner draws them: ``key`` (the
    round's key, ``fold_in(k_loop, round)``) splits into a selection key and a local key; ``n_selected``
    distinct clients are drawn (all of them, in order, when ``n_selected == n_clients``), padded to
    ``m_pad`` slots by repeating the first ones, and slot ``j`` gets ``split(k_local, m_pad)[j]``.

    Returns ``sel (m_pad,)`` client indices and ``keys (m_pad, 2)``.
    """
    m_pad = n_selected if m_pad is None else m_pad
    k_sel, k_loc = jax.random.split(key)
    if n_selected < n_clients:
        sel = jax.random.choice(k_sel, n_clients, (n_selected,), replace=False)
    else:
        sel = jnp.arange(n_clients)
    sel = jnp.concatenate([sel, sel[: m_pad - n_selected]])
    return sel, jax.random.split(k_loc, m_pad)


def client_updates(fm: FedAlgorithm) -> Callable:
    """``updates(server, xs, ys, ms, keys) -> msgs``: ``vmap(client_update)`` over a leading client axis,
    followed by the method's upload compression round trip (``compress``) so the simulated server reads
    what a real one would."""
    codec = fm.codec

    def one(server, x, y, m, k):
        msg = fm.client_update(server, x, y, m, k)
        return msg if codec is None else codec.roundtrip_upload(server, msg)

    return jax.vmap(one, in_axes=(None, 0, 0, 0, 0))


def chunk_layout(n_selected: int, client_chunk: int, n_dev: int = 1) -> tuple[int, int]:
    """``(n_chunks, chunk)`` of a chunked round: ``client_chunk`` is first rounded up to a multiple of the
    device count ``n_dev`` (each chunk is split evenly over the devices), then the ``n_chunks =
    ceil(n_selected / chunk)`` chunks are balanced: ``chunk = n_dev * ceil(ceil(n_selected / n_chunks) / n_dev)``
    (never above the rounded ``client_chunk``), so the weight-0 filler clients number fewer than
    ``n_chunks * n_dev``. ``client_chunk = 0`` (or one chunk holding all) gives ``(1, n_dev *
    ceil(n_selected / n_dev))``, the unchunked round."""
    pad_all = n_dev * math.ceil(n_selected / n_dev)
    if client_chunk <= 0:
        return 1, pad_all
    chunk = n_dev * math.ceil(client_chunk / n_dev)
    n_chunks = math.ceil(n_selected / chunk)
    if n_chunks == 1:
        return 1, pad_all
    return n_chunks, n_dev * math.ceil(math.ceil(n_selected / n_chunks) / n_dev)


def make_round_fn(fm: FedAlgorithm, n_selected: int, devices: list | None = None, client_chunk: int = 0,
                  name: str = "this method") -> Callable:
    """``round(server, key, X, Y, M, counts) -> (server, sel)``: select ``n_selected`` clients, update them
    in parallel (vmap; shard_map over ``devices`` when more than one), aggregate.

    ``X (K, n_max, d)``, ``Y (K, n_max, ...)``, ``M (K, n_max)``, ``counts (K,)`` hold all clients;
    ``sel (n_selected,)`` are the clients drawn. With D devices the selected set is padded to a multiple of
    D by repeating clients with aggregation weight 0.

    ``client_chunk > 0`` (static) with fewer than ``n_selected`` clients per chunk: the clients run as a
    ``lax.scan`` over :func:`chunk_layout`'s ``n_chunks`` chunks (the chunk is rounded up to a multiple of
    D and balanced; filler clients of weight 0 complete the last slots), each chunk
    ``vmap(client_update)`` (inside ``shard_map``, one ``psum`` of the partial per chunk, when D > 1) and
    folded into the sum of the method's ``reduce`` partials; then ``finish``. Peak memory scales with the
    chunk. Slot ``j`` gets the same client and key as in the unchunked round, so the result equals it up to
    float summation order. Needs ``fm.reduce`` and ``fm.finish`` (ValueError naming ``name`` otherwise).
    """
    devices = list(devices) if devices is not None else jax.devices()
    n_dev = len(devices)
    if client_chunk > 0 and (fm.reduce is None or fm.finish is None):
        raise ValueError(f"{name}: client_chunk={client_chunk} needs streaming aggregation (FedAlgorithm.reduce "
                         f"and .finish), which this method lacks; set client_chunk=0 or give it reduce/finish")
    n_chunks, chunk = chunk_layout(n_selected, client_chunk, n_dev)
    updates = client_updates(fm)
    mesh = Mesh(np.array(devices), ("clients",)) if n_dev > 1 else None
    c = PartitionSpec("clients")

    if n_chunks == 1:
        m_pad = chunk
        if n_dev > 1:
            updates = jax.shard_map(updates, mesh=mesh, in_specs=(PartitionSpec(), c, c, c, c), out_specs=c,
                                    check_vma=False)

        def round_fn(server, key, X, Y, M, counts):
            sel, keys = select_clients(key, X.shape[0], n_selected, m_pad)
            weights = counts[sel].astype(X.dtype) * (jnp.arange(m_pad) < n_selected)
            msgs = updates(server, X[sel], Y[sel], M[sel], keys)
            return fm.aggregate(server, msgs, weights), sel[:n_selected]

        return jax.jit(round_fn)

    m_tot = n_chunks * chunk

    def partial_of(server, x, y, m, k, w):
        return fm.reduce(server, updates(server, x, y, m, k), w)

    if n_dev > 1:
        def summed(server, x, y, m, k, w):
            return jax.lax.psum(partial_of(server, x, y, m, k, w), "clients")

        chunk_partial = jax.shard_map(summed, mesh=mesh, in_specs=(PartitionSpec(), c, c, c, c, c),
                                      out_specs=PartitionSpec(), check_vma=False)
    else:
        chunk_partial = partial_of

    def chunked_round_fn(server, key, X, Y, M, counts):
        sel, keys = select_clients(key, X.shape[0], n_selected)
        slot = jnp.arange(m_tot) % n_selected                  # slot j < n_selected keeps client and key j
        sel_c = sel[slot].reshape(n_chunks, chunk)
        keys_c = keys[slot].reshape(n_chunks, chunk, *keys.shape[1:])
        w_c = (counts[sel[slot]].astype(X.dtype) * (jnp.arange(m_tot) < n_selected)).reshape(n_chunks, chunk)

        def body(acc, xs):
            s, k, w = xs
            part = chunk_partial(server, X[s], Y[s], M[s], k, w)
            return jax.tree_util.tree_map(jnp.add, acc, part), None

        per_chunk = [jax.ShapeDtypeStruct((chunk, *a.shape[1:]), a.dtype) for a in (X, Y, M)]
        shapes = jax.eval_shape(chunk_partial, server, *per_chunk, keys_c[0], w_c[0])
        zero = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
        total, _ = jax.lax.scan(body, zero, (sel_c, keys_c, w_c))
        return fm.finish(server, total), sel

    return jax.jit(chunked_round_fn)


@functools.lru_cache(maxsize=16)
def jitted_client_step(fm: FedAlgorithm) -> tuple[Callable, Callable]:
    """``(client_update, aggregate)`` of ``fm`` jitted once per built method (cached), for runners that
    call clients one at a time: the Python-loop reference and the Flower ClientApp / ServerApp. The client
    step includes the upload compression round trip, as in :func:`client_updates`."""
    codec = fm.codec

    def one(server, x, y, m, k):
        msg = fm.client_update(server, x, y, m, k)
        return msg if codec is None else codec.roundtrip_upload(server, msg)

    return jax.jit(one), jax.jit(fm.aggregate)


def python_loop_round(fm: FedAlgorithm, server, key, X, Y, M, counts, sel: np.ndarray):
    """Reference / benchmark: the same round as :func:`make_round_fn` with a Python loop over clients
    (the client step and the aggregate are jitted once per method, :func:`jitted_client_step`)."""
    upd, agg = jitted_client_step(fm)
    k_loc = jax.random.split(jax.random.split(key)[1], len(sel))
    msgs = [upd(server, X[i], Y[i], M[i], k_loc[j]) for j, i in enumerate(sel)]
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *msgs)
    return agg(server, stacked, counts[np.asarray(sel)].astype(X.dtype))


@dataclasses.dataclass
class FedResult:
    state: PyTree
    history: list
    test: dict
    sparsity: dict
    time: dict
    rounds_to_target: int | None
    bytes_per_round: int                     # uploaded by all selected clients in the last round
    algorithm: FedAlgorithm | None = None   # the built method the server state belongs to
    bytes_down_per_round: int = 0            # broadcast to all selected clients in the last round


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
    round_fn = make_round_fn(algo, n_sel, devices, client_chunk=hp.client_chunk, name=fm.name)
    t0 = time.perf_counter()
    compiled = round_fn.lower(server, k_loop, X, Y, M, counts).compile()
    compile_s = time.perf_counter() - t0
    compile_eval_s = warm_evaluation(algo, server, data)
    upload = int(algo.upload_bytes(server))
    down = int(algo.broadcast_bytes(server))
    history, test, hit, times = [], {}, None, []
    bar = tqdm(range(1, rounds + 1), desc=fm.name, unit="round", disable=not progress, leave=False, mininterval=0.5)
    t_start = time.perf_counter()
    for r in bar:
        tr = time.perf_counter()
        server, _ = compiled(server, jax.random.fold_in(k_loop, r), X, Y, M, counts)
        jax.block_until_ready(server)
        times.append(time.perf_counter() - tr)
        test = evaluate(algo, server, data)
        rec = {"round": r, "wall_s": time.perf_counter() - t_start, "test": test,
               "sparsity": default_sparsity(algo, server), "bytes_per_client": upload,
               "bytes_up": upload * n_sel, "bytes_down": down * n_sel}
        # what the next round's clients will send and receive (the server state after this round)
        upload, down = int(algo.upload_bytes(server)), int(algo.broadcast_bytes(server))
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
                     rounds_to_target=hit, bytes_per_round=history[-1]["bytes_up"] if history else upload * n_sel,
                     algorithm=algo,
                     bytes_down_per_round=history[-1]["bytes_down"] if history else down * n_sel)
