"""MCMC-within-EM pieces of EM-MCMC (spec B.1, B.3, B.4), each a pure function.

Prior (spec B.1, "mean-loss" units): per weight ``w ~ N(0, 1/(N eps))`` with ``eps = eps1`` (slab,
small decay) or ``eps0`` (spike, large decay), group indicator ``gamma_g ~ Bernoulli(theta)``.

- :func:`hard_estep`: the reference code's E-step, ``slab_g = mean(w_g^2) >= soft_threshold``
  (a group exactly at the threshold goes to the slab).
- :func:`soft_estep`: the paper-faithful posterior inclusion probability derived in spec B.3,
  ``p*_g = sigmoid(logit theta + (m_g/2) log(eps1/eps0) + (N/2)(eps0 - eps1) ||w_g||^2)``.
- :func:`mstep_decay`: per-group weight decay ``p eps1 + (1 - p) eps0``;
  :func:`mstep_theta`: ``theta = (sum p + a - 1) / (G + a + b - 2)`` (Beta(a, b) prior; a=b=1 gives
  the mean of ``p``).
- :func:`prune_keep`: permanent removal, ``keep <- keep & ~(stat < hard_threshold)`` and, once,
  removal of the lowest-statistic fraction ``target`` of each leaf's primary family. ``keep`` only
  ever goes from True to False.

Per-leaf quantities are tuples aligned with ``jax.tree_util.tree_leaves(params)`` (see
:mod:`emtdamp.em_mcmc.groups`); ungrouped leaves carry placeholders that these functions leave alone.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from emtdamp.em_mcmc.groups import GroupSpec, prune_stat, soft_stat, soft_sumsq_and_size

PyTree = Any


def hard_estep(params: PyTree, spec: GroupSpec, slab: tuple[jax.Array, ...],
               soft_threshold: jax.Array) -> tuple[jax.Array, ...]:
    """Hard E-step: slab indicator ``1[mean(w_g^2) >= soft_threshold]`` per E-step group.

    Returns a tuple of ``{0,1}`` arrays in the params dtype, keepdims shape per leaf (placeholders of
    ungrouped leaves passed through from ``slab``).
    """
    out = []
    for w, g, s in zip(jax.tree_util.tree_leaves(params), spec.leaves, slab, strict=True):
        out.append(s if g is None else (soft_stat(w, g) >= soft_threshold).astype(w.dtype))
    return tuple(out)


def soft_estep(params: PyTree, spec: GroupSpec, slab: tuple[jax.Array, ...], eps0: jax.Array,
               eps1: jax.Array, n_data: jax.Array, logit_theta: jax.Array) -> tuple[jax.Array, ...]:
    """Soft E-step: posterior slab probability ``p*_g`` (spec B.3) per E-step group.

    ``p*_g = sigmoid(logit_theta + (m_g/2) log(eps1/eps0) + (N/2)(eps0 - eps1) ||w_g||^2)`` with
    ``m_g`` the group size. ``p*_g > 1/2`` iff ``||w_g||^2/m_g > [log(eps0/eps1) - 2 logit_theta/m_g]
    / (N (eps0 - eps1))``.
    """
    out = []
    for w, g, s in zip(jax.tree_util.tree_leaves(params), spec.leaves, slab, strict=True):
        if g is None:
            out.append(s)
            continue
        ssq, m = soft_sumsq_and_size(w, g)
        z = (logit_theta + 0.5 * m * jnp.log(eps1 / eps0) + 0.5 * n_data * (eps0 - eps1) * ssq)
        out.append(jax.nn.sigmoid(z).astype(w.dtype))
    return tuple(out)


def mstep_decay(spec: GroupSpec, slab: tuple[jax.Array, ...], eps0: jax.Array, eps1: jax.Array,
                eps_ungrouped: jax.Array) -> tuple[jax.Array, ...]:
    """M-step: per-group weight decay ``p eps1 + (1 - p) eps0`` (keepdims shape; broadcasts onto the
    weights); ungrouped leaves get ``eps_ungrouped`` (a scalar)."""
    out = []
    for g, p in zip(spec.leaves, slab, strict=True):
        out.append(jnp.asarray(eps_ungrouped, p.dtype) if g is None else p * eps1 + (1 - p) * eps0)
    return tuple(out)


def mstep_theta(spec: GroupSpec, slab: tuple[jax.Array, ...], a: jax.Array, b: jax.Array) -> jax.Array:
    """M-step for the inclusion rate: ``theta = (sum_g p_g + a - 1) / (G + a + b - 2)``, clipped to
    ``[1e-6, 1 - 1e-6]``; returns ``logit(theta)``."""
    tot = 0.0
    cnt = 0
    for g, p in zip(spec.leaves, slab, strict=True):
        if g is not None:
            tot = tot + jnp.sum(p)
            cnt += p.size
    theta = (tot + a - 1.0) / (cnt + a + b - 2.0)
    theta = jnp.clip(theta, 1e-6, 1 - 1e-6)
    return jnp.log(theta) - jnp.log1p(-theta)


def _lowest_fraction(stat: jax.Array, target: jax.Array) -> jax.Array:
    """Boolean mask of the ``floor(target * G)`` groups with the smallest ``stat`` (ties by index)."""
    flat = stat.reshape(-1)
    k = jnp.floor(target * flat.size + 1e-9).astype(jnp.int32)
    ranks = jnp.argsort(jnp.argsort(flat, stable=True), stable=True)
    return (ranks < k).reshape(stat.shape)


def prune_keep(params: PyTree, spec: GroupSpec, keep: tuple[tuple[jax.Array, ...], ...],
               hard_threshold: jax.Array, target: jax.Array | float = 0.0,
               apply_target: jax.Array | bool = False) -> tuple[tuple[jax.Array, ...], ...]:
    """Permanent pruning: ``keep & ~(stat < hard_threshold)`` for every family; if ``apply_target``,
    additionally remove the ``floor(target * G)`` lowest-statistic groups of each leaf's primary
    family (groups already pruned have zero weights, hence the lowest statistic, and count toward the
    target). Monotone: a False entry stays False.
    """
    out = []
    for w, g, fams in zip(jax.tree_util.tree_leaves(params), spec.leaves, keep, strict=True):
        if g is None:
            out.append(fams)
            continue
        new = []
        for f, k in enumerate(fams):
            st = prune_stat(w, g, f)
            drop = st < hard_threshold
            if f == 0:
                # groups already removed count toward the target: give them the lowest statistic
                st_t = jnp.where(k, st, -jnp.inf)
                drop = drop | (jnp.asarray(apply_target) & _lowest_fraction(st_t, jnp.asarray(target)))
            new.append(k & ~drop)
        out.append(tuple(new))
    return tuple(out)
