"""Names of the leaves of a params pytree: jax key paths as plain tuples, and the one rule for what a
weight layer is (a leaf named ``kernel``: flax ``Dense`` / ``Conv`` weights and emtdamp's MLP kernels).

Every part of emtdamp that picks weight layers out of a params tree (group priors, SSGL layers,
pruning, weight decay, sparsity counts) uses :func:`is_kernel`, so they agree on any user flax module.
"""

from __future__ import annotations

from typing import Any


def path_keys(path: tuple) -> tuple:
    """A jax key path (``DictKey`` / ``SequenceKey`` / ``GetAttrKey`` / ``FlattenedIndexKey`` entries)
    as a tuple of plain keys, e.g. ``(DictKey('Dense_0'), DictKey('kernel')) -> ('Dense_0', 'kernel')``."""
    return tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", None))) for k in path)


def leaf_name(path: tuple) -> Any:
    """The last key of a jax key path (``'kernel'``, ``'bias'``, a list index ...), None for the root."""
    return path_keys(path[-1:])[0] if path else None


def is_kernel(path: tuple, leaf: Any = None) -> bool:
    """True for a leaf named ``kernel`` (``leaf`` is accepted, and ignored, so this is a
    ``select(path, leaf)`` filter)."""
    return leaf_name(path) == "kernel"
