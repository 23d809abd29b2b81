"""Stochastic-gradient MCMC: SGLD / SGHMC kernels, the SSGL prior with stochastic-approximation
latent updates (SGLD-SA / SGHMC-SA, Deng et al. 2019), magnitude pruning and sample collection.

All functions are pure over pytree states; see the submodules:

- :mod:`emtdamp.sgmcmc.kernels`: gradient estimator, schedules, SGLD/SGHMC integrators and samplers, and the
  injected noise (three-point by default, or Gaussian: ``noise_dist``);
- :mod:`emtdamp.sgmcmc.ssgl`: SSGL prior penalty and the SA updates of ``ρ, κ, δ, σ`` with ``ω_k``;
- :mod:`emtdamp.sgmcmc.pruning`: ``s_k = S(1 − D^{k/U})`` magnitude pruning, ρ-based pruning;
- :mod:`emtdamp.sgmcmc.samples`: thinned-sample ring buffer and running moments;
- :mod:`emtdamp.sgmcmc.sa`: SGHMC-SA / SGLD-SA as ``init`` / ``step`` over any params pytree with your own
  log-likelihood, the SSGL prior on the leaves a filter selects.
"""

from emtdamp.sgmcmc.kernels import (
    DEFAULT_NOISE,
    NOISE_DISTS,
    PolynomialSchedule,
    SampleInfo,
    SamplingAlgorithm,
    SGHMCState,
    SGLDState,
    grad_estimator,
    minibatch_energy,
    noise_like,
    polynomial_schedule,
    schedule_value,
    sghmc,
    sghmc_init,
    sghmc_noise_std,
    sghmc_step,
    sghmc_update,
    sgld,
    sgld_init,
    sgld_step,
    sgld_update,
    three_point,
)
from emtdamp.sgmcmc.pruning import (
    PruneSchedule,
    apply_masks,
    inflated_target,
    magnitude_mask,
    prune_fraction,
    prune_schedule,
    rho_mask,
    zero_fraction,
)
from emtdamp.sgmcmc.sa import SAInfo, SAState, sa_sampler, selected_indices, sghmc_sa, sgld_sa
from emtdamp.sgmcmc.samples import (
    SampleBuffer,
    buffer_init,
    buffer_update,
    buffer_weights,
    mixture_moments,
    mixture_probs,
    posterior_mean,
    posterior_var,
    ring_samples,
)
from emtdamp.sgmcmc.ssgl import (
    OmegaSchedule,
    SSGLHyper,
    SSGLLatents,
    delta_target,
    init_latents,
    latents_from_values,
    log_delta_target,
    log_mix,
    omega_compounded,
    omega_schedule,
    omega_value,
    rho_tilde,
    rho_tilde_logit,
    sa_log_rho,
    sa_rho,
    sa_update,
    sa_update_every,
    sigma_coefficients,
    sigma_root,
    ssgl_hyper,
    ssgl_penalty,
    update_delta,
    update_kappa,
    update_log_delta,
    update_sigma2,
)

__all__ = [
    "DEFAULT_NOISE", "NOISE_DISTS", "OmegaSchedule", "PolynomialSchedule", "PruneSchedule", "SAInfo", "SAState",
    "SGHMCState", "SGLDState", "SSGLHyper", "SSGLLatents", "SampleBuffer", "SampleInfo", "SamplingAlgorithm",
    "apply_masks", "buffer_init", "buffer_update", "buffer_weights", "delta_target", "grad_estimator",
    "inflated_target", "init_latents", "latents_from_values", "log_delta_target", "log_mix", "magnitude_mask",
    "minibatch_energy", "mixture_moments", "mixture_probs", "noise_like", "omega_compounded", "omega_schedule",
    "omega_value", "polynomial_schedule", "posterior_mean", "posterior_var", "prune_fraction", "prune_schedule",
    "rho_mask", "rho_tilde", "rho_tilde_logit", "ring_samples", "sa_log_rho", "sa_rho", "sa_sampler", "sa_update",
    "sa_update_every",
    "schedule_value", "selected_indices", "sghmc", "sghmc_init", "sghmc_noise_std", "sghmc_sa", "sghmc_step",
    "sghmc_update", "sgld", "sgld_init", "sgld_sa", "sgld_step", "sgld_update", "sigma_coefficients", "sigma_root",
    "ssgl_hyper", "ssgl_penalty", "three_point", "update_delta", "update_kappa", "update_log_delta", "update_sigma2",
    "zero_fraction",
]
