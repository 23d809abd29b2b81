"""SGLD / SGHMC with the SSGL prior and stochastic-approximation latents (Deng et al. 2019) on the MLP
(``model.kind: mlp``) and the small CNN (``model.kind: cnn``, :mod:`emtdamp.models.cnn`).

Registered methods (spec ``baselines.md`` A.2, A.3, A.6):

=============  ========  ===================================  ==============
name           sampler   ω schedule (latents ρ, κ, δ, σ)      annealing
=============  ========  ===================================  ==============
``sgld``       SGLD      ω ≡ 0 (latents frozen at init)       ``anneal_rate``
``sghmc``      SGHMC     ω ≡ 0                                 ``anneal_rate``
``sgld_sa``    SGLD      ``min(cap, A (k + Z)^−α)``            ``anneal_rate``
``sghmc_sa``   SGHMC     ``min(cap, A (k + Z)^−α)``            ``anneal_rate``
``sgld_em``    SGLD      ω ≡ 1 (EM)                            ``anneal_rate``
``sghmc_em``   SGHMC     ω ≡ 1                                 ``anneal_rate``
``a_sghmc``    SGHMC     ω ≡ 0                                 default 1.003
``a_sghmc_em`` SGHMC     ω ≡ 1                                 default 1.003
``a_sghmc_sa`` SGHMC     SA                                    default 1.003
=============  ========  ===================================  ==============

All share :class:`SGMCMCHParams`; annealing is the ``anneal_rate`` hparam (inverse temperature
multiplied by it after every iteration), the ``a_*`` names only change its default to the paper's
1.003. ``prior="gaussian"`` replaces SSGL by a plain L2 prior on every weight (the UCI code's "SGHMC").

Energy (sum scale, ``N`` = training size, ``n`` = real rows of the minibatch)::

    U(β) = (N/n) Σ_i nll_i(β) + Σ_{C} ½ N wd β² + Σ_{X} [κ1 β² / (2σ²) + κ0 |β| / σ]

with ``nll_i = Σ_out (y_i − ψ(x_i))² / (2 s²)`` (regression, standardised targets) or the softmax
cross-entropy; ``X`` = kernels of ``ssgl_layers``, ``C`` = the other kernels and all biases.

Observation noise ``s²`` (regression, hparam ``noise``; docs/sgmcmc_sa.md "Observation noise"):
``sample`` (default) keeps ``s²`` as its own state array and, after every move, updates it from its
(tempered) conditional given ``RSS_N``, the minibatch residual sum at ``β^{k+1}`` rescaled by ``N/n`` -- a
stochastic-gradient Gibbs step, exact for full batches, and the same for every ω schedule. The prior
(``noise_prior``) is ``HalfNormal(noise_sd_scale)`` on the noise sd by default, as the nuts reference (an
independence Metropolis step proposing from the flat-prior conditional ``InvGamma((N d_out − 1)/2,
RSS_N/2)``), or ``invgamma``: the SSGL ``InvGamma(ν/2, νλ/2)`` on ``s²``, whose conditional
``InvGamma((ν + N d_out)/2, (νλ + RSS_N)/2)`` is drawn exactly. The SSGL σ² then only scales the
prior and its SA update uses the weights alone. ``sa`` ties ``s² = σ²`` (the paper: σ² is SA-updated
from the residuals and the weights, so only SA/EM methods); ``fixed`` uses ``likelihood_var`` (σ² still
tracks the residuals, as the UCI code).
The step size ``learning_rate = 0`` (default) is ``AUTO_LR_N / N``: the energy is sum-scale. With
``lr_units="curvature"`` the learning rate is ``ε·N/s²`` instead (the step in units of the likelihood
curvature), and the step follows the current noise variance: ``ε_k = lr_k · s²_k / N``.

Layer indices (``ssgl_layers``, ``prune_layers``) index ONE ordered list of the network's weight
kernels: for the MLP the dense kernels ``0 .. L−1`` (input layer first); for the CNN the conv kernels
``Conv_0 .. Conv_{c−1}`` (indices ``0 .. c−1``, shape ``(k, k, C_in, C_out)``) followed by the dense
kernels ``Dense_0 .. Dense_h`` (indices ``c .. c+h``). Negative indices count from the end. For the
spec's Model 1 (``conv=[32, 64], kernel_size=5, hidden=[200]``): 0 = Conv_0 (5×5×1×32), 1 = Conv_1
(5×5×32×64), 2 = Dense_0 = FC1 (3136×200, the paper's SSGL layer), 3 = Dense_1 (200×10). SSGL latents,
masks and the SSGL penalty act elementwise on a kernel of any shape; biases are never sparse.
After the sampler move: SA update of the latents at ``β^{k+1}`` (regression uses the residuals of the
same minibatch at ``β^{k+1}``), then magnitude pruning ``s_k = S (1 − D^{k/U})`` with a permanent mask
(per-layer target inflated so that the share of zero *kernel* weights reaches ``S``), then
collection of thinned samples after ``burn_in`` iterations. Predictions average the network output
(regression; variance = spread of the outputs + the mean ``s²`` of the same kept samples) or the softmax
(classification) over the ``n_samples`` most recent kept samples (the current sample while none is
kept yet; the CNN evaluates the samples one after another, ``lax.map``, to bound memory).

``sparsity``: ``weights_zero_frac`` = zero (or masked) entries over all kernel weights (conv and
dense; biases not counted); ``neurons_pruned_frac`` = share of *dense hidden units* whose outgoing
weights (row of the next dense kernel) are all zero. Conv channels are not counted as neurons, so for
a CNN it covers only the ``hidden`` dense units (0 when ``hidden`` is empty). A user flax module
(``model.kind: flax``) has no layer order to follow: its weight layers are the leaves named ``kernel`` in
tree-flatten order (:func:`kernel_paths`; ``ssgl_layers`` / ``prune_layers`` index that list), every other
leaf gets the ``weight_decay`` prior, and a neuron is an input row of a 2-D kernel.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import optax

from emtdamp import sgmcmc as sg
from emtdamp.methods.base import Algorithm, Batch, DataSpec, Method, Mixture, ModelSpec, Predictive, hparam
from emtdamp.methods.registry import register
from emtdamp.models import mlp
from emtdamp.models.network import build_network
from emtdamp.pytrees import is_kernel, path_keys
from emtdamp.sgmcmc.kernels import (
    DEFAULT_NOISE,
    NOISE_DISTS,
    sample_noise_variance,
    update_noise_variance_halfnormal,
)

AUTO_LR_N = 1e-3
"""``learning_rate = 0`` (the default) means ``ε_0 = AUTO_LR_N / N``: the energy is on the sum scale, so a
step that is stable for every training size must shrink like 1/N (ε·N is the step on the mean loss)."""


@dataclasses.dataclass(frozen=True)
class SGMCMCHParams:
    """Hyperparameters of SGLD/SGHMC(-SA/-EM). Iterations ``k`` count minibatch steps."""

    learning_rate: float = hparam(0.0, range=(0.0, 10.0),
                                  doc="ε_0 on the sum-scale energy; ε_k = lr·(lr_offset + k)^(−lr_decay); "
                                      "0 = auto: AUTO_LR_N / N (N = training rows)")
    lr_units: str = hparam("energy", choices=("energy", "curvature"),
                           doc="'energy' = learning_rate is ε on the sum-scale energy; 'curvature' = it is ε·N/s², "
                               "the step in units of the likelihood curvature: ε_k = lr_k·s²_k/N with s²_k the "
                               "current noise variance (regression; s² = 1 for classification), so the step "
                               "follows s² as it is learned or annealed and carries across training sizes")
    lr_offset: float = hparam(1.0, range=(0.0, 1e12), doc="offset b of the step-size schedule")
    lr_decay: float = hparam(0.0, range=(0.0, 1.0), doc="exponent γ of the step-size schedule (0 = constant)")
    momentum: float = hparam(0.9, range=(0.0, 1.0), doc="SGHMC m = 1 − friction (unused by SGLD)")
    inv_temp: float = hparam(1.0, range=(1e-8, 1e15), doc="inverse temperature (paper's τ)")
    anneal_rate: float = hparam(1.0, range=(0.5, 2.0),
                                doc="inv_temp ×= anneal_rate per iteration; 1.0 = the method default (a_*: 1.003)")
    noise_dist: str = hparam(DEFAULT_NOISE, choices=NOISE_DISTS,
                             doc="injected noise ξ (mean 0, variance 1): 'three_point' = ±√3 w.p. 1/6 each, 0 w.p. "
                                 "2/3 (moments to order 5 = the normal's; Kloeden & Platen 1992 §14.2; no "
                                 "transcendentals, fused Threefry bits: docs/speed.md), 'gaussian' = N(0, 1)")
    prior: str = hparam("ssgl", choices=("ssgl", "gaussian"), doc="SSGL on ssgl_layers, or L2 everywhere")
    ssgl_layers: tuple[int, ...] = hparam((), doc="indices of weight layers (CNN: conv kernels, then dense) "
                                          "whose kernel gets SSGL; () = all")
    weight_decay: float = hparam(1e-4, range=(0.0, 10.0), doc="L2 ½·N·wd·β² on non-SSGL kernels and biases")
    noise: str = hparam("sample", choices=("sample", "sa", "fixed"),
                        doc="regression noise variance s²: 'sample' = Gibbs draw from its InvGamma conditional "
                            "every iteration (separate from the SSGL σ², which then only scales the prior); "
                            "'sa' = s² is the SSGL σ² (paper; SA-updated, so SA/EM methods only); "
                            "'fixed' = likelihood_var")
    noise_prior: str = hparam("halfnormal", choices=("halfnormal", "invgamma"),
                              doc="noise='sample': prior of the noise — 'halfnormal' = HalfNormal(noise_sd_scale) "
                                  "on the noise sd (as nuts; Metropolis-within-Gibbs), 'invgamma' = the SSGL "
                                  "InvGamma(ν/2, νλ/2) on s² (conjugate Gibbs; adds νλ/2 to RSS/2)")
    noise_sd_scale: float = hparam(1.0, range=(1e-12, 1e12),
                                   doc="noise_prior='halfnormal': HalfNormal scale of the noise sd "
                                       "(standardised units)")
    noise_init: float = hparam(1.0, range=(1e-12, 1e12),
                               doc="initial noise variance (standardised units) for noise='sample'")
    likelihood_var: float = hparam(0.0, range=(0.0, 1e12),
                                   doc="noise='fixed' only: the fixed noise variance in standardised units "
                                       "(UCI code's (y−ψ)²: 0.5 / y_std²)")
    v0: float = hparam(0.1, range=(1e-12, 1e6), doc="Laplace (spike) scale")
    v1: float = hparam(10.0, range=(1e-12, 1e12), doc="Gaussian (slab) variance")
    beta_a: float = hparam(1.0, range=(-1.0, 1e12), doc="Beta(a, b) prior on δ: a; ≤ 0 means a = p_l")
    beta_b: float = hparam(10.0, range=(-1.0, 1e12), doc="Beta(a, b): b; ≤ 0 means b = p_l (layer size)")
    nu: float = hparam(1.0, range=(1e-12, 1e12), doc="InvGamma(ν/2, νλ/2) on σ²: ν")
    lam: float = hparam(1.0, range=(1e-12, 1e12), doc="InvGamma: λ")
    scale_by_sigma: bool = hparam(True, doc="σ-scaled spike/slab in the E-step (paper); False = UCI code")
    sa_on_sigma: bool = hparam(False, doc="SA on σ (paper) instead of σ² (code)")
    learn_delta: bool = hparam(True, doc="update δ (False freezes it, README advice for DNNs)")
    learn_sigma: bool = hparam(True, doc="update σ")
    rho_init: float = hparam(0.5, range=(0.0, 1.0), doc="initial ρ")
    kappa0_init: float = hparam(1.0, range=(0.0, 1e12), doc="initial κ0")
    kappa1_init: float = hparam(1.0, range=(0.0, 1e12), doc="initial κ1")
    delta_init: float = hparam(0.5, range=(1e-9, 1.0 - 1e-9), doc="initial δ")
    sigma_init: float = hparam(1.0, range=(1e-9, 1e9), doc="initial σ (standardised target units)")
    omega_a: float = hparam(1.0, range=(0.0, 1e12), doc="SA step ω_k = min(cap, A (k + Z)^(−α)): A")
    omega_z: float = hparam(100.0, range=(0.0, 1e12), doc="ω_k: Z")
    omega_alpha: float = hparam(0.7, range=(0.0, 1.0), doc="ω_k: α")
    omega_cap: float = hparam(1.0, range=(0.0, 1.0), doc="ω_k: cap")
    sa_every: int = hparam(1, range=(1, 10_000),
                           doc="SA latent update every this many iterations, with the compounded step "
                               "1 − Π(1 − ω_j) over those iterations (1 = every iteration, the papers' Algorithm 1)")
    prune_target: float = hparam(0.0, range=(0.0, 1.0), doc="S: target share of zero kernel weights (0 = off)")
    prune_damping: float = hparam(0.99, range=(0.0, 1.0), doc="D of s_k = S (1 − D^{k/U})")
    prune_gap: float = hparam(50.0, range=(1e-9, 1e12), doc="U of s_k = S (1 − D^{k/U}) (iterations)")
    prune_every: int = hparam(1, range=(1, 1_000_000), doc="re-threshold every this many iterations")
    prune_layers: tuple[int, ...] = hparam((), doc="layers (indexed as ssgl_layers) magnitude pruning acts on; "
                                           "() = the SSGL layers")
    rho_prune_threshold: float = hparam(0.0, range=(0.0, 1.0), doc="ρ-based pruning: drop ρ < threshold")
    rho_prune_step: int = hparam(0, range=(0, 10**12), doc="iteration of the one-shot ρ pruning (0 = off)")
    burn_in: int = hparam(0, range=(0, 10**12), doc="iterations before samples are kept")
    thin: int = hparam(1, range=(1, 10**9), doc="keep every thin-th iteration after burn-in")
    n_samples: int = hparam(20, range=(1, 10_000), doc="ring-buffer size for the predictive average")


@chex.dataclass
class SGMCMCState:
    """Everything a run changes, as arrays: params, momentum, SSGL latents, masks, schedules, samples."""

    params: list | dict             # MLP: list of {"kernel", "bias"}; CNN: flax dict {"Conv_i": ..., "Dense_j": ...}
    momentum: list | dict
    latents: sg.SSGLLatents | None
    hyper: sg.SSGLHyper | None
    masks: list
    lr: sg.PolynomialSchedule
    omega: sg.OmegaSchedule
    prune: sg.PruneSchedule
    prune_scale: jax.Array          # per pruned layer: S_eff / S (inflation)
    noise_var: jax.Array            # () regression noise variance s² of the likelihood (see ``noise``)
    noise_prior: jax.Array          # (2,) (ν, λ) of the InvGamma(ν/2, νλ/2) prior on s² (noise_prior='invgamma')
    noise_sd_scale: jax.Array       # () HalfNormal scale of the noise sd (noise_prior='halfnormal')
    rho_prune: jax.Array            # (threshold, step)
    momentum_decay: jax.Array
    weight_decay: jax.Array
    inv_temp: jax.Array
    anneal_rate: jax.Array
    count: jax.Array
    rng: jax.Array
    samples: sg.SampleBuffer
    noise_samples: sg.SampleBuffer  # s² at the kept samples (same slots as ``samples``)


@dataclasses.dataclass(frozen=True)
class SGMCMCStatic:
    """What an SG-MCMC method fixes at build time (closed over by ``init`` / ``step`` / ``predict``).

    ``keys``: the weight layers' keys in order (:func:`layer_keys` / :func:`kernel_paths`); ``dense``:
    per layer, whether it is a dense kernel; ``sparse`` / ``prune_layers``: indices into ``keys`` of the
    SSGL and the pruned layers; ``magnitude`` / ``rho_prune``: which pruning runs; the rest mirrors
    :class:`SGMCMCHParams` and the :class:`~emtdamp.methods.base.DataSpec`.
    """

    task: str
    apply: Callable
    kind: str
    keys: tuple
    n_layers: int
    dense: tuple[bool, ...]
    sampler: str
    sparse: tuple[int, ...]
    prune_layers: tuple[int, ...]
    magnitude: bool
    rho_prune: bool
    prune_every: int
    sa_every: int
    n_train: int
    n_out: int
    n_samples: int
    noise: str
    noise_prior: str
    lr_curvature: bool


def layer_keys(params: list | dict) -> list:
    """Keys of the weight layers of an MLP or CNN params tree, in the network's order.

    MLP (list of ``{"kernel", "bias"}``): ``[0, 1, ..., L−1]``. CNN (flax dict): ``["Conv_0", ...,
    "Conv_{c−1}", "Dense_0", ..., "Dense_h"]`` (numeric order, so ``Conv_10`` follows ``Conv_9``).
    ``params[key]["kernel"]`` is the kernel of layer ``i`` for ``key = layer_keys(params)[i]``.
    """
    if isinstance(params, (list, tuple)):
        return list(range(len(params)))

    def order(name: str) -> tuple[int, int]:
        kind, _, idx = name.rpartition("_")
        if kind not in ("Conv", "Dense") or not idx.isdigit():
            raise ValueError(f"unexpected layer {name!r} in the params tree (want Conv_i / Dense_j)")
        return (0 if kind == "Conv" else 1, int(idx))

    return sorted(params, key=order)


def kernel_paths(params: dict) -> list[tuple]:
    """Paths (key tuples) of the sub-dicts holding a leaf named ``kernel``, in tree-flatten order: the weight
    layers of a user flax module (``model.kind: flax``), e.g. ``[("Dense_0",), ("block", "proj")]``."""
    return [path_keys(path)[:-1] for path, _ in jax.tree_util.tree_flatten_with_path(params)[0] if is_kernel(path)]


def _node(tree, key):
    """``tree[key]``, or for a path tuple (flax modules) the nested ``tree[k0][k1]...``."""
    if isinstance(key, tuple):
        for k in key:
            tree = tree[k]
        return tree
    return tree[key]


def _with_kernels(tree: list | dict, keys: list, kernels: list) -> list | dict:
    """A copy of ``tree`` with the ``"kernel"`` of ``_node(tree, key)`` replaced by ``kernels`` (same
    structure; only the dicts on the way are copied)."""
    def put(node, path, k):
        node = list(node) if isinstance(node, (list, tuple)) else dict(node)
        node[path[0]] = {**node[path[0]], "kernel": k} if len(path) == 1 else put(node[path[0]], path[1:], k)
        return node

    for key, k in zip(keys, kernels, strict=True):
        tree = put(tree, key if isinstance(key, tuple) else (key,), k)
    return tree


def _layers(sel: tuple[int, ...], names: list[str], what: str) -> tuple[int, ...]:
    n = len(names)
    if not sel:
        return tuple(range(n))
    if any(not -n <= i < n for i in sel):
        listing = ", ".join(f"{i} = {nm}" for i, nm in enumerate(names))
        raise ValueError(f"{what} {list(sel)} out of range for a network with {n} weight layers ({listing}; "
                         f"negative indices count from the end); use indices in [-{n}, {n - 1}]")
    return tuple(sorted({i % n for i in sel}))


def build_sgmcmc_method(name: str, sampler: str, omega_mode: str, anneal_default: float = 1.0) -> Method:
    """A registered SG-MCMC method (see the module docstring for the variants)."""
    def build(model: ModelSpec, data: DataSpec, hp: SGMCMCHParams) -> Algorithm:
        if not isinstance(hp, SGMCMCHParams):
            raise TypeError(f"{name}: hparams must be SGMCMCHParams, got {type(hp).__name__}")
        dt = jnp.zeros(()).dtype
        kind = getattr(model, "kind", "mlp")
        init_fn, apply_fn = build_network(model, data)   # validates model.kind / the CNN against the data

        def init_params(kp):
            if kind == "mlp":
                return mlp.init_mlp(kp, model.layer_sizes(data), dt)
            # flax initialises float32; the chain runs in the default float (float64 under x64)
            return jax.tree_util.tree_map(lambda v: v.astype(dt), init_fn(kp))

        shapes = jax.eval_shape(init_params, jax.random.PRNGKey(0))
        keys = kernel_paths(shapes) if kind == "flax" else layer_keys(shapes)
        if not keys:
            raise ValueError(f"{name}: the network has no weight layer (no parameter named 'kernel')")
        names = ["/".join(map(str, k)) if isinstance(k, tuple) else f"Dense_{k}" if isinstance(k, int) else k
                 for k in keys]
        kshape = [_node(shapes, k)["kernel"].shape for k in keys]
        n_layers = len(keys)
        sparse = _layers(hp.ssgl_layers, names, "ssgl_layers") if hp.prior == "ssgl" else ()
        prune_layers = _layers(hp.prune_layers, names, "prune_layers") if hp.prune_layers else sparse
        pruning = hp.prune_target > 0 or hp.rho_prune_step > 0
        if hp.noise == "fixed" and hp.likelihood_var <= 0:
            raise ValueError(f"{name}: noise='fixed' needs likelihood_var > 0 (standardised units)")
        if hp.noise != "fixed" and hp.likelihood_var > 0:
            raise ValueError(f"{name}: likelihood_var={hp.likelihood_var} is only used with noise='fixed' "
                             f"(got noise={hp.noise!r}); set method.noise=fixed to fix the noise variance")
        if data.task == "regression" and hp.noise == "sa" and (omega_mode == "none" or not sparse
                                                               or not hp.learn_sigma):
            raise ValueError(f"{name}: noise='sa' ties the noise variance to the SSGL σ², which this method never "
                             "updates (ω ≡ 0, no SSGL layer, or learn_sigma=false); use noise='sample'")
        if hp.rho_prune_step > 0 and not set(prune_layers) <= set(sparse):
            raise ValueError(f"{name}: ρ-based pruning needs prune_layers ⊆ ssgl_layers")
        if pruning and not prune_layers:
            raise ValueError(f"{name}: pruning needs at least one layer (prior='gaussian' has no SSGL layers; "
                             "set prune_layers)")
        if hp.lr_units == "curvature" and hp.learning_rate <= 0:
            raise ValueError(f"{name}: lr_units='curvature' needs learning_rate > 0 (ε·N/s², e.g. 0.02)")
        k_sizes = [math.prod(sh) for sh in kshape]
        n_prunable = sum(k_sizes[i] for i in prune_layers)
        s_eff = sg.inflated_target(hp.prune_target, sum(k_sizes), n_prunable) if hp.prune_target > 0 else 0.0
        scale = s_eff / hp.prune_target if hp.prune_target > 0 else 1.0
        cfg = SGMCMCStatic(task=data.task, apply=apply_fn, kind=kind, keys=tuple(keys), n_layers=n_layers,
                           dense=tuple(len(sh) == 2 if kind == "flax" else not str(nm).startswith("Conv")
                                       for nm, sh in zip(names, kshape, strict=True)), sampler=sampler,
                           sparse=sparse, prune_layers=prune_layers if pruning else (),
                           magnitude=hp.prune_target > 0, rho_prune=hp.rho_prune_step > 0,
                           prune_every=hp.prune_every, sa_every=hp.sa_every, n_train=data.n_train, n_out=data.n_outputs,
                           n_samples=hp.n_samples, noise=hp.noise, noise_prior=hp.noise_prior,
                           lr_curvature=hp.lr_units == "curvature")

        def init(key) -> SGMCMCState:
            kp, kr = jax.random.split(key)
            params = init_params(kp)
            if jnp.issubdtype(kr.dtype, jax.dtypes.prng_key):   # keep raw uint32 key data (checkpointable)
                kr = jax.random.key_data(kr)
            xs = kernels_of(params, sparse)
            if sparse:
                b = [float(k_sizes[i]) if hp.beta_b <= 0 else hp.beta_b for i in sparse]
                a = [float(k_sizes[i]) if hp.beta_a <= 0 else hp.beta_a for i in sparse]
                hyper = sg.ssgl_hyper(len(sparse), v0=hp.v0, v1=hp.v1, a=tuple(a), b=tuple(b), nu=hp.nu, lam=hp.lam,
                                      scale_by_sigma=hp.scale_by_sigma, sa_on_sigma=hp.sa_on_sigma,
                                      learn_delta=hp.learn_delta, learn_sigma=hp.learn_sigma, dtype=dt)
                lat = sg.init_latents(xs, rho=hp.rho_init, kappa0=hp.kappa0_init, kappa1=hp.kappa1_init,
                                      delta=hp.delta_init, sigma=hp.sigma_init)
            else:
                hyper = None
                lat = sg.latents_from_values(rho=[], kappa0=[], kappa1=[], delta=jnp.zeros((0,), dt),
                                             sigma2=jnp.asarray(hp.sigma_init, dt) ** 2)
            f = lambda v: jnp.asarray(v, dt)
            anneal = hp.anneal_rate if hp.anneal_rate != 1.0 else anneal_default
            lr0 = hp.learning_rate if hp.learning_rate > 0 else AUTO_LR_N / data.n_train
            s2_0 = {"sample": f(hp.noise_init), "sa": f(lat.sigma2), "fixed": f(hp.likelihood_var)}[hp.noise]
            state = SGMCMCState(
                params=params, momentum=jax.tree_util.tree_map(jnp.zeros_like, params), latents=lat, hyper=hyper,
                masks=[jnp.ones(kshape[i], bool) for i in cfg.prune_layers],
                lr=sg.polynomial_schedule(lr0, hp.lr_offset, hp.lr_decay, dt),
                omega=sg.omega_schedule(omega_mode, A=hp.omega_a, Z=hp.omega_z, alpha=hp.omega_alpha,
                                        cap=hp.omega_cap, dtype=dt),
                prune=sg.prune_schedule(hp.prune_target, hp.prune_damping, hp.prune_gap, dt),
                prune_scale=f(scale), noise_var=s2_0, noise_prior=jnp.asarray([hp.nu, hp.lam], dt),
                noise_sd_scale=f(hp.noise_sd_scale),
                rho_prune=jnp.asarray([hp.rho_prune_threshold, hp.rho_prune_step], dt),
                momentum_decay=f(hp.momentum), weight_decay=f(hp.weight_decay), inv_temp=f(hp.inv_temp),
                anneal_rate=f(anneal), count=jnp.asarray(0, jnp.int32), rng=kr,
                samples=sg.buffer_init(params, hp.n_samples, hp.burn_in, hp.thin),
                noise_samples=sg.buffer_init(s2_0, hp.n_samples, hp.burn_in, hp.thin))
            # distinct buffers for every leaf: the training loop donates the state to its jitted epoch
            return jax.tree_util.tree_map(lambda v: jnp.array(v, copy=True), state)

        # ---------------------------------------------------------------------------------------------
        def kernels_of(params, layers) -> list:
            """Kernels of the weight layers ``layers`` (indices into the ordered layer list)."""
            return [_node(params, cfg.keys[i])["kernel"] for i in layers]

        def per_row_nll(out, y, sigma2):
            if cfg.task == "regression":
                return jnp.sum((out - y) ** 2, axis=-1) / (2.0 * sigma2), jnp.mean((out - y) ** 2, axis=-1)
            ce = optax.softmax_cross_entropy_with_integer_labels(out, y)
            return ce, ce

        def energy(params, batch: Batch, state: SGMCMCState):
            n = jnp.maximum(jnp.sum(batch.w), 1.0)
            out = cfg.apply(params, batch.x)
            nll, loss = per_row_nll(out, batch.y, state.noise_var)
            u = cfg.n_train / n * jnp.sum(batch.w * nll)
            sparse = cfg.sparse
            l2 = 0.0
            if cfg.kind == "flax":   # every leaf but the SSGL kernels (biases, norm scales, other kernels)
                ssgl = {cfg.keys[i] for i in sparse}
                for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
                    if not (is_kernel(path) and path_keys(path)[:-1] in ssgl):
                        l2 = l2 + jnp.sum(leaf ** 2)
            else:
                for i, key in enumerate(cfg.keys):
                    if i not in sparse:
                        l2 = l2 + jnp.sum(params[key]["kernel"] ** 2)
                    l2 = l2 + jnp.sum(params[key]["bias"] ** 2)
            u = u + 0.5 * cfg.n_train * state.weight_decay * l2
            if sparse:
                u = u + sg.ssgl_penalty(kernels_of(params, sparse), state.latents)
            return u, jnp.sum(batch.w * loss) / n

        def mask_tree(tree, masks):
            layers = cfg.prune_layers
            new = [jnp.where(m, k, 0.0) for m, k in zip(masks, kernels_of(tree, layers), strict=True)]
            return _with_kernels(tree, [cfg.keys[i] for i in layers], new)

        def step(state: SGMCMCState, batch: Batch):
            rng, k_noise = jax.random.split(state.rng)
            (u, loss), g = jax.value_and_grad(energy, has_aux=True)(state.params, batch, state)
            eps = sg.schedule_value(state.lr, state.count)
            if cfg.lr_curvature:   # ε = lr·s²/N, s² held fixed in this block (a function of the Gibbs state)
                s2 = state.noise_var if cfg.task == "regression" else jnp.ones((), eps.dtype)
                eps = eps * s2.astype(eps.dtype) / cfg.n_train
            if cfg.sampler == "sgld":
                params = sg.sgld_update(k_noise, state.params, g, eps, state.inv_temp, hp.noise_dist)
                mom = state.momentum
            else:
                params, mom = sg.sghmc_update(k_noise, state.params, state.momentum, g, eps, state.momentum_decay,
                                              state.inv_temp, hp.noise_dist)
            params = mask_tree(params, state.masks)
            mom = mask_tree(mom, state.masks)
            omega = sg.omega_value(state.omega, state.count)
            lat = state.latents
            sparse = cfg.sparse
            regression = cfg.task == "regression"
            n_obs = float(cfg.n_train * cfg.n_out)
            if regression:   # residuals of the same minibatch at β^{k+1}, rescaled to the N training rows
                out = cfg.apply(params, batch.x)
                n = jnp.maximum(jnp.sum(batch.w), 1.0)
                rss = cfg.n_train / n * jnp.sum(batch.w * jnp.sum((out - batch.y) ** 2, axis=-1))
            if sparse and omega_mode != "none":   # ω ≡ 0 (sgld, sghmc, a_sghmc): the latents never move
                xs = kernels_of(params, sparse)
                frozen = {"delta_frozen": not hp.learn_delta, "sigma_frozen": not hp.learn_sigma}
                # σ² is (sa) or tracks (fixed, UCI code) the noise; with noise='sample' it only scales the prior
                noise_kw = {"n_obs": n_obs, "rss": rss} if regression and cfg.noise != "sample" else {}
                lat = sg.sa_update_every(lambda lt, w: sg.sa_update(lt, xs, w, state.hyper, **noise_kw, **frozen),
                                         lat, state.omega, state.count, cfg.sa_every)   # docs/sgmcmc_sa.md
            noise_var = state.noise_var
            if regression and cfg.noise == "sample":   # Gibbs step s² | β (stochastic-gradient)
                k_s2 = jax.random.fold_in(rng, 1)
                if cfg.noise_prior == "halfnormal":      # independence Metropolis-within-Gibbs
                    noise_var = update_noise_variance_halfnormal(k_s2, noise_var, rss, n_obs, state.noise_sd_scale,
                                                                 state.inv_temp)
                else:                                       # conjugate InvGamma draw
                    noise_var = sample_noise_variance(k_s2, rss, n_obs, state.noise_prior[0], state.noise_prior[1],
                                                      state.inv_temp)
                noise_var = noise_var.astype(state.noise_var.dtype)
            elif regression and cfg.noise == "sa":
                noise_var = lat.sigma2.astype(noise_var.dtype)
            count = state.count + 1
            masks = state.masks
            frac = sg.prune_fraction(state.prune, count) * state.prune_scale
            if cfg.magnitude:
                def do_prune(ms):
                    return [sg.magnitude_mask(k, m, frac)
                            for k, m in zip(kernels_of(params, cfg.prune_layers), ms, strict=True)]
                if cfg.prune_every == 1:
                    masks = do_prune(masks)
                else:
                    masks = jax.lax.cond(count % cfg.prune_every == 0, do_prune, lambda ms: list(ms), masks)
            if cfg.rho_prune:
                pos = {i: j for j, i in enumerate(sparse)}
                masks = [sg.rho_mask(m, lat.rho[pos[i]], state.rho_prune[0], count,
                                     state.rho_prune[1].astype(jnp.int32))
                         for i, m in zip(cfg.prune_layers, masks, strict=True)]
            params = mask_tree(params, masks)
            mom = mask_tree(mom, masks)
            samples = sg.buffer_update(state.samples, params, count)
            noise_samples = sg.buffer_update(state.noise_samples, noise_var, count)
            new = state.replace(params=params, momentum=mom, latents=lat, masks=masks, count=count, rng=rng,
                                inv_temp=state.inv_temp * state.anneal_rate, samples=samples, noise_var=noise_var,
                                noise_samples=noise_samples)
            metrics = {"loss": loss, "energy": u, "step_size": eps, "omega": omega, "sigma2": lat.sigma2,
                       "noise_var": noise_var,
                       "inv_temp": state.inv_temp, "prune_frac": frac}
            return new, metrics

        def sample_outputs(state: SGMCMCState, x):
            """Network outputs at the ring's samples ``(S, n, d)``, their weights ``(S,)``, whether any
            sample is kept, and the output at the current iterate ``(n, d)``."""
            apply_fn = cfg.apply
            ring = sg.ring_samples(state.samples)
            w = sg.buffer_weights(state.samples)
            have = state.samples.n_collected > 0
            if cfg.kind == "mlp":
                outs = jax.vmap(lambda p: apply_fn(p, x))(ring)                   # (S, n, d_out)
            else:   # one sample at a time (a vmapped conv would hold S copies of the im2col patches), and
                # empty ring slots (weight 0: burn-in, buffer not full yet) are skipped at run time
                out_t = jax.eval_shape(apply_fn, state.params, x)
                outs = jax.lax.map(lambda a: jax.lax.cond(a[1] > 0, lambda p: apply_fn(p, x),
                                                          lambda p: jnp.zeros(out_t.shape, out_t.dtype), a[0]),
                                   (ring, w))
            return outs, w, have, apply_fn(state.params, x)

        def predict(state: SGMCMCState, x) -> Predictive:
            outs, w, have, cur = sample_outputs(state, x)
            if cfg.task == "regression":
                mean, var_f = sg.mixture_moments(outs, w)
                mean = jnp.where(have, mean, cur)
                var_f = jnp.where(have, var_f, 0.0)
                # mixture over the kept samples: Var = mean_s(f_s² + s²_s) − mean² = var_f + mean_s s²_s
                s2 = jnp.where(have, jnp.sum(w * sg.ring_samples(state.noise_samples)), state.noise_var)
                return Predictive(mean=mean, var=var_f + s2)
            return Predictive(probs=jnp.where(have, sg.mixture_probs(outs, w), jax.nn.softmax(cur, axis=-1)))

        def predict_mixture(state: SGMCMCState, x) -> Mixture:
            """One component per kept sample (its output and its s²); the current iterate before any is kept."""
            outs, w, have, cur = sample_outputs(state, x)
            w = jnp.where(have, w, jnp.zeros_like(w).at[0].set(1.0))
            outs = jnp.where(have, outs, cur[None])
            if cfg.task == "regression":
                s2 = jnp.where(have, sg.ring_samples(state.noise_samples), state.noise_var)   # (S,)
                return Mixture(weights=w, mean=outs, var=jnp.broadcast_to(s2[:, None, None], outs.shape))
            return Mixture(weights=w, probs=jax.nn.softmax(outs, axis=-1))

        def sparsity(state: SGMCMCState) -> dict:
            kernels = kernels_of(state.params, range(cfg.n_layers))
            n_w = sum(k.size for k in kernels)
            n_zero_mask = sum(int(jnp.sum(~m)) for m in state.masks)
            n_zero = sum(int(jnp.sum(k == 0)) for k in kernels)
            dead, hidden = 0, 0
            if cfg.kind == "flax":   # no layer order to follow: a unit is an input row of a dense kernel
                for k in kernels:
                    if k.ndim == 2:
                        hidden += k.shape[0]
                        dead += int(jnp.sum(jnp.all(k == 0, axis=1)))
            for i in range(1, cfg.n_layers if cfg.kind != "flax" else 0):
                if cfg.dense[i - 1]:                      # dense hidden unit j: row j of the next kernel
                    k_next = kernels[i]
                    hidden += k_next.shape[0]
                    dead += int(jnp.sum(jnp.all(k_next == 0, axis=1)))
            total = mlp.count_params(state.params)
            return {"neurons_pruned_frac": dead / hidden if hidden else 0.0,
                    "weights_zero_frac": max(n_zero_mask, n_zero) / n_w,
                    "params_remaining": total - max(n_zero_mask, n_zero)}

        return Algorithm(init=init, step=step, predict=predict, sparsity=sparsity, predict_mixture=predict_mixture)

    desc = {"none": "latents frozen at init (ω=0)", "em": "EM latents (ω=1)", "sa": "SA latents"}[omega_mode]
    return Method(name=name, hparams_cls=SGMCMCHParams, build=build,
                  description=f"{sampler.upper()} with SSGL prior, {desc}"
                  + (f", annealed ×{anneal_default}/iter" if anneal_default != 1.0 else ""))


_VARIANTS = {
    "sgld": ("sgld", "none", 1.0), "sghmc": ("sghmc", "none", 1.0),
    "sgld_sa": ("sgld", "sa", 1.0), "sghmc_sa": ("sghmc", "sa", 1.0),
    "sgld_em": ("sgld", "em", 1.0), "sghmc_em": ("sghmc", "em", 1.0),
    "a_sghmc": ("sghmc", "none", 1.003), "a_sghmc_em": ("sghmc", "em", 1.003),
    "a_sghmc_sa": ("sghmc", "sa", 1.003),
}
for _name, (_s, _o, _a) in _VARIANTS.items():
    register(_name)(lambda _n=_name, _s=_s, _o=_o, _a=_a: build_sgmcmc_method(_n, _s, _o, _a))
