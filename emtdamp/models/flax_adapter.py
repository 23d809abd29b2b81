"""Your own flax network as the model of a gradient-based method (``model.kind: flax``).

``model.module`` names a ``flax.linen.Module`` or ``flax.nnx.Module`` class by import path,
``"package.module:ClassName"`` (the working folder is importable), or, from Python, is the class itself (a
linen module may also be given as an instance); ``model.kwargs`` are its constructor arguments. The network
is built from the data shape:

- linen: ``Class(**kwargs)``, plus ``n_outputs`` / ``n_features`` when the class declares such a field and
  ``kwargs`` does not set it; params are ``module.init(key, x[:1])["params"]``;
- nnx: ``Class(**kwargs, rngs=nnx.Rngs(key))``, plus ``n_features`` / ``n_outputs`` when ``__init__``
  takes them; params are its ``nnx.Param`` variables as a plain nested dict (``nnx.split`` / ``nnx.merge``
  at the jit boundary, so the methods see a params pytree like any other).

The module is called on the flattened rows ``x (B, n_features)`` (reshape inside it for images:
``DataSpec.image_shape`` is ``(H, W, C)``) and must return ``(B, n_outputs)``: regression means or class
logits. Only parameters are trained: a module with other variable collections (BatchNorm statistics,
dropout RNG state) is refused with a message. Groups for the group priors and pruning come from the params
tree: every leaf named ``kernel`` is a weight layer (dense ``(in, out)``: its rows, i.e. its input units;
conv ``(*spatial, in, out)``: its input channels), everything else (biases, LayerNorm scales) is ungrouped.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax.core import unfreeze

from emtdamp.methods.base import DataSpec
from emtdamp.models.spec import ModelSpec

PyTree = Any
SHAPE_ARGS = ("n_features", "n_outputs")


def resolve_module(module: Any) -> Any:
    """The flax Module class (or linen instance) that ``module`` names: an import path
    ``"package.module:ClassName"`` or the object itself. Raises ValueError naming the fix."""
    if not isinstance(module, str):
        return module
    mod_name, sep, attr = module.partition(":")
    if not sep or not mod_name or not attr:
        raise ValueError(f"model.module={module!r}: give 'package.module:ClassName' (a flax Module class)")
    if os.getcwd() not in sys.path:   # `emtdamp train` from the folder holding the user's module
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's module, reported in one line
        raise ValueError(f"model.module={module!r}: cannot import {mod_name!r} ({type(e).__name__}: {e}); it "
                         "must be importable from the working folder or PYTHONPATH") from None
    try:
        obj = mod
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ValueError(f"model.module={module!r}: {mod_name!r} has no attribute {attr!r}") from None
    return obj


def _kind(obj: Any) -> str:
    from flax import linen, nnx

    if isinstance(obj, type) and issubclass(obj, nnx.Module):
        return "nnx"
    if (isinstance(obj, type) and issubclass(obj, linen.Module)) or isinstance(obj, linen.Module):
        return "linen"
    if isinstance(obj, nnx.Module):
        raise ValueError("model.module: pass the flax.nnx Module *class*, not an instance: emtdamp builds it "
                         "with rngs=nnx.Rngs(key) so that seeds and chains get their own initialisation")
    raise ValueError(f"model.module: {obj!r} is not a flax.linen or flax.nnx Module class")


def _shape_kwargs(names: set[str], kwargs: dict, data: DataSpec) -> dict:
    full = {"n_features": data.n_features, "n_outputs": data.n_outputs}
    return {k: full[k] for k in SHAPE_ARGS if k in names and k not in kwargs}


def _check_output(apply_fn: Callable, params: PyTree, data: DataSpec, name: str) -> None:
    out = jax.eval_shape(apply_fn, params, jax.ShapeDtypeStruct((2, data.n_features), jnp.float32))
    if getattr(out, "shape", None) != (2, data.n_outputs):
        raise ValueError(f"model.module {name}: returns shape {getattr(out, 'shape', out)} on 2 rows, the data need "
                         f"(2, {data.n_outputs}) (regression means or class logits); set its output size "
                         f"(e.g. a field n_outputs, filled from the data when declared)")


def build_flax_network(model: ModelSpec, data: DataSpec) -> tuple[Callable[[jax.Array], PyTree],
                                                                  Callable[[PyTree, jax.Array], jax.Array]]:
    """``(init_fn(key) -> params (nested dict), apply_fn(params, x (B, d)) -> (B, n_outputs))`` for
    ``model.kind == "flax"`` (see the module docstring). Raises ValueError for a module that cannot be
    imported, built, or whose output does not fit the data."""
    obj = resolve_module(model.module)
    kwargs = dict(model.kwargs)
    name = getattr(obj, "__name__", type(obj).__name__)
    x0 = jnp.zeros((1, data.n_features), jnp.float32)
    if _kind(obj) == "linen":
        if isinstance(obj, type):
            fields = {f.name for f in dataclasses.fields(obj)}
            try:
                module = obj(**kwargs, **_shape_kwargs(fields, kwargs, data))
            except TypeError as e:
                raise ValueError(f"model.module {name}: cannot build it with model.kwargs={kwargs} ({e})") from None
        elif kwargs:
            raise ValueError(f"model.kwargs: {name} is already an instance; give the class to pass kwargs")
        else:
            module = obj
        variables = jax.eval_shape(module.init, jax.random.key(0), x0)
        extra = sorted(set(variables) - {"params"})
        if extra:
            raise ValueError(f"model.module {name}: has variable collections {extra} besides params; emtdamp "
                             "trains parameters only (use LayerNorm instead of BatchNorm, no dropout state)")

        def init_fn(key: jax.Array) -> dict:
            return unfreeze(module.init(key, x0)["params"])

        def apply_fn(params: dict, x: jax.Array) -> jax.Array:
            return module.apply({"params": params}, x)

        _check_output(apply_fn, init_fn(jax.random.key(0)), data, name)
        return init_fn, apply_fn

    from flax import nnx

    accepted = set(inspect.signature(obj.__init__).parameters)
    shape_kw = _shape_kwargs(accepted, kwargs, data)

    def build(key) -> Any:
        try:
            return obj(**kwargs, **shape_kw, rngs=nnx.Rngs(key))
        except TypeError as e:
            raise ValueError(f"model.module {name}: cannot build it as {name}(**model.kwargs, rngs=...) with "
                             f"model.kwargs={kwargs} ({e})") from None

    graphdef, abstract_params, rest = nnx.split(nnx.eval_shape(lambda: build(jax.random.key(0))), nnx.Param, ...)
    if jax.tree_util.tree_leaves(rest):
        raise ValueError(f"model.module {name}: holds state besides nnx.Param (BatchNorm statistics, RNG "
                         "streams); emtdamp trains parameters only (use LayerNorm instead of BatchNorm, no dropout)")

    def init_fn(key: jax.Array) -> dict:
        _, params, _ = nnx.split(build(key), nnx.Param, ...)
        return nnx.to_pure_dict(params)

    def apply_fn(params: dict, x: jax.Array) -> jax.Array:
        state = jax.tree_util.tree_map(lambda v: v, abstract_params)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(graphdef, state, rest)(x)

    _check_output(apply_fn, init_fn(jax.random.key(0)), data, name)
    return init_fn, apply_fn
