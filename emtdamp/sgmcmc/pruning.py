"""Magnitude pruning with the schedule ``s_k = S (1 − D^{k/U})`` and a permanent mask; ρ-based
one-shot alternative (spec ``baselines.md`` A.4).

Masks are boolean arrays shaped like the pruned leaves; parameters are multiplied by them, never
dropped (static shapes). A mask only ever loses entries (``new = old & keep``), so pruned weights
stay zero for the rest of the run.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


@chex.dataclass
class PruneSchedule:
    """``s_k = target · (1 − damping^{k / gap})`` (arrays; ``target`` 0 disables pruning)."""

    target: jax.Array
    damping: jax.Array
    gap: jax.Array


def prune_schedule(target: float, damping: float = 0.99, gap: float = 50.0, dtype=None) -> PruneSchedule:
    dtype = dtype or jnp.asarray(1.0).dtype
    f = lambda v: jnp.asarray(v, dtype)
    return PruneSchedule(target=f(target), damping=f(damping), gap=f(gap))


def prune_fraction(s: PruneSchedule, count: jax.Array) -> jax.Array:
    """``s_k = S (1 − D^{k/U})`` at iteration ``k = count``."""
    k = jnp.asarray(count, s.target.dtype)
    return s.target * (1.0 - s.damping ** (k / s.gap))


def magnitude_mask(x: jax.Array, mask: jax.Array, frac: jax.Array) -> jax.Array:
    """Permanent magnitude mask: prune the smallest-``|x|`` entries until ``round(frac · size)`` are pruned.

    Already-pruned entries count towards the target (they are ranked first), so the number pruned is
    ``max(#already pruned, round(frac · size))`` and the mask never regrows.

    Parameters
    ----------
    x: ``(...)`` weights. mask: bool ``(...)``, True = kept. frac: scalar in ``[0, 1]``.

    Returns
    -------
    bool array like ``mask``.
    """
    n = x.size
    key = jnp.where(mask, jnp.abs(x), -1.0).reshape(-1)
    n_prune = jnp.floor(frac * n + 0.5).astype(jnp.int32)
    n_prune = jnp.clip(jnp.maximum(n_prune, n - jnp.sum(mask)), 0, n)
    order = jnp.argsort(key)
    ranks = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    keep = (ranks >= n_prune).reshape(x.shape)
    return mask & keep


def rho_mask(mask: jax.Array, rho: jax.Array, threshold: jax.Array, count: jax.Array,
             at_step: jax.Array) -> jax.Array:
    """ρ-based one-shot pruning (UCI code option): at iteration ``at_step`` drop weights with
    ``ρ < threshold`` (slab probability small); the mask is kept forever afterwards."""
    fire = jnp.asarray(count) == jnp.asarray(at_step)
    return jnp.where(fire, mask & (rho >= threshold), mask)


def apply_masks(xs: list, masks: list) -> list:
    """``x · mask`` leaf-wise (zeros where pruned)."""
    return [jnp.where(m, x, jnp.zeros_like(x)) for x, m in zip(xs, masks, strict=True)]


def zero_fraction(xs: list) -> jax.Array:
    """Share of exactly-zero entries over the given leaves."""
    n = sum(x.size for x in xs)
    return sum(jnp.sum(x == 0) for x in xs) / n


def inflated_target(target: float, n_total: int, n_pruned: int) -> float:
    """Per-layer target ``S · P_total / P_pruned`` so that the *overall* zero share reaches ``S`` (A.4).

    Raises ``ValueError`` when it exceeds 1 (the pruned layers are too small for the target).
    """
    s_eff = target * n_total / n_pruned
    if s_eff > 1.0 + 1e-12:
        raise ValueError(f"target sparsity {target} over {n_total} weights needs {s_eff:.3f} of the "
                         f"{n_pruned} prunable weights (> 1); prune more layers (prune_layers) or lower "
                         "the target")
    return min(s_eff, 1.0)

