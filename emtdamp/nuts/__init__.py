"""Full-batch NUTS, the gold-standard posterior of the project (``method.name: nuts``).

- :mod:`emtdamp.nuts.kernel`: one NUTS transition with Stan's window adaptation as arrays in the
  state (:func:`~emtdamp.nuts.kernel.transition`), and :func:`~emtdamp.nuts.kernel.sample`, vmapped
  chains over any log density of a params pytree.
- :mod:`emtdamp.nuts.bnn`: the Bayesian MLP (Gaussian priors, half-normal noise sd) and its
  predictive mixture.
- :mod:`emtdamp.nuts.diagnostics`: rank-normalised split R-hat and bulk ESS (Vehtari et al. 2021).

The registered method lives in :mod:`emtdamp.methods.nuts_method`; see ``docs/nuts.md``.
"""

from emtdamp.nuts.diagnostics import ess_bulk, split_rhat
from emtdamp.nuts.kernel import ChainState, Schedule, TransitionInfo, init_chain, make_schedule, sample, transition

__all__ = ["ChainState", "Schedule", "TransitionInfo", "ess_bulk", "init_chain", "make_schedule", "sample",
           "split_rhat", "transition"]
