"""The adaptive mean-field VI optimiser of Ke & Fan (spec B.3) as an optax ``GradientTransformation``.

Read as SGHMC with a diagonal preconditioner ``tau = sigmoid(rho)`` (spec B.3 [D]). The state holds
only the momentum ``m``, the preconditioner logit ``rho`` and per-group masks; the weights are the
current sample, and the mean-field posterior standard deviation is the closed form
``s = T C^1.5 tau`` (:func:`posterior_std`), so no separate ``(mu, s)`` copy is stored. The previous
step's noise ``xi`` is kept (``store_noise=True``, the registered method's default) or regenerated from
``fold_in(key, count)``; ``xi`` has mean 0 and variance 1 per weight, three-point (default) or Gaussian
(``noise_dist``, :func:`noise_tree`).

Per step, with ``g = grad lbar(w)`` (minibatch *mean* loss, no prior), ``C = sqrt(lr_t)``::

    if EM step (first step of an epoch e > warm_up):
        slab_g <- hard: 1[mean(w_g^2) >= soft_threshold]  |  soft: p*_g (spec B.3)
        keep_g <- keep_g & ~(prune_stat_g < hard_threshold)    (+ one-shot target fraction, once)
    eps  = slab eps1 + (1 - slab) eps0          (ungrouped leaves: eps_ungrouped)
    rho <- rho - eta (T^2 C^3 eps tau + T C^1.5 xi_prev g - 1/(tau N))
    tau  = sigmoid(rho);  xi = fresh noise (three-point or N(0, I))
    m   <- beta1 m - C^2 beta2 (g + eps w) + sd xi
    w   <- (w + tau m) * keep

with ``sd = sqrt(2 + 2 beta1^2) C^1.5 T`` (the reference; a cold chain) or, built with ``posterior_noise=True``,
``sd = sqrt(2 (1 - beta1) beta2 C^2 / (N tau))``: then ``v = tau m`` follows SGHMC with step
``eta = tau C^2 beta2 / N`` on the energy ``U = N (lbar + eps |w|^2 / 2)``, friction ``1 - beta1`` and
noise variance ``2 (1 - beta1) eta``, i.e. temperature 1 (samples of ``exp(-U)`` up to the O(eta)
discretisation bias and the minibatch-gradient noise). ``rho`` is updated only while
``count < rho_adapt_steps`` (``< 0``: always), so the preconditioner can be frozen after a burn-in.

Every hyperparameter is an array in ``state.hyper`` (change with ``state._replace(hyper=...)``;
nothing recompiles). The noise kind (``posterior_noise``) and its distribution (``noise_dist``) are static
arguments of :func:`em_mcmc` / :func:`em_mcmc_step`: the reference noise is then one scalar per step, with no
per-weight square root and division for the noise kind not in use (docs/speed.md). Deviations from the
reference code (spec B.6) are listed on :func:`em_mcmc`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from emtdamp.em_mcmc import em
from emtdamp.em_mcmc.groups import GroupSpec, apply_keep, init_keep, init_slab, weight_mask
from emtdamp.em_mcmc.schedule import cyclical_lr, em_gate
from emtdamp.sgmcmc.kernels import DEFAULT_NOISE, check_noise_dist, noise_like

PyTree = Any


class EMMCMCHyper(NamedTuple):
    """Hyperparameters as arrays (scalars). See :func:`em_mcmc` for their meaning."""

    c2_peak: jax.Array
    cycle_epochs: jax.Array
    beta1: jax.Array
    beta2: jax.Array
    eps0: jax.Array
    eps1: jax.Array
    eps_ungrouped: jax.Array
    soft_threshold: jax.Array
    hard_threshold: jax.Array
    eta: jax.Array
    temperature: jax.Array
    n_data: jax.Array
    theta_a: jax.Array
    theta_b: jax.Array
    prune_target: jax.Array
    warm_up: jax.Array
    steps_per_epoch: jax.Array
    em_enabled: jax.Array
    soft_estep: jax.Array
    update_theta: jax.Array
    rho_adapt_steps: jax.Array


class EMMCMCState(NamedTuple):
    """Optimiser state.

    count: int32 step counter; key: base PRNG key (noise of step t is ``fold_in(key, t)``);
    momentum, rho: pytrees like params; slab: per-leaf slab probabilities (keepdims shapes);
    keep: per-leaf tuples of per-family bool keep masks; logit_theta: prior inclusion log-odds;
    target_done: whether the one-shot target pruning has happened; hyper: :class:`EMMCMCHyper`;
    xi: the previous step's noise when built with ``store_noise=True``, else None (regenerated).
    """

    count: jax.Array
    key: jax.Array
    momentum: PyTree
    rho: PyTree
    slab: tuple
    keep: tuple
    logit_theta: jax.Array
    target_done: jax.Array
    hyper: EMMCMCHyper
    xi: PyTree = None


def noise_tree(key: jax.Array, count: jax.Array, params: PyTree, dist: str = DEFAULT_NOISE) -> PyTree:
    """The noise draw ``xi_t`` of step ``count`` (mean 0, variance 1 per weight; same structure / dtypes as
    ``params``): :func:`emtdamp.sgmcmc.kernels.noise_like` of ``fold_in(key, count)``, ``dist = "three_point"``
    (default; ``±√3`` w.p. 1/6 each, 0 w.p. 2/3, moments to order 5 = the normal's) or ``"gaussian"``
    (``N(0, I)``)."""
    return noise_like(jax.random.fold_in(key, count), params, dist)


def step_size(state: EMMCMCState) -> jax.Array:
    """``lr_t = C^2`` at the state's step (cyclical schedule, spec B.3)."""
    h = state.hyper
    return cyclical_lr(state.count, h.c2_peak, h.cycle_epochs * h.steps_per_epoch.astype(h.c2_peak.dtype))


def posterior_std(state: EMMCMCState) -> PyTree:
    """Closed-form mean-field posterior std ``s = T C^1.5 sigmoid(rho)`` per weight (spec B.3 [D])."""
    h = state.hyper
    c15 = step_size(state) ** 0.75
    return jax.tree_util.tree_map(lambda r: h.temperature * c15 * jax.nn.sigmoid(r), state.rho)


def make_hyper(dtype=jnp.float32, *, n_data: float, c2_peak: float = 0.01, cycle_epochs: float = 0.0,
               beta1: float = 0.1, beta2: float = 1.0, eps0: float = 1e-1, eps1: float = 5e-4,
               eps_ungrouped: float = 0.0, soft_threshold: float = 1e-2, hard_threshold: float = 1e-3,
               eta: float = 0.1, temperature: float | None = None, theta_a: float = 1.0,
               theta_b: float = 1.0, prune_target: float = 0.0, warm_up: int = 50,
               steps_per_epoch: int = 0, em_enabled: bool = True, soft_estep: bool = False,
               update_theta: bool = False, rho_adapt_steps: int = -1) -> EMMCMCHyper:
    """Pack hyperparameters as arrays; ``temperature=None`` means ``T = sqrt(1/N)`` (notebooks).

    ``rho_adapt_steps``: the preconditioner logit ``rho`` is updated only while ``count < rho_adapt_steps``
    (``< 0``: always, the reference behaviour).
    """
    f = lambda v: jnp.asarray(v, dtype)
    t = (1.0 / n_data) ** 0.5 if temperature is None else temperature
    return EMMCMCHyper(
        c2_peak=f(c2_peak), cycle_epochs=f(cycle_epochs), beta1=f(beta1), beta2=f(beta2), eps0=f(eps0),
        eps1=f(eps1), eps_ungrouped=f(eps_ungrouped), soft_threshold=f(soft_threshold),
        hard_threshold=f(hard_threshold), eta=f(eta), temperature=f(t), n_data=f(n_data),
        theta_a=f(theta_a), theta_b=f(theta_b), prune_target=f(prune_target),
        warm_up=jnp.asarray(warm_up, jnp.int32), steps_per_epoch=jnp.asarray(steps_per_epoch, jnp.int32),
        em_enabled=jnp.asarray(em_enabled), soft_estep=jnp.asarray(soft_estep),
        update_theta=jnp.asarray(update_theta), rho_adapt_steps=jnp.asarray(rho_adapt_steps, jnp.int32))


def em_and_prune(params: PyTree, spec: GroupSpec, state: EMMCMCState) -> EMMCMCState:
    """One EM + pruning event (unconditional): E-step (hard or soft per ``hyper.soft_estep``),
    optional theta M-step, permanent pruning (+ the one-shot target the first time)."""
    h = state.hyper
    p_hard = em.hard_estep(params, spec, state.slab, h.soft_threshold)
    p_soft = em.soft_estep(params, spec, state.slab, h.eps0, h.eps1, h.n_data, state.logit_theta)
    slab = tuple(jnp.where(h.soft_estep, ps, ph) for ps, ph in zip(p_soft, p_hard, strict=True))
    lt_new = em.mstep_theta(spec, slab, h.theta_a, h.theta_b).astype(state.logit_theta.dtype)
    logit_theta = jnp.where(h.update_theta, lt_new, state.logit_theta)
    do_target = (h.prune_target > 0) & ~state.target_done
    keep = em.prune_keep(params, spec, state.keep, h.hard_threshold, h.prune_target, do_target)
    return state._replace(slab=slab, keep=keep, logit_theta=logit_theta,
                          target_done=state.target_done | (h.prune_target > 0))


def em_mcmc(spec: GroupSpec, key: jax.Array, hyper: EMMCMCHyper | None = None, store_noise: bool = False,
            noise_dist: str = DEFAULT_NOISE, posterior_noise: bool = False,
            **hyper_kwargs) -> optax.GradientTransformation:
    """EM-MCMC optimiser (adaptive mean-field VI = preconditioned SGHMC with a spike-and-slab group
    prior and one-shot pruning).

    Parameters
    ----------
    spec:
        Group layout of the params (:func:`emtdamp.em_mcmc.groups.flax_group_spec`).
    key:
        PRNG key for the initial momentum ``0.001 N(0,1)`` and the injected noise.
    hyper, **hyper_kwargs:
        An :class:`EMMCMCHyper` or the keyword arguments of :func:`make_hyper` (``n_data`` required):
        ``c2_peak`` peak step ``C^2``; ``cycle_epochs`` cosine cycle length (0 = constant);
        ``beta1`` momentum retention; ``beta2`` gradient scale; ``eps1``/``eps0`` slab/spike decay;
        ``eps_ungrouped`` decay of ungrouped leaves (biases; the code uses eps1, default 0 here);
        ``soft_threshold`` hard-E-step threshold on the group mean square; ``hard_threshold`` pruning
        threshold; ``eta`` preconditioner step; ``temperature`` ``T``; ``prune_target`` one-shot
        fraction of primary groups removed at the first EM event; ``warm_up`` epochs before EM;
        ``steps_per_epoch`` (0 = unknown: no EM, constant step, until set in ``state.hyper``);
        ``em_enabled`` (False = dense optimiser); ``soft_estep``; ``update_theta``; ``rho_adapt_steps``.
    store_noise:
        Keep the previous step's noise ``xi`` in the state (one more params-sized buffer, updated in
        place, one draw per step) instead of regenerating it from the key (two draws per step). Both give
        identical trajectories; storing is faster on CPU with either ``noise_dist`` (docs/speed.md).
    noise_dist:
        The injected noise ``xi`` (:func:`noise_tree`): ``"three_point"`` (default) or ``"gaussian"``. The
        initial momentum ``0.001 xi_0`` is drawn from the same distribution.
    posterior_noise:
        Inject the temperature-1 SGHMC noise ``sqrt(2 (1 - beta1) beta2 C^2 / (N tau))`` (module docstring)
        instead of the reference's ``sqrt(2 + 2 beta1^2) C^1.5 T``. Static, like ``noise_dist``.

    Notes
    -----
    The update returned is ``w_new - w`` so that ``optax.apply_updates`` gives ``w_new`` (pruned
    weights are exactly zero). ``update`` requires ``params``. Deviations from the reference code on
    purpose (spec B.6): the step counter is the true step (cycles line up with epochs), the EM gate
    uses the true number of batches per epoch, ungrouped (bias/BN) leaves are not decayed by default,
    and a soft E-step is available.
    """

    check_noise_dist(noise_dist)

    def init(params: PyTree) -> EMMCMCState:
        spec.check(params)
        leaves, treedef = jax.tree_util.tree_flatten(params)
        dtype = leaves[0].dtype
        h = hyper if hyper is not None else make_hyper(dtype, **hyper_kwargs)
        k_m, k_run = jax.random.split(key)
        mom = noise_tree(k_m, jnp.asarray(0, jnp.int32), params, noise_dist)
        mom = jax.tree_util.tree_map(lambda z: 0.001 * z, mom)
        rho = jax.tree_util.tree_map(jnp.zeros_like, params)
        return EMMCMCState(count=jnp.asarray(0, jnp.int32), key=k_run, momentum=mom, rho=rho,
                           slab=init_slab(params, spec), keep=init_keep(params, spec),
                           logit_theta=jnp.asarray(0.0, dtype), target_done=jnp.asarray(False), hyper=h,
                           xi=noise_tree(k_run, jnp.asarray(0, jnp.int32), params, noise_dist) if store_noise
                           else None)

    def update(grads: PyTree, state: EMMCMCState, params: PyTree | None = None):
        if params is None:
            raise ValueError("em_mcmc.update needs params")
        new_params, new_state = em_mcmc_step(spec, grads, state, params, noise_dist, posterior_noise)
        updates = jax.tree_util.tree_map(lambda a, b: a - b, new_params, params)
        return updates, new_state

    return optax.GradientTransformation(init, update)


def masked_params(params: PyTree, state: EMMCMCState) -> PyTree:
    """``params`` with the pruned groups of ``state.keep`` zeroed (they already are after a step)."""
    return apply_keep(params, state.keep)


def em_mcmc_step(spec: GroupSpec, grads: PyTree, state: EMMCMCState, params: PyTree,
                 noise_dist: str = DEFAULT_NOISE, posterior_noise: bool = False) -> tuple[PyTree, EMMCMCState]:
    """One EM-MCMC step returning the new params directly (see the module docstring for the rule).

    ``grads``: gradient of the minibatch *mean* loss at ``params`` (no prior term); ``noise_dist``: the
    distribution of ``xi`` (:func:`noise_tree`) and ``posterior_noise``: the noise kind, both static and the
    ones :func:`em_mcmc` was built with.
    """
    h = state.hyper
    is_em = h.em_enabled & em_gate(state.count, h.steps_per_epoch, h.warm_up)
    # EM + pruning only on EM steps (lax.cond: the statistics are not computed on the other steps)
    em_part = lambda s: (s.slab, s.keep, s.logit_theta, s.target_done)
    slab, keep, logit_theta, target_done = jax.lax.cond(
        is_em, lambda s: em_part(em_and_prune(params, spec, s)), em_part, state)
    state = state._replace(slab=slab, keep=keep, logit_theta=logit_theta, target_done=target_done)

    lr = step_size(state)
    c = jnp.sqrt(lr)
    c15 = c ** 1.5
    t = h.temperature
    eps = em.mstep_decay(spec, state.slab, h.eps0, h.eps1, h.eps_ungrouped)
    w_l, treedef = jax.tree_util.tree_flatten(params)
    g_l = treedef.flatten_up_to(grads)
    xi_prev = jax.tree_util.tree_leaves(
        noise_tree(state.key, state.count, params, noise_dist) if state.xi is None else state.xi)
    m_l = treedef.flatten_up_to(state.momentum)
    r_l = treedef.flatten_up_to(state.rho)
    noise_scale = jnp.sqrt(2.0 + 2.0 * h.beta1 ** 2) * c15 * t
    adapt = (h.rho_adapt_steps < 0) | (state.count < h.rho_adapt_steps)
    new_r = []
    for g, xp, r, e in zip(g_l, xi_prev, r_l, eps, strict=True):
        inv_tau = 1.0 + jnp.exp(-r)   # 1 / sigmoid(r)
        r_new = r - h.eta * (t ** 2 * c ** 3 * e / inv_tau + t * c15 * xp * g - inv_tau / h.n_data)
        new_r.append(jnp.where(adapt, r_new, r).astype(r.dtype))
    count_new = state.count + 1
    if state.xi is not None:
        # the stored noise is last read by the rho update above. Making the new draw depend on that update's
        # result (count + 0, the 0 = isnan(x) & isinf(x) of one updated element of every leaf, false for every x,
        # which XLA does not fold) orders the two, so XLA writes xi_new over xi_prev in place instead of copying
        # both buffers every step
        for r in new_r:
            first = r.reshape(-1)[0]
            count_new = count_new + (jnp.isnan(first) & jnp.isinf(first)).astype(count_new.dtype)
    xi_new = jax.tree_util.tree_leaves(noise_tree(state.key, count_new, params, noise_dist))
    new_w, new_m = [], []
    for w, g, xn, m, r, e, k in zip(w_l, g_l, xi_new, m_l, new_r, eps, state.keep, strict=True):
        tau = jax.nn.sigmoid(r)
        # temperature-1 SGHMC with velocity v = tau m: v <- beta1 v - (tau lr beta2 / N) grad U + tau sd xi
        # needs (tau sd)^2 = 2 (1 - beta1) (tau lr beta2 / N)
        sd = jnp.sqrt(2.0 * (1.0 - h.beta1) * h.beta2 * lr / (h.n_data * tau)) if posterior_noise else noise_scale
        m = h.beta1 * m - lr * h.beta2 * (g + e * w) + sd * xn
        wn = w + tau * m
        if len(k):
            wn = wn * weight_mask(k, w)
        new_w.append(wn.astype(w.dtype))
        new_m.append(m.astype(w.dtype))
    unf = lambda xs: jax.tree_util.tree_unflatten(treedef, xs)
    new_state = state._replace(count=state.count + 1, momentum=unf(new_m), rho=unf(new_r),
                               xi=None if state.xi is None else unf(xi_new))
    return unf(new_w), new_state
