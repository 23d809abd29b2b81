"""Checkpoints of a run's state: atomic ``.npz`` files of the state's leaves, the previous one kept, and a
restore that falls back to it when the newest is unreadable.

A checkpoint stores the leaves of any state pytree (typed PRNG keys as their raw key data) plus the
number of epochs the state has completed. :func:`save_checkpoint` first renames the existing file to
``<name>.prev.npz``, then writes the new one through a temporary file and ``os.replace``, so a crash at any
moment leaves at least one complete checkpoint. :func:`restore` reads the newest readable one and says
(one line on stderr) when it had to fall back.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import jax
import numpy as np

UNREADABLE = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError)
"""What reading a truncated or corrupt ``.npz`` raises (numpy reports some of these as ValueError)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the state (one-line message with the fix)."""


def atomic_write(path: Path, write) -> None:
    """Write via a temporary file in the same folder + ``os.replace``: never a half-written file.
    ``write(f)`` receives the open binary file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def previous_path(path: Path) -> Path:
    """Where :func:`save_checkpoint` keeps the checkpoint it replaced: ``checkpoint.npz -> checkpoint.prev.npz``."""
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


def _storable(x):
    """Typed PRNG keys are stored as their raw key data (restored by :func:`load_checkpoint`)."""
    if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(x))
    return np.asarray(x)


def save_checkpoint(path: Path, state, epoch: int | None = None, keep_previous: bool = True) -> None:
    """Save the leaves of ``state`` (any pytree) to ``path`` (.npz), atomically.

    ``epoch`` (the epochs the state has completed) is stored in the same file, so a resumed run never pairs
    a state with another epoch's count. With ``keep_previous`` the file it replaces is kept as
    :func:`previous_path` (the fallback of :func:`restore`).
    """
    path = Path(path)
    leaves = jax.tree_util.tree_leaves(state)
    arrays = {f"leaf_{i:05d}": _storable(x) for i, x in enumerate(leaves)}
    if epoch is not None:
        arrays["epoch"] = np.asarray(epoch, np.int64)
    if keep_previous and path.exists():
        os.replace(path, previous_path(path))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _unreadable(path: Path, e: Exception) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e)[:80]}; a truncated "
                           "or corrupt file); delete it to start over, or restore a copy")


def _read(path: Path) -> list[np.ndarray]:
    """All leaves of a checkpoint; CheckpointError (one line) if it is unreadable."""
    try:
        with np.load(path) as f:
            return [np.asarray(f[k]) for k in sorted(f.files) if k.startswith("leaf_")]
    except UNREADABLE as e:
        raise _unreadable(path, e) from None


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch count stored in a checkpoint by :func:`save_checkpoint`, or None (none stored). Reads the
    zip directory and the epoch entry only, not the state; CheckpointError if the file cannot be opened."""
    try:
        with np.load(path) as f:
            return int(f["epoch"]) if "epoch" in f.files else None
    except UNREADABLE as e:
        raise _unreadable(path, e) from None


def load_checkpoint(path: Path, like):
    """Restore a state saved by :func:`save_checkpoint` into the structure of ``like`` (a state or the
    ``jax.eval_shape`` of one). Raises :class:`CheckpointError` for an unreadable file or one that does
    not fit ``like``."""
    leaves, treedef = jax.tree_util.tree_flatten(like)
    stored = _read(Path(path))
    if len(stored) != len(leaves):
        raise CheckpointError(f"checkpoint {path} has {len(stored)} arrays but the method's state has {len(leaves)}; "
                              "was it written by a different method or network?")
    out = []
    for i, (a, b) in enumerate(zip(stored, leaves, strict=True)):
        typed_key = hasattr(b, "dtype") and jax.dtypes.issubdtype(b.dtype, jax.dtypes.prng_key)
        want = jax.eval_shape(jax.random.key_data, b).shape if typed_key else np.shape(b)
        if np.shape(a) != want:
            raise CheckpointError(f"checkpoint {path}: array {i} has shape {np.shape(a)}, the state expects {want}")
        out.append(jax.random.wrap_key_data(a, impl=jax.random.key_impl(b)) if typed_key else jax.numpy.asarray(a))
    return jax.tree_util.tree_unflatten(treedef, out)


def checkpointed_epoch(path: Path, progress: Path | None = None) -> int:
    """Epochs completed by the newest readable checkpoint at ``path`` or its previous copy (the count stored
    with it, else ``progress``'s JSON ``{"epoch": n}`` for older checkpoints); 0 without one."""
    for p in (Path(path), previous_path(path)):
        if not p.exists():
            continue
        try:
            stored = checkpoint_epoch(p)
        except CheckpointError:
            continue
        if stored is not None:
            return stored
        if progress is not None and Path(progress).exists():
            return int(json.loads(Path(progress).read_text())["epoch"])
        return 0
    return 0


def restore(path: Path, like, progress: Path | None = None):
    """``(state, epoch)`` from the newest readable checkpoint at ``path``, else from its previous copy (saying
    so on stderr), shaped like ``like``. Raises CheckpointError when neither can be read."""
    path = Path(path)
    try:
        return load_checkpoint(path, like), checkpointed_epoch(path, progress)
    except CheckpointError as e:
        prev = previous_path(path)
        if not prev.exists():
            raise
        state = load_checkpoint(prev, like)
        epoch = checkpoint_epoch(prev) or 0
        print(f"warning: {e.args[0].split(';')[0]}; resuming from the previous checkpoint {prev} (epoch {epoch})",
              file=sys.stderr)
        return state, epoch
