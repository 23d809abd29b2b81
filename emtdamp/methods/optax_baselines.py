"""SGD and Adam through optax: the baselines every Bayesian method is compared against.

Regression minimises the mean squared error on standardised targets; the predictive variance is the
training residual variance (an exponential moving average kept in the state), so that an NLL can be
reported. Classification minimises softmax cross-entropy. Both work with ``model.kind`` mlp and cnn
(the network comes from :func:`emtdamp.models.network.build_network`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

from emtdamp.losses import data_loss, point_predictive
from emtdamp.methods.base import Algorithm, Batch, DataSpec, Method, ModelSpec, Predictive, hparam
from emtdamp.methods.registry import register
from emtdamp.models import mlp
from emtdamp.models.network import build_network, kernels


@dataclasses.dataclass(frozen=True)
class OptaxHParams:
    """Hyperparameters of the optax baselines."""

    learning_rate: float = hparam(1e-3, range=(0.0, 10.0), doc="step size")
    momentum: float = hparam(0.9, range=(0.0, 1.0), doc="SGD momentum (ignored by adam)")
    weight_decay: float = hparam(0.0, range=(0.0, 1.0), doc="L2 penalty coefficient on all weights")


@chex.dataclass
class OptaxState:
    """Params, optimiser state, the residual-variance estimate (regression) and a step count."""

    params: Any  # MLP: list of {"kernel", "bias"}; CNN: flax params dict
    opt_state: optax.OptState
    noise_var: jax.Array
    learning_rate: jax.Array
    count: jax.Array


def _net_loss(apply_fn, params, batch: Batch, task: str, weight_decay):
    """``(data loss + weight_decay * sum of squared kernels, data loss)``; padding rows weighted out."""
    loss = data_loss(apply_fn, params, batch, task)
    l2 = sum(jnp.sum(k**2) for k in kernels(params))
    return loss + weight_decay * l2, loss


def build_optax_method(name: str) -> Method:
    """An optax baseline (``"sgd"`` or ``"adam"``) as a :class:`Method`."""

    def make_tx(hp: OptaxHParams):
        # The learning rate is an array in the state (inject_hyperparams), never a closed-over float.
        if name == "sgd":
            return optax.inject_hyperparams(optax.sgd)(learning_rate=hp.learning_rate, momentum=hp.momentum)
        return optax.inject_hyperparams(optax.adam)(learning_rate=hp.learning_rate)

    def build(model: ModelSpec, data: DataSpec, hp: OptaxHParams) -> Algorithm:
        init_fn, apply_fn = build_network(model, data)
        task, weight_decay, tx = data.task, hp.weight_decay, make_tx(hp)

        def init(key) -> OptaxState:
            params = init_fn(key)
            return OptaxState(params=params, opt_state=tx.init(params),
                              noise_var=jnp.asarray(1.0, jnp.float32),
                              learning_rate=jnp.asarray(hp.learning_rate, jnp.float32),
                              count=jnp.asarray(0, jnp.int32))

        def step(state: OptaxState, batch: Batch):
            (loss, data_loss), grads = jax.value_and_grad(_net_loss, argnums=1, has_aux=True)(
                apply_fn, state.params, batch, task, weight_decay)
            opt_state = state.opt_state
            opt_state.hyperparams["learning_rate"] = state.learning_rate
            updates, opt_state = tx.update(grads, opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            noise_var = state.noise_var
            if task == "regression":
                noise_var = jnp.where(state.count == 0, data_loss, 0.95 * noise_var + 0.05 * data_loss)
            new = state.replace(params=params, opt_state=opt_state, noise_var=noise_var, count=state.count + 1)
            return new, {"loss": data_loss}

        def predict(state: OptaxState, x) -> Predictive:
            return point_predictive(apply_fn(state.params, x), task, state.noise_var)

        return Algorithm(init=init, step=step, predict=predict, sparsity=sparsity)

    def sparsity(state: OptaxState) -> dict:
        n = mlp.count_params(state.params)
        zeros = sum(jnp.sum(k == 0) for k in kernels(state.params))
        n_w = sum(k.size for k in kernels(state.params))
        return {"neurons_pruned_frac": 0.0, "weights_zero_frac": float(zeros) / n_w, "params_remaining": n}

    return Method(name=name, hparams_cls=OptaxHParams, build=build,
                  description=f"{name} (optax) point estimate, MSE / cross-entropy")



register("sgd")(lambda: build_optax_method("sgd"))
register("adam")(lambda: build_optax_method("adam"))
