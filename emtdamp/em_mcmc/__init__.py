"""EM-MCMC (Ke & Fan, spec B): adaptive mean-field VI read as preconditioned SGHMC, with a
spike-and-slab group prior fitted by MCMC-within-EM and permanent one-shot group pruning.

- :mod:`~emtdamp.em_mcmc.optimizer`: the optax ``GradientTransformation`` (:func:`em_mcmc`) and
  the direct step :func:`em_mcmc_step`.
- :mod:`~emtdamp.em_mcmc.em`: E-step (hard / soft), M-steps, pruning, as pure functions.
- :mod:`~emtdamp.em_mcmc.groups`: group specs for MLP and flax (dense / conv) params.
- :mod:`~emtdamp.em_mcmc.schedule`: cyclical step size and the EM warm-up gate.
"""

from emtdamp.em_mcmc.compact import compact_mlp
from emtdamp.em_mcmc.em import hard_estep, mstep_decay, mstep_theta, prune_keep, soft_estep
from emtdamp.em_mcmc.groups import (
    GroupSpec,
    LeafGroups,
    apply_keep,
    conv_groups,
    count_groups,
    dense_groups,
    flax_group_spec,
    mlp_group_spec,
)
from emtdamp.em_mcmc.optimizer import (
    EMMCMCHyper,
    EMMCMCState,
    em_and_prune,
    em_mcmc,
    em_mcmc_step,
    make_hyper,
    noise_tree,
    posterior_std,
    step_size,
)
from emtdamp.em_mcmc.schedule import cyclical_lr, em_gate

__all__ = ["EMMCMCHyper", "EMMCMCState", "GroupSpec", "LeafGroups", "apply_keep", "compact_mlp", "conv_groups",
           "count_groups", "cyclical_lr", "dense_groups", "em_and_prune", "em_gate", "em_mcmc",
           "em_mcmc_step", "flax_group_spec", "hard_estep", "make_hyper", "mlp_group_spec",
           "mstep_decay", "mstep_theta", "noise_tree", "posterior_std", "prune_keep", "soft_estep",
           "step_size"]
