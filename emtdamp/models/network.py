"""The network builder every gradient-based method calls: ``model.kind`` -> ``(init_fn, apply_fn)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from emtdamp.methods.base import DataSpec
from emtdamp.models import cnn, mlp
from emtdamp.models.flax_adapter import build_flax_network
from emtdamp.models.spec import ModelSpec
from emtdamp.pytrees import is_kernel

PyTree = Any
KINDS = ("mlp", "cnn", "flax")


def build_network(model: ModelSpec, data: DataSpec) -> tuple[Callable[[jax.Array], PyTree],
                                                              Callable[[PyTree, jax.Array], jax.Array]]:
    """``(init_fn(key) -> params, apply_fn(params, x (B, d)) -> (B, n_outputs))`` for ``model.kind``.

    ``kind="mlp"``: :func:`emtdamp.models.mlp.init_mlp` / :func:`emtdamp.models.mlp.apply` on
    ``model.layer_sizes(data)`` (params: list of ``{"kernel", "bias"}``). ``kind="cnn"``: the flax
    CNN of :mod:`emtdamp.models.cnn` (params: flax dict). ``kind="flax"``: the user's module
    (:func:`emtdamp.models.flax_adapter.build_flax_network`). Validation errors are raised here, at build time.
    """
    kind = getattr(model, "kind", "mlp")
    if kind == "mlp":
        sizes = model.layer_sizes(data)
        mlp.activation_fn(model.activation)
        return (lambda key: mlp.init_mlp(key, sizes)), (lambda p, x: mlp.apply(p, x, model.activation))
    if kind == "cnn":
        module = cnn.make_module(model, data)
        n_features = data.n_features

        def init_fn(key: jax.Array) -> dict:
            return dict(module.init(key, jnp.zeros((1, n_features), jnp.float32))["params"])

        def apply_fn(params: dict, x: jax.Array) -> jax.Array:
            return module.apply({"params": params}, x)

        return init_fn, apply_fn
    if kind == "flax":
        return build_flax_network(model, data)
    raise ValueError(f"unknown model.kind {kind!r}; choose one of {list(KINDS)}")


def kernels(params: PyTree) -> list[jax.Array]:
    """The weight kernels (leaves named ``kernel``) of an MLP or CNN params pytree, in tree order."""
    return [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0] if is_kernel(path)]
