"""emtdamp: sparse Bayesian deep learning in JAX (EM-TDAMP, SG-MCMC-SA, EM-MCMC, baselines)."""

__version__ = "0.1.0"
