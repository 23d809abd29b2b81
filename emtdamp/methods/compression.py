"""The EM-TDAMP paper's compression baselines as methods: ``group_lasso``, ``group_snip``, ``adam_prune``.

Each is adam (optax) on the data loss plus structured pruning of *neuron groups*, the groups EM-TDAMP
prunes: group ``g`` of a weight kernel is its input unit ``g`` (row ``g`` of a dense ``(in, out)`` kernel,
input channel ``g`` of a conv ``(..., in, out)`` kernel, i.e. axis ``-2``), so removing group ``g`` of layer
``l + 1`` removes hidden unit ``g`` of layer ``l`` and group ``g`` of the first kernel removes input
feature ``g``. Kernels are the leaves named ``kernel`` (:func:`emtdamp.pytrees.is_kernel`) of any params tree
(the MLP, the CNN, a user's flax module); ``prune_inputs=false`` exempts the first kernel in tree order.

``target_density`` (κ, the same knob as EM-TDAMP's ``target_density`` and EM-MCMC's) is the share of groups
kept per kernel: ``ceil(κ n)`` of its ``n`` groups. It is an array in the state, so sweeps over κ ``vmap``.
Removed groups are masked permanently (masks only shrink) and stay exactly zero.

- ``group_lasso``: adam on the loss, then the proximal step of the group penalty ``λ Σ_g sqrt(p_g) ||w_g||``
  (``p_g`` = group size): ``w_g ← w_g max(0, 1 − η λ sqrt(p_g) / ||w_g||)`` with ``η = learning_rate``, so
  groups reach exact zero; from epoch ``warm`` on, every epoch end keeps the ``ceil(κ n)`` largest-norm
  groups of each kernel (so the final network has exactly the target share).
- ``group_snip``: SNIP (Lee et al. 2019) per group: on the first minibatch, at the initial weights, the
  saliency ``Σ_{i∈g} |∂L/∂w_i · w_i|``; the top ``ceil(κ n)`` groups of each kernel are kept and the masked
  network is trained with adam.
- ``adam_prune``: dense adam training; at the end of epoch ``prune_epoch`` (default: ``train.epochs −
  finetune_epochs``, filled in from the train block) the lowest-norm groups are removed down to κ, and the
  remaining epochs fine-tune the masked network.

Regression reports the training residual variance as the predictive noise (as adam does).
"""

from __future__ import annotations

import dataclasses
import math
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
from emtdamp.pytrees import is_kernel

KINDS = ("group_lasso", "group_snip", "adam_prune")


@dataclasses.dataclass(frozen=True)
class CompressionHParams:
    """Shared by the three baselines."""

    learning_rate: float = hparam(1e-3, range=(0.0, 10.0), doc="adam step size (also η of the proximal step)")
    weight_decay: float = hparam(0.0, range=(0.0, 1.0), doc="L2 penalty coefficient on the kernels")
    target_density: float = hparam(1.0, range=(1e-6, 1.0), doc="κ: share of neuron groups kept per kernel")
    prune_inputs: bool = hparam(True, doc="whether input features (the first kernel's groups) may be pruned")


@dataclasses.dataclass(frozen=True)
class GroupLassoHParams(CompressionHParams):
    """``group_lasso``: the group penalty and when the κ cut starts."""

    lam: float = hparam(1e-3, range=(0.0, 1e3), doc="λ of the group ℓ2,1 penalty λ Σ_g sqrt(p_g) ||w_g||")
    warm: int = hparam(0, range=(0, 1_000_000), doc="epochs before the κ cut (lowest-norm groups) starts")


@dataclasses.dataclass(frozen=True)
class GroupSnipHParams(CompressionHParams):
    """``group_snip``: the shared settings only (the mask is fixed on the first minibatch)."""


@dataclasses.dataclass(frozen=True)
class AdamPruneHParams(CompressionHParams):
    """``adam_prune``: when to prune and how long to fine-tune."""

    finetune_epochs: int = hparam(0, range=(0, 1_000_000), doc="epochs of masked fine-tuning after the cut")
    prune_epoch: int = hparam(0, range=(0, 1_000_000),
                              doc="epoch at whose end the cut is made; 0 = train.epochs − finetune_epochs")

    def with_train(self, train) -> AdamPruneHParams:
        """The config loader's hook: resolve ``prune_epoch = 0`` from the train block."""
        if self.finetune_epochs >= train.epochs:
            raise ValueError(f"finetune_epochs={self.finetune_epochs} >= train.epochs={train.epochs}: nothing "
                             "would be trained dense; lower method.finetune_epochs")
        if self.prune_epoch > 0:
            return self
        return dataclasses.replace(self, prune_epoch=train.epochs - self.finetune_epochs)


@chex.dataclass
class CompressionState:
    """Params, adam state, one boolean group mask per kernel, κ and λ as arrays, the residual variance."""

    params: Any
    opt_state: optax.OptState
    masks: list                 # per kernel: (n_groups,) bool, True = kept
    density: jax.Array          # κ
    lam: jax.Array              # λ (group_lasso; 0 otherwise)
    learning_rate: jax.Array
    noise_var: jax.Array
    count: jax.Array


def group_axis(kernel: jax.Array) -> int:
    """The axis indexing a kernel's neuron groups: its input units / channels, ``ndim − 2``."""
    return kernel.ndim - 2


def group_norms(kernel: jax.Array) -> jax.Array:
    """``||w_g||_2`` per group ``(n_groups,)``."""
    ax = group_axis(kernel)
    return jnp.sqrt(jnp.sum(kernel ** 2, axis=tuple(a for a in range(kernel.ndim) if a != ax)))


def group_sum(values: jax.Array) -> jax.Array:
    """Sum of ``values`` (kernel-shaped) per group ``(n_groups,)``."""
    ax = group_axis(values)
    return jnp.sum(values, axis=tuple(a for a in range(values.ndim) if a != ax))


def _expand(mask: jax.Array, kernel: jax.Array) -> jax.Array:
    shape = [1] * kernel.ndim
    shape[group_axis(kernel)] = mask.shape[0]
    return mask.reshape(shape)


def topk_mask(score: jax.Array, alive: jax.Array, density: jax.Array) -> jax.Array:
    """Keep the ``ceil(density n)`` highest-scoring live groups (at least one): ``(n,)`` bool, a subset of
    ``alive``. ``density`` may be traced (the count kept comes from ranks, not shapes)."""
    n = score.shape[0]
    s = jnp.where(alive, score, -jnp.inf)
    rank = jnp.zeros((n,), jnp.int32).at[jnp.argsort(-s)].set(jnp.arange(n, dtype=jnp.int32))
    k = jnp.maximum(jnp.ceil(density.astype(jnp.float32) * n - 1e-6).astype(jnp.int32), 1)
    return (rank < k) & alive


def _map_kernels(params, fn):
    """``params`` with ``fn(i, kernel)`` applied to the i-th kernel (tree-flatten order)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    out, i = [], 0
    for path, leaf in leaves:
        if is_kernel(path) and leaf.ndim >= 2:
            out.append(fn(i, leaf))
            i += 1
        else:
            out.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, out)


def _kernels(params) -> list:
    return [k for k in kernels(params) if k.ndim >= 2]


def apply_masks(params, masks: list):
    """Zero the removed groups of every kernel."""
    return _map_kernels(params, lambda i, k: k * _expand(masks[i], k).astype(k.dtype))


def build_compression_method(kind: str) -> Method:
    """One of :data:`KINDS` as a :class:`Method` (see the module docstring)."""
    hp_cls = {"group_lasso": GroupLassoHParams, "group_snip": GroupSnipHParams, "adam_prune": AdamPruneHParams}[kind]

    def build(model: ModelSpec, data: DataSpec, hp) -> Algorithm:
        if not isinstance(hp, hp_cls):
            raise TypeError(f"{kind}: hparams must be {hp_cls.__name__}, got {type(hp).__name__}")
        if kind == "adam_prune" and hp.prune_epoch <= 0:
            raise ValueError("adam_prune: prune_epoch is 0; set method.prune_epoch (configs fill it in from "
                             "train.epochs - finetune_epochs)")
        init_fn, apply_fn = build_network(model, data)
        shapes = _kernels(jax.eval_shape(init_fn, jax.random.PRNGKey(0)))
        if not shapes:
            raise ValueError(f"{kind}: the network has no weight kernel (no 2-D+ parameter named 'kernel')")
        n_groups = [s.shape[group_axis(s)] for s in shapes]
        sizes = [math.prod(s.shape) // n for s, n in zip(shapes, n_groups, strict=True)]
        prunable = [i > 0 or hp.prune_inputs for i in range(len(shapes))]
        tx = optax.inject_hyperparams(optax.adam)(learning_rate=hp.learning_rate)
        task = data.task

        def cut(masks, scores, density):
            return [topk_mask(s, m, density) if p else m for s, m, p in zip(scores, masks, prunable, strict=True)]

        def init(key) -> CompressionState:
            params = init_fn(key)
            f = lambda v: jnp.asarray(v, jnp.float32)
            return CompressionState(params=params, opt_state=tx.init(params),
                                    masks=[jnp.ones((n,), bool) for n in n_groups], density=f(hp.target_density),
                                    lam=f(getattr(hp, "lam", 0.0)), learning_rate=f(hp.learning_rate),
                                    noise_var=f(1.0), count=jnp.asarray(0, jnp.int32))

        def loss_fn(params, batch):
            loss = data_loss(apply_fn, params, batch, task)
            l2 = sum(jnp.sum(k ** 2) for k in _kernels(params))
            return loss + hp.weight_decay * l2, loss

        def step(state: CompressionState, batch: Batch):
            (_, loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
            masks = state.masks
            if kind == "group_snip":   # the first minibatch at the initial weights fixes the mask
                sal = [group_sum(jnp.abs(g * w)) for g, w in zip(_kernels(grads), _kernels(state.params),
                                                                 strict=True)]
                masks = jax.tree_util.tree_map(lambda a, b: jnp.where(state.count == 0, a, b),
                                               cut(masks, sal, state.density), masks)
            opt_state = state.opt_state
            opt_state.hyperparams["learning_rate"] = state.learning_rate
            updates, opt_state = tx.update(grads, opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            if kind == "group_lasso":  # proximal step of λ Σ_g sqrt(p_g) ||w_g||: groups reach exact zero
                def prox(i, k):
                    thr = state.learning_rate * state.lam * math.sqrt(sizes[i])
                    nrm = group_norms(k)
                    shrink = jnp.maximum(0.0, 1.0 - thr / jnp.maximum(nrm, 1e-30))
                    return k * _expand(shrink, k).astype(k.dtype)
                params = _map_kernels(params, prox)
            params = apply_masks(params, masks)
            noise_var = state.noise_var
            if task == "regression":
                noise_var = jnp.where(state.count == 0, loss, 0.95 * noise_var + 0.05 * loss)
            return state.replace(params=params, opt_state=opt_state, masks=masks, noise_var=noise_var,
                                 count=state.count + 1), {"loss": loss}

        def end_epoch(state: CompressionState, epoch) -> CompressionState:
            if kind == "group_snip":
                return state
            due = epoch >= hp.warm if kind == "group_lasso" else epoch == hp.prune_epoch
            norms = [group_norms(k) for k in _kernels(state.params)]
            new = cut(state.masks, norms, state.density)
            masks = [jnp.where(due, a, b) for a, b in zip(new, state.masks, strict=True)]
            return state.replace(masks=masks, params=apply_masks(state.params, masks))

        def predict(state: CompressionState, x) -> Predictive:
            return point_predictive(apply_fn(state.params, x), task, state.noise_var)

        def sparsity(state: CompressionState) -> dict:
            ks = _kernels(state.params)
            hidden = [(m, k) for i, (m, k) in enumerate(zip(state.masks, ks, strict=True)) if i > 0]
            n_hidden = sum(int(m.shape[0]) for m, _ in hidden)
            dead = sum(int(jnp.sum(group_norms(k) == 0)) for _, k in hidden)
            zeros = sum(int(jnp.sum(k == 0)) for k in ks)
            n_w = sum(int(k.size) for k in ks)
            if isinstance(state.params, list):   # the MLP: count the physically compacted network (as emtdamp)
                small, _ = mlp.compact_dense(state.params)
                remaining = sum(int(p["kernel"].size + p["bias"].size) for p in small)
            else:                                # other trees: every entry but the zero kernel entries
                remaining = mlp.count_params(state.params) - zeros
            return {"neurons_pruned_frac": dead / n_hidden if n_hidden else 0.0,
                    "inputs_pruned_frac": float(jnp.mean(group_norms(ks[0]) == 0)),
                    "weights_zero_frac": zeros / n_w, "params_remaining": remaining,
                    "group_density": float(sum(int(jnp.sum(m)) for m in state.masks) / sum(n_groups))}

        return Algorithm(init=init, step=step, predict=predict, sparsity=sparsity, end_epoch=end_epoch)

    desc = {"group_lasso": "adam + group ℓ2,1 penalty (proximal), lowest-norm groups cut to κ",
            "group_snip": "Group SNIP: per-group connection sensitivity at init keeps κ, then adam",
            "adam_prune": "adam, then the lowest-norm groups cut to κ and fine-tuned"}[kind]
    return Method(name=kind, hparams_cls=hp_cls, build=build, description=desc + " (paper baseline)")


for _kind in KINDS:
    register(_kind)(lambda _k=_kind: build_compression_method(_k))
