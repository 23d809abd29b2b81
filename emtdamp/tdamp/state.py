"""Static settings, the state pytree and its initialization for EM-TDAMP (spec sections 1.2, 2.1, 2.5).

Layout: layer ``l`` (0-based here) maps ``N_l`` inputs to ``N_{l+1}`` outputs with a kernel of shape
``(N_l, N_{l+1})`` (the :mod:`emtdamp.models.mlp` / flax layout). The spec writes ``W_l`` as
``(N_l, N_{l-1})``; our kernel is its transpose, so a neuron group "all outgoing weights of unit j"
(spec section 1.2) is **row** ``j`` of the kernel, and the per-group arrays have length ``N_l``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from emtdamp.models import mlp
from emtdamp.tdamp import evidence

TASKS = ("regression", "classification")
RHO_MODES = ("group", "layer", "fixed")
V_UPDATES = ("closed_form", "numerical", "fixed")
V_SCHEDULES = ("minibatch", "epoch")
EVIDENCE_MODES = ("repeat", "once")
INIT_MEANS = ("lecun", "prior")
OUTPUT_MODELS = ("probit", "softmax")


@dataclasses.dataclass(frozen=True)
class TdampHParams:
    """Static settings of EM-TDAMP (hashable; passed as a static argument to ``jit``).

    Nothing here is changed by EM: the EM hyperparameters (rho per group, v) live in the state.

    Attributes
    ----------
    task: ``"regression"`` (Gaussian likelihood) or ``"classification"`` (``output_model``).
    output_model: classification likelihood: ``"probit"`` (the spec's probit product, with the noise variance
        v learned by EM) or ``"softmax"`` (``softmax(z)_c`` under the mean-field approximation of its Gaussian
        average, no v: :func:`emtdamp.tdamp.module_a.softmax_output_and_log_lik`). Ignored for regression.
    n_iter: ``I_A``, DAMP iterations per minibatch (spec section 2.5, default 1).
    beta: damping of the Module-A outputs ``(W_hat, V_W, b_hat, v_b)``; 1 = no damping.
    rho_mode: M-step for the support prior: ``"group"`` (rho_g = clip(pi_g)), ``"layer"`` (layer
        mean) or ``"fixed"`` (never updated).
    v_update: M-step for the noise variance: ``"closed_form"`` (regression: exact; classification:
        augmented-EM fixed point), ``"numerical"`` (classification: Gauss-Hermite + golden section;
        regression falls back to the closed form, which is exact) or ``"fixed"``.
    v_passes: fixed-point passes of the classification closed form per M-step (spec: 1-3).
    v_ema: smoothing of the v update, ``v <- v_ema * v + (1 - v_ema) * v_new`` (0 = plain EM).
    v_schedule: ``"minibatch"`` (streaming EM after every minibatch) or ``"epoch"`` (v from the
        statistics accumulated over the epoch, applied by :func:`emtdamp.tdamp.em.end_epoch_v`).
    v_warm: with ``v_schedule="epoch"``, the number of first epochs that update v after every minibatch
        instead (while the network's output scale moves fast; 0 = per epoch from the start).
    lambda_f: PasP forgetting factor in (0, 1]: after each minibatch the prior becomes
        ``posterior^lambda_f x initial_prior^(1 - lambda_f)`` (stabilized forgetting towards
        ``N(0, sigma0^2)``, ``N(0, sigmab0^2)``; see :func:`emtdamp.tdamp.pasp`). 1 = pure PasP.
    pasp: carry the posterior to the prior after each minibatch (spec section 2.6). ``False`` keeps
        the initial prior (used for full-batch EM-GAMP, e.g. sparse linear regression).
    evidence: how PasP counts the data across epochs. ``"repeat"`` (the spec's PasP, with
        ``lambda_f``): every minibatch's likelihood enters the prior for good, so E epochs hold E
        copies of the data. ``"once"``: the likelihood messages are kept per epoch and the prior of
        each minibatch is the initial prior times the evidence of every *other* row, counted once
        (:mod:`emtdamp.tdamp.evidence`; needs :func:`emtdamp.tdamp.end_epoch` at every epoch end;
        ``lambda_f`` and ``pasp`` are then ignored).
    sigma0_sq: initial slab variance; ``0.0`` means ``gamma / N_in`` per layer.
    gamma: see ``sigma0_sq``.
    sigmab0_sq: initial bias prior variance.
    init_means: the initial weight and bias means, which are also the prior means ``mu0``, ``b0`` (the
        fit's anchor): ``"lecun"`` (spec section 2.5: kernels ``N(0, 1/N_in)``, biases 0) or ``"prior"``, a
        draw from the initial prior itself (kernels ``N(0, s0)`` with ``s0`` the initial slab variance,
        biases ``N(0, sigmab0_sq)``). With zero biases every first-layer ReLU kink starts at the origin of
        the (standardised) inputs; with ``"prior"`` the kinks are spread, and independently initialised fits
        (``train.chains``) are anchored ensembles (each anchored at its own draw from the prior it is
        regularised towards; Pearce et al. 2020), which differ where there is no data.
    rho0: initial support probability of every group.
    rho_clip: epsilon of the rho M-step clip ``[eps, 1 - eps]``. Default 1e-5, not the spec's 1e-3:
        with 1e-3 the group-mode log-odds are capped at 6.9, and the per-minibatch evidence of a weak
        but useful input feature random-walks it below 0 now and then; the feature drops out for an
        epoch and the Boston test NMSE spikes 0.09 -> 0.2 (seen at epochs 110-290 of a 300-epoch run).
    v0: initial noise variance; ``v_floor`` its lower bound.
    dtype: ``"float32"`` or ``"float64"`` for :func:`init` (float64 needs ``jax_enable_x64``).
    """

    task: str = "regression"
    output_model: str = "probit"
    n_iter: int = 1
    beta: float = 0.5
    rho_mode: str = "group"
    v_update: str = "closed_form"
    v_passes: int = 1
    v_ema: float = 0.0
    v_schedule: str = "minibatch"
    v_warm: int = 0
    lambda_f: float = 1.0
    pasp: bool = True
    evidence: str = "repeat"
    sigma0_sq: float = 0.0
    gamma: float = 0.1
    sigmab0_sq: float = 1.0
    init_means: str = "lecun"
    rho0: float = 0.99
    rho_clip: float = 1e-5
    v0: float = 1.0
    v_floor: float = 1e-6
    dtype: str = "float32"

    def __post_init__(self):
        for name, val, allowed in (("task", self.task, TASKS), ("rho_mode", self.rho_mode, RHO_MODES),
                                   ("v_update", self.v_update, V_UPDATES),
                                   ("v_schedule", self.v_schedule, V_SCHEDULES),
                                   ("evidence", self.evidence, EVIDENCE_MODES),
                                   ("init_means", self.init_means, INIT_MEANS),
                                   ("output_model", self.output_model, OUTPUT_MODELS)):
            if val not in allowed:
                raise ValueError(f"TdampHParams.{name}={val!r}; choose one of {allowed}")
        if self.n_iter < 1:
            raise ValueError(f"TdampHParams.n_iter must be >= 1, got {self.n_iter}")
        if not 0.0 < self.beta <= 1.0:
            raise ValueError(f"TdampHParams.beta must be in (0, 1], got {self.beta}")
        if not 0.0 < self.lambda_f <= 1.0:
            raise ValueError(f"TdampHParams.lambda_f must be in (0, 1], got {self.lambda_f}")
        if not 0.0 <= self.v_ema < 1.0:
            raise ValueError(f"TdampHParams.v_ema must be in [0, 1), got {self.v_ema}")
        if self.v_warm < 0:
            raise ValueError(f"TdampHParams.v_warm must be >= 0, got {self.v_warm}")


@chex.dataclass
class LayerState:
    """Posterior and prior of one dense layer ``N_in -> N_out`` (kernel layout ``(N_in, N_out)``).

    Attributes
    ----------
    W, VW: ``(N_in, N_out)`` posterior mean / variance of the weights (Bernoulli-Gaussian mixture).
    mu0, s0: ``(N_in, N_out)`` slab prior mean / variance (PasP-carried).
    slab_m, slab_v: ``(N_in, N_out)`` slab posterior (given active) of the last DAMP iteration.
    b, vb: ``(N_out,)`` bias posterior mean / variance; ``b0, vb0`` its prior.
    rho: ``(N_in,)`` support prior per group (EM hyperparameter); ``pi``: group posterior.
    mask: ``(N_in,)`` 1 = group alive, 0 = hard-pruned.
    lam_acc: ``(N_in,)`` group log-evidence accumulated since the last epoch end (pruning score).
    """

    W: jax.Array
    VW: jax.Array
    mu0: jax.Array
    s0: jax.Array
    slab_m: jax.Array
    slab_v: jax.Array
    b: jax.Array
    vb: jax.Array
    b0: jax.Array
    vb0: jax.Array
    rho: jax.Array
    pi: jax.Array
    mask: jax.Array
    lam_acc: jax.Array


@chex.dataclass
class TdampState:
    """The whole EM-TDAMP state (a pytree of arrays).

    Attributes
    ----------
    layers: list of :class:`LayerState`, input layer first.
    v: scalar noise variance (EM hyperparameter).
    v_stat, v_count: E-step sufficient statistic for v from the latest minibatch (computed at the
        current v) and its count (regression: sum of (y - z_hat)^2 + T_Z and #outputs; classification:
        sum of E[e^2] of the augmented pairwise model and #pairs).
    v_stat_acc, v_count_acc: the same summed since the last epoch end (per-epoch M-step).
    count: number of minibatches processed.
    epochs: number of epoch ends passed (:func:`emtdamp.tdamp.em.end_epoch_v`; ``v_warm``).
    evidence: :class:`~emtdamp.tdamp.evidence.Evidence` bookkeeping when ``hparams.evidence ==
        "once"``, else None.
    """

    layers: list
    v: jax.Array
    v_stat: jax.Array
    v_count: jax.Array
    v_stat_acc: jax.Array
    v_count_acc: jax.Array
    count: jax.Array
    epochs: jax.Array
    evidence: object = None


def initial_slab_var(hparams: TdampHParams, n_in: int) -> float:
    """Initial slab variance of a layer with fan-in ``n_in``: ``sigma0_sq``, or ``gamma / n_in`` when it is 0."""
    return hparams.sigma0_sq if hparams.sigma0_sq > 0 else hparams.gamma / n_in


def init(key: jax.Array, layer_sizes: Sequence[int], hparams: TdampHParams,
         params: list[dict] | None = None) -> TdampState:
    """Initial state (spec section 2.5).

    Parameters
    ----------
    key: PRNG key for the random weight means (ignored when ``params`` is given); with
        ``hparams.init_means == "prior"`` the kernels are the same standard-normal draws rescaled to the
        prior's sd, and the biases come from a separate stream (``fold_in(key, 1)``).
    layer_sizes: ``(N_0, ..., N_L)``.
    hparams: static settings (``dtype``, ``sigma0_sq``/``gamma``, ``sigmab0_sq``, ``rho0``, ``v0``).
    params: optional initial weight means in :mod:`emtdamp.models.mlp` layout (``kernel (N_in, N_out)``,
        ``bias (N_out,)``); default He/LeCun normal ``N(0, 1/N_in)`` and zero biases (``init_means="prior"``:
        see :class:`TdampHParams`). The slab prior mean ``mu0`` is set to the same draw (spec 2.5: breaks
        the hidden-unit symmetry), the bias prior mean ``b0`` to the biases.
    """
    dtype = jnp.dtype(hparams.dtype)
    sizes = tuple(int(n) for n in layer_sizes)
    if params is None:
        params = mlp.init_mlp(key, sizes, dtype)
        if hparams.init_means == "prior":
            bkeys = jax.random.split(jax.random.fold_in(key, 1), len(params))
            sdb = jnp.sqrt(jnp.asarray(hparams.sigmab0_sq, dtype))
            params = [{"kernel": p["kernel"] * jnp.sqrt(jnp.asarray(n_in * initial_slab_var(hparams, n_in), dtype)),
                       "bias": sdb * jax.random.normal(k, p["bias"].shape, dtype)}
                      for k, p, n_in in zip(bkeys, params, sizes[:-1], strict=True)]
    layers = []
    for n_in, n_out, p in zip(sizes[:-1], sizes[1:], params, strict=True):
        W = jnp.asarray(p["kernel"], dtype)
        b = jnp.asarray(p["bias"], dtype)
        if W.shape != (n_in, n_out) or b.shape != (n_out,):
            raise ValueError(f"params kernel {W.shape} / bias {b.shape} do not match layer {n_in}->{n_out}")
        s0 = jnp.full((n_in, n_out), initial_slab_var(hparams, n_in), dtype)
        vb0 = jnp.full((n_out,), hparams.sigmab0_sq, dtype)
        cp = lambda a: jnp.array(a, copy=True)  # distinct buffers: training loops may donate the state
        layers.append(LayerState(W=cp(W), VW=cp(s0), mu0=cp(W), s0=s0, slab_m=cp(W), slab_v=cp(s0), b=cp(b),
                                 vb=cp(vb0), b0=cp(b), vb0=vb0,
                                 rho=jnp.full((n_in,), hparams.rho0, dtype),
                                 pi=jnp.full((n_in,), hparams.rho0, dtype),
                                 mask=jnp.ones((n_in,), dtype), lam_acc=jnp.zeros((n_in,), dtype)))
    z = lambda: jnp.zeros((), dtype)
    ev = None
    if hparams.evidence == "once":
        ev = evidence.init_evidence([lay.mu0 for lay in layers], [lay.s0 for lay in layers],
                                    [lay.b0 for lay in layers], [lay.vb0 for lay in layers],
                                    [lay.rho for lay in layers])
    return TdampState(layers=layers, v=jnp.full((), hparams.v0, dtype), v_stat=z(), v_count=z(), v_stat_acc=z(),
                      v_count_acc=z(), count=jnp.zeros((), jnp.int32), epochs=jnp.zeros((), jnp.int32),
                      evidence=ev)


def layer_sizes(state: TdampState) -> tuple[int, ...]:
    """``(N_0, ..., N_L)`` of a state."""
    return (state.layers[0].W.shape[0], *(layer.W.shape[1] for layer in state.layers))


class ZStats(NamedTuple):
    """Output-layer messages of the last DAMP iteration of a minibatch (input of the v M-step).

    P, VP: ``(B, K)`` forward mean / variance of ``z_L``; y: targets ``(B, K)`` or labels ``(B,)``;
    w: ``(B,)`` row weights.
    """

    P: jax.Array
    VP: jax.Array
    y: jax.Array
    w: jax.Array
