"""The contract every training method fulfils.

A method is a bundle of pure functions over an explicit pytree state (the optax / BlackJAX
pattern). The shared training loop (`emtdamp.loops.centralised`) owns the epochs, the shuffling and the
minibatching; a method only says how one minibatch changes its state.

Shapes used throughout
----------------------
- ``x``: ``(B, d)`` float inputs (features standardised by the data module).
- ``y``: regression ``(B, d_out)`` float targets, standardised with training statistics;
  classification ``(B,)`` int32 labels in ``[0, K)``.
- ``w``: ``(B,)`` float row weights, 1.0 for a real row and 0.0 for a padding row (the last
  minibatch of an epoch is padded to the fixed batch size so that nothing recompiles and no row is
  dropped). Every method must make padding rows contribute nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from emtdamp.models.spec import ModelSpec as ModelSpec  # the method contract's model type, re-exported

PyTree = Any


class Batch(NamedTuple):
    """One minibatch: inputs ``x (B, d)``, targets ``y`` and row weights ``w (B,)`` (0 = padding)."""

    x: jax.Array
    y: jax.Array
    w: jax.Array


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What a method needs to know about the data, without the data itself.

    ``task`` is ``"regression"`` or ``"classification"``; ``n_outputs`` is the target dimension
    (regression) or the number of classes K (classification); ``n_train`` the training-set size
    (SG-MCMC rescales minibatch gradients by it); ``image_shape`` is ``(H, W, C)`` for image data
    (inputs stay flattened to ``n_features = H * W * C``, channels last), None otherwise.
    """

    task: str
    n_features: int
    n_outputs: int
    n_train: int
    image_shape: tuple[int, ...] | None = None


class Predictive(NamedTuple):
    """Predictive distribution on a batch of inputs.

    Regression: ``mean`` and ``var`` of shape ``(n, d_out)`` in *standardised* target units
    (``var`` includes the observation noise); ``probs`` is None.
    Classification: ``probs`` of shape ``(n, K)`` (rows sum to one); ``mean``/``var`` are None.
    """

    mean: jax.Array | None = None
    var: jax.Array | None = None
    probs: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class Method:
    """A training method as pure functions.

    Attributes
    ----------
    name:
        Registry name (``method.name`` in configs).
    hparams_cls:
        Frozen dataclass of the method's typed hyperparameters; the config loader validates the
        ``method:`` block against its fields (names, types, ``metadata["range"]``).
    init:
        ``init(key, model: ModelSpec, data: DataSpec, hparams) -> state``. Everything that EM or a
        sweep changes (sparsity, noise variance, step sizes) is an array inside ``state``.
    step:
        ``step(state, batch: Batch) -> (state, metrics)``: one minibatch, pure and jittable;
        ``metrics`` is a dict of scalar arrays and must contain ``"loss"``.
    predict:
        ``predict(state, x) -> Predictive``, pure and jittable.
    sparsity:
        Optional ``sparsity(state) -> dict`` with ``neurons_pruned_frac``, ``weights_zero_frac``,
        ``params_remaining`` (floats / ints). Methods without sparsity get zeros and the dense
        parameter count.
    end_epoch:
        Optional ``end_epoch(state, epoch: int array) -> state``, called (jitted) after each epoch
        for schedules that act per epoch (pruning ramps, evidence resets, per-epoch M-steps).
    diagnostics:
        Optional ``diagnostics(state) -> dict`` of JSON-able convergence diagnostics (MCMC R-hat /
        ESS), called once on the final state; run folders store it as ``summary["diagnostics"]`` and
        warn on stderr when a value of its ``"rhat"`` dict exceeds 1.05.
    """

    name: str
    hparams_cls: type
    init: Callable[..., PyTree]
    step: Callable[[PyTree, Batch], tuple[PyTree, dict]]
    predict: Callable[[PyTree, jax.Array], Predictive]
    sparsity: Callable[[PyTree], dict] | None = None
    end_epoch: Callable[[PyTree, jax.Array], PyTree] | None = None
    description: str = ""
    diagnostics: Callable[[PyTree], dict] | None = None


def hparam(default: Any, *, range: tuple[float, float] | None = None, choices: tuple | None = None,
           doc: str = "") -> Any:
    """A hyperparameter field with the bounds the config loader enforces.

    ``range=(lo, hi)`` is inclusive; ``choices`` lists the allowed values of a string option.
    Use for every field of a method's ``hparams_cls``::

        @dataclasses.dataclass(frozen=True)
        class AdamHParams:
            learning_rate: float = hparam(1e-3, range=(0.0, 10.0), doc="step size")
    """
    meta = {"range": range, "choices": choices, "doc": doc}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)
