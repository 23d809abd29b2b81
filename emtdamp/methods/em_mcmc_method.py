"""EM-MCMC (Ke & Fan; spec part B) as a registered training method, ``method.name: em_mcmc``.

Posterior (issue 16): ``predict`` is the equal-weight mixture over the last ``n_samples`` iterates
collected every ``thin`` steps after ``burn_in`` epochs (:func:`sample_predictive`; ring buffer of
:mod:`emtdamp.sgmcmc.samples`). ``noise: posterior`` injects the temperature-1 SGHMC noise (the
reference noise is a cold chain) and freezes the preconditioner after the burn-in.
``learn_noise`` (regression) replaces ``loss_scale * MSE`` by the Gaussian per-datum NLL
``sum_d (y - f)^2 / (2 v)`` with ``v`` from an M-step at every epoch end (:func:`noise_mstep`); ``v``
is also the noise part of the predictive variance. See docs/em_mcmc.md, section 10.

The network is an :mod:`emtdamp.models.mlp` MLP; every kernel is grouped by input units (row ``j`` of the
``(in, out)`` kernel), so a removed first-layer group deselects input variable ``j``. The optimiser
is :func:`emtdamp.em_mcmc.em_mcmc_step` on the minibatch *mean* loss (``loss_scale`` times the squared
error on standardised targets / softmax cross-entropy), padding rows weighted out. The weight decays
``eps`` are in these mean-loss units (prior ``N(0, 1/(N eps))``), so standardising the targets changes
the balance between data and prior; ``loss_scale`` restores a raw-unit scale where a reference
trained on raw targets.

``steps_per_epoch`` is not known to ``init`` (the batch size lives in the ``train`` block); with the
default ``steps_per_epoch: 0`` it is measured in ``end_epoch`` after the first epoch (during epoch 0
the step size is the peak ``c2_peak`` and no EM can happen anyway, since EM needs ``epoch > warm_up``).
``cycle_epochs`` (cosine cycle length in epochs) replaces the reference's ``(epochs, M)`` pair:
set it to ``epochs / M``.

``model.kind: cnn`` (:mod:`emtdamp.models.cnn`): the flax CNN params are grouped by
:func:`~emtdamp.em_mcmc.flax_group_spec` (conv kernels: E-step groups = single ``k x k`` kernels,
pruning families = input then output channels by range, spec B.4; dense kernels as for the MLP).
The CNN is not physically compacted: ``sparsity`` reports ``params_remaining`` from the keep masks
(unmasked kernel entries plus all biases) and ``neurons_pruned_frac`` over the primary (input-channel
/ input-unit) families.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from emtdamp.em_mcmc import EMMCMCState, compact_mlp, count_groups, em_mcmc, em_mcmc_step, flax_group_spec, make_hyper
from emtdamp.em_mcmc.groups import weight_mask
from emtdamp.losses import data_loss
from emtdamp.methods.base import Algorithm, Batch, DataSpec, Method, Mixture, ModelSpec, Predictive, hparam
from emtdamp.methods.registry import register
from emtdamp.models.network import build_network, kernels
from emtdamp.pytrees import is_kernel
from emtdamp.sgmcmc.kernels import DEFAULT_NOISE, NOISE_DISTS
from emtdamp.sgmcmc.samples import (
    SampleBuffer,
    buffer_init,
    buffer_update,
    buffer_weights,
    mixture_moments,
    mixture_probs,
    ring_samples,
)


@dataclasses.dataclass(frozen=True)
class EMMCMCHParams:
    """Hyperparameters of EM-MCMC (names follow spec B.2)."""

    c2_peak: float = hparam(0.01, range=(0.0, 10.0), doc="peak step size C^2 of the cosine cycles")
    cycle_epochs: float = hparam(0.0, range=(0.0, 1e6),
                                 doc="cosine cycle length in epochs (epochs / M); 0 = constant c2_peak")
    beta1: float = hparam(0.1, range=(0.0, 1.0), doc="momentum retention (1 - friction)")
    beta2: float = hparam(1.0, range=(0.0, 1.0), doc="gradient scale")
    eps1: float = hparam(5e-4, range=(0.0, 10.0), doc="slab weight decay (prior w ~ N(0, 1/(N eps1)))")
    eps0: float = hparam(1e-1, range=(0.0, 10.0), doc="spike weight decay")
    eps_bias: float = hparam(0.0, range=(0.0, 10.0),
                             doc="decay of ungrouped params (biases); the reference code used eps1")
    estep: str = hparam("hard", choices=("hard", "soft"),
                        doc="hard: code's threshold on group mean square; soft: posterior p*_g (spec B.3)")
    soft_threshold: float = hparam(1e-2, range=(0.0, 1e6), doc="hard E-step threshold on mean(w_g^2)")
    theta0: float = hparam(0.5, range=(1e-6, 1.0 - 1e-6), doc="prior inclusion probability (soft E-step)")
    update_theta: bool = hparam(False, doc="M-step for theta (mean of p*_g) at each EM event")
    hard_threshold: float = hparam(1e-3, range=(0.0, 1e6), doc="permanent pruning threshold on mean(w_g^2)")
    prune_target: float = hparam(0.0, range=(0.0, 1.0),
                                 doc="one-shot: fraction of each layer's input groups removed at the "
                                     "first EM event (0 = threshold only)")
    target_density: float = hparam(1.0, range=(1e-6, 1.0),
                                   doc="κ: share of each layer's input groups kept by the one-shot prune, the knob "
                                       "emtdamp and the compression baselines share (= 1 - prune_target; "
                                       "1 = use prune_target)")
    sparse: bool = hparam(True, doc="False: dense adaptive VB / SGHMC (no EM, no pruning)")
    warm_up: int = hparam(50, range=(0, 10**7), doc="epochs before EM and pruning start (EM at epoch > warm_up)")
    eta: float = hparam(0.1, range=(0.0, 1e6), doc="step on the preconditioner logit rho")
    temperature_power: float = hparam(0.5, range=(0.0, 2.0), doc="T = N^(-power): 0.5 notebooks, 1 CIFAR")
    init_scale: float = hparam(1.0, range=(0.0, 10.0),
                               doc="multiplies the N(0, 1/fan_in) init (1/sqrt(3): PyTorch Linear variance)")
    steps_per_epoch: int = hparam(0, range=(0, 10**9), doc="0 = measured after the first epoch")
    store_noise: bool = hparam(True, doc="keep the last noise draw in the state: one params-sized buffer "
                                         "more, half the random draws per step (default, faster on CPU; false "
                                         "regenerates it from the key, the same trajectory at twice the draws)")
    loss_scale: float = hparam(1.0, range=(1e-6, 1e6),
                               doc="regression without learn_noise: the loss is loss_scale * MSE on standardised "
                                   "targets (= Gaussian NLL with fixed noise variance 1/(2 loss_scale)); "
                                   "y_std**2 reproduces a raw-unit MSE (the notebooks' loss)")
    noise_dist: str = hparam(DEFAULT_NOISE, choices=NOISE_DISTS,
                             doc="distribution of the injected noise xi (mean 0, variance 1): 'three_point' = "
                                 "±√3 w.p. 1/6 each, 0 w.p. 2/3 (moments to order 5 = the normal's; Kloeden & "
                                 "Platen 1992 §14.2; docs/speed.md), 'gaussian' = N(0, 1)")
    noise: str = hparam("reference", choices=("reference", "posterior"),
                        doc="injected noise: reference = sqrt(2+2 beta1^2) C^1.5 T (spec B.3, cold); posterior = "
                            "temperature-1 SGHMC noise sqrt(2 (1-beta1) beta2 C^2/(N tau)), rho adapted "
                            "during burn-in only")
    learn_noise: bool = hparam(False, doc="regression: Gaussian likelihood sum_d (y-f)^2/(2 v) with the noise "
                                          "variance v fitted by an M-step at the end of every epoch")
    noise_init: float = hparam(1.0, range=(1e-8, 1e6), doc="initial noise variance v (standardised units)")
    noise_floor: float = hparam(1e-6, range=(0.0, 1e6), doc="lower bound of the noise M-step (standardised)")
    burn_in: int = hparam(0, range=(0, 10**7), doc="epochs before iterates are collected for the predictive")
    thin: int = hparam(1, range=(1, 10**9), doc="collect every thin-th iteration (steps) after burn-in")
    n_samples: int = hparam(20, range=(1, 10_000),
                            doc="ring-buffer size: predict averages the last n_samples collected iterates")

    def check_train(self, train) -> None:
        """Config cross-check: with ``sparse`` on, EM must get a chance to run (spec B.6 item 1)."""
        if self.sparse and self.warm_up >= train.epochs:
            raise ValueError(f"warm_up={self.warm_up} >= train.epochs={train.epochs}: EM and pruning would never "
                             "run; lower method.warm_up or raise train.epochs (or set method.sparse=false)")


@chex.dataclass
class EMMCMCMethodState:
    """Params (the current sample), optimiser state, noise variance, collected samples, step count.

    noise_var: scalar observation-noise variance ``v`` (standardised target units; regression), the
    last M-step's value (``noise_init`` during epoch 0). rss: ``(2,)`` running ``[sum of squared
    residuals, number of residuals]`` of the current epoch (training minibatches at the iterates the
    gradients are taken at), reset by the M-step. burn_in_epochs: int scalar. samples: ring buffer of
    thinned ``{"params", "noise_var"}`` iterates (:mod:`emtdamp.sgmcmc.samples`; its ``burn_in`` in
    iterations is set once the number of steps per epoch is known).
    """

    params: Any  # MLP: list of {"kernel", "bias"}; CNN: flax params dict
    opt: EMMCMCState
    noise_var: jax.Array
    rss: jax.Array
    burn_in_epochs: jax.Array
    samples: SampleBuffer
    count: jax.Array


def _loss_fn(apply_fn, params, batch: Batch, task: str, loss_scale: float = 1.0, noise_var=None):
    """Minibatch mean loss ``lbar`` and ``(data loss, rss, n_resid)`` (padding rows weighted out).

    Regression with ``noise_var`` given: ``lbar = mean_rows sum_d (y - f)^2 / (2 v)`` (Gaussian NLL per
    datum up to constants); without: ``loss_scale * MSE``. Classification: softmax cross-entropy.
    ``rss`` is the weighted sum of squared residuals, ``n_resid`` the number of residuals (rows x outputs).
    """
    out = apply_fn(params, batch.x)
    n = jnp.maximum(batch.w.sum(), 1.0)
    if task != "regression":
        data = data_loss(apply_fn, params, batch, task)
        return data, (data, jnp.zeros_like(data), jnp.zeros_like(data))
    r2 = jnp.sum((out - batch.y) ** 2, axis=-1)                       # (B,)
    rss = jnp.sum(r2 * batch.w)
    data = rss / (n * out.shape[-1])                                  # MSE over rows and outputs
    loss = loss_scale * data if noise_var is None else rss / (2.0 * noise_var * n)
    return loss, (data, rss, jnp.sum(batch.w) * out.shape[-1])


def noise_mstep(rss: jax.Array, noise_var: jax.Array, floor) -> jax.Array:
    """Noise-variance M-step ``v = max(floor, sum r^2 / n_resid)`` from ``rss = [sum r^2, n_resid]``.

    Maximises ``E[log p(D | w, v)]`` over ``v`` with the expectation over the epoch's iterates (Monte
    Carlo EM with the sampler's iterates; minibatches of one epoch cover the training set once). Keeps
    ``noise_var`` when nothing was accumulated.
    """
    v = jnp.maximum(rss[0] / jnp.maximum(rss[1], 1.0), floor)
    return jnp.where(rss[1] > 0, v, noise_var).astype(noise_var.dtype)


def _burn_in_steps(burn_in_epochs: int, steps_per_epoch: int) -> int:
    """Burn-in in iterations: known at init only if ``steps_per_epoch`` is given; otherwise nothing
    is collected (and rho keeps adapting) until ``end_epoch`` has measured it (0 epochs: from step 1)."""
    if burn_in_epochs == 0:
        return 0
    return burn_in_epochs * steps_per_epoch if steps_per_epoch > 0 else 2**31 - 1


def sample_predictive(apply_fn, state: EMMCMCMethodState, x: jax.Array, task: str) -> Predictive:
    """Posterior predictive: equal-weight mixture over the collected iterates in the ring buffer.

    Each slot holds ``{"params", "noise_var"}`` (the noise variance in effect when the iterate was made).
    Regression: mean ``sum_s w_s f_s(x)``, variance ``sum_s w_s (f_s(x) - mean)^2 + sum_s w_s v_s`` (the
    mixture of the samples' Gaussians ``N(f_s, v_s)``); classification: ``sum_s w_s softmax(f_s(x))``.
    With nothing collected yet (burn-in) it falls back to the current iterate (variance ``v``).
    ``x (n, d) -> Predictive`` with ``(n, d_out)`` / ``(n, K)`` arrays.
    """
    ring = ring_samples(state.samples)
    w = buffer_weights(state.samples)                                # (S,), zeros on empty slots
    have = state.samples.n_collected > 0
    outs = jax.lax.map(lambda p: apply_fn(p, x), ring["params"])     # (S, n, d): one sample at a time
    cur = apply_fn(state.params, x)
    if task == "regression":
        mean, var_f = mixture_moments(outs, w)
        v = jnp.where(have, jnp.sum(w * ring["noise_var"]), state.noise_var)
        return Predictive(mean=jnp.where(have, mean, cur), var=jnp.where(have, var_f, 0.0) + v)
    return Predictive(probs=jnp.where(have, mixture_probs(outs, w), jax.nn.softmax(cur, axis=-1)))


def sample_mixture(apply_fn, state: EMMCMCMethodState, x: jax.Array, task: str) -> Mixture:
    """The posterior predictive of :func:`sample_predictive` as its components: one per collected iterate
    (output ``(S, n, d)`` and the noise variance kept with it), the current iterate during burn-in."""
    ring = ring_samples(state.samples)
    have = state.samples.n_collected > 0
    w = buffer_weights(state.samples)
    w = jnp.where(have, w, jnp.zeros_like(w).at[0].set(1.0))
    outs = jax.lax.map(lambda p: apply_fn(p, x), ring["params"])
    outs = jnp.where(have, outs, apply_fn(state.params, x)[None])
    if task == "regression":
        v = jnp.where(have, ring["noise_var"], state.noise_var)
        return Mixture(weights=w, mean=outs, var=jnp.broadcast_to(v[:, None, None], outs.shape))
    return Mixture(weights=w, probs=jax.nn.softmax(outs, axis=-1))


def build_em_mcmc() -> Method:
    def build(model: ModelSpec, data: DataSpec, hp: EMMCMCHParams) -> Algorithm:
        init_fn, apply_fn = build_network(model, data)
        if hp.target_density < 1.0 and hp.prune_target > 0:
            raise ValueError(f"em_mcmc: target_density={hp.target_density} and prune_target={hp.prune_target} set "
                             "the same cut twice; keep one (target_density = 1 - prune_target)")
        prune_target = 1.0 - hp.target_density if hp.target_density < 1.0 else hp.prune_target
        if hp.learn_noise and hp.loss_scale != 1.0:
            raise ValueError("em_mcmc: learn_noise replaces loss_scale (the noise variance is learned); "
                             f"leave loss_scale at 1, got {hp.loss_scale}")

        def init_params(k):
            return jax.tree_util.tree_map_with_path(
                lambda path, v: v * hp.init_scale if is_kernel(path) else v, init_fn(k))

        shapes = jax.eval_shape(init_params, jax.random.PRNGKey(0))
        spec = flax_group_spec(shapes)  # = mlp_group_spec for an MLP
        dtype = kernels(shapes)[0].dtype
        n = float(data.n_train)
        posterior_noise = hp.noise == "posterior"
        hyper = make_hyper(
            dtype, n_data=n, c2_peak=hp.c2_peak, cycle_epochs=hp.cycle_epochs, beta1=hp.beta1,
            beta2=hp.beta2, eps0=hp.eps0, eps1=hp.eps1, eps_ungrouped=hp.eps_bias,
            soft_threshold=hp.soft_threshold, hard_threshold=hp.hard_threshold, eta=hp.eta,
            temperature=n ** (-hp.temperature_power), prune_target=prune_target, warm_up=hp.warm_up,
            steps_per_epoch=hp.steps_per_epoch, em_enabled=hp.sparse, soft_estep=hp.estep == "soft",
            update_theta=hp.update_theta,
            rho_adapt_steps=_burn_in_steps(hp.burn_in, hp.steps_per_epoch) if posterior_noise else -1)
        task, kind = data.task, model.kind
        learn_noise = hp.learn_noise and data.task == "regression"

        def init(key) -> EMMCMCMethodState:
            k_p, k_o = jax.random.split(key)
            params = init_params(k_p)
            tx = em_mcmc(spec, k_o, hyper, store_noise=hp.store_noise, noise_dist=hp.noise_dist,
                         posterior_noise=posterior_noise)
            opt = tx.init(params)
            lt = float(np.log(hp.theta0) - np.log1p(-hp.theta0))
            opt = opt._replace(logit_theta=jnp.asarray(lt, dtype))
            noise_var = jnp.asarray(hp.noise_init, dtype)
            samples = buffer_init({"params": params, "noise_var": noise_var}, hp.n_samples,
                                  _burn_in_steps(hp.burn_in, hp.steps_per_epoch), hp.thin)
            state = EMMCMCMethodState(params=params, opt=opt, noise_var=noise_var,
                                      rss=jnp.zeros(2, dtype), burn_in_epochs=jnp.asarray(hp.burn_in, jnp.int32),
                                      samples=samples, count=jnp.asarray(0, jnp.int32))
            # distinct buffers for every leaf: the training loop donates the state to its jitted epoch
            return jax.tree_util.tree_map(lambda v: jnp.array(v, copy=True), state)

        def step(state: EMMCMCMethodState, batch: Batch):
            v = state.noise_var if learn_noise else None
            (_, (loss, rss, n_res)), grads = jax.value_and_grad(_loss_fn, argnums=1, has_aux=True)(
                apply_fn, state.params, batch, task, hp.loss_scale, v)
            params, opt = em_mcmc_step(spec, grads, state.opt, state.params, hp.noise_dist, posterior_noise)
            count = state.count + 1
            samples = buffer_update(state.samples, {"params": params, "noise_var": state.noise_var}, count)
            kept = sum(jnp.sum(k[0]) for k in opt.keep if len(k))
            new = state.replace(params=params, opt=opt, rss=state.rss + jnp.stack([rss, n_res]).astype(state.rss.dtype),
                                samples=samples, count=count)
            return new, {"loss": loss, "groups_kept": kept.astype(loss.dtype), "noise_var": state.noise_var}

        def end_epoch(state: EMMCMCMethodState, epoch) -> EMMCMCMethodState:
            h = state.opt.hyper
            measured = (state.opt.count // (jnp.asarray(epoch, jnp.int32) + 1)).astype(jnp.int32)
            spe = jnp.where(h.steps_per_epoch > 0, h.steps_per_epoch, measured)
            burn = state.burn_in_epochs * spe                               # burn-in in iterations
            rho_adapt = (burn if posterior_noise else jnp.full_like(burn, -1)).astype(jnp.int32)
            opt = state.opt._replace(hyper=h._replace(steps_per_epoch=spe, rho_adapt_steps=rho_adapt))
            noise_var = noise_mstep(state.rss, state.noise_var, hp.noise_floor) if task == "regression" \
                else state.noise_var
            return state.replace(opt=opt, noise_var=noise_var, rss=jnp.zeros_like(state.rss),
                                 samples=state.samples.replace(burn_in=burn.astype(jnp.int32)))

        def predict(state: EMMCMCMethodState, x) -> Predictive:
            return sample_predictive(apply_fn, state, x, task)

        def predict_mixture(state: EMMCMCMethodState, x) -> Mixture:
            return sample_mixture(apply_fn, state, x, task)

        def sparsity(state: EMMCMCMethodState) -> dict:
            pruned, total = count_groups(state.opt.keep)
            zeros = sum(int(jnp.sum(k == 0)) for k in kernels(state.params))
            n_w = sum(int(k.size) for k in kernels(state.params))
            if kind == "mlp":
                small, _ = compact_mlp(state.params, state.opt.keep)  # the physically smaller network
                remaining = sum(int(v.size) for layer in small for v in layer.values())
            else:  # CNN: counted from the masks (kept kernel entries + every bias), not compacted
                leaves = jax.tree_util.tree_leaves(state.params)
                remaining = sum(int(jnp.sum(weight_mask(k, w))) if len(k) else int(w.size)
                                for w, k in zip(leaves, state.opt.keep, strict=True))
            return {"neurons_pruned_frac": pruned / max(total, 1), "weights_zero_frac": zeros / max(n_w, 1),
                    "params_remaining": remaining}

        return Algorithm(init=init, step=step, predict=predict, sparsity=sparsity, end_epoch=end_epoch,
                         predict_mixture=predict_mixture)

    return Method(name="em_mcmc", hparams_cls=EMMCMCHParams, build=build,
                  description="EM-MCMC (Ke & Fan): adaptive mean-field VI / preconditioned SGHMC with a "
                              "spike-and-slab group prior and one-shot group pruning")


register("em_mcmc")(build_em_mcmc)
