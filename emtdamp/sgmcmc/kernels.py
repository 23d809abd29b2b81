"""Plain SGLD and SGHMC as pure ``init`` / ``step`` pairs over pytree states.

The gradient *estimator* (minibatch log-likelihood rescaled to the data size, plus the log prior)
is separate from the *integrators* (one Langevin / Hamiltonian update given a gradient), as in
BlackJAX. Every quantity a schedule or sweep changes -- step size, inverse temperature, friction --
is an array in the state, so a change never recompiles and a sweep over them is one ``vmap``.

Conventions (spec ``baselines.md`` A.3 / C)
-------------------------------------------
- Energy ``U(θ) = -(N / Σ_i w_i) Σ_i w_i log p(y_i | x_i, θ) - log p(θ)`` ("sum scale"); rows with
  ``w_i = 0`` (padding) contribute nothing.
- ``inv_temp`` is the *inverse* temperature: the chain targets ``exp(-inv_temp · U)``
  (the paper's "temperature τ = 1000" is ``inv_temp = 1000``, a cold chain).
- SGLD:  ``θ ← θ − ε g + sqrt(2 ε / inv_temp) ξ``.
- SGHMC (SGD-momentum form of Chen et al. 2014 with noise estimate ``B̂ = ε/2``, the reference
  code's parametrisation): ``v ← m v − ε g + sqrt((2 ε (1 − m) − ε²) / inv_temp) ξ``,
  ``θ ← θ + v``; ``m = 1 − friction`` and ``ε/2 < 1 − m`` is required (the noise variance is
  clipped at 0 otherwise).
- Step-size schedule ``ε_k = a (b + k)^(−γ)`` with ``k`` the number of steps already taken
  (``a``, ``b``, ``γ`` arrays); ``γ = 0`` gives a constant step.
- Annealing: ``inv_temp ← inv_temp · anneal_rate`` after every step (1 = off).
- ``ξ``: mean 0, variance 1, independent per parameter and step; ``noise_dist = "three_point"`` (default,
  :func:`three_point`: the normal's moments up to order 5, no transcendental, fused into the update) or
  ``"gaussian"`` (:func:`normal`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


# --------------------------------------------------------------------------------------------------
# gradient estimator
# --------------------------------------------------------------------------------------------------
def minibatch_energy(loglik_fn: Callable[[PyTree, Any], jax.Array],
                     logprior_fn: Callable[[PyTree], jax.Array] | None,
                     n_data: int | jax.Array) -> Callable[[PyTree, Any], jax.Array]:
    """Unbiased minibatch estimate of the energy ``U(θ) = −N·mean log-lik − log prior``.

    Parameters
    ----------
    loglik_fn:
        ``loglik_fn(params, batch) -> (B,)`` per-row log-likelihood.
    logprior_fn:
        ``logprior_fn(params) -> ()`` log prior density (up to a constant), or None (flat).
    n_data:
        Training-set size ``N`` used to rescale the minibatch.

    Returns
    -------
    ``energy(params, batch) -> ()``. ``batch`` may carry row weights ``w (B,)`` (attribute ``w``);
    the rescaling uses ``N / Σ w`` so padding rows (``w = 0``) contribute nothing.
    """

    def energy(params: PyTree, batch: Any) -> jax.Array:
        ll = loglik_fn(params, batch)
        w = getattr(batch, "w", None)
        if w is None:
            w = jnp.ones_like(ll)
        scale = jnp.asarray(n_data, ll.dtype) / jnp.maximum(jnp.sum(w), 1.0)
        u = -scale * jnp.sum(w * ll)
        if logprior_fn is not None:
            u = u - logprior_fn(params)
        return u

    return energy


def grad_estimator(loglik_fn: Callable[[PyTree, Any], jax.Array],
                   logprior_fn: Callable[[PyTree], jax.Array] | None,
                   n_data: int | jax.Array) -> Callable[[PyTree, Any], tuple[jax.Array, PyTree]]:
    """``(params, batch) -> (energy estimate, ∇ energy estimate)``; see :func:`minibatch_energy`."""
    return jax.value_and_grad(minibatch_energy(loglik_fn, logprior_fn, n_data))


# --------------------------------------------------------------------------------------------------
# schedules
# --------------------------------------------------------------------------------------------------
@chex.dataclass
class PolynomialSchedule:
    """``ε_k = a (b + k)^(−γ)``: three scalar arrays (``γ = 0``: constant ``a``)."""

    a: jax.Array
    b: jax.Array
    gamma: jax.Array


def polynomial_schedule(a: float, b: float = 1.0, gamma: float = 0.0, dtype=None) -> PolynomialSchedule:
    """Build a :class:`PolynomialSchedule` of arrays (``dtype`` defaults to the JAX float)."""
    dtype = dtype or jnp.asarray(1.0).dtype
    return PolynomialSchedule(a=jnp.asarray(a, dtype), b=jnp.asarray(b, dtype),
                              gamma=jnp.asarray(gamma, dtype))


def schedule_value(s: PolynomialSchedule, count: jax.Array) -> jax.Array:
    """Value of the schedule at step ``count`` (number of steps already taken)."""
    k = jnp.asarray(count, s.a.dtype)
    return s.a * (s.b + k) ** (-s.gamma)


# --------------------------------------------------------------------------------------------------
# integrators (one update given a gradient)
# --------------------------------------------------------------------------------------------------
def _threefry_bits(seed: jax.Array, shape: tuple[int, ...], uint) -> jax.Array:
    """``lax.rng_bit_generator`` (Threefry) bits of ``shape`` from a ``(4,)`` uint32 seed, vmap-consistent.

    ``rng_bit_generator``'s own batching rule draws the whole batch from the first seed of the batch, so a
    vmapped call (several chains, vmapped seeds) would not give each row the numbers its unbatched call
    gives; here a vmapped call is ``lax.map`` of the unbatched one (the same numbers, row by row).
    """
    @jax.custom_batching.custom_vmap
    def gen(s):
        return jax.lax.rng_bit_generator(s, shape, uint, algorithm=jax.lax.RandomAlgorithm.RNG_THREE_FRY)[1]

    @gen.def_vmap
    def _rule(axis_size, in_batched, s):
        return jax.lax.map(gen, s), True

    return gen(seed)


def normal(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Standard normal draws ``(shape)``, the samplers' ``noise_dist="gaussian"``, from XLA's Threefry bit generator.

    ``key`` is any JAX PRNG key (raw ``uint32`` key data or a typed key). Its one small ``jax.random.bits``
    call seeds ``lax.rng_bit_generator(..., algorithm=RNG_THREE_FRY)``, XLA's own Threefry-2x32 (20 rounds,
    the generator ``jax.random``'s default implementation also uses), which fills the array; the bits then
    become normals exactly as ``jax.random.normal`` makes them (mantissa bits -> uniform on ``(−1, 1)``,
    ``√2 · erfinv``). Why: on CPU ``jax.random.normal`` with the default ``threefry2x32`` implementation
    spends ≈ 3× longer per draw than XLA's generator (one draw per weight per step dominated the SG-MCMC
    step), and the ``rbg`` / ``unsafe_rbg`` implementations are slower still there (XLA's default RNG on
    CPU is Philox); docs/speed.md has the measurements. Different keys give independent streams as with
    ``jax.random``; the stream is not the one ``jax.random.normal(key)`` would give.
    """
    dtype = jnp.dtype(dtype)
    gen = dtype if dtype.itemsize >= 4 else jnp.dtype(jnp.float32)   # float16 / bfloat16: draw in float32
    nbits, nmant = jnp.finfo(gen).bits, jnp.finfo(gen).nmant
    uint = jnp.uint32 if nbits == 32 else jnp.uint64
    seed = jax.random.bits(key, (4,), jnp.uint32)       # a raw uint32 key or a typed one
    bits = _threefry_bits(seed, tuple(shape), uint)
    one = np.array(1.0, gen).view(uint)
    u = jax.lax.bitcast_convert_type(jax.lax.shift_right_logical(bits, uint(nbits - nmant)) | one, gen) - 1.0
    lo = np.nextafter(np.array(-1.0, gen), np.array(0.0, gen))
    u = jnp.maximum(lo, u * (1.0 - lo) + lo)                      # uniform on [lo, 1), as jax.random.uniform
    return (np.array(np.sqrt(2.0), gen) * jax.lax.erf_inv(u)).astype(dtype)


def normal_like(key: jax.Array, tree: PyTree) -> PyTree:
    """:func:`normal` draws shaped and typed like every leaf of ``tree`` (one split key per leaf)."""
    return noise_like(key, tree, "gaussian")


NOISE_DISTS = ("three_point", "gaussian")
"""The injected-noise distributions of the samplers (``noise_dist``): see :func:`noise`."""
DEFAULT_NOISE = "three_point"
"""The samplers' default ``noise_dist`` (docs/speed.md and docs/sgmcmc_sa.md say why)."""

_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_THREE_POINT_T = 715827883                      # ceil(2^32 / 6): P(ξ = −a) = P(ξ = +a) = T / 2^32
THREE_POINT_P = _THREE_POINT_T / 2.0 ** 32
"""``P(ξ = +a) = P(ξ = −a)`` of :func:`three_point` (1/6 + 1.6e-10)."""
THREE_POINT_A = float(np.sqrt(1.0 / (2.0 * THREE_POINT_P)))
"""The atoms ``±a`` of :func:`three_point` (``√3 − 4.9e-9``): the variance ``2 p a²`` is exactly 1."""


def threefry2x32(k0: jax.Array, k1: jax.Array, x0: jax.Array, x1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 (Salmon et al. 2011; 20 rounds), the hash ``jax.random``'s default PRNG is built on.

    Written in plain ``uint32`` ``jnp`` operations and unrolled, so XLA fuses it into the elementwise
    computation that consumes its output (``jax.random``'s CPU lowering is a rolled loop, a kernel of its own
    that writes the bits to memory). Bit for bit the function ``jax.extend.random.threefry_2x32`` computes
    (``tests/test_speed_noise.py``).

    Parameters
    ----------
    k0, k1: ``()`` (or broadcastable) ``uint32`` key words.
    x0, x1: ``uint32`` counter words, any broadcastable shapes.

    Returns
    -------
    ``(y0, y1)``: the two ``uint32`` output words, of the broadcast shape of the inputs.
    """
    u = jnp.uint32
    k0, k1, x0, x1 = (jnp.asarray(v, u) for v in (k0, k1, x0, x1))
    ks = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _THREEFRY_ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = (x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))
            x1 = x0 ^ x1
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def flat_index(shape: tuple[int, ...]) -> jax.Array:
    """``uint32`` array of ``shape`` holding each element's row-major flat index (``0 .. size − 1``).

    Built from ``broadcasted_iota``s (elementwise, so it fuses into its consumer); ``size`` must be below
    ``2^32``.
    """
    shape = tuple(int(d) for d in shape)
    if math.prod(shape) >= 2 ** 32:
        raise ValueError(f"flat_index: {math.prod(shape)} elements do not fit a uint32 counter")
    idx = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for d in range(len(shape) - 1, -1, -1):
        idx = idx + jax.lax.broadcasted_iota(jnp.uint32, shape, d) * np.uint32(stride)
        stride *= shape[d]
    return idx


def three_point(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32, stream: int = 0) -> jax.Array:
    """Three-point noise ``(shape)``: ``ξ ∈ {−a, 0, +a}`` with probabilities ``p, 1 − 2p, p``, ``p ≈ 1/6``.

    The simplified weak noise of Kloeden & Platen (1992, *Numerical Solution of Stochastic Differential
    Equations*, §14.2): with ``p = 1/6`` and ``a = √3`` its moments up to order 5 are the standard normal's
    (mean 0, variance 1, skewness 0, ``E ξ⁴ = 3``, ``E ξ⁵ = 0``; ``E ξ⁶ = 9`` instead of 15). Weak-order theory
    of Euler-type SDE / SG-MCMC integrators depends on the noise only through these moments, and a chain's
    state sums the noise of many steps, so its law is Gaussian up to a sixth cumulant that shrinks with the
    number of steps averaged (docs/speed.md).

    Generation: one 32-bit Threefry-2x32 word per element (:func:`threefry2x32` keyed by two words of
    ``jax.random.bits(key)``, counter ``(flat index, stream)``), compared with two thresholds: no
    transcendental function, fused into the sampler's update. Exactly: ``p = T / 2^32`` with ``T =
    ceil(2^32 / 6)`` (:data:`THREE_POINT_P`, 1/6 + 1.6e-10) and ``a = 1 / √(2p)`` (:data:`THREE_POINT_A`),
    so the variance is exactly 1 and ``E ξ⁴ = 1 / (2p) = 3 − 2.9e-9``. ``stream`` (``0 .. 2^32 − 1``) selects
    one of the key's independent arrays (:func:`noise_like` gives leaf ``i`` the stream ``i``).

    A vmapped call (chains, vmapped seeds) gives every row exactly its unbatched numbers (the computation
    is elementwise in the key words). ``key``: any JAX PRNG key (raw ``uint32`` key data or typed).
    """
    return _three_point_from_words(jax.random.bits(key, (2,), jnp.uint32), shape, dtype, stream)


def _three_point_from_words(kw: jax.Array, shape: tuple[int, ...], dtype, stream: int) -> jax.Array:
    """:func:`three_point` from the ``(2,)`` ``uint32`` Threefry key words ``kw``."""
    dtype = jnp.dtype(dtype)
    bits, _ = threefry2x32(kw[0], kw[1], flat_index(shape), np.uint32(stream))
    a = np.array(THREE_POINT_A, dtype)
    return jnp.where(bits < np.uint32(_THREE_POINT_T), -a,
                     jnp.where(bits >= np.uint32(2 ** 32 - _THREE_POINT_T), a, np.array(0, dtype)))


def noise(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32, dist: str = DEFAULT_NOISE) -> jax.Array:
    """The samplers' injected noise ``(shape)`` of mean 0 and variance 1: ``dist`` is ``"three_point"``
    (:func:`three_point`) or ``"gaussian"`` (:func:`normal`)."""
    check_noise_dist(dist)
    return three_point(key, shape, dtype) if dist == "three_point" else normal(key, shape, dtype)


def check_noise_dist(dist: str) -> None:
    """Raise ``ValueError`` unless ``dist`` is one of :data:`NOISE_DISTS`."""
    if dist not in NOISE_DISTS:
        raise ValueError(f"noise_dist must be one of {NOISE_DISTS}, got {dist!r}")


def noise_like(key: jax.Array, tree: PyTree, dist: str = DEFAULT_NOISE) -> PyTree:
    """:func:`noise` draws shaped and typed like every leaf of ``tree``.

    ``"gaussian"``: one split key per leaf (:func:`normal` of ``jax.random.split(key, n_leaves)[i]``).
    ``"three_point"``: one ``jax.random.bits`` call for the whole tree, leaf ``i`` is stream ``i`` of
    :func:`three_point` (a one-leaf tree gets ``three_point(key, shape)``): per step one tiny key-derivation
    kernel instead of one per leaf.
    """
    check_noise_dist(dist)
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if dist == "three_point":
        kw = jax.random.bits(key, (2,), jnp.uint32)
        out = [_three_point_from_words(kw, x.shape, x.dtype, i) for i, x in enumerate(leaves)]
    else:
        keys = jax.random.split(key, len(leaves))
        out = [normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, out)


def sgld_update(key: jax.Array, position: PyTree, grad: PyTree, step_size: jax.Array,
                inv_temp: jax.Array, noise_dist: str = DEFAULT_NOISE) -> PyTree:
    """One SGLD move ``θ − ε g + sqrt(2ε / inv_temp) ξ`` (leaf-wise, shapes preserved); ``ξ`` from
    :func:`noise` with ``dist = noise_dist``."""
    xi = noise_like(key, position, noise_dist)
    return jax.tree_util.tree_map(
        lambda x, g, z: x - (step_size * g).astype(x.dtype)
        + (jnp.sqrt(2.0 * step_size / inv_temp) * z).astype(x.dtype),
        position, grad, xi)


def sghmc_noise_std(step_size: jax.Array, momentum_decay: jax.Array, inv_temp: jax.Array) -> jax.Array:
    """``sqrt(max(2ε(1 − m) − ε², 0) / inv_temp)``: SGHMC injected-noise std (``B̂ = ε/2``)."""
    var = 2.0 * step_size * (1.0 - momentum_decay) - step_size ** 2
    return jnp.sqrt(jnp.maximum(var, 0.0) / inv_temp)


def sghmc_update(key: jax.Array, position: PyTree, momentum: PyTree, grad: PyTree, step_size: jax.Array,
                 momentum_decay: jax.Array, inv_temp: jax.Array,
                 noise_dist: str = DEFAULT_NOISE) -> tuple[PyTree, PyTree]:
    """One SGHMC move: ``v ← m v − ε g + std·ξ``, ``θ ← θ + v``; returns ``(position, momentum)``; ``ξ`` from
    :func:`noise` with ``dist = noise_dist``."""
    xi = noise_like(key, position, noise_dist)
    std = sghmc_noise_std(step_size, momentum_decay, inv_temp)
    momentum = jax.tree_util.tree_map(
        lambda v, g, z: (momentum_decay * v - step_size * g + std * z).astype(v.dtype), momentum, grad, xi)
    position = jax.tree_util.tree_map(lambda x, v: x + v, position, momentum)
    return position, momentum


# --------------------------------------------------------------------------------------------------
# observation noise: Gibbs step on the noise variance
# --------------------------------------------------------------------------------------------------
def noise_conditional(rss: jax.Array, n_obs: float | jax.Array, nu: jax.Array, lam: jax.Array,
                      inv_temp: jax.Array | float = 1.0) -> tuple[jax.Array, jax.Array]:
    """``(shape, scale)`` of the InvGamma conditional of a Gaussian noise variance ``s²``.

    Model: ``y_i | θ, s² ~ N(ψ(x_i; θ), s²)`` for ``n_obs`` scalar observations, prior
    ``s² ~ InvGamma(ν/2, νλ/2)``. Given the residual sum ``rss = Σ (y − ψ)²`` the conditional is
    ``InvGamma((ν + n_obs)/2, (νλ + rss)/2)``. A chain targeting ``p^inv_temp`` needs the tempered
    conditional: ``InvGamma(τ((ν + n_obs)/2 + 1) − 1, τ (νλ + rss)/2)`` (the same at ``τ = 1``).

    Parameters
    ----------
    rss: ``()`` residual sum of squares over the ``n_obs`` observations (target units squared).
    n_obs: number of scalar observations (rows × outputs).
    nu, lam: ``()`` prior ``ν`` and ``λ``.
    inv_temp: ``()`` inverse temperature ``τ``.

    Returns
    -------
    ``(shape, scale)``, both ``()``; ``shape`` clipped below at ``1e-3`` (only reachable for ``τ < 1``).
    """
    shape = inv_temp * (0.5 * (nu + n_obs) + 1.0) - 1.0
    scale = inv_temp * 0.5 * (nu * lam + rss)
    return jnp.maximum(shape, 1e-3), scale


def sample_noise_variance(key: jax.Array, rss: jax.Array, n_obs: float | jax.Array, nu: jax.Array,
                          lam: jax.Array, inv_temp: jax.Array | float = 1.0) -> jax.Array:
    """One Gibbs draw ``s² ~ InvGamma(shape, scale)`` of :func:`noise_conditional` (``()``, dtype of ``rss``).

    Stochastic-gradient use: pass the minibatch residual sum rescaled to the data size,
    ``rss = (N/n) Σ_{i∈B} (y_i − ψ(x_i))²`` with ``n_obs = N · d_out``. That is an unbiased estimate
    of the full-data ``rss``, so the draw is a stochastic-gradient Gibbs approximation: exact for
    full batches, with extra spread from the minibatch estimate otherwise.
    """
    rss = jnp.asarray(rss)
    shape, scale = noise_conditional(rss, n_obs, nu, lam, inv_temp)
    g = jax.random.gamma(key, shape.astype(rss.dtype), dtype=rss.dtype)
    return (scale / g).astype(rss.dtype)


def halfnormal_noise_proposal(rss: jax.Array, n_obs: float | jax.Array, inv_temp: jax.Array | float = 1.0
                              ) -> tuple[jax.Array, jax.Array]:
    """``(shape, scale)`` of the InvGamma that :func:`update_noise_variance_halfnormal` proposes from.

    It is the (tempered) conditional of ``s²`` under the likelihood times ``(s²)^{-1/2}`` (a flat prior on the
    noise sd ``s``): ``p^τ ∝ (s²)^{-τ(n_obs + 1)/2} exp(−τ rss / (2 s²))``, i.e. ``InvGamma(τ(n_obs + 1)/2 − 1,
    τ rss / 2)`` (``((n_obs − 1)/2, rss/2)`` at ``τ = 1``). ``shape`` is clipped below at ``1e-3``, ``scale`` at
    ``1e-30`` (a zero residual would otherwise propose ``s² = 0``).
    """
    shape = inv_temp * 0.5 * (n_obs + 1.0) - 1.0
    scale = inv_temp * 0.5 * rss
    return jnp.maximum(shape, 1e-3), jnp.maximum(scale, 1e-30)


def update_noise_variance_halfnormal(key: jax.Array, current: jax.Array, rss: jax.Array, n_obs: float | jax.Array,
                                     sd_scale: jax.Array, inv_temp: jax.Array | float = 1.0) -> jax.Array:
    """One Metropolis-within-Gibbs update of ``s²`` under a ``HalfNormal(sd_scale)`` prior on the noise sd ``s``.

    The prior NUTS (and NumPyro's BNN examples) put on the noise sd. It is not conjugate, so the update is an
    independence Metropolis step: propose ``s²'`` from :func:`halfnormal_noise_proposal` (the likelihood part of
    the target, exactly), accept with the prior ratio ``min(1, exp(−τ (s²' − s²) / (2 sd_scale²)))``. The chain
    leaves ``p(s² | rest)^τ ∝ [N(y | ψ, s²) · HalfNormal(s; sd_scale) / (2 s)]^τ`` invariant; in standardised units
    (``sd_scale = 1``, ``s² ≪ 1``) nearly every proposal is accepted. Unlike ``InvGamma(ν/2, νλ/2)`` it adds no
    pseudo-residual: with ν = λ = 1 that prior adds ``1/2`` to ``rss / 2``, which on 120 rows of noise sd 0.06
    (standardised) doubles the noise sd the chain samples.

    Parameters
    ----------
    key: PRNG key; current: ``()`` the chain's ``s²``; rss, n_obs: as :func:`sample_noise_variance`;
    sd_scale: ``()`` HalfNormal scale of ``s`` (standardised units); inv_temp: ``τ``.

    Returns
    -------
    ``()`` the new ``s²`` (dtype of ``rss``).
    """
    rss = jnp.asarray(rss)
    k_prop, k_acc = jax.random.split(key)
    shape, scale = halfnormal_noise_proposal(rss, n_obs, inv_temp)
    prop = scale / jax.random.gamma(k_prop, shape.astype(rss.dtype), dtype=rss.dtype)
    log_ratio = -inv_temp * (prop - current) / (2.0 * sd_scale * sd_scale)
    accept = jnp.log(jax.random.uniform(k_acc, dtype=rss.dtype)) < log_ratio
    return jnp.where(accept, prop, current).astype(rss.dtype)


# --------------------------------------------------------------------------------------------------
# top-level samplers: pure init / step over a pytree state
# --------------------------------------------------------------------------------------------------
@chex.dataclass
class SGLDState:
    """SGLD chain state: position pytree, step count, step-size schedule, (inverse) temperature."""

    position: PyTree
    count: jax.Array
    schedule: PolynomialSchedule
    inv_temp: jax.Array
    anneal_rate: jax.Array


@chex.dataclass
class SGHMCState:
    """SGHMC chain state: SGLD's fields plus the momentum pytree and ``momentum_decay = 1 − friction``."""

    position: PyTree
    momentum: PyTree
    count: jax.Array
    schedule: PolynomialSchedule
    inv_temp: jax.Array
    anneal_rate: jax.Array
    momentum_decay: jax.Array


class SampleInfo(NamedTuple):
    """Per-step diagnostics: energy estimate and the step size used."""

    energy: jax.Array
    step_size: jax.Array


class SamplingAlgorithm(NamedTuple):
    """``init(position, ...) -> state`` and ``step(key, state, batch) -> (state, info)``."""

    init: Callable[..., Any]
    step: Callable[..., tuple[Any, SampleInfo]]


def _dtype_of(position: PyTree):
    leaves = jax.tree_util.tree_leaves(position)
    return leaves[0].dtype if leaves else jnp.asarray(1.0).dtype


def sgld_init(position: PyTree, schedule: PolynomialSchedule, inv_temp: float | jax.Array = 1.0,
              anneal_rate: float | jax.Array = 1.0) -> SGLDState:
    """Initial :class:`SGLDState` (``count = 0``)."""
    dt = _dtype_of(position)
    return SGLDState(position=position, count=jnp.asarray(0, jnp.int32), schedule=schedule,
                     inv_temp=jnp.asarray(inv_temp, dt), anneal_rate=jnp.asarray(anneal_rate, dt))


def sgld_step(key: jax.Array, state: SGLDState, batch: Any,
              grad_fn: Callable[[PyTree, Any], tuple[jax.Array, PyTree]],
              noise_dist: str = DEFAULT_NOISE) -> tuple[SGLDState, SampleInfo]:
    """One SGLD iteration with gradient estimator ``grad_fn`` (see :func:`grad_estimator`) and injected noise
    ``noise_dist`` (:func:`noise`)."""
    energy, g = grad_fn(state.position, batch)
    eps = schedule_value(state.schedule, state.count)
    pos = sgld_update(key, state.position, g, eps, state.inv_temp, noise_dist)
    new = state.replace(position=pos, count=state.count + 1, inv_temp=state.inv_temp * state.anneal_rate)
    return new, SampleInfo(energy=energy, step_size=eps)


def sghmc_init(position: PyTree, schedule: PolynomialSchedule, momentum_decay: float | jax.Array = 0.9,
               inv_temp: float | jax.Array = 1.0, anneal_rate: float | jax.Array = 1.0) -> SGHMCState:
    """Initial :class:`SGHMCState` with zero momentum."""
    dt = _dtype_of(position)
    return SGHMCState(position=position, momentum=jax.tree_util.tree_map(jnp.zeros_like, position),
                      count=jnp.asarray(0, jnp.int32), schedule=schedule, inv_temp=jnp.asarray(inv_temp, dt),
                      anneal_rate=jnp.asarray(anneal_rate, dt),
                      momentum_decay=jnp.asarray(momentum_decay, dt))


def sghmc_step(key: jax.Array, state: SGHMCState, batch: Any,
               grad_fn: Callable[[PyTree, Any], tuple[jax.Array, PyTree]],
               noise_dist: str = DEFAULT_NOISE) -> tuple[SGHMCState, SampleInfo]:
    """One SGHMC iteration with gradient estimator ``grad_fn`` and injected noise ``noise_dist`` (:func:`noise`)."""
    energy, g = grad_fn(state.position, batch)
    eps = schedule_value(state.schedule, state.count)
    pos, mom = sghmc_update(key, state.position, state.momentum, g, eps, state.momentum_decay, state.inv_temp,
                            noise_dist)
    new = state.replace(position=pos, momentum=mom, count=state.count + 1,
                        inv_temp=state.inv_temp * state.anneal_rate)
    return new, SampleInfo(energy=energy, step_size=eps)


def sgld(grad_fn: Callable[[PyTree, Any], tuple[jax.Array, PyTree]],
         noise_dist: str = DEFAULT_NOISE) -> SamplingAlgorithm:
    """SGLD as ``SamplingAlgorithm(init, step)`` with ``step(key, state, batch)``; ``noise_dist``: :func:`noise`."""
    check_noise_dist(noise_dist)
    return SamplingAlgorithm(init=sgld_init,
                             step=lambda key, state, batch: sgld_step(key, state, batch, grad_fn, noise_dist))


def sghmc(grad_fn: Callable[[PyTree, Any], tuple[jax.Array, PyTree]],
          noise_dist: str = DEFAULT_NOISE) -> SamplingAlgorithm:
    """SGHMC as ``SamplingAlgorithm(init, step)`` with ``step(key, state, batch)``; ``noise_dist``: :func:`noise`."""
    check_noise_dist(noise_dist)
    return SamplingAlgorithm(init=sghmc_init,
                             step=lambda key, state, batch: sghmc_step(key, state, batch, grad_fn, noise_dist))
