"""``nuts``: full-batch NUTS on a Bayesian MLP, the gold-standard posterior other methods are checked against.

Model and priors: :mod:`emtdamp.nuts.bnn` (all weights and biases ``N(0, prior_var)``; regression
noise sd ``σ ~ HalfNormal(noise_scale)`` in standardised target units, sampled as ``log σ``;
classification softmax). Sampler: :mod:`emtdamp.nuts.kernel` (BlackJAX NUTS, Stan's window
adaptation of the step size and a diagonal mass matrix), ``chains`` chains vmapped in one program.

How it fits the shared loop: the training set is one full batch (``train.batch_size >= n_train``,
checked), so one epoch = one ``step`` = one NUTS transition of every chain. The first ``warmup``
steps adapt; afterwards every ``thin``-th position of every chain is kept in a ring buffer of
``draws`` slots (``train.epochs = warmup + draws * thin`` fills it exactly once; more epochs keep
the latest ``draws``). ``predict`` is the predictive mixture over all kept draws of all chains (the
current positions during warm-up); ``diagnostics`` gives split R-hat and bulk ESS in parameter and
function space (network outputs on 64 training rows fixed at the first step), see :mod:`emtdamp.nuts`.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from emtdamp.methods.base import Algorithm, Batch, DataSpec, Method, Mixture, ModelSpec, Predictive, hparam
from emtdamp.methods.registry import register
from emtdamp.models import mlp
from emtdamp.nuts import bnn, diagnostics
from emtdamp.nuts.kernel import ChainState, Schedule, init_chain, make_schedule, transition

N_FUNCTION_ROWS = 64


@dataclasses.dataclass(frozen=True)
class NUTSHParams:
    """Hyperparameters of full-batch NUTS. Set ``train.epochs = warmup + draws * thin`` and
    ``train.batch_size >= n_train``."""

    chains: int = hparam(4, range=(1, 1024), doc="number of chains (vmapped)")
    warmup: int = hparam(500, range=(0, 10**7), doc="adaptation transitions (Stan window schedule)")
    draws: int = hparam(500, range=(1, 10**6), doc="kept draws per chain (ring-buffer size)")
    thin: int = hparam(1, range=(1, 10**6), doc="keep every thin-th transition after warm-up")
    prior_var: float = hparam(1.0, range=(1e-12, 1e12), doc="variance of the N(0, prior_var) prior on weights/biases")
    noise_scale: float = hparam(1.0, range=(1e-12, 1e12),
                                doc="regression: σ ~ HalfNormal(noise_scale), standardised target units")
    target_accept: float = hparam(0.8, range=(0.05, 0.999), doc="dual-averaging target acceptance rate")
    initial_step_size: float = hparam(0.01, range=(1e-12, 10.0), doc="step size at the start of warm-up")
    max_num_doublings: int = hparam(10, range=(1, 20), doc="NUTS max tree depth (≤ 2^depth − 1 leapfrog steps)")


@chex.dataclass
class NUTSState:
    """Everything that changes, as arrays. Leading axis ``C`` = chains, ``S`` = draw slots."""

    chains: ChainState          # positions, adaptation state, step sizes (C,), inverse mass matrices (C, D)
    schedule: Schedule          # warm-up schedule, (max(warmup, 1),)
    num_warmup: jax.Array       # int32
    thin: jax.Array             # int32
    draws: dict                 # position pytree, leaves (C, S, ...)
    n_kept: jax.Array           # int32, draws kept so far per chain (slot = n_kept % S)
    fs_x: jax.Array             # (m, d) inputs of the function-space diagnostics (first step's rows)
    prior_var: jax.Array
    noise_scale: jax.Array
    n_divergent: jax.Array      # (C,) divergent transitions after warm-up
    sum_accept: jax.Array       # (C,) acceptance rates summed after warm-up
    sum_steps: jax.Array        # (C,) leapfrog steps summed after warm-up
    count: jax.Array            # int32 transitions done
    rng: jax.Array              # raw uint32 key data


@dataclasses.dataclass(frozen=True)
class NUTSStatic:
    """What ``nuts`` fixes at build time: task, activation, training size, chain and draw counts,
    the NUTS tree settings and ``n_fs`` (rows of the function-space diagnostics)."""

    task: str
    activation: str
    n_train: int
    chains: int
    draws: int
    target_accept: float
    max_num_doublings: int
    n_fs: int
    warmup: int


def build_nuts_method() -> Method:
    """The registered ``nuts`` method (see the module docstring)."""
    def build(model: ModelSpec, data: DataSpec, hp: NUTSHParams) -> Algorithm:
        if not isinstance(hp, NUTSHParams):
            raise TypeError(f"nuts: hparams must be NUTSHParams, got {type(hp).__name__}")
        mlp.require_mlp(model, "nuts", "its network is the declared MLP")
        mlp.activation_fn(model.activation)
        dt = jnp.zeros(()).dtype
        sizes = model.layer_sizes(data)
        cfg = NUTSStatic(task=data.task, activation=model.activation, n_train=data.n_train, chains=hp.chains,
                         draws=hp.draws, target_accept=hp.target_accept, max_num_doublings=hp.max_num_doublings,
                         n_fs=min(N_FUNCTION_ROWS, data.n_train), warmup=hp.warmup)

        def init(key) -> NUTSState:
            kp, kr = jax.random.split(key)
            pos = jax.vmap(lambda k: bnn.init_position(k, sizes, data.task, dt))(jax.random.split(kp, hp.chains))
            chains = jax.vmap(lambda p: init_chain(p, hp.initial_step_size, hp.target_accept))(pos)
            buf = jax.tree_util.tree_map(lambda a: jnp.zeros((a.shape[0], hp.draws, *a.shape[1:]), a.dtype), pos)
            if jnp.issubdtype(kr.dtype, jax.dtypes.prng_key):
                kr = jax.random.key_data(kr)
            f = lambda v: jnp.asarray(v, dt)
            c = hp.chains
            state = NUTSState(
                chains=chains, schedule=make_schedule(hp.warmup), num_warmup=jnp.asarray(hp.warmup, jnp.int32),
                thin=jnp.asarray(hp.thin, jnp.int32), draws=buf, n_kept=jnp.asarray(0, jnp.int32),
                fs_x=jnp.zeros((cfg.n_fs, data.n_features), dt), prior_var=f(hp.prior_var),
                noise_scale=f(hp.noise_scale), n_divergent=jnp.zeros((c,), jnp.int32), sum_accept=jnp.zeros((c,), dt),
                sum_steps=jnp.zeros((c,), dt), count=jnp.asarray(0, jnp.int32), rng=kr)
            return jax.tree_util.tree_map(lambda v: jnp.array(v, copy=True), state)

        def step(state: NUTSState, batch: Batch):
            n = batch.x.shape[0]
            if n < cfg.n_train:
                raise ValueError(f"nuts is full-batch: each step must see all {cfg.n_train} training rows, got a "
                                 f"minibatch of {n}; set train.batch_size={cfg.n_train} (or larger)")
            logdens = lambda p: bnn.log_joint(p, batch, cfg.activation, cfg.task, state.prior_var,
                                              state.noise_scale)
            key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.count)
            keys = jax.random.split(key, cfg.chains)
            count = state.count
            one = lambda k, ch: transition(k, ch, logdens, count, state.num_warmup, state.schedule,
                                           max_num_doublings=cfg.max_num_doublings,
                                           target_accept=cfg.target_accept)
            chains, info = jax.vmap(one)(keys, state.chains)

            sampling = count >= state.num_warmup
            keep = sampling & (jnp.mod(count - state.num_warmup, state.thin) == 0)
            slot = jnp.mod(state.n_kept, cfg.draws)
            draws = jax.tree_util.tree_map(
                lambda buf, p: buf.at[:, slot].set(jnp.where(keep, p, buf[:, slot])), state.draws, chains.position)
            s = sampling.astype(state.sum_accept.dtype)
            fs_x = jnp.where(count == 0, batch.x[: cfg.n_fs], state.fs_x)
            new = state.replace(
                chains=chains, draws=draws, n_kept=state.n_kept + keep.astype(jnp.int32), fs_x=fs_x,
                n_divergent=state.n_divergent + (sampling & info.is_divergent).astype(jnp.int32),
                sum_accept=state.sum_accept + s * info.acceptance_rate,
                sum_steps=state.sum_steps + s * info.num_integration_steps.astype(s.dtype), count=count + 1)
            n_real = jnp.maximum(batch.w.sum(), 1.0)
            metrics = {"loss": -jnp.mean(info.logdensity) / n_real,   # −log posterior per training row
                       "accept": jnp.mean(info.acceptance_rate), "step_size": jnp.mean(info.step_size),
                       "divergent": jnp.mean(info.is_divergent.astype(s.dtype)),
                       "leapfrog_steps": jnp.mean(info.num_integration_steps.astype(s.dtype))}
            return new, metrics

        def _valid(state: NUTSState) -> jax.Array:
            slots = jnp.arange(cfg.draws) < jnp.minimum(state.n_kept, cfg.draws)
            return jnp.broadcast_to(slots, (cfg.chains, cfg.draws))

        def predict(state: NUTSState, x) -> Predictive:
            act, task = cfg.activation, cfg.task
            kept = bnn.predictive_moments(state.draws, _valid(state), x, act, task)
            current_pos = jax.tree_util.tree_map(lambda a: a[:, None], state.chains.position)
            current = bnn.predictive_moments(current_pos, jnp.ones((cfg.chains, 1), bool), x, act, task)
            have = state.n_kept > 0
            first = jnp.where(have, kept[0], current[0])
            if task == "regression":
                return Predictive(mean=first, var=jnp.where(have, kept[1], current[1]))
            return Predictive(probs=first)

        def predict_mixture(state: NUTSState, x) -> Mixture:
            """One component per kept draw of every chain ``(C·S)``, then the chains' current positions
            (weight 0 once a draw is kept; ``1/C`` each before). Memory ``(C·S + C)·n·d``."""
            act = cfg.activation
            pos = jax.tree_util.tree_map(lambda d, c: jnp.concatenate([d, c[:, None]], axis=1),
                                         state.draws, state.chains.position)          # (C, S + 1, ...)
            valid = _valid(state).astype(x.dtype)
            have = state.n_kept > 0
            w_kept = valid / jnp.maximum(valid.sum(), 1.0)
            w_cur = jnp.full((cfg.chains, 1), 1.0 / cfg.chains, x.dtype)
            w = jnp.concatenate([jnp.where(have, w_kept, 0.0), jnp.where(have, 0.0, w_cur)], axis=1).reshape(-1)
            out = jax.vmap(jax.vmap(lambda p: mlp.apply(p, x, act)))(pos["params"])    # (C, S + 1, n, d)
            out = out.reshape(-1, *out.shape[2:])
            if cfg.task == "regression":
                var = jnp.exp(2.0 * pos["log_sigma"]).reshape(-1, 1, out.shape[-1])
                return Mixture(weights=w, mean=out, var=jnp.broadcast_to(var, out.shape))
            return Mixture(weights=w, probs=jax.nn.softmax(out, axis=-1))

        def diagnostics_fn(state: NUTSState) -> dict:
            return nuts_diagnostics(state, cfg)

        def sparsity(state: NUTSState) -> dict:
            n = sum(a[0].size for a in jax.tree_util.tree_leaves(state.chains.position["params"]))
            return {"neurons_pruned_frac": 0.0, "weights_zero_frac": 0.0, "params_remaining": n}

        return Algorithm(init=init, step=step, predict=predict, sparsity=sparsity, diagnostics=diagnostics_fn,
                         predict_mixture=predict_mixture)

    return Method(name="nuts", hparams_cls=NUTSHParams, build=build,
                  description="full-batch NUTS (BlackJAX, window adaptation), vmapped chains; gold-standard posterior")


def kept_draws(state: NUTSState, n_slots: int) -> dict:
    """The kept draws in chronological order, leaves ``(C, m, ...)`` with ``m = min(n_kept, n_slots)``."""
    n_kept = int(state.n_kept)
    m = min(n_kept, n_slots)
    order = (np.arange(m) + n_kept - m) % n_slots
    return jax.tree_util.tree_map(lambda a: np.asarray(a)[:, order], state.draws)


def nuts_diagnostics(state: NUTSState, cfg: NUTSStatic) -> dict:
    """Convergence diagnostics of a NUTS run (plain floats; R-hat/ESS None with < 4 draws per chain).

    ``rhat`` / ``ess_bulk``: rank-normalised split R-hat (median, max over elements) and bulk ESS
    (median, min) of the identifiable quantities: ``function_*`` = the network outputs (regression)
    or log-softmax (classification) on the ``fs_x`` rows, and ``noise_sd`` = σ (regression). Run
    folders warn when one of these R-hats exceeds 1.05. ``rhat_params`` / ``ess_bulk_params``: the
    same over every weight, bias and ``log σ``; reported, not warned on, because the parameter-space
    R-hat of a neural network is inflated by its symmetries (permuted hidden units) whenever chains
    sit in different but equivalent modes, which function space does not see.
    """
    draws = kept_draws(state, cfg.draws)
    c, m = int(state.count), min(int(state.n_kept), cfg.draws)
    n_warm = int(state.num_warmup)
    n_samp = max(c - n_warm, 0)
    out: dict = {"chains": cfg.chains, "draws_per_chain": m, "warmup": n_warm, "transitions": c,
                 "step_size": [float(v) for v in np.asarray(state.chains.step_size)],
                 "divergences": int(np.sum(np.asarray(state.n_divergent))),
                 "accept_rate": float(np.mean(np.asarray(state.sum_accept))) / n_samp if n_samp else None,
                 "leapfrog_steps_mean": float(np.mean(np.asarray(state.sum_steps))) / n_samp if n_samp else None,
                 "function_rows": int(state.fs_x.shape[0])}
    if m == 0:
        out.update(rhat=None, ess_bulk=None)
        return out
    flat = jax.vmap(jax.vmap(lambda p: ravel_pytree(p)[0]))(jax.tree_util.tree_map(jnp.asarray, draws))
    apply = lambda p: mlp.apply(p, state.fs_x, cfg.activation)
    f = jax.vmap(jax.vmap(apply))(jax.tree_util.tree_map(jnp.asarray, draws["params"]))     # (C, m, n_fs, d)
    if cfg.task == "classification":
        f = jax.nn.log_softmax(f, axis=-1)
    parts = {"function": np.asarray(f).reshape(f.shape[0], m, -1), "params": np.asarray(flat)}
    if "log_sigma" in draws:
        sig = np.exp(np.asarray(draws["log_sigma"], np.float64))
        parts["noise_sd"] = sig
        out["noise_sd_mean"] = float(sig.mean())     # standardised target units
    summ = {k: diagnostics.summarise(v) for k, v in parts.items()}
    fs = summ["function"]
    out["rhat"] = {"function_median": fs["rhat_median"], "function_max": fs["rhat_max"]}
    out["ess_bulk"] = {"function_median": fs["ess_bulk_median"], "function_min": fs["ess_bulk_min"]}
    if "noise_sd" in summ:
        out["rhat"]["noise_sd"] = summ["noise_sd"]["rhat_max"]
        out["ess_bulk"]["noise_sd"] = summ["noise_sd"]["ess_bulk_min"]
    ps = summ["params"]
    out["rhat_params"] = {"median": ps["rhat_median"], "max": ps["rhat_max"]}
    out["ess_bulk_params"] = {"median": ps["ess_bulk_median"], "min": ps["ess_bulk_min"]}
    return out


register("nuts")(build_nuts_method)
