"""Thinned posterior samples kept inside the (jittable) sampler state.

Two accumulators, both static-shape pytrees so ``predict(state, x)`` stays pure:

- a ring buffer of the last ``size`` thinned samples (for predictive averages through a nonlinear
  network): leaves of shape ``(size + 1, *leaf.shape)``; the extra slot is a scratch slot that a
  vmapped update writes when a step is not collected (below);
- running sums of ``θ`` and ``θ²`` over *all* collected samples (posterior mean and marginal
  variance of the parameters, e.g. regression coefficients).

A step with iteration number ``k`` (steps taken so far, counted after the step) is collected when
``k > burn_in`` and ``(k − burn_in) % thin == 0``.

:func:`buffer_update` costs nothing on a step that is not collected: unbatched, the write and the
running sums sit in a ``lax.cond`` (XLA updates the carried buffers in place inside the taken branch).
Under ``vmap`` (several chains, vmapped seeds) a ``cond`` with a batched predicate would become a
``select`` over the whole ring, so there (a ``jax.custom_batching.custom_vmap`` rule) every step writes
one slot, the scratch slot (with its own content) when not collected, and adds ``take · θ`` to the sums:
the same buffer, scratch slot included.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp

PyTree = Any


@chex.dataclass
class SampleBuffer:
    """Ring buffer of thinned samples plus running first/second moments.

    Attributes
    ----------
    samples: pytree of ``(size + 1, *shape)`` leaves (slot ``size`` is scratch).
    n_collected: int scalar, samples collected so far (may exceed ``size``).
    burn_in, thin: int scalars (arrays, so a sweep can vary them).
    sum1, sum2: pytrees like the position: running ``Σ θ`` and ``Σ θ²`` over collected samples.
    """

    samples: PyTree
    n_collected: jax.Array
    burn_in: jax.Array
    thin: jax.Array
    sum1: PyTree
    sum2: PyTree


def buffer_init(position: PyTree, size: int, burn_in: int | jax.Array = 0,
                thin: int | jax.Array = 1) -> SampleBuffer:
    """Empty buffer for ``size`` samples of ``position``'s structure (``size`` is static)."""
    if size < 1:
        raise ValueError(f"sample buffer size must be >= 1, got {size}")
    zeros = jax.tree_util.tree_map(jnp.zeros_like, position)
    return SampleBuffer(
        samples=jax.tree_util.tree_map(lambda x: jnp.zeros((size + 1, *x.shape), x.dtype), position),
        n_collected=jnp.asarray(0, jnp.int32), burn_in=jnp.asarray(burn_in, jnp.int32),
        thin=jnp.asarray(thin, jnp.int32), sum1=zeros, sum2=jax.tree_util.tree_map(jnp.zeros_like, position))


def buffer_size(buf: SampleBuffer) -> int:
    """Number of ring slots (static)."""
    return jax.tree_util.tree_leaves(buf.samples)[0].shape[0] - 1


def should_collect(buf: SampleBuffer, count: jax.Array) -> jax.Array:
    """Whether iteration ``count`` (steps taken, after the step) is a kept, thinned sample."""
    count = jnp.asarray(count, jnp.int32)
    after = count - buf.burn_in
    return (after > 0) & (jnp.mod(after, jnp.maximum(buf.thin, 1)) == 0)


def buffer_update(buf: SampleBuffer, position: PyTree, count: jax.Array) -> SampleBuffer:
    """Record ``position`` if iteration ``count`` is collected (pure; static shapes).

    Unbatched: a ``lax.cond`` (nothing is read or written on a step that is not collected); vmapped: one
    ``dynamic_update_index`` per step into the collected slot or the scratch slot and ``sum += take · θ``
    (module docstring). Both give the same buffer. Jitted: called eagerly (outside a jitted step) the
    ``custom_vmap`` and the ``cond`` would be traced on every call (~0.1 s each); inside a jitted step the
    inner ``jit`` is inlined.
    """
    return _buffer_update_jit(buf, position, jnp.asarray(count, jnp.int32))


def _record(buf: SampleBuffer, position: PyTree) -> SampleBuffer:
    """Write ``position`` into the next ring slot and add it to the running sums (unconditionally)."""
    slot = jnp.mod(buf.n_collected, buffer_size(buf))
    samples = jax.tree_util.tree_map(
        lambda s, x: jax.lax.dynamic_update_index_in_dim(s, x.astype(s.dtype), slot, 0), buf.samples, position)
    sum1 = jax.tree_util.tree_map(lambda a, x: a + x, buf.sum1, position)
    sum2 = jax.tree_util.tree_map(lambda a, x: a + x * x, buf.sum2, position)
    return buf.replace(samples=samples, n_collected=buf.n_collected + 1, sum1=sum1, sum2=sum2)


@jax.custom_batching.custom_vmap
def _buffer_update(buf: SampleBuffer, position: PyTree, count: jax.Array) -> SampleBuffer:
    return jax.lax.cond(should_collect(buf, count), _record, lambda b, _: b, buf, position)


_buffer_update_jit = jax.jit(_buffer_update)


def _buffer_update_scratch(buf: SampleBuffer, position: PyTree, count: jax.Array) -> SampleBuffer:
    """The select-free form for vmapped calls: one slot written every step, the scratch slot (with its own
    content, so the buffer equals the unbatched one leaf for leaf) when not collected; sums += take·θ."""
    size = buffer_size(buf)
    take = should_collect(buf, count)
    slot = jnp.where(take, jnp.mod(buf.n_collected, size), size)
    samples = jax.tree_util.tree_map(
        lambda s, x: jax.lax.dynamic_update_index_in_dim(s, jnp.where(take, x.astype(s.dtype), s[size]), slot, 0),
        buf.samples, position)
    f = take.astype(jax.tree_util.tree_leaves(position)[0].dtype)
    sum1 = jax.tree_util.tree_map(lambda a, x: a + f * x, buf.sum1, position)
    sum2 = jax.tree_util.tree_map(lambda a, x: a + f * x * x, buf.sum2, position)
    return buf.replace(samples=samples, n_collected=buf.n_collected + take.astype(jnp.int32),
                       sum1=sum1, sum2=sum2)


@_buffer_update.def_vmap
def _buffer_update_vmap(axis_size: int, in_batched: list, buf: SampleBuffer, position: PyTree,
                        count: jax.Array) -> tuple[SampleBuffer, Any]:
    def batched(tree, flags):
        return jax.tree_util.tree_map(
            lambda x, b: x if b else jnp.broadcast_to(x, (axis_size, *jnp.shape(x))), tree, flags)

    args = [batched(a, f) for a, f in zip((buf, position, count), in_batched, strict=True)]
    out = jax.vmap(_buffer_update_scratch)(*args)
    return out, jax.tree_util.tree_map(lambda _: True, out)


def buffer_weights(buf: SampleBuffer) -> jax.Array:
    """``(size,)`` averaging weights of the ring slots (uniform over filled slots; zeros if empty)."""
    size = buffer_size(buf)
    filled = jnp.arange(size) < jnp.minimum(buf.n_collected, size)
    dt = jax.tree_util.tree_leaves(buf.sum1)[0].dtype
    return filled.astype(dt) / jnp.maximum(jnp.sum(filled), 1).astype(dt)


def ring_samples(buf: SampleBuffer) -> PyTree:
    """The ``size`` ring slots (leaves ``(size, *shape)``), scratch slot dropped."""
    return jax.tree_util.tree_map(lambda s: s[:-1], buf.samples)


def mixture_moments(outs: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and spread of network outputs over ring slots: ``outs (S, n, d)``, weights ``w (S,)`` from
    :func:`buffer_weights` -> ``(mean (n, d), var (n, d))`` with ``var = Σ_s w_s (f_s − mean)²`` (centred,
    so no cancellation). Add the mean noise variance for the predictive of a Gaussian likelihood."""
    mean = jnp.einsum("s,snd->nd", w, outs)
    return mean, jnp.einsum("s,snd->nd", w, (outs - mean) ** 2)


def mixture_probs(logits: jax.Array, w: jax.Array) -> jax.Array:
    """``Σ_s w_s softmax(logits_s)``: ``logits (S, n, K)``, ``w (S,)`` -> ``(n, K)`` class probabilities."""
    return jnp.einsum("s,snk->nk", w, jax.nn.softmax(logits, axis=-1))


def posterior_mean(buf: SampleBuffer, fallback: PyTree | None = None) -> PyTree:
    """Running posterior mean ``Σθ / n``; ``fallback`` (e.g. the current θ) while nothing is collected."""
    n = buf.n_collected
    out = jax.tree_util.tree_map(lambda a: a / jnp.maximum(n, 1).astype(a.dtype), buf.sum1)
    if fallback is None:
        return out
    return jax.tree_util.tree_map(lambda m, x: jnp.where(n > 0, m, x), out, fallback)


def posterior_var(buf: SampleBuffer) -> PyTree:
    """Running marginal variance ``Σθ²/n − (Σθ/n)²`` (clipped at 0)."""
    n = jnp.maximum(buf.n_collected, 1)
    return jax.tree_util.tree_map(
        lambda a, b: jnp.maximum(b / n.astype(b.dtype) - (a / n.astype(a.dtype)) ** 2, 0.0),
        buf.sum1, buf.sum2)
