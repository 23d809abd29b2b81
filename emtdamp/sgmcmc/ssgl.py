"""SSGL (spike-and-slab Gaussian-Laplace) prior and its stochastic-approximation (SA) updates.

Spec ``baselines.md`` A.1 / A.3 (Deng, Zhang, Liang, Lin 2019). Per weight ``j`` of sparse layer ``l``::

    β_lj | σ², γ_lj ~ γ_lj N(0, σ² v1) + (1 − γ_lj) Laplace(0, scale σ v0)
    σ² ~ InvGamma(ν/2, νλ/2),  γ_lj | δ_l ~ Bernoulli(δ_l),  δ_l ~ Beta(a_l, b_l)

Latents (E-step "expectations"): ``ρ = E[γ]`` (slab probability), ``κ0 = (1 − ρ)/v0`` (adaptive L1
weight), ``κ1 = ρ / v1`` (adaptive L2 weight), ``δ`` per layer, ``σ²`` shared.
The sparse leaves are passed as a list ``xs`` of arrays (one per sparse layer); ``ρ, κ0, κ1`` are
lists of arrays of the same shapes, ``δ, a, b`` arrays of shape ``(L,)``.

Representation. The two probabilities are stored as the pair ``(log p, log(1 − p))``
(:class:`SSGLLatents` fields ``log_rho, log1m_rho, log_delta, log1m_delta``), so 0 and 1 are never
reached exactly: the SA step ``p ← (1 − ω) p + ω p*`` is done in log space,
``log p ← logaddexp(log(1 − ω) + log p, log ω + log p*)`` and the same for ``1 − p`` (:func:`log_mix`),
which stays finite however small ``p*`` is, and the E-step reads ``log δ, log(1 − δ)`` directly. In
float32 the plain update makes ``δ`` underflow to exactly 0 with the R demo's settings, and ``δ = 0`` is
absorbing (``log δ = −∞`` gives ``ρ̃ = 0``); see ``docs/sgmcmc_sa.md`` section 3. ``lat.rho`` and
``lat.delta`` give the values; :func:`latents_from_values` builds latents from values.

Every update below is a separate pure function ``latents -> latents`` so that "sample β" and
"update latents" compose as in Algorithm 1; :func:`sa_update` chains steps 4-7 in the reference
code's order (``ρ̃`` uses the old ``δ, σ``; ``κ`` and ``δ`` use the new ``ρ``; ``σ`` uses the new ``κ``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp


@chex.dataclass
class SSGLHyper:
    """Fixed hyperparameters of the SSGL prior (all arrays; ``a``, ``b`` per sparse layer ``(L,)``).

    ``scale_by_sigma``: 1 = paper (components ``N(0, σ² v1)``, ``Laplace(0, σ v0)`` in ``ρ̃``),
    0 = UCI/CIFAR code (unscaled ``N(0, v1)``, ``Laplace(0, v0)``). ``sa_on_sigma``: 1 = SA on ``σ``
    (paper), 0 = SA on ``σ²`` (code, default). ``learn_delta`` / ``learn_sigma``: 0 freezes ``δ`` /
    ``σ`` (the README advice for DNNs), 1 updates them.
    """

    v0: jax.Array
    v1: jax.Array
    a: jax.Array
    b: jax.Array
    nu: jax.Array
    lam: jax.Array
    scale_by_sigma: jax.Array
    sa_on_sigma: jax.Array
    learn_delta: jax.Array
    learn_sigma: jax.Array


@chex.dataclass
class SSGLLatents:
    """SA-updated latents, ``ρ`` and ``δ`` in log space (module docstring, "Representation").

    ``log_rho, log1m_rho``: lists like ``xs`` holding ``log ρ`` and ``log(1 − ρ)``; ``kappa0, kappa1``:
    lists like ``xs``; ``log_delta, log1m_delta``: ``(L,)`` holding ``log δ`` and ``log(1 − δ)``;
    ``sigma2``: ``()``. Values: the properties ``rho`` (list) and ``delta`` ``(L,)``.
    """

    log_rho: list
    log1m_rho: list
    kappa0: list
    kappa1: list
    log_delta: jax.Array
    log1m_delta: jax.Array
    sigma2: jax.Array

    @property
    def rho(self) -> list:
        """``ρ = exp(log ρ)`` per weight (list like ``xs``; may underflow to 0 as a value, never in the state)."""
        return [jnp.exp(v) for v in self.log_rho]

    @property
    def delta(self) -> jax.Array:
        """``δ = exp(log δ)``, shape ``(L,)``."""
        return jnp.exp(self.log_delta)


def latents_from_values(*, rho: list, kappa0: list, kappa1: list, delta: jax.Array,
                        sigma2: jax.Array) -> SSGLLatents:
    """:class:`SSGLLatents` from values ``ρ`` (list), ``κ0, κ1`` (lists), ``δ`` ``(L,)`` and ``σ²`` ``()``.

    ``log ρ = log(ρ)``, ``log(1 − ρ) = log1p(−ρ)`` (likewise ``δ``); the dtype is that of the inputs.
    """
    delta = jnp.asarray(delta)
    return SSGLLatents(log_rho=[jnp.log(jnp.asarray(r)) for r in rho],
                       log1m_rho=[jnp.log1p(-jnp.asarray(r)) for r in rho],
                       kappa0=[jnp.asarray(k) for k in kappa0], kappa1=[jnp.asarray(k) for k in kappa1],
                       log_delta=jnp.log(delta), log1m_delta=jnp.log1p(-delta), sigma2=jnp.asarray(sigma2))


def ssgl_hyper(n_layers: int, *, v0: float = 0.1, v1: float = 10.0, a: float | tuple[float, ...] = 1.0,
               b: float | tuple[float, ...] = 1.0, nu: float = 1.0, lam: float = 1.0,
               scale_by_sigma: bool = True, sa_on_sigma: bool = False, learn_delta: bool = True,
               learn_sigma: bool = True, dtype=None) -> SSGLHyper:
    """Build :class:`SSGLHyper`; ``a``, ``b`` may be scalars or one value per sparse layer (e.g. ``p_l``)."""
    dtype = dtype or jnp.asarray(1.0).dtype
    f = lambda v: jnp.asarray(v, dtype)
    return SSGLHyper(v0=f(v0), v1=f(v1), a=jnp.broadcast_to(f(a), (n_layers,)),
                     b=jnp.broadcast_to(f(b), (n_layers,)), nu=f(nu), lam=f(lam),
                     scale_by_sigma=f(float(scale_by_sigma)), sa_on_sigma=f(float(sa_on_sigma)),
                     learn_delta=f(float(learn_delta)), learn_sigma=f(float(learn_sigma)))


def init_latents(xs: list, *, rho: float = 0.5, kappa0: float = 1.0, kappa1: float = 1.0,
                 delta: float = 0.5, sigma: float = 1.0, dtype=None) -> SSGLLatents:
    """Constant initial latents shaped like the sparse leaves ``xs`` (dtype of ``xs``, or ``dtype``
    when given, which ``xs = []`` needs)."""
    dt = dtype or xs[0].dtype
    full = lambda v: [jnp.full(x.shape, v, dt) for x in xs]
    return latents_from_values(rho=full(rho), kappa0=full(kappa0), kappa1=full(kappa1),
                               delta=jnp.full((len(xs),), delta, dt), sigma2=jnp.asarray(sigma, dt) ** 2)


# --------------------------------------------------------------------------------------------------
# prior penalty (the part of −Q1 that depends on β)
# --------------------------------------------------------------------------------------------------
def ssgl_penalty(xs: list, lat: SSGLLatents) -> jax.Array:
    """``Σ κ1 β² / (2σ²) + κ0 |β| / σ`` over the sparse leaves (subgradient ``sign(β)``, 0 at 0).

    Returns a scalar; ``jax.grad`` of it w.r.t. ``xs`` gives ``κ1 β / σ² + κ0 sign(β) / σ``.
    """
    s2 = lat.sigma2
    s = jnp.sqrt(s2)
    tot = 0.0
    for x, k0, k1 in zip(xs, lat.kappa0, lat.kappa1, strict=True):
        tot = tot + jnp.sum(k1 * x * x) / (2.0 * s2) + jnp.sum(k0 * jnp.sign(x) * x) / s
    return tot


# --------------------------------------------------------------------------------------------------
# SA steps 4-7 (each pure)
# --------------------------------------------------------------------------------------------------
def rho_tilde_logit(xs: list, log_delta: jax.Array, log1m_delta: jax.Array, sigma2: jax.Array,
                    hyper: SSGLHyper) -> list:
    """E-step (step 4) in log space: ``la − lb`` per weight, so that ``ρ̃ = sigmoid(la − lb)``.

    ``la = log N(β; 0, σ² v1) + log δ_l``, ``lb = log Laplace(β; 0, σ v0) + log(1 − δ_l)``
    (without the σ factors when ``hyper.scale_by_sigma == 0``); ``log δ``, ``log(1 − δ)`` are read as
    stored, so a tiny δ never becomes ``log 0``. Returns a list like ``xs``.
    """
    sig = jnp.where(hyper.scale_by_sigma > 0, jnp.sqrt(sigma2), 1.0)
    var1 = sig ** 2 * hyper.v1
    scale0 = sig * hyper.v0
    out = []
    for i, x in enumerate(xs):
        la = -0.5 * jnp.log(2.0 * math.pi * var1) - x * x / (2.0 * var1) + log_delta[i]
        lb = -jnp.log(2.0 * scale0) - jnp.abs(x) / scale0 + log1m_delta[i]
        out.append((la - lb).astype(x.dtype))
    return out


def rho_tilde(xs: list, delta: jax.Array, sigma2: jax.Array, hyper: SSGLHyper) -> list:
    """E-step (step 4) from a value ``δ`` ``(L,)``: ``ρ̃ = sigmoid(la − lb)`` (:func:`rho_tilde_logit`).

    :func:`sa_update` does not use this form: it passes the stored ``log δ, log(1 − δ)``.
    """
    delta = jnp.asarray(delta)
    z = rho_tilde_logit(xs, jnp.log(delta), jnp.log1p(-delta), sigma2, hyper)
    return [jax.nn.sigmoid(v) for v in z]


def log_mix(log_p: jax.Array, log1m_p: jax.Array, log_t: jax.Array, log1m_t: jax.Array,
            omega: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``p ← (1 − ω) p + ω t`` on ``(log p, log(1 − p))`` pairs (elementwise, any shapes that broadcast).

    ``log p' = logaddexp(log(1 − ω) + log p, log ω + log t)`` and the same for ``1 − p'`` from
    ``1 − p, 1 − t``: finite whenever ``log p`` or ``log t`` is, however small ``p`` and ``t`` are
    (no underflow to ``p = 0``); ``ω = 0`` returns the inputs bit for bit, ``ω = 1`` returns
    ``(log t, log(1 − t))`` bit for bit.
    """
    l1w, lw = jnp.log1p(-omega), jnp.log(omega)
    return logaddexp(l1w + log_p, lw + log_t), logaddexp(l1w + log1m_p, lw + log1m_t)


def sa_rho(rho: list, rho_t: list, omega: jax.Array) -> list:
    """Step 4 (SA) on values: ``ρ ← (1 − ω) ρ + ω ρ̃`` (the plain formula; :func:`sa_update` uses
    :func:`sa_log_rho`)."""
    return [(1.0 - omega) * r + omega * t for r, t in zip(rho, rho_t, strict=True)]


def sa_log_rho(log_rho: list, log1m_rho: list, z: list, omega: jax.Array) -> tuple[list, list]:
    """Step 4 (SA) in log space: ``ρ ← (1 − ω) ρ + ω ρ̃`` with ``ρ̃ = sigmoid(z)``.

    ``z`` is :func:`rho_tilde_logit`. The same map as :func:`log_mix` on ``(log ρ̃, log(1 − ρ̃)) =
    (log_sigmoid(z), log_sigmoid(−z))``, rearranged to cost one ``exp`` and one ``log`` per output plus one
    shared ``exp`` and division (:func:`_log_mix_sigmoid`; :func:`log_mix` with :func:`log_sigmoid_pair` would take five
    ``exp``/``log`` pairs' worth). Returns the new ``(log ρ, log(1 − ρ))`` lists; ``ω = 0`` returns the inputs
    bit for bit.
    """
    l1w, lw = jnp.log1p(-omega), jnp.log(omega)
    lr, l1r = [], []
    for lp, lq, v in zip(log_rho, log1m_rho, z, strict=True):
        h = 1.0 / (1.0 + jnp.exp(-jnp.abs(v)))    # log ρ̃ = log h − max(−z, 0), log(1 − ρ̃) = log h − max(z, 0)
        lr.append(_log_mix_sigmoid(l1w + lp, lw - jnp.maximum(-v, 0.0), h))
        l1r.append(_log_mix_sigmoid(l1w + lq, lw - jnp.maximum(v, 0.0), h))
    return lr, l1r


def _log_mix_sigmoid(a: jax.Array, b0: jax.Array, h: jax.Array) -> jax.Array:
    """``log(exp(a) + h exp(b0))`` for ``h ∈ [1/2, 1]`` (elementwise), with one ``exp`` and one ``log``.

    With ``d = a − b0`` and ``q = exp(−|d|) ≤ 1``: ``a + log(1 + q h)`` when ``d ≥ 0``, else ``b0 + log(q + h)``;
    the argument of the ``log`` lies in ``[1/2, 2]``, so the value ``exp(result)`` carries the relative error of
    a few roundings, as ``logaddexp(a, b0 + log h)`` does. Where ``d`` is NaN (both infinite with one sign) it
    returns ``a + b0``, as ``jnp.logaddexp``.
    """
    d = a - b0
    q = jnp.exp(-jnp.abs(d))
    up = d >= 0
    out = jnp.where(up, a, b0) + jnp.log(jnp.where(up, 1.0 + q * h, q + h))
    return jnp.where(jnp.isnan(d), a + b0, out)


def log1p_unit(u: jax.Array) -> jax.Array:
    """``log(1 + u)`` for ``u ∈ [0, 1]`` (elementwise, any shape), as accurate as ``jnp.log1p`` and cheaper.

    Kahan's formula ``log(w) · u / (w − 1)`` with ``w = 1 + u`` (``u`` where ``w`` rounds to 1): one ``log``,
    one division. XLA's own ``log1p`` costs about 2.5× a ``log`` on CPU, and the SA update evaluates three
    per weight and step (docs/speed.md). ``w`` is formed as ``max(1 + u, 1)`` (the same value for ``u ≥ 0``)
    because XLA's algebraic simplifier rewrites ``(1 + u) − 1`` as ``u``, which would cancel the correction.
    Measured error (tests/test_ssgl_robust.py): ≤ 3 ulp in float32 and float64, as ``jnp.log1p``.
    """
    w = jnp.maximum(1.0 + u, 1.0)
    return jnp.where(w == 1.0, u, jnp.log(w) * (u / (w - 1.0)))


def logaddexp(a: jax.Array, b: jax.Array) -> jax.Array:
    """``log(exp(a) + exp(b))`` elementwise: ``jnp.logaddexp``'s formula ``max(a, b) + log1p(exp(−|a − b|))``
    (and its ``a + b`` where ``a − b`` is NaN: infinities of one sign, NaNs) with :func:`log1p_unit` for the
    ``log1p``. Not differentiable (no custom JVP); the SA updates are not differentiated."""
    d = a - b
    return jnp.where(jnp.isnan(d), a + b, jnp.maximum(a, b) + log1p_unit(jnp.exp(-jnp.abs(d))))


def log_sigmoid_pair(z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(log_sigmoid(z), log_sigmoid(−z))`` with one ``exp`` and one ``log`` per element instead of two each.

    Both are ``−softplus(∓z) = −(max(∓z, 0) + log1p(exp(−|z|)))`` (``jax.nn.softplus``'s own formula, with
    :func:`log1p_unit` for the ``log1p``); only ``log1p(exp(−|z|))`` is shared.
    """
    sp = log1p_unit(jnp.exp(-jnp.abs(z)))
    return -(jnp.maximum(-z, 0.0) + sp), -(jnp.maximum(z, 0.0) + sp)


def update_kappa(kappa0: list, kappa1: list, rho: list, omega: jax.Array,
                 hyper: SSGLHyper) -> tuple[list, list]:
    """Step 5: ``κ0 ← (1−ω) κ0 + ω (1−ρ)/v0``, ``κ1 ← (1−ω) κ1 + ω ρ/v1`` (with the new ``ρ``)."""
    k0 = [(1.0 - omega) * k + omega * (1.0 - r) / hyper.v0 for k, r in zip(kappa0, rho, strict=True)]
    k1 = [(1.0 - omega) * k + omega * r / hyper.v1 for k, r in zip(kappa1, rho, strict=True)]
    return k0, k1


def delta_target(rho: list, hyper: SSGLHyper) -> jax.Array:
    """M-step value of ``δ_l``: ``(Σ_j ρ_lj + a_l − 1) / (a_l + b_l + p_l − 2)``, shape ``(L,)``.

    ``a − 1`` is formed first (``Σρ + (a − 1)``), so ``a = 1`` loses nothing of a tiny ``Σρ``.
    """
    sums = jnp.stack([jnp.sum(r) for r in rho])
    p = jnp.asarray([r.size for r in rho], sums.dtype)
    return (sums + (hyper.a - 1.0)) / (hyper.a + hyper.b + p - 2.0)


def _log_pseudo(lse: jax.Array, c: jax.Array) -> jax.Array:
    """``log(S + c)`` for ``S = exp(lse) ≥ 0``: log-sum-exp when ``c ≥ 0``; when ``c < 0`` (Beta
    parameter below 1) the value ``S + c`` is floored at the smallest normal number (the prior's
    mode is then at the boundary; the floor keeps it representable and not absorbing)."""
    tiny = jnp.finfo(lse.dtype).tiny
    pos = jnp.logaddexp(lse, jnp.log(jnp.maximum(c, 0.0)))
    neg = jnp.log(jnp.maximum(jnp.exp(lse) + c, tiny))
    return jnp.where(c >= 0, pos, neg)


def log_delta_target(log_rho: list, log1m_rho: list, hyper: SSGLHyper) -> tuple[jax.Array, jax.Array]:
    """:func:`delta_target` in log space: ``(log δ*, log(1 − δ*))``, each ``(L,)``.

    ``δ* = A / (A + B)`` with ``A = Σ_j ρ_lj + a_l − 1`` and ``B = Σ_j (1 − ρ_lj) + b_l − 1`` (``A + B =
    a_l + b_l + p_l − 2``); ``log Σρ`` and ``log Σ(1 − ρ)`` are log-sum-exps of the stored logs.
    """
    lse = jax.scipy.special.logsumexp
    la = _log_pseudo(jnp.stack([lse(v) for v in log_rho]), hyper.a - 1.0)
    lb = _log_pseudo(jnp.stack([lse(v) for v in log1m_rho]), hyper.b - 1.0)
    lz = jnp.logaddexp(la, lb)
    return la - lz, lb - lz


def update_delta(delta: jax.Array, rho: list, omega: jax.Array, hyper: SSGLHyper) -> jax.Array:
    """Step 6 on values: ``δ ← (1 − ω) δ + ω δ*`` (``ω`` times ``hyper.learn_delta``), via
    :func:`update_log_delta`."""
    delta = jnp.asarray(delta)
    ld, _ = update_log_delta(jnp.log(delta), jnp.log1p(-delta), [jnp.log(r) for r in rho],
                             [jnp.log1p(-r) for r in rho], omega, hyper)
    return jnp.exp(ld)


def update_log_delta(log_delta: jax.Array, log1m_delta: jax.Array, log_rho: list, log1m_rho: list,
                     omega: jax.Array, hyper: SSGLHyper) -> tuple[jax.Array, jax.Array]:
    """Step 6 in log space: ``δ ← (1 − ω') δ + ω' δ*`` with ``ω' = ω · learn_delta`` (:func:`log_mix`,
    :func:`log_delta_target`). Returns the new ``(log δ, log(1 − δ))``, each ``(L,)``."""
    lt, l1t = log_delta_target(log_rho, log1m_rho, hyper)
    return log_mix(log_delta, log1m_delta, lt, l1t, omega * hyper.learn_delta)


def sigma_root(ra: jax.Array, rb: jax.Array, rc: jax.Array) -> jax.Array:
    """Unique positive root of ``Ra σ² − Rb σ − Rc = 0``: ``(Rb + sqrt(Rb² + 4 Ra Rc)) / (2 Ra)``."""
    return (rb + jnp.sqrt(rb * rb + 4.0 * ra * rc)) / (2.0 * ra)


def sigma_coefficients(xs: list, kappa0: list, kappa1: list, hyper: SSGLHyper, *,
                       n_obs: float | jax.Array | None = None,
                       rss: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(Ra, Rb, Rc)`` of step 7.

    ``Rb = Σ κ0 |β|``, ``J = Σ κ1 β²``. Regression (``rss`` given: the rescaled residual sum
    ``(N/n) Σ_{i∈B} (y_i − ψ(x_i))²``, ``n_obs = N``): ``Ra = N + p_X + ν``, ``Rc = rss + J + νλ``.
    Classification (``rss`` None): ``Ra = p_X + ν + 2``, ``Rc = J + νλ``.
    """
    rb = sum(jnp.sum(k * jnp.abs(x)) for x, k in zip(xs, kappa0, strict=True))
    jj = sum(jnp.sum(k * x * x) for x, k in zip(xs, kappa1, strict=True))
    p_x = float(sum(x.size for x in xs))
    if rss is None:
        ra = p_x + hyper.nu + 2.0
        rc = jj + hyper.nu * hyper.lam
    else:
        ra = n_obs + p_x + hyper.nu
        rc = rss + jj + hyper.nu * hyper.lam
    return jnp.asarray(ra, rb.dtype), rb, rc


def update_sigma2(sigma2: jax.Array, xs: list, kappa0: list, kappa1: list, omega: jax.Array, hyper: SSGLHyper,
                  *, n_obs: float | jax.Array | None = None, rss: jax.Array | None = None) -> jax.Array:
    """Step 7: ``σ̃`` from :func:`sigma_root`; SA on ``σ²`` (code) or on ``σ`` (paper, ``sa_on_sigma``)."""
    ra, rb, rc = sigma_coefficients(xs, kappa0, kappa1, hyper, n_obs=n_obs, rss=rss)
    st = sigma_root(ra, rb, rc)
    w = omega * hyper.learn_sigma
    on_s2 = (1.0 - w) * sigma2 + w * st * st
    on_s = ((1.0 - w) * jnp.sqrt(sigma2) + w * st) ** 2
    return jnp.where(hyper.sa_on_sigma > 0, on_s, on_s2).astype(sigma2.dtype)


def sa_update(lat: SSGLLatents, xs: list, omega: jax.Array, hyper: SSGLHyper, *,
              n_obs: float | jax.Array | None = None, rss: jax.Array | None = None,
              delta_frozen: bool = False, sigma_frozen: bool = False) -> SSGLLatents:
    """Steps 4-7 of Algorithm 1 at the new sample ``xs = β^{k+1}`` with SA step ``ω``.

    ``ω = 0`` leaves every latent unchanged; ``ω = 1`` is the EM update (fixed point of the
    E/M maps); regression passes ``rss`` and ``n_obs`` (see :func:`sigma_coefficients`).

    ``delta_frozen`` / ``sigma_frozen`` (static): the caller knows ``hyper.learn_delta`` /
    ``hyper.learn_sigma`` is 0, so steps 6 / 7 are skipped instead of computed and multiplied by
    ``ω · 0`` (same latents: ``log_mix`` with a zero step returns its inputs bit for bit). Step 6 is
    a log-sum-exp over every weight, two ``exp`` per weight and step.
    """
    z = rho_tilde_logit(xs, lat.log_delta, lat.log1m_delta, lat.sigma2, hyper)
    log_rho, log1m_rho = sa_log_rho(lat.log_rho, lat.log1m_rho, z, omega)
    rho = [jnp.exp(v) for v in log_rho]
    k0, k1 = update_kappa(lat.kappa0, lat.kappa1, rho, omega, hyper)
    ld, l1d = (lat.log_delta, lat.log1m_delta) if delta_frozen else \
        update_log_delta(lat.log_delta, lat.log1m_delta, log_rho, log1m_rho, omega, hyper)
    s2 = lat.sigma2 if sigma_frozen else update_sigma2(lat.sigma2, xs, k0, k1, omega, hyper, n_obs=n_obs, rss=rss)
    return lat.replace(log_rho=log_rho, log1m_rho=log1m_rho, kappa0=k0, kappa1=k1, log_delta=ld,
                       log1m_delta=l1d, sigma2=s2)


# --------------------------------------------------------------------------------------------------
# ω schedule
# --------------------------------------------------------------------------------------------------
@chex.dataclass
class OmegaSchedule:
    """``ω_k = min(cap, A (k + Z)^(−α))`` (arrays). EM: ``A = cap = 1, α = 0``; frozen: ``A = 0``."""

    A: jax.Array
    Z: jax.Array
    alpha: jax.Array
    cap: jax.Array


def omega_schedule(mode: str = "sa", *, A: float = 1.0, Z: float = 100.0, alpha: float = 0.7,
                   cap: float = 1.0, dtype=None) -> OmegaSchedule:
    """``mode``: ``"sa"`` (the given ``A, Z, α, cap``), ``"em"`` (ω ≡ 1), ``"none"`` (ω ≡ 0)."""
    dtype = dtype or jnp.asarray(1.0).dtype
    if mode == "em":
        A, alpha, cap = 1.0, 0.0, 1.0
    elif mode == "none":
        A = 0.0
    elif mode != "sa":
        raise ValueError(f"omega mode must be 'sa', 'em' or 'none', got {mode!r}")
    f = lambda v: jnp.asarray(v, dtype)
    return OmegaSchedule(A=f(A), Z=f(Z), alpha=f(alpha), cap=f(cap))


def omega_value(s: OmegaSchedule, count: jax.Array) -> jax.Array:
    """``ω_k`` at iteration ``k = count``."""
    k = jnp.asarray(count, s.A.dtype)
    return jnp.minimum(s.cap, s.A * (k + s.Z) ** (-s.alpha))


def omega_compounded(s: OmegaSchedule, count: jax.Array, every: int) -> jax.Array:
    """The SA step of one update standing for the ``every`` steps ``k = count − every + 1, …, count``:
    ``1 − Π_j (1 − ω_j)`` (``every`` static; ``every = 1`` gives ``ω_count``).

    ``every`` successive SA steps toward one fixed target ``t`` give ``p ← Π(1 − ω_j) p + (1 − Π(1 − ω_j)) t``,
    so one step with this ``ω`` moves ``ρ`` exactly as they would whenever ``ρ̃`` does not change within the
    window (the latents' ``sa_every``). ``ω ≡ 1`` (EM) gives 1 and ``ω ≡ 0`` gives 0, exactly; computed as
    ``−expm1(Σ log1p(−ω_j))``, so small steps keep their relative precision.
    """
    log_keep = sum(jnp.log1p(-omega_value(s, count - j)) for j in range(every))   # log Π(1 − ω_j), ≤ 0
    return -jnp.expm1(log_keep)                 # no cancellation for small ω


def sa_update_every(update: Callable, lat: SSGLLatents, s: OmegaSchedule, count: jax.Array,
                    every: int) -> SSGLLatents:
    """``update(lat, ω) -> lat`` (an SA update, e.g. :func:`sa_update` with its sample bound) at iteration
    ``count`` when the latents move on every ``every``-th iteration only (``sa_every``, static).

    ``every = 1``: ``update(lat, ω_count)``. Otherwise, on iterations with ``(count + 1) % every == 0``,
    ``update(lat, ω)`` with the :func:`omega_compounded` step of the ``every`` iterations it stands for, and
    ``lat`` unchanged on the others (a ``lax.cond``: nothing is computed there; a select under ``vmap``).
    """
    if every == 1:
        return update(lat, omega_value(s, count))
    w = omega_compounded(s, count, every)
    return jax.lax.cond((count + 1) % every == 0, update, lambda lt, _: lt, lat, w)
