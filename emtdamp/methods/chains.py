"""Several independent chains of one method, trained as one vmapped program: ``train.chains: K``.

One chain of a stochastic-gradient sampler explores one basin of a neural network's posterior; the
posterior predictive of ``K`` chains started from independent initialisations is the equal-weight
mixture of the chains' predictives (the standard multi-chain estimate: NUTS in emtdamp, BlackJAX and
NumPyro runs ``K`` chains the same way). :func:`with_chains` turns any :class:`~emtdamp.methods.base.Method`
into that ensemble:

- ``init``: chain ``k`` is ``method.init`` with the ``k``-th of ``K`` keys split from the run's init key;
  the state gets a leading chain axis ``(K, ...)`` on every leaf.
- ``step``: ``vmap`` over the chain axis, every chain on the *same* minibatch, each with its own state
  (and so its own random stream, which every method keeps in its state); metrics are chain means.
- The training loop's epoch (:func:`~emtdamp.loops.centralised.make_epoch_fn`, through
  ``Algorithm.chains``) does not call that ``step``: it vmaps one chain's whole epoch, and chain ``k``
  draws its minibatch order from the ``k``-th of ``K`` keys split from the epoch's key, as ``K`` separate
  runs would. A shared order is an error common to every fit that the mixture cannot average away: on
  EM-TDAMP's Boston ensemble the validation RMSE varied by up to 0.18 between training seeds with one shared
  order and by up to 0.06 with an order per fit (docs/emtdamp.md §9.0, "Fifth pass"). With one minibatch per epoch
  (full batch) there is no order, and every chain gets the same batch.
- ``predict``: the mixture. Regression: ``mean = (1/K) Σ_k m_k`` and ``var = (1/K) Σ_k v_k +
  (1/K) Σ_k (m_k − mean)²`` (law of total variance, per output); classification: ``probs = (1/K) Σ_k p_k``.
- ``sparsity``: the chain average of every figure (``params_remaining`` rounded).
- ``diagnostics``: split R-hat and bulk ESS (Vehtari et al. 2021, :mod:`emtdamp.nuts.diagnostics`) across
  the chains of every *scalar* quantity the method keeps thinned samples of (its
  :class:`~emtdamp.sgmcmc.samples.SampleBuffer` leaves of per-sample shape ``()``, e.g. SG-MCMC's noise
  variance s²). Parameter-space R-hat of a neural network is not reported: hidden units are exchangeable,
  so chains in permuted modes disagree on every weight while agreeing on every prediction.

For a method that is not a sampler (EM-TDAMP, adam) the same wrapper is an ensemble of ``K``
independently initialised fits, mixed the same way. ``nuts`` runs its own chains (``method.chains``) and
is refused here.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from emtdamp.methods.base import Algorithm, Method, Mixture, Predictive, PyTree
from emtdamp.nuts.diagnostics import summarise
from emtdamp.sgmcmc.samples import SampleBuffer, ring_samples

OWN_CHAINS = ("nuts",)  # methods that run several chains themselves


def chain_mixture(pred: Predictive) -> Predictive:
    """Equal-weight mixture of per-chain predictives with a leading chain axis ``K``.

    Parameters
    ----------
    pred: ``mean``, ``var`` of shape ``(K, n, d_out)`` (regression) or ``probs (K, n, C)``.

    Returns
    -------
    Predictive with ``mean``, ``var`` ``(n, d_out)`` (``var`` = mean within-chain variance + variance of
    the chain means, ``1/K`` normalised) or ``probs (n, C)``.
    """
    if pred.probs is not None:
        return Predictive(probs=jnp.mean(pred.probs, axis=0))
    mean = jnp.mean(pred.mean, axis=0)
    var = jnp.mean(pred.var, axis=0) + jnp.mean(jnp.square(pred.mean - mean), axis=0)
    return Predictive(mean=mean, var=var)


def chain_slice(states: PyTree, k: int) -> PyTree:
    """The state of chain ``k`` (every leaf indexed on its leading chain axis)."""
    return jax.tree_util.tree_map(lambda a: a[k], states)


def n_chains_of(states: PyTree) -> int:
    """``K``: the size of the leading chain axis of a multi-chain state."""
    return int(jax.tree_util.tree_leaves(states)[0].shape[0])


def _time_ordered(slots: np.ndarray, n_collected: int) -> np.ndarray:
    """Ring slots ``(size, ...)`` (:func:`~emtdamp.sgmcmc.samples.ring_samples`) in collection order, oldest
    first; only the filled ones."""
    size = slots.shape[0]
    if n_collected <= size:
        return slots[:n_collected]
    start = n_collected % size
    return np.concatenate([slots[start:], slots[:start]], axis=0)


def scalar_sample_draws(states: PyTree) -> dict[str, np.ndarray]:
    """Draws ``(K, N)`` of every scalar quantity kept in a sample buffer of a multi-chain state.

    Keys are the buffers' paths in the state (``jax.tree_util.keystr``); ``N`` is the number of samples every
    chain holds (the shortest chain's count).
    """
    out = {}
    k_chains = n_chains_of(states)
    leaves = jax.tree_util.tree_leaves_with_path(states, is_leaf=lambda x: isinstance(x, SampleBuffer))
    for path, buf in leaves:
        if not isinstance(buf, SampleBuffer):
            continue
        per_chain = [chain_slice(buf, k) for k in range(k_chains)]
        ordered = [jax.tree_util.tree_map(lambda s, n=int(b.n_collected): _time_ordered(np.asarray(s), n),
                                          ring_samples(b)) for b in per_chain]
        leaves_k = [jax.tree_util.tree_leaves_with_path(o) for o in ordered]   # per chain: [(path, (S_k, ...))]
        n = min(len(lv[0][1]) for lv in leaves_k)
        for j, (spath, first) in enumerate(leaves_k[0]):
            if first.ndim != 1 or n < 1:  # (samples,): one scalar per sample
                continue
            draws = np.stack([lv[j][1][-n:] for lv in leaves_k])
            out[(jax.tree_util.keystr(path) + jax.tree_util.keystr(spath)).lstrip(".")] = draws
    return out


def with_chains(method: Method, n_chains: int) -> Method:
    """``method`` run as ``n_chains`` independent chains in one vmapped program (see the module docstring).

    Parameters
    ----------
    method: any method whose ``init`` / ``step`` / ``predict`` trace under ``vmap``.
    n_chains: ``K >= 1``; ``K = 1`` returns ``method`` itself (no chain axis).

    Returns
    -------
    Method with the same name and hyperparameter class whose state has a leading ``(K, ...)`` chain axis.
    """
    if n_chains < 1:
        raise ValueError(f"train.chains must be >= 1, got {n_chains}")
    if n_chains == 1:
        return method
    if method.name in OWN_CHAINS:
        raise ValueError(f"{method.name} runs its own chains: set method.chains={n_chains} and leave train.chains=1")

    def build(model, data, hparams) -> Algorithm:
        return chain_algorithm(method.build(model, data, hparams), n_chains)

    return dataclasses.replace(method, build=build, description=f"{method.description} [{n_chains} chains, mixed]")


def chain_algorithm(algo: Algorithm, n_chains: int) -> Algorithm:
    """``algo`` as ``n_chains`` vmapped chains: state leaves gain a leading ``(K, ...)`` axis, metrics are
    chain means, ``predict`` is the equal-weight mixture, ``diagnostics`` adds R-hat / ESS across chains."""
    def init(key):
        return jax.vmap(algo.init)(jax.random.split(key, n_chains))

    def step(states, batch):
        states, metrics = jax.vmap(algo.step, in_axes=(0, None))(states, batch)
        return states, jax.tree_util.tree_map(lambda m: jnp.mean(m, axis=0), metrics)

    def predict(states, x):
        return chain_mixture(jax.vmap(algo.predict, in_axes=(0, None))(states, x))

    def predict_mixture(states, x) -> Mixture:
        """Every chain's components, weights divided by ``K`` (a chain without its own mixture is one
        Gaussian / categorical component)."""
        if algo.predict_mixture is not None:
            mix = jax.vmap(algo.predict_mixture, in_axes=(0, None))(states, x)
            flat = jax.tree_util.tree_map(lambda a: a.reshape(-1, *a.shape[2:]), mix)
            return flat._replace(weights=flat.weights / n_chains)
        p = jax.vmap(algo.predict, in_axes=(0, None))(states, x)
        leaf = p.mean if p.mean is not None else p.probs
        return Mixture(weights=jnp.full((n_chains,), 1.0 / n_chains, leaf.dtype), mean=p.mean, var=p.var,
                       probs=p.probs)

    end_epoch = None
    if algo.end_epoch is not None:
        def end_epoch(states, epoch):
            return jax.vmap(algo.end_epoch, in_axes=(0, None))(states, epoch)

    sparsity = None
    if algo.sparsity is not None:
        def sparsity(states):
            per = [algo.sparsity(chain_slice(states, k)) for k in range(n_chains_of(states))]
            out = {}
            for name in per[0]:
                v = np.mean([np.asarray(p[name], np.float64) for p in per], axis=0)
                out[name] = int(round(float(v))) if name == "params_remaining" else v
            return out

    def diagnostics(states):
        out: dict = {"chains": n_chains_of(states)}
        if algo.diagnostics is not None:
            out["per_chain"] = [algo.diagnostics(chain_slice(states, k)) for k in range(n_chains_of(states))]
        rhat, ess = {}, {}
        scalars = scalar_sample_draws(states)
        for name, draws in scalars.items():
            s = summarise(draws[:, :, None])
            if s["rhat_max"] is not None:
                rhat[name], ess[name] = s["rhat_max"], s["ess_bulk_min"]
        out["samples_per_chain"] = int(min((d.shape[1] for d in scalars.values()), default=0))
        out["rhat"], out["ess_bulk"] = rhat, ess
        return out

    return Algorithm(init=init, step=step, predict=predict, end_epoch=end_epoch, sparsity=sparsity,
                     diagnostics=diagnostics, predict_mixture=predict_mixture, chains=(algo, n_chains))
