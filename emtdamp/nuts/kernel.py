"""Full-batch NUTS with Stan's window adaptation, one transition at a time, over any log density.

The transition is BlackJAX's multinomial NUTS (:func:`blackjax.nuts.build_kernel`). The warm-up is
Stan's (as in :func:`blackjax.window_adaptation`): dual averaging of the step size towards a target
acceptance rate in every window, and a diagonal inverse mass matrix estimated (Welford, regularised
towards 1e-3) in the doubling "slow" windows, rebuilt from BlackJAX's pieces
(:func:`blackjax.adaptation.mass_matrix.mass_matrix_adaptation`,
:func:`blackjax.adaptation.step_size.dual_averaging_adaptation`) so that the whole schedule is
arrays in the state (:class:`Schedule`) and warm-up then sampling is one jitted, scanned program:
:func:`transition` does one step of either phase, selected by ``count < num_warmup``.

:func:`sample` is the low-level sampler used by tests: ``C`` chains (vmapped) of ``num_warmup``
adaptation steps followed by ``num_draws`` kept draws over a log density of a params pytree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
from blackjax.adaptation.mass_matrix import mass_matrix_adaptation
from blackjax.adaptation.step_size import dual_averaging_adaptation
from blackjax.adaptation.window_adaptation import build_schedule
from jax.flatten_util import ravel_pytree

PyTree = Any


class Schedule(NamedTuple):
    """Stan's warm-up schedule as arrays: ``stage (W,)`` int32, 0 = fast window (step size only),
    1 = slow window (step size and mass matrix); ``window_end (W,)`` bool, True at the last step of
    a slow window (the inverse mass matrix is recomputed there). ``W = max(num_warmup, 1)``."""

    stage: jax.Array
    window_end: jax.Array


class WarmupState(NamedTuple):
    """One chain's adaptation: dual-averaging state, Welford mass-matrix state, and the step size
    and diagonal inverse mass matrix ``(D,)`` the kernel uses during warm-up."""

    da: Any
    mm: Any
    step_size: jax.Array
    inverse_mass_matrix: jax.Array


class ChainState(NamedTuple):
    """One chain: ``position`` (params pytree), ``warmup``, and the step size / diagonal inverse mass
    matrix ``(D,)`` used after warm-up (set from the warm-up at its last step)."""

    position: PyTree
    warmup: WarmupState
    step_size: jax.Array
    inverse_mass_matrix: jax.Array


class TransitionInfo(NamedTuple):
    """Per-transition statistics: acceptance rate, divergence flag, leapfrog steps, step size used,
    and the log density at the new position."""

    acceptance_rate: jax.Array
    is_divergent: jax.Array
    num_integration_steps: jax.Array
    step_size: jax.Array
    logdensity: jax.Array


def make_schedule(num_warmup: int) -> Schedule:
    """Stan's schedule for ``num_warmup`` steps (:func:`blackjax.adaptation.window_adaptation.build_schedule`:
    75-step initial fast buffer, slow windows doubling from 25, 50-step final fast buffer, resized
    proportionally for short warm-ups; fewer than 20 steps adapt the step size only)."""
    with jax.ensure_compile_time_eval():   # concrete even when called inside jit / vmap (init of a vmapped group)
        sched = build_schedule(num_warmup) if num_warmup > 0 else [(0, False)]
        sched = [(int(s), bool(e)) for s, e in sched]
    stage = np.asarray([s for s, _ in sched], np.int32)
    end = np.asarray([e for _, e in sched], bool)
    return Schedule(stage=jnp.asarray(stage), window_end=jnp.asarray(end))


def _adaptation(target_accept: float):
    mm_init, mm_update, mm_final = mass_matrix_adaptation(is_diagonal_matrix=True)
    da_init, da_update, da_final = dual_averaging_adaptation(target_accept)
    return mm_init, mm_update, mm_final, da_init, da_update, da_final


def _cast_float(a, dt):
    a = jnp.asarray(a)
    return a.astype(dt) if jnp.issubdtype(a.dtype, jnp.floating) else a


def init_chain(position: PyTree, initial_step_size: float | jax.Array, target_accept: float = 0.8) -> ChainState:
    """A chain at ``position`` with an identity inverse mass matrix and step size ``initial_step_size``."""
    mm_init, _, _, da_init, _, _ = _adaptation(target_accept)
    flat, _ = ravel_pytree(position)
    dt = flat.dtype
    eps = jnp.asarray(initial_step_size, dt)
    mm = mm_init(flat.shape[0])
    mm = jax.tree_util.tree_map(lambda a: _cast_float(a, dt), mm)
    da = jax.tree_util.tree_map(lambda a: _cast_float(a, dt), da_init(eps))
    warm = WarmupState(da=da, mm=mm, step_size=eps, inverse_mass_matrix=mm.inverse_mass_matrix)
    return ChainState(position=position, warmup=warm, step_size=eps, inverse_mass_matrix=mm.inverse_mass_matrix)


def _warmup_update(warm: WarmupState, stage: jax.Array, window_end: jax.Array, position: PyTree,
                   acceptance_rate: jax.Array, target_accept: float) -> WarmupState:
    """One step of Stan's adaptation (the ``update`` of BlackJAX's window adaptation ``base``)."""
    _, mm_update, mm_final, da_init, da_update, da_final = _adaptation(target_accept)
    da = da_update(warm.da, acceptance_rate)
    mm = jax.lax.cond(stage == 1, lambda m: mm_update(m, position), lambda m: m, warm.mm)
    warm = WarmupState(da=da, mm=mm, step_size=jnp.exp(da.log_step_size), inverse_mass_matrix=warm.inverse_mass_matrix)

    def end_window(w: WarmupState) -> WarmupState:
        mm_new = mm_final(w.mm)
        da_new = jax.tree_util.tree_map(lambda a, b: jnp.asarray(a).astype(b.dtype), da_init(da_final(w.da)), w.da)
        return WarmupState(da=da_new, mm=mm_new, step_size=jnp.exp(da_new.log_step_size),
                           inverse_mass_matrix=mm_new.inverse_mass_matrix)

    return jax.lax.cond(window_end, end_window, lambda w: w, warm)


def transition(key: jax.Array, chain: ChainState, logdensity_fn: Callable[[PyTree], jax.Array], count: jax.Array,
               num_warmup: jax.Array, schedule: Schedule, *, max_num_doublings: int = 10,
               target_accept: float = 0.8) -> tuple[ChainState, TransitionInfo]:
    """One NUTS transition of one chain; adaptation while ``count < num_warmup``.

    Parameters
    ----------
    key:
        PRNG key of this transition.
    chain:
        The chain's state.
    logdensity_fn:
        ``logdensity_fn(position) -> scalar`` (unnormalised log posterior). It is evaluated afresh at
        ``chain.position`` (one extra gradient), so it may change between calls (e.g. a reshuffled
        full batch) and the state needs no cached log density.
    count:
        Index of this transition (0-based, int array); warm-up steps are ``0 .. num_warmup - 1``.
    num_warmup:
        Warm-up length (int array). At ``count == num_warmup - 1`` the final dual-averaging step size
        and the last slow window's inverse mass matrix become the sampling parameters.
    schedule:
        :func:`make_schedule` ``(num_warmup)`` (its length is static).
    """
    warm_phase = count < num_warmup
    eps = jnp.where(warm_phase, chain.warmup.step_size, chain.step_size)
    imm = jnp.where(warm_phase, chain.warmup.inverse_mass_matrix, chain.inverse_mass_matrix)
    hmc_state = blackjax.nuts.init(chain.position, logdensity_fn)
    kernel = blackjax.nuts.build_kernel()
    new, info = kernel(key, hmc_state, logdensity_fn, eps, imm, max_num_doublings=max_num_doublings)

    i = jnp.clip(count, 0, schedule.stage.shape[0] - 1)
    acc = jnp.asarray(info.acceptance_rate, eps.dtype)
    updated = _warmup_update(chain.warmup, schedule.stage[i], schedule.window_end[i], new.position, acc,
                             target_accept)
    warm = jax.tree_util.tree_map(lambda a, b: jnp.where(warm_phase, a, b), updated, chain.warmup)
    last = count == num_warmup - 1
    final_eps = jnp.exp(warm.da.log_step_size_avg)
    step_size = jnp.where(last, final_eps, chain.step_size)
    inv_mass = jnp.where(last, warm.mm.inverse_mass_matrix, chain.inverse_mass_matrix)
    out = ChainState(position=new.position, warmup=warm, step_size=step_size, inverse_mass_matrix=inv_mass)
    return out, TransitionInfo(acceptance_rate=acc, is_divergent=info.is_divergent,
                               num_integration_steps=info.num_integration_steps, step_size=eps,
                               logdensity=new.logdensity)


def sample(key: jax.Array, logdensity_fn: Callable[[PyTree], jax.Array], initial_positions: PyTree, *,
           num_warmup: int, num_draws: int, initial_step_size: float = 0.1, max_num_doublings: int = 10,
           target_accept: float = 0.8) -> tuple[PyTree, TransitionInfo, ChainState]:
    """Run ``C`` NUTS chains (one vmapped, scanned program): warm-up, then ``num_draws`` kept draws.

    Parameters
    ----------
    initial_positions:
        Params pytree whose leaves carry a leading chain axis ``C``.

    Returns
    -------
    draws:
        The kept positions, every leaf ``(C, num_draws, ...)``.
    info:
        :class:`TransitionInfo` of every transition, leaves ``(C, num_warmup + num_draws)``.
    chains:
        Final chain states (leading axis ``C``).
    """
    n_chains = jax.tree_util.tree_leaves(initial_positions)[0].shape[0]
    schedule = make_schedule(num_warmup)
    chains = jax.vmap(lambda p: init_chain(p, initial_step_size, target_accept))(initial_positions)
    nw = jnp.asarray(num_warmup, jnp.int32)

    def one_step(chains, k_count):
        k, count = k_count
        keys = jax.random.split(k, n_chains)
        step = lambda kk, ch: transition(kk, ch, logdensity_fn, count, nw, schedule,
                                         max_num_doublings=max_num_doublings, target_accept=target_accept)
        chains, info = jax.vmap(step)(keys, chains)
        return chains, (chains.position, info)

    total = num_warmup + num_draws
    keys = jax.random.split(key, total)
    run = jax.jit(lambda ch, ks: jax.lax.scan(one_step, ch, (ks, jnp.arange(total, dtype=jnp.int32))))
    chains, (positions, info) = run(chains, keys)
    # scan stacks on axis 0 (steps); move the chain axis first
    draws = jax.tree_util.tree_map(lambda a: jnp.swapaxes(a[num_warmup:], 0, 1), positions)
    info = jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1), info)
    return draws, info, chains
