"""A small CNN (``model.kind: cnn``) as a flax linen module.

Architecture, from :class:`~emtdamp.models.spec.ModelSpec` and
:class:`~emtdamp.methods.base.DataSpec`::

    x (B, H*W*C) -> reshape (B, H, W, C)
    for c in model.conv:    Conv(c, k x k, "SAME") -> activation -> max-pool 2x2 (stride 2)
    flatten
    for n in model.hidden:  Dense(n) -> activation
    Dense(n_outputs)        (linear output: logits / regression mean)

With the defaults (``conv=(32, 64)``, ``kernel_size=3``, ``hidden=(128,)``) on 28x28x1 images that is
28x28x32 -> 14x14x32 -> 14x14x64 -> 7x7x64 -> 128 -> 10, 421,642 parameters. The spec's MNIST
"Model 1" (2-Conv-2-FC, conv 5x5 32 -> pool -> conv 5x5 64 -> pool -> FC 200 -> 10, ~0.68M params) is
``conv=(32, 64)``, ``kernel_size=5``, ``hidden=(200,)``: 681,506 parameters.

The conv layers compute exactly ``flax.linen.Conv(c, (k, k), padding="SAME")`` (same params and
initialisers) but as im2col + matmul, see :func:`conv2d_same`, and the pooling is a reshape + max
(:func:`max_pool2`): on CPU both are much faster than XLA's conv / select-and-scatter inside the
training loop's ``lax.scan``.

Params are the flax ``variables["params"]`` dict: ``{"Conv_i": {"kernel": (k, k, in, out), "bias"},
"Dense_j": {"kernel": (in, out), "bias"}}`` (flax default initialisers: LeCun-normal kernels, zero
biases), so :func:`emtdamp.em_mcmc.flax_group_spec` groups it directly. Methods get it (and the MLP, and
the user's flax module) from :func:`emtdamp.models.network.build_network`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from emtdamp.methods.base import DataSpec
from emtdamp.models import mlp
from emtdamp.models.spec import ModelSpec

PyTree = Any


def check_cnn(model: ModelSpec, data: DataSpec) -> tuple[int, ...]:
    """Validate a CNN spec against the data; return the image shape ``(H, W, C)``.

    Raises ValueError (naming the fix) when the data are not images, the image shape does not match
    ``n_features``, there is no conv layer, or the pooling would shrink the image below 1x1.
    """
    if data.image_shape is None:
        raise ValueError("model.kind=cnn needs image data, but this dataset has no image_shape; use an image "
                         "dataset (mnist5k, fashion_mnist, mnist_idx, or an npz whose x arrays are "
                         "(n, H, W[, C])) or set model.kind=mlp")
    shape = tuple(int(n) for n in data.image_shape)
    if len(shape) != 3:
        raise ValueError(f"model.kind=cnn: image_shape must be (H, W, C), got {shape}")
    h, w, c = shape
    if h * w * c != data.n_features:
        raise ValueError(f"model.kind=cnn: image_shape {shape} holds {h * w * c} values but the data have "
                         f"{data.n_features} features per row")
    if not model.conv or any(ch < 1 for ch in model.conv):
        raise ValueError(f"model.kind=cnn needs conv channel counts >= 1, got {list(model.conv)}")
    if model.kernel_size < 1:
        raise ValueError(f"model.kernel_size must be >= 1, got {model.kernel_size}")
    if min(h, w) >> len(model.conv) < 1:
        raise ValueError(f"model.conv: {len(model.conv)} conv layers, each with a 2x2 max-pool, shrink a "
                         f"{h}x{w} image below 1x1; use at most {min(h, w).bit_length() - 1} conv layers")
    return shape


def conv2d_same(h: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """Stride-1 "SAME" 2-D convolution, as ``flax.linen.Conv``: ``h (B, H, W, C_in)``, ``kernel (k, k,
    C_in, C_out)``, ``bias (C_out,)`` -> ``(B, H, W, C_out)``.

    Written as im2col (the ``k*k`` shifted copies of the zero-padded input, concatenated on the channel
    axis in ``(dy, dx, c)`` order) times the kernel reshaped to ``(k*k*C_in, C_out)``. XLA:CPU runs
    ``lax.conv`` and its gradients ~25-50x slower inside a ``while`` loop (the training loop's
    ``lax.scan``; jax-ml/jax#12868) than outside; this matmul form is as fast in the loop as out of it.
    """
    kh, kw, c_in, c_out = kernel.shape
    _, hh, ww, _ = h.shape
    pad = [(0, 0), ((kh - 1) // 2, kh - 1 - (kh - 1) // 2), ((kw - 1) // 2, kw - 1 - (kw - 1) // 2), (0, 0)]
    hp = jnp.pad(h, pad)
    patches = jnp.concatenate([hp[:, i: i + hh, j: j + ww, :] for i in range(kh) for j in range(kw)], axis=-1)
    return patches @ kernel.reshape(kh * kw * c_in, c_out) + bias


def max_pool2(h: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2, "VALID" (an odd last row / column is dropped) of ``h (B, H, W, C)``.

    Same values as ``flax.linen.max_pool(h, (2, 2), strides=(2, 2))``, written as a reshape and a max:
    its gradient is several times faster on CPU than XLA's select-and-scatter.
    """
    b, hh, ww, c = h.shape
    h = h[:, : hh // 2 * 2, : ww // 2 * 2]
    return h.reshape(b, hh // 2, 2, ww // 2, 2, c).max(axis=(2, 4))


def make_module(model: ModelSpec, data: DataSpec):
    """The flax ``nn.Module`` of the CNN for ``model`` on ``data`` (validated by :func:`check_cnn`)."""
    import flax.linen as nn

    shape = check_cnn(model, data)
    act = mlp.activation_fn(model.activation)
    conv, hidden, k, n_out = tuple(model.conv), tuple(model.hidden), int(model.kernel_size), int(data.n_outputs)

    class Conv(nn.Module):
        """``nn.Conv(features, (k, k), padding="SAME")``: same params, initialisers and outputs."""

        features: int

        @nn.compact
        def __call__(self, h):
            kshape = (k, k, h.shape[-1], self.features)  # float32 params, as nn.Conv's param_dtype
            kernel = self.param("kernel", nn.initializers.lecun_normal(), kshape, jnp.float32)
            bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
            return conv2d_same(h, kernel, bias)

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = x.reshape((x.shape[0], *shape))
            for i, ch in enumerate(conv):
                h = max_pool2(act(Conv(ch, name=f"Conv_{i}")(h)))
            h = h.reshape((h.shape[0], -1))
            for i, n in enumerate(hidden):
                h = act(nn.Dense(n, name=f"Dense_{i}")(h))
            return nn.Dense(n_out, name=f"Dense_{len(hidden)}")(h)

    return CNN()


def init(key: jax.Array, model: ModelSpec, data: DataSpec) -> dict:
    """CNN params (the flax ``"params"`` collection) for ``model`` on ``data``."""
    module = make_module(dataclasses.replace(model, kind="cnn"), data)
    return dict(module.init(key, jnp.zeros((1, data.n_features), jnp.float32))["params"])


def apply(params: dict, x: jax.Array, model: ModelSpec, data: DataSpec) -> jax.Array:
    """CNN output ``(B, n_outputs)`` for flattened inputs ``x (B, H*W*C)``."""
    return make_module(dataclasses.replace(model, kind="cnn"), data).apply({"params": params}, x)
