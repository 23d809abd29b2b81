"""EM-TDAMP as a registered training method (``method.name: emtdamp``).

``step`` = one minibatch of the TDAMP E-step (``I_A`` turbo DAMP iterations) + PasP + the streaming
M-step; ``end_epoch`` = per-epoch M-step (when ``v_schedule="epoch"``), the pruning schedule and the
reset of the accumulated group evidence; ``predict`` = moment propagation (or the plug-in network);
``sparsity`` = :func:`emtdamp.tdamp.prune.sparsity`. See docs/emtdamp.md for the algorithm.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from emtdamp import tdamp
from emtdamp.methods.base import Algorithm, Batch, DataSpec, Method, ModelSpec, Predictive, hparam
from emtdamp.methods.registry import register
from emtdamp.models import mlp
from emtdamp.tdamp import em, prune
from emtdamp.tdamp.class_probs import CLASS_RULES
from emtdamp.tdamp.state import (
    EVIDENCE_MODES,
    INIT_MEANS,
    OUTPUT_MODELS,
    RHO_MODES,
    V_SCHEDULES,
    V_UPDATES,
    TdampHParams,
)


@dataclasses.dataclass(frozen=True)
class EmtdampHParams:
    """Hyperparameters of EM-TDAMP (spec sections 2.5, 3, 4; defaults follow the spec)."""

    n_iter: int = hparam(1, range=(1, 20), doc="I_A: DAMP iterations per minibatch")
    beta: float = hparam(0.5, range=(0.01, 1.0), doc="damping of the Module-A outputs (1 = none)")
    rho_mode: str = hparam("group", choices=RHO_MODES, doc="support-prior M-step: per group, per layer, fixed")
    rho0: float = hparam(0.99, range=(1e-6, 1.0), doc="initial support probability of every group")
    rho_clip: float = hparam(1e-5, range=(0.0, 0.5), doc="rho clipped to [eps, 1-eps] by the M-step (spec: 1e-3)")
    v_update: str = hparam("closed_form", choices=V_UPDATES, doc="noise-variance M-step")
    v_passes: int = hparam(1, range=(1, 10), doc="fixed-point passes of the classification closed form")
    v_ema: float = hparam(0.0, range=(0.0, 0.999), doc="v <- v_ema v + (1 - v_ema) v_new (0 = plain EM)")
    v_schedule: str = hparam("minibatch", choices=V_SCHEDULES, doc="v M-step after every minibatch or epoch")
    v_warm: int = hparam(0, range=(0, 100000),
                         doc="v_schedule=epoch: first epochs whose v moves after every minibatch (0 = none)")
    v0: float = hparam(1.0, range=(1e-6, 1e6), doc="initial noise variance")
    lambda_f: float = hparam(1.0, range=(1e-3, 1.0),
                              doc="PasP forgetting: prior <- posterior^lf x initial prior^(1-lf) per minibatch "
                                  "(1 = pure PasP; ~1 - batch/n_train keeps ~1 epoch of evidence, for long runs)")
    evidence: str = hparam("repeat", choices=EVIDENCE_MODES,
                           doc="PasP across epochs: 'repeat' (spec: every epoch re-counts the data) or 'once' "
                               "(likelihood messages kept per epoch, posterior = one pass of evidence)")
    sigma0_sq: float = hparam(0.0, range=(0.0, 100.0), doc="initial slab variance (0 = gamma / fan-in)")
    gamma: float = hparam(0.1, range=(1e-6, 100.0), doc="slab variance gamma / fan-in when sigma0_sq = 0")
    sigmab0_sq: float = hparam(1.0, range=(1e-6, 100.0), doc="initial bias prior variance")
    init_means: str = hparam("lecun", choices=INIT_MEANS,
                             doc="initial weight/bias means = prior means (the anchor): 'lecun' (spec: N(0, 1/fan-in) "
                                 "kernels, zero biases) or 'prior' (a draw from the initial prior N(0, slab var), "
                                 "N(0, sigmab0_sq): anchored-ensemble fits that differ where there is no data)")
    prune: str = hparam("none", choices=prune.PRUNE_MODES, doc="pruning: none, free (pi > 0.5), target kappa")
    target_density: float = hparam(1.0, range=(0.0, 1.0), doc="kept-group share kappa (prune=target)")
    warm: int = hparam(10, range=(0, 100000), doc="unpruned warm-up epochs before pruning starts")
    ramp: int = hparam(20, range=(1, 100000), doc="epochs over which the kept share ramps from 1 to kappa")
    prune_inputs: bool = hparam(True, doc="whether input features (first-layer groups) may be pruned")
    plug_in: bool = hparam(False, doc="predict with the posterior-mean network instead of moment propagation")
    output_model: str = hparam("probit", choices=OUTPUT_MODELS,
                               doc="classification likelihood: 'probit' (spec: product of pairwise probits, noise "
                                   "variance v by EM) or 'softmax' (mean-field softmax, no v; docs/emtdamp.md)")
    class_rule: str = hparam("product", choices=CLASS_RULES,
                             doc="probit output model's class probabilities: 'product' (spec: normalised product of "
                                 "pairwise probits) or 'max' (P of the largest noisy score; emtdamp.tdamp.class_probs)")


def tdamp_hparams(hp: EmtdampHParams, task: str, dtype: str) -> TdampHParams:
    """The static :class:`~emtdamp.tdamp.TdampHParams` for a method configuration."""
    return TdampHParams(task=task, output_model=hp.output_model, n_iter=hp.n_iter, beta=hp.beta,
                        rho_mode=hp.rho_mode, v_update=hp.v_update,
                        v_passes=hp.v_passes, v_ema=hp.v_ema, v_schedule=hp.v_schedule, v_warm=hp.v_warm,
                        lambda_f=hp.lambda_f,
                        evidence=hp.evidence, sigma0_sq=hp.sigma0_sq, gamma=hp.gamma, sigmab0_sq=hp.sigmab0_sq,
                        init_means=hp.init_means,
                        rho0=hp.rho0, rho_clip=hp.rho_clip, v0=hp.v0, dtype=dtype)


def tdamp_predictive(state, x, task: str, plug_in: bool, class_rule: str = "product",
                     output_model: str = "probit") -> Predictive:
    """:func:`emtdamp.tdamp.predict` as a :class:`Predictive` (moment propagation or plug-in)."""
    out = tdamp.predict(state, x, plug_in=plug_in, task=task, class_rule=class_rule, output_model=output_model)
    return Predictive(mean=out[0], var=out[1]) if task == "regression" else Predictive(probs=out)


@register("emtdamp")
def build_emtdamp() -> Method:
    """EM-TDAMP (Xu et al., 2024) as a :class:`~emtdamp.methods.base.Method`."""

    def build(model: ModelSpec, data: DataSpec, hp: EmtdampHParams) -> Algorithm:
        mlp.require_mlp(model, "emtdamp", "its message passing runs over the declared MLP's layers")
        if model.activation != "relu":
            raise ValueError(f"emtdamp supports ReLU networks only (got activation {model.activation!r})")
        dtype = str(jnp.dtype(jnp.result_type(float)))  # float64 when x64 is enabled, else float32
        task, thp, sizes = data.task, tdamp_hparams(hp, data.task, dtype), model.layer_sizes(data)

        def init(key):
            return tdamp.init(key, sizes, thp)

        def step(state, batch: Batch):
            state, info = tdamp.step(state, batch.x, batch.y, thp, batch.w)
            state = em.m_step(state, thp, info["zstats"])
            return state, {"loss": info["loss"], "v": state.v}

        def end_epoch(state, epoch):
            state = em.end_epoch_v(state, thp)
            state = tdamp.end_epoch(state, thp)
            return prune.end_epoch(state, epoch, mode=hp.prune, kappa=hp.target_density, warm=hp.warm,
                                   ramp=hp.ramp, prune_inputs=hp.prune_inputs)

        def predict(state, x) -> Predictive:
            return tdamp_predictive(state, x, task, hp.plug_in, hp.class_rule, hp.output_model)

        return Algorithm(init=init, step=step, predict=predict, sparsity=prune.sparsity, end_epoch=end_epoch)

    return Method(name="emtdamp", hparams_cls=EmtdampHParams, build=build,
                  description="EM-TDAMP: group-sparse Bayesian MLP by turbo deep AMP + EM (message passing)")
