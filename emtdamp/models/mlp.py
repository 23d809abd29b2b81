"""A plain fully connected network as a params pytree plus a pure ``apply`` function.

Layout follows flax ``nn.Dense``: layer ``l`` is ``{"kernel": (N_{l-1}, N_l), "bias": (N_l,)}``, so a
neuron group "all outgoing weights of unit j of layer l-1" is *row* j of ``kernel`` l. Methods that
need no layer structure use :func:`apply`; :func:`to_flax` gives the equivalent flax module.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh, "gelu": jax.nn.gelu, "sigmoid": jax.nn.sigmoid}


def activation_fn(name: str):
    """The activation called ``name``; the error lists the known ones."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


def require_mlp(model, method: str, why: str = "") -> None:
    """Raise ValueError unless ``model.kind`` (a ModelSpec) is ``"mlp"``: for methods that need the declared
    MLP (``why`` says what for, e.g. message passing over its layers)."""
    kind = getattr(model, "kind", "mlp")
    if kind != "mlp":
        reason = f" ({why})" if why else ""
        raise ValueError(f"method {method} supports model.kind=mlp only{reason}, got model.kind={kind!r}; "
                         "set model.kind=mlp (model.hidden, model.activation), or use adam, sgd, em_mcmc or an "
                         "SG-MCMC method (sgld, sghmc, sgld_sa, sghmc_sa, sgld_em, sghmc_em, a_sghmc, "
                         "a_sghmc_em, a_sghmc_sa) for a CNN or your own flax module")


def init_mlp(key: jax.Array, layer_sizes: Sequence[int], dtype=jnp.float32) -> list[dict]:
    """He/LeCun-normal kernels ``N(0, 1/N_{l-1})`` and zero biases for sizes ``(d_in, ..., d_out)``."""
    params = []
    keys = jax.random.split(key, len(layer_sizes) - 1)
    for k, n_in, n_out in zip(keys, layer_sizes[:-1], layer_sizes[1:], strict=True):
        w = jax.random.normal(k, (n_in, n_out), dtype) / jnp.sqrt(jnp.asarray(n_in, dtype))
        params.append({"kernel": w, "bias": jnp.zeros((n_out,), dtype)})
    return params


def apply(params: list[dict], x: jax.Array, activation: str = "relu") -> jax.Array:
    """Network output ``(B, d_out)`` for inputs ``x (B, d_in)``; hidden layers use ``activation``."""
    act = activation_fn(activation)
    h = x
    for i, layer in enumerate(params):
        h = h @ layer["kernel"] + layer["bias"]
        if i < len(params) - 1:
            h = act(h)
    return h


def count_params(params: list[dict]) -> int:
    """Number of scalars in the network."""
    return int(sum(p.size for p in jax.tree_util.tree_leaves(params)))


def to_flax(layer_sizes: Sequence[int], activation: str = "relu"):
    """A flax ``nn.Module`` with the same structure; ``{"params": {"Dense_i": layer_i}}`` is its params."""
    import flax.linen as nn

    act = activation_fn(activation)
    sizes = tuple(layer_sizes)

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            for i, n in enumerate(sizes[1:]):
                x = nn.Dense(n, name=f"Dense_{i}")(x)
                if i < len(sizes) - 2:
                    x = act(x)
            return x

    return MLP()


def to_flax_params(params: list[dict]) -> dict:
    """Our params list as the variables dict of :func:`to_flax`'s module."""
    return {"params": {f"Dense_{i}": dict(p) for i, p in enumerate(params)}}


def compact_dense(layers: list[dict]) -> tuple[list[dict], np.ndarray]:
    """Remove what contributes nothing from an MLP (``[{"kernel": (in, out), "bias": (out,)}]``, numpy):
    hidden unit ``j`` of layer ``l`` when row ``j`` of kernel ``l + 1`` is all zero (its column and bias entry
    in layer ``l`` go with it), and input ``i`` when row ``i`` of the first kernel is all zero.

    Returns ``(layers, inputs)`` with ``apply(layers, x[:, inputs]) == apply(original, x)`` exactly.
    """
    out = [{"kernel": np.asarray(p["kernel"]), "bias": np.asarray(p["bias"])} for p in layers]
    for i in range(len(out) - 1):
        live = np.any(out[i + 1]["kernel"] != 0, axis=1)
        out[i] = {"kernel": out[i]["kernel"][:, live], "bias": out[i]["bias"][live]}
        out[i + 1] = {"kernel": out[i + 1]["kernel"][live], "bias": out[i + 1]["bias"]}
    inputs = np.flatnonzero(np.any(out[0]["kernel"] != 0, axis=1))
    out[0] = {"kernel": out[0]["kernel"][inputs], "bias": out[0]["bias"]}
    return out, inputs
