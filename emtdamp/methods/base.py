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


class Mixture(NamedTuple):
    """A predictive as the explicit mixture it is: ``S`` components with ``weights (S,)`` summing to one.

    Regression: component ``mean`` and ``var`` ``(S, n, d_out)`` (standardised target units; ``var`` is the
    observation noise of that component, e.g. the noise variance kept with a posterior sample); the
    predictive is ``Σ_s w_s N(mean_s, var_s)``. Classification: component ``probs`` ``(S, n, K)``, the
    predictive is ``Σ_s w_s probs_s``. Components of weight 0 (empty sample slots) are ignored.
    """

    weights: jax.Array
    mean: jax.Array | None = None
    var: jax.Array | None = None
    probs: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """A method bound to one model, data spec and hyperparameters: pure functions (the BlackJAX
    ``SamplingAlgorithm`` / optax ``GradientTransformation`` shape).

    Everything static (the network's apply function, layer indices, task, training size, string
    options) was fixed by :attr:`Method.build` and is closed over, immutable; everything EM, a schedule
    or a sweep changes is an array in the state. So ``step`` works in any process that built the same
    algorithm, whether or not it ran ``init``.

    Attributes
    ----------
    init:
        ``init(key) -> state``.
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
    predict_mixture:
        Optional ``predict_mixture(state, x) -> Mixture``, pure and jittable: the predictive as its
        components (the sampling methods: one per kept posterior sample), whose moments equal
        ``predict``'s. Quantiles and predictive draws are computed from it; methods without it have
        the single Gaussian (or categorical) component ``predict`` gives.
    chains:
        Set by :func:`~emtdamp.methods.chains.chain_algorithm` only: ``(single, K)``, the one-chain
        algorithm this one runs ``K`` vmapped copies of. The training loop's epoch
        (:func:`~emtdamp.loops.centralised.make_epoch_fn`) then gives each chain its own minibatch order.
    """

    init: Callable[[jax.Array], PyTree]
    step: Callable[[PyTree, Batch], tuple[PyTree, dict]]
    predict: Callable[[PyTree, jax.Array], Predictive]
    sparsity: Callable[[PyTree], dict] | None = None
    end_epoch: Callable[[PyTree, jax.Array], PyTree] | None = None
    diagnostics: Callable[[PyTree], dict] | None = None
    predict_mixture: Callable[[PyTree, jax.Array], Mixture] | None = None
    chains: tuple[Algorithm, int] | None = None


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered training method: a name, its typed hyperparameters and a builder.

    Attributes
    ----------
    name:
        Registry name (``method.name`` in configs).
    hparams_cls:
        Frozen dataclass of the method's typed hyperparameters; the config loader validates the
        ``method:`` block against its fields (names, types, ``metadata["range"]``).
    build:
        ``build(model: ModelSpec, data: DataSpec, hparams) -> Algorithm``: validates the combination
        (one-line ``ValueError`` naming the fix) and fixes the static configuration. Build inside the
        dtype context you train in (``jax.enable_x64`` for float64): the state's float type is fixed
        here. Example::

            algo = get_method("adam").build(ModelSpec(hidden=(50,)), data.spec, OptaxHParams())
            state = algo.init(jax.random.PRNGKey(0))
            state, metrics = jax.jit(algo.step)(state, batch)
    description:
        One line for ``emtdamp list``.
    """

    name: str
    hparams_cls: type
    build: Callable[[ModelSpec, DataSpec, Any], Algorithm]
    description: str = ""


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
