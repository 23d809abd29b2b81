"""SGLD-SA / SGHMC-SA over any params pytree with your own log-likelihood (BlackJAX-shaped).

The registered methods (:mod:`emtdamp.methods.sgmcmc_methods`) train emtdamp's own networks from a
config; this is the same sampler as a pure ``init`` / ``step`` pair for a user's model, data pipeline
and likelihood. The SSGL spike-and-slab prior (Deng et al. 2019) acts on the leaves ``select`` picks (by
default every leaf named ``kernel``: the weights of flax ``Dense`` / ``Conv`` layers); every other leaf
gets the Gaussian prior ``N(0, 1/(N·weight_decay))``.

Energy (sum scale, ``N = n_data``, minibatch rows weighted by ``batch.w`` when it has one)::

    U(θ) = −(N / Σ w) Σ_i w_i loglik_i(θ) + ½ N wd Σ_{other} θ² + Σ_{selected} [κ1 θ² / (2σ²) + κ0 |θ| / σ]

One iteration: SGHMC (or SGLD) move on ``U`` with step ``ε_k = lr (b + k)^(−γ)`` at inverse
temperature ``τ_k``, then the stochastic-approximation update of the latents ``ρ, κ0, κ1, δ, σ²`` at
the new sample with step ``ω_k = min(cap, A (k + Z)^(−α))`` (:func:`emtdamp.sgmcmc.ssgl.sa_update`,
weights only: the likelihood is yours, so σ² only scales the prior), then ``τ ← τ·anneal_rate``.
``omega_mode="em"`` gives SG-MCMC-EM (ω ≡ 1), ``"none"`` freezes the latents (plain SGHMC with the
fixed SSGL prior). Every hyperparameter is an array in the state (sweeps ``vmap``; nothing recompiles).

Example::

    def loglik(params, batch):                     # (B,) per-row log-likelihood
        logits = model.apply({"params": params}, batch.x)
        return -optax.softmax_cross_entropy_with_integer_labels(logits, batch.y)

    sampler = sghmc_sa(loglik, n_data=len(x_train))
    state = sampler.init(params, learning_rate=1e-6)
    state, info = jax.jit(sampler.step)(key, state, batch)     # state.position: the new sample
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from emtdamp.pytrees import is_kernel
from emtdamp.sgmcmc.kernels import (
    DEFAULT_NOISE,
    PolynomialSchedule,
    SamplingAlgorithm,
    check_noise_dist,
    polynomial_schedule,
    schedule_value,
    sghmc_update,
    sgld_update,
)
from emtdamp.sgmcmc.ssgl import (
    OmegaSchedule,
    SSGLHyper,
    SSGLLatents,
    init_latents,
    omega_schedule,
    omega_value,
    sa_update,
    sa_update_every,
    ssgl_hyper,
    ssgl_penalty,
)

PyTree = Any
LeafFilter = Callable[[tuple, jax.Array], bool]


def selected_indices(position: PyTree, select: LeafFilter) -> tuple[int, ...]:
    """Indices (tree-flatten order) of the leaves of ``position`` that ``select(path, leaf)`` picks."""
    return tuple(i for i, (p, leaf) in enumerate(jax.tree_util.tree_flatten_with_path(position)[0])
                 if select(p, leaf))


@chex.dataclass
class SAState:
    """State of :func:`sa_sampler`: the current sample, its momentum, the SSGL latents of the selected
    leaves (lists in tree-flatten order) and every schedule, all arrays."""

    position: PyTree
    momentum: PyTree            # zeros, unused, for SGLD
    latents: SSGLLatents
    hyper: SSGLHyper
    schedule: PolynomialSchedule
    omega: OmegaSchedule
    momentum_decay: jax.Array
    weight_decay: jax.Array
    inv_temp: jax.Array
    anneal_rate: jax.Array
    count: jax.Array


class SAInfo(NamedTuple):
    """Per-step diagnostics: energy estimate at the old sample, step size ``ε_k`` and SA step ``ω_k``."""

    energy: jax.Array
    step_size: jax.Array
    omega: jax.Array


def sa_sampler(loglik_fn: Callable[[PyTree, Any], jax.Array], n_data: int, *, select: LeafFilter = is_kernel,
               sampler: str = "sghmc", noise_dist: str = DEFAULT_NOISE, sa_every: int = 1) -> SamplingAlgorithm:
    """SG-MCMC with the SSGL prior and SA latents over any params pytree (see the module docstring).

    Parameters
    ----------
    loglik_fn:
        ``loglik_fn(params, batch) -> (B,)`` per-row log-likelihood (any units; constants do not matter).
        ``batch`` is passed through untouched; a ``batch.w`` attribute ``(B,)`` weights rows (0 = padding).
    n_data:
        Training-set size ``N`` (the minibatch sum is rescaled to it).
    select:
        ``select(path, leaf) -> bool`` (``path`` a jax key path): the leaves the SSGL prior acts on
        (default :func:`emtdamp.pytrees.is_kernel`: every leaf named ``kernel``).
    sampler:
        ``"sghmc"`` or ``"sgld"``.
    noise_dist:
        The injected noise: ``"three_point"`` (default) or ``"gaussian"``
        (:func:`emtdamp.sgmcmc.kernels.noise`).
    sa_every:
        Static. The latents move on every ``sa_every``-th step only, by one SA step with the compounded
        ``1 − Π(1 − ω_j)`` of the steps it stands for (:func:`emtdamp.sgmcmc.ssgl.omega_compounded`);
        1 (default) = every step, the papers' Algorithm 1. Cuts the per-weight latent work by that factor.

    Returns
    -------
    ``SamplingAlgorithm(init, step)``: ``init(position, **hyperparameters) -> SAState`` (keywords below)
    and ``step(key, state, batch) -> (SAState, SAInfo)``, pure and jittable.

    ``init`` keywords: ``learning_rate`` (ε_0 on the sum-scale energy, required), ``lr_offset=1``,
    ``lr_decay=0``, ``momentum_decay=0.9`` (SGHMC ``1 − friction``), ``weight_decay=1e-4``,
    ``inv_temp=1``, ``anneal_rate=1``, ``omega_mode="sa"`` (``"em"``, ``"none"``), ``omega_a=1``,
    ``omega_z=100``, ``omega_alpha=0.7``, ``omega_cap=1``, the SSGL prior ``v0=0.1`` (Laplace scale),
    ``v1=10`` (slab variance), ``beta_a=1``, ``beta_b=10`` (Beta prior on δ; ``≤ 0`` = the leaf's size),
    ``nu=1``, ``lam=1`` (InvGamma on σ²), ``scale_by_sigma=True``, ``sa_on_sigma=False``,
    ``learn_delta=True``, ``learn_sigma=True``, and the initial latents ``rho=0.5``, ``kappa0=1``,
    ``kappa1=1``, ``delta=0.5``, ``sigma=1``.
    """
    if sampler not in ("sghmc", "sgld"):
        raise ValueError(f"sampler must be 'sghmc' or 'sgld', got {sampler!r}")
    check_noise_dist(noise_dist)
    if sa_every < 1:
        raise ValueError(f"sa_every must be >= 1, got {sa_every}")

    def split(position):
        leaves, treedef = jax.tree_util.tree_flatten(position)
        return leaves, treedef, selected_indices(position, select)

    def energy(position: PyTree, batch: Any, state: SAState) -> jax.Array:
        leaves, _, sel = split(position)
        ll = loglik_fn(position, batch)
        w = getattr(batch, "w", None)
        w = jnp.ones_like(ll) if w is None else w.astype(ll.dtype)
        u = -(n_data / jnp.maximum(jnp.sum(w), 1.0)) * jnp.sum(w * ll)
        l2 = sum((jnp.sum(v ** 2) for i, v in enumerate(leaves) if i not in sel), jnp.zeros((), ll.dtype))
        u = u + 0.5 * n_data * state.weight_decay * l2
        if sel:
            u = u + ssgl_penalty([leaves[i] for i in sel], state.latents)
        return u

    def init(position: PyTree, *, learning_rate: float, lr_offset: float = 1.0, lr_decay: float = 0.0,
             momentum_decay: float = 0.9, weight_decay: float = 1e-4, inv_temp: float = 1.0,
             anneal_rate: float = 1.0, omega_mode: str = "sa", omega_a: float = 1.0, omega_z: float = 100.0,
             omega_alpha: float = 0.7, omega_cap: float = 1.0, v0: float = 0.1, v1: float = 10.0,
             beta_a: float = 1.0, beta_b: float = 10.0, nu: float = 1.0, lam: float = 1.0,
             scale_by_sigma: bool = True, sa_on_sigma: bool = False, learn_delta: bool = True,
             learn_sigma: bool = True, rho: float = 0.5, kappa0: float = 1.0, kappa1: float = 1.0,
             delta: float = 0.5, sigma: float = 1.0) -> SAState:
        leaves, _, sel = split(position)
        if not leaves:
            raise ValueError("sa_sampler.init: the params pytree has no leaves")
        if learning_rate <= 0:
            raise ValueError(f"sa_sampler.init: learning_rate must be > 0 (ε_0 on the sum-scale energy), "
                             f"got {learning_rate}")
        dt = leaves[0].dtype
        xs = [leaves[i] for i in sel]
        sizes = [float(x.size) for x in xs]
        hyper = ssgl_hyper(len(sel), v0=v0, v1=v1, nu=nu, lam=lam,
                           a=tuple(s if beta_a <= 0 else beta_a for s in sizes),
                           b=tuple(s if beta_b <= 0 else beta_b for s in sizes),
                           scale_by_sigma=scale_by_sigma, sa_on_sigma=sa_on_sigma, learn_delta=learn_delta,
                           learn_sigma=learn_sigma, dtype=dt)
        f = lambda v: jnp.asarray(v, dt)
        return SAState(position=position, momentum=jax.tree_util.tree_map(jnp.zeros_like, position),
                       latents=init_latents(xs, rho=rho, kappa0=kappa0, kappa1=kappa1, delta=delta, sigma=sigma,
                                            dtype=dt),
                       hyper=hyper, schedule=polynomial_schedule(learning_rate, lr_offset, lr_decay, dt),
                       omega=omega_schedule(omega_mode, A=omega_a, Z=omega_z, alpha=omega_alpha, cap=omega_cap,
                                            dtype=dt),
                       momentum_decay=f(momentum_decay), weight_decay=f(weight_decay), inv_temp=f(inv_temp),
                       anneal_rate=f(anneal_rate), count=jnp.asarray(0, jnp.int32))

    def step(key: jax.Array, state: SAState, batch: Any) -> tuple[SAState, SAInfo]:
        u, g = jax.value_and_grad(energy)(state.position, batch, state)
        eps = schedule_value(state.schedule, state.count)
        if sampler == "sgld":
            pos, mom = sgld_update(key, state.position, g, eps, state.inv_temp, noise_dist), state.momentum
        else:
            pos, mom = sghmc_update(key, state.position, state.momentum, g, eps, state.momentum_decay,
                                    state.inv_temp, noise_dist)
        omega = omega_value(state.omega, state.count)
        leaves, _, sel = split(pos)
        lat = state.latents
        if sel:
            xs = [leaves[i] for i in sel]
            lat = sa_update_every(lambda lt, w: sa_update(lt, xs, w, state.hyper), lat, state.omega, state.count,
                                  sa_every)
        new = state.replace(position=pos, momentum=mom, latents=lat, count=state.count + 1,
                            inv_temp=state.inv_temp * state.anneal_rate)
        return new, SAInfo(energy=u, step_size=eps, omega=omega)

    return SamplingAlgorithm(init=init, step=step)


def sghmc_sa(loglik_fn: Callable[[PyTree, Any], jax.Array], n_data: int, *,
             select: LeafFilter = is_kernel, noise_dist: str = DEFAULT_NOISE, sa_every: int = 1) -> SamplingAlgorithm:
    """SGHMC-SA: :func:`sa_sampler` with ``sampler="sghmc"``."""
    return sa_sampler(loglik_fn, n_data, select=select, sampler="sghmc", noise_dist=noise_dist, sa_every=sa_every)


def sgld_sa(loglik_fn: Callable[[PyTree, Any], jax.Array], n_data: int, *,
            select: LeafFilter = is_kernel, noise_dist: str = DEFAULT_NOISE, sa_every: int = 1) -> SamplingAlgorithm:
    """SGLD-SA: :func:`sa_sampler` with ``sampler="sgld"``."""
    return sa_sampler(loglik_fn, n_data, select=select, sampler="sgld", noise_dist=noise_dist, sa_every=sa_every)
