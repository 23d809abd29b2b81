"""Federated partitioners: split a training set over clients, padded to one shape for ``vmap``.

Each partitioner returns :class:`ClientData` with a leading client axis: arrays of shape
``(K, n_max, ...)``, a ``mask (K, n_max)`` (1 = real row, 0 = padding) and ``counts (K,)``. Every
training row lands on exactly one client (nothing is dropped).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class ClientData(NamedTuple):
    """Per-client training data padded to ``n_max`` rows. ``x (K, n_max, d)``, ``y (K, n_max, ...)``,
    ``mask (K, n_max)`` float32 (1 real / 0 padding), ``counts (K,)`` int, ``index (K, n_max)`` the
    training-row index of each entry (-1 for padding)."""

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray
    counts: np.ndarray
    index: np.ndarray


def _pack(x: np.ndarray, y: np.ndarray, parts: list[np.ndarray]) -> ClientData:
    k = len(parts)
    n_max = max(1, max(len(p) for p in parts))
    xs = np.zeros((k, n_max, *x.shape[1:]), x.dtype)
    ys = np.zeros((k, n_max, *y.shape[1:]), y.dtype)
    mask = np.zeros((k, n_max), np.float32)
    index = np.full((k, n_max), -1, np.int64)
    for i, p in enumerate(parts):
        xs[i, : len(p)], ys[i, : len(p)], mask[i, : len(p)], index[i, : len(p)] = x[p], y[p], 1.0, p
    return ClientData(xs, ys, mask, np.array([len(p) for p in parts]), index)


def _check(n: int, n_clients: int) -> None:
    if n_clients < 1:
        raise ValueError(f"n_clients must be >= 1, got {n_clients}")
    if n_clients > n:
        raise ValueError(f"cannot split {n} rows over {n_clients} clients")


def iid(x: np.ndarray, y: np.ndarray, n_clients: int, seed: int = 0) -> ClientData:
    """Random near-equal split (sizes differ by at most one)."""
    _check(len(x), n_clients)
    perm = np.random.default_rng(seed).permutation(len(x))
    return _pack(x, y, [np.sort(p) for p in np.array_split(perm, n_clients)])


def dirichlet(x: np.ndarray, y: np.ndarray, n_clients: int, alpha: float = 0.5, seed: int = 0,
              min_size: int = 1) -> ClientData:
    """Label skew: each class's rows are spread over clients with proportions ~ Dirichlet(alpha).

    Redraws (up to 100 times) until every client holds at least ``min_size`` rows. Needs integer
    labels ``y (n,)``.
    """
    _check(len(x), n_clients)
    if alpha <= 0:
        raise ValueError(f"Dirichlet alpha must be > 0, got {alpha}")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError("dirichlet partitioning needs integer class labels y of shape (n,); "
                         "use iid or shards for regression")
    rng = np.random.default_rng(seed)
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(n_clients)]
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            props = rng.dirichlet(alpha * np.ones(n_clients))
            cuts = (np.cumsum(props) * len(idx)).astype(int)[:-1]
            for i, chunk in enumerate(np.split(idx, cuts)):
                parts[i].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return _pack(x, y, [np.sort(np.array(p, np.int64)) for p in parts])
    raise ValueError(f"could not draw a Dirichlet({alpha}) split giving every one of {n_clients} clients "
                     f"at least {min_size} rows; raise alpha or lower n_clients")


def shards(x: np.ndarray, y: np.ndarray, n_clients: int, shards_per_client: int = 2, seed: int = 0) -> ClientData:
    """McMahan et al.'s pathological split: sort by label, cut into equal shards, deal
    ``shards_per_client`` random shards to each client."""
    _check(len(x), n_clients * shards_per_client)
    order = np.argsort(y.reshape(len(y), -1)[:, 0], kind="stable")
    pieces = np.array_split(order, n_clients * shards_per_client)
    deal = np.random.default_rng(seed).permutation(len(pieces))
    parts = [np.sort(np.concatenate([pieces[j] for j in deal[i::n_clients]])) for i in range(n_clients)]
    return _pack(x, y, parts)


PARTITIONERS = {"iid": iid, "dirichlet": dirichlet, "shards": shards}
