"""Parameter groups for the spike-and-slab group prior and for structured pruning.

A *group spec* says, for every leaf of a params pytree (in ``jax.tree_util.tree_leaves`` order),
how the leaf is cut into groups:

- ``soft_axes``: the axes that *index* the E-step groups (the remaining axes are reduced). The group
  statistic is the mean of ``w**2`` over the reduced axes, kept with ``keepdims=True`` so that a
  per-group quantity broadcasts straight back onto the weights. ``None``: the leaf is not grouped
  (biases, normalisation scales) and always gets the ungrouped weight decay.
- ``prune_axes``: one entry per *pruning family*; each entry lists the axes indexing that family's
  groups. Dense kernel ``(in, out)`` in the :mod:`emtdamp.models.mlp` / flax layout: one family ``(0,)`` =
  input units (row ``j`` = all outgoing weights of unit ``j``; in the first layer a removed group is
  a deselected input variable). Flax conv kernel ``(kh, kw, in, out)``: soft groups are single
  kernels ``(in, out)``; two families, input channels ``(2,)`` and output channels ``(3,)``.
- ``prune_stat``: ``"mean_square"`` (group mean of ``w**2``, the FC rule of spec B.4) or ``"range"``
  (``max - min`` over the group, the conv rule of spec B.4).

Masks are stored per family with the keepdims shape (``(in, 1)`` for a dense kernel,
``(1, 1, in, 1)`` / ``(1, 1, 1, out)`` for a conv kernel), never with the full weight shape.
The first family of a leaf is its *primary* family: one-shot target pruning and the
``neurons_pruned_frac`` count use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from emtdamp.pytrees import is_kernel

PyTree = Any


@dataclasses.dataclass(frozen=True)
class LeafGroups:
    """How one parameter leaf is grouped (see the module docstring)."""

    ndim: int
    soft_axes: tuple[int, ...]
    prune_axes: tuple[tuple[int, ...], ...] = ()
    prune_stat: str = "mean_square"

    def __post_init__(self):
        for ax in (self.soft_axes, *self.prune_axes):
            if any(a < 0 or a >= self.ndim for a in ax):
                raise ValueError(f"group axes {ax} out of range for a {self.ndim}-D leaf")
        if self.prune_stat not in ("mean_square", "range"):
            raise ValueError(f"prune_stat must be 'mean_square' or 'range', got {self.prune_stat!r}")


@dataclasses.dataclass(frozen=True)
class GroupSpec:
    """Group layout of a whole params pytree: one ``LeafGroups | None`` per leaf (tree_leaves order)."""

    leaves: tuple[LeafGroups | None, ...]

    def check(self, params: PyTree) -> None:
        """Raise if ``params`` does not have the leaf count / ranks this spec was built for."""
        lv = jax.tree_util.tree_leaves(params)
        if len(lv) != len(self.leaves):
            raise ValueError(f"group spec has {len(self.leaves)} leaves, params have {len(lv)}")
        for i, (p, g) in enumerate(zip(lv, self.leaves, strict=True)):
            if g is not None and p.ndim != g.ndim:
                raise ValueError(f"leaf {i}: spec is for a {g.ndim}-D leaf, got shape {p.shape}")


def _reduce_axes(ndim: int, keep: Sequence[int]) -> tuple[int, ...]:
    return tuple(a for a in range(ndim) if a not in keep)


def keepdims_shape(shape: Sequence[int], keep: Sequence[int]) -> tuple[int, ...]:
    """Shape of a per-group array for groups indexed by axes ``keep`` of a leaf of ``shape``."""
    return tuple(n if a in keep else 1 for a, n in enumerate(shape))


def dense_groups(ndim: int = 2) -> LeafGroups:
    """Dense kernel ``(in, out)``: E-step and pruning groups = input units (rows)."""
    return LeafGroups(ndim=ndim, soft_axes=(0,), prune_axes=((0,),), prune_stat="mean_square")


def conv_groups(ndim: int = 4) -> LeafGroups:
    """Flax conv kernel ``(*spatial, in, out)``: E-step groups = single kernels ``(in, out)``;
    pruning families = input channels then output channels, by range (spec B.4)."""
    i, o = ndim - 2, ndim - 1
    return LeafGroups(ndim=ndim, soft_axes=(i, o), prune_axes=((i,), (o,)), prune_stat="range")


def mlp_group_spec(params: PyTree) -> GroupSpec:
    """Group spec for :mod:`emtdamp.models.mlp` params (list of ``{"kernel", "bias"}``): every kernel is
    grouped by input units, biases are ungrouped."""
    return flax_group_spec(params)


def flax_group_spec(params: PyTree, *, conv_prune_stat: str = "range",
                    select: Callable[[tuple, Any], bool] | None = None) -> GroupSpec:
    """Group spec for any flax params pytree, by leaf name and rank.

    Leaves named ``kernel``: 2-D -> :func:`dense_groups`; ``>= 3``-D -> :func:`conv_groups` (flax
    layout ``(*spatial, in, out)``). Every other leaf (bias, BatchNorm scale/bias, embeddings) is
    ungrouped. ``select(path, leaf) -> bool`` (a jax key path) restricts the spike-and-slab group prior
    and pruning to the kernels it picks; the others are ungrouped too (decay ``eps_ungrouped``, never
    pruned). Write a :class:`GroupSpec` by hand for other layouts.
    """
    out: list[LeafGroups | None] = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        kernel = is_kernel(path)
        if select is not None and kernel and not select(path, leaf):
            out.append(None)
        elif kernel and leaf.ndim == 2:
            out.append(dense_groups())
        elif kernel and leaf.ndim >= 3:
            g = conv_groups(leaf.ndim)
            out.append(dataclasses.replace(g, prune_stat=conv_prune_stat))
        else:
            out.append(None)
    return GroupSpec(tuple(out))


def soft_stat(w: jax.Array, g: LeafGroups) -> jax.Array:
    """E-step statistic: mean of ``w**2`` over the reduced axes, keepdims shape."""
    return jnp.mean(w * w, axis=_reduce_axes(g.ndim, g.soft_axes), keepdims=True)


def soft_sumsq_and_size(w: jax.Array, g: LeafGroups) -> tuple[jax.Array, int]:
    """``||w_g||^2`` per E-step group (keepdims shape) and the group size ``m_g``."""
    red = _reduce_axes(g.ndim, g.soft_axes)
    size = 1
    for a in red:
        size *= w.shape[a]
    return jnp.sum(w * w, axis=red, keepdims=True), size


def prune_stat(w: jax.Array, g: LeafGroups, family: int) -> jax.Array:
    """Pruning statistic of family ``family`` (keepdims shape): mean square or range."""
    red = _reduce_axes(g.ndim, g.prune_axes[family])
    if g.prune_stat == "mean_square":
        return jnp.mean(w * w, axis=red, keepdims=True)
    return jnp.max(w, axis=red, keepdims=True) - jnp.min(w, axis=red, keepdims=True)


def init_slab(params: PyTree, spec: GroupSpec) -> tuple[jax.Array, ...]:
    """Slab probabilities, all one (every group starts in the slab). Ungrouped leaves get a
    ``(1,)*ndim`` placeholder that is never used."""
    spec.check(params)
    out = []
    for w, g in zip(jax.tree_util.tree_leaves(params), spec.leaves, strict=True):
        shape = keepdims_shape(w.shape, g.soft_axes) if g is not None else (1,) * w.ndim
        out.append(jnp.ones(shape, w.dtype))
    return tuple(out)


def init_keep(params: PyTree, spec: GroupSpec) -> tuple[tuple[jax.Array, ...], ...]:
    """Keep masks (bool, all True), one tuple of per-family masks per leaf (empty if unpruned)."""
    spec.check(params)
    out = []
    for w, g in zip(jax.tree_util.tree_leaves(params), spec.leaves, strict=True):
        fams = () if g is None else tuple(jnp.ones(keepdims_shape(w.shape, ax), bool) for ax in g.prune_axes)
        out.append(fams)
    return tuple(out)


def weight_mask(keep_leaf: tuple[jax.Array, ...], w: jax.Array) -> jax.Array:
    """Full-shape {0,1} mask of one leaf (product of its family masks), in ``w``'s dtype."""
    m = jnp.ones((1,) * w.ndim, w.dtype)
    for k in keep_leaf:
        m = m * k.astype(w.dtype)
    return jnp.broadcast_to(m, w.shape)


def apply_keep(params: PyTree, keep: tuple[tuple[jax.Array, ...], ...]) -> PyTree:
    """Zero the weights of pruned groups."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    new = [w * weight_mask(k, w) if len(k) else w for w, k in zip(leaves, keep, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, new)


def count_groups(keep: tuple[tuple[jax.Array, ...], ...]) -> tuple[int, int]:
    """``(pruned, total)`` over the primary family of every pruned leaf (outside jit)."""
    pruned = total = 0
    for fams in keep:
        if len(fams):
            k = fams[0]
            total += int(k.size)
            pruned += int(k.size - jnp.sum(k))
    return pruned, total
