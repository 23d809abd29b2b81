"""EM-MCMC (Ke & Fan; spec part B) as a registered training method, ``method.name: em_mcmc``.

The network is an :mod:`emtdamp.mlp` MLP; every kernel is grouped by input units (row ``j`` of the
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

``model.kind: cnn`` (:mod:`emtdamp.cnn`): the flax CNN params are grouped by
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

from emtdamp.cnn import build_network, kernels
from emtdamp.em_mcmc import EMMCMCState, compact_mlp, count_groups, em_mcmc, em_mcmc_step, flax_group_spec, make_hyper
from emtdamp.em_mcmc.groups import weight_mask
from emtdamp.losses import data_loss, point_predictive
from emtdamp.methods.base import Batch, DataSpec, Method, ModelSpec, Predictive, hparam, register


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
    sparse: bool = hparam(True, doc="False: dense adaptive VB / SGHMC (no EM, no pruning)")
    warm_up: int = hparam(50, range=(0, 10**7), doc="epochs before EM and pruning start (EM at epoch > warm_up)")
    eta: float = hparam(0.1, range=(0.0, 1e6), doc="step on the preconditioner logit rho")
    temperature_power: float = hparam(0.5, range=(0.0, 2.0), doc="T = N^(-power): 0.5 notebooks, 1 CIFAR")
    init_scale: float = hparam(1.0, range=(0.0, 10.0),
                               doc="multiplies the N(0, 1/fan_in) init (1/sqrt(3): PyTorch Linear variance)")
    steps_per_epoch: int = hparam(0, range=(0, 10**9), doc="0 = measured after the first epoch")
    store_noise: bool = hparam(False, doc="keep the last noise draw in the state: one params-sized buffer "
                                          "more, half the random draws per step (faster on CPU)")
    loss_scale: float = hparam(1.0, range=(1e-6, 1e6),
                               doc="regression: the loss is loss_scale * MSE on standardised targets; "
                                   "y_std**2 reproduces a raw-unit MSE (the notebooks' loss)")

    def check_train(self, train) -> None:
        """Config cross-check: with ``sparse`` on, EM must get a chance to run (spec B.6 item 1)."""
        if self.sparse and self.warm_up >= train.epochs:
            raise ValueError(f"warm_up={self.warm_up} >= train.epochs={train.epochs}: EM and pruning would never "
                             "run; lower method.warm_up or raise train.epochs (or set method.sparse=false)")


@chex.dataclass
class EMMCMCMethodState:
    """Params (the current sample), optimiser state, residual-variance estimate, step count."""

    params: Any  # MLP: list of {"kernel", "bias"}; CNN: flax params dict
    opt: EMMCMCState
    noise_var: jax.Array
    count: jax.Array


def _loss_fn(apply_fn, params, batch: Batch, task: str, loss_scale: float = 1.0):
    """Minibatch mean loss (padding rows weighted out; regression scaled by ``loss_scale``) and the
    unscaled data loss."""
    data = data_loss(apply_fn, params, batch, task)
    return (loss_scale * data if task == "regression" else data), data


def build_em_mcmc() -> Method:
    cfg: dict = {}

    def init(key, model: ModelSpec, data: DataSpec, hp: EMMCMCHParams) -> EMMCMCMethodState:
        init_fn, apply_fn = build_network(model, data)
        k_p, k_o = jax.random.split(key)
        params = jax.tree_util.tree_map_with_path(
            lambda path, v: v * hp.init_scale if getattr(path[-1], "key", None) == "kernel" else v, init_fn(k_p))
        spec = flax_group_spec(params)  # = mlp_group_spec for an MLP
        dtype = kernels(params)[0].dtype
        n = float(data.n_train)
        hyper = make_hyper(
            dtype, n_data=n, c2_peak=hp.c2_peak, cycle_epochs=hp.cycle_epochs, beta1=hp.beta1,
            beta2=hp.beta2, eps0=hp.eps0, eps1=hp.eps1, eps_ungrouped=hp.eps_bias,
            soft_threshold=hp.soft_threshold, hard_threshold=hp.hard_threshold, eta=hp.eta,
            temperature=n ** (-hp.temperature_power), prune_target=hp.prune_target, warm_up=hp.warm_up,
            steps_per_epoch=hp.steps_per_epoch, em_enabled=hp.sparse, soft_estep=hp.estep == "soft",
            update_theta=hp.update_theta)
        tx = em_mcmc(spec, k_o, hyper, store_noise=hp.store_noise)
        opt = tx.init(params)
        lt = float(np.log(hp.theta0) - np.log1p(-hp.theta0))
        opt = opt._replace(logit_theta=jnp.asarray(lt, dtype))
        cfg.update(task=data.task, apply=apply_fn, kind=model.kind, spec=spec, loss_scale=hp.loss_scale)
        return EMMCMCMethodState(params=params, opt=opt, noise_var=jnp.asarray(1.0, dtype),
                                 count=jnp.asarray(0, jnp.int32))

    def step(state: EMMCMCMethodState, batch: Batch):
        (_, loss), grads = jax.value_and_grad(_loss_fn, argnums=1, has_aux=True)(
            cfg["apply"], state.params, batch, cfg["task"], cfg["loss_scale"])
        params, opt = em_mcmc_step(cfg["spec"], grads, state.opt, state.params)
        noise_var = state.noise_var
        if cfg["task"] == "regression":
            noise_var = jnp.where(state.count == 0, loss, 0.95 * noise_var + 0.05 * loss)
        kept = sum(jnp.sum(k[0]) for k in opt.keep if len(k))
        new = state.replace(params=params, opt=opt, noise_var=noise_var, count=state.count + 1)
        return new, {"loss": loss, "groups_kept": kept.astype(loss.dtype)}

    def end_epoch(state: EMMCMCMethodState, epoch) -> EMMCMCMethodState:
        h = state.opt.hyper
        measured = (state.opt.count // (jnp.asarray(epoch, jnp.int32) + 1)).astype(jnp.int32)
        spe = jnp.where(h.steps_per_epoch > 0, h.steps_per_epoch, measured)
        return state.replace(opt=state.opt._replace(hyper=h._replace(steps_per_epoch=spe)))

    def predict(state: EMMCMCMethodState, x) -> Predictive:
        return point_predictive(cfg["apply"](state.params, x), cfg["task"], state.noise_var)

    def sparsity(state: EMMCMCMethodState) -> dict:
        pruned, total = count_groups(state.opt.keep)
        zeros = sum(int(jnp.sum(k == 0)) for k in kernels(state.params))
        n_w = sum(int(k.size) for k in kernels(state.params))
        if cfg["kind"] == "mlp":
            small, _ = compact_mlp(state.params, state.opt.keep)  # the physically smaller network
            remaining = sum(int(v.size) for layer in small for v in layer.values())
        else:  # CNN: counted from the masks (kept kernel entries + every bias), not compacted
            leaves = jax.tree_util.tree_leaves(state.params)
            remaining = sum(int(jnp.sum(weight_mask(k, w))) if len(k) else int(w.size)
                            for w, k in zip(leaves, state.opt.keep, strict=True))
        return {"neurons_pruned_frac": pruned / max(total, 1), "weights_zero_frac": zeros / max(n_w, 1),
                "params_remaining": remaining}

    return Method(name="em_mcmc", hparams_cls=EMMCMCHParams, init=init, step=step, predict=predict,
                  sparsity=sparsity, end_epoch=end_epoch,
                  description="EM-MCMC (Ke & Fan): adaptive mean-field VI / preconditioned SGHMC with a "
                              "spike-and-slab group prior and one-shot group pruning")


register("em_mcmc")(build_em_mcmc)
