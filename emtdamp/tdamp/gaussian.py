"""Factorized Gaussian messages in natural parameters and the scalar Gaussian building blocks.

A message ``N(x; m, v)`` is stored as ``eta = m / v`` (precision-weighted mean) and ``prec = 1 / v``.
Products of messages add natural parameters, divisions subtract them; every constructor and every
operation clips the precision to a dtype-dependent interval (float32: ``[1e-8, 1e8]``, float64:
``[1e-12, 1e12]``, spec section 8) so that no NaN or inf leaves these functions for finite or
infinite (but not NaN) inputs.

The module also holds the scalar building blocks of spec section 2.2: moments of a truncated normal
(stable in the tails: ``log_ndtr`` and the Mills ratio ``exp(log phi - log Phi)``, with an asymptotic
branch for very negative standardized thresholds) and the posterior of a ReLU node given a forward
Gaussian message on its input and a backward Gaussian message on its output.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np

LOG2PI = math.log(2.0 * math.pi)

# Below this standardized threshold the exact truncated-normal formulas lose accuracy in float32 (spec
# section 8 suggests |a| > 6; -5 is where the two branches' float32 errors cross, see the docstring).
_ASYMPTOTIC_A = -5.0
# float64: the exact formulas' error grows like a^6 eps (2e-9 at a = -15, 5e-3 at a = -200); the
# 10-term expansion is below 1e-12 for a < -15.
_ASYMPTOTIC_A64 = -15.0
# a + lam = (1/|a|) sum_k c_k t^k and 1 - a lam - lam^2 = t sum_k d_k t^k, t = 1/a^2 (a -> -inf), from
# Phi(a) = phi(a)/|a| sum_n (-1)^n (2n-1)!! t^n (series inverted symbolically, 10 terms).
_SHIFT_COEFFS = (1.0, -2.0, 10.0, -74.0, 706.0, -8162.0, 110410.0, -1708394.0, 29752066.0, -576037442.0)
_VFAC_COEFFS = (1.0, -6.0, 50.0, -518.0, 6354.0, -89782.0, 1435330.0, -25625910.0, 505785122.0,
                -10944711398.0)


def _horner(coeffs, t):
    out = jnp.zeros_like(t) + coeffs[-1]
    for c in coeffs[-2::-1]:
        out = out * t + c
    return out


def bounds(dtype) -> tuple[float, float]:
    """Clip interval ``(lo, hi)`` for variances/precisions of ``dtype`` (spec section 8)."""
    if jnp.finfo(dtype).bits >= 64:
        return 1e-12, 1e12
    return 1e-8, 1e8


def _float_dtype(x) -> jnp.dtype:
    x = jnp.asarray(x)
    return x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.result_type(float)


def clip_var(v: jax.Array) -> jax.Array:
    """Clip variances (or precisions) to the dtype's safe interval; +inf maps to the upper bound."""
    lo, hi = bounds(_float_dtype(v))
    return jnp.clip(v, lo, hi)


@chex.dataclass(frozen=True)
class Gaussian:
    """Factorized Gaussian message ``prod_i N(x_i; eta_i/prec_i, 1/prec_i)``.

    Attributes
    ----------
    eta: array of any shape, precision-weighted mean ``m / v``.
    prec: array of the same shape, precision ``1 / v`` (kept inside :func:`bounds`).
    """

    eta: jax.Array
    prec: jax.Array

    # ----- constructors ------------------------------------------------------------------------
    @staticmethod
    def from_mean_var(mean: jax.Array, var: jax.Array) -> Gaussian:
        """Message with the given mean and variance (variance clipped; ``var = 0`` or ``inf`` are fine)."""
        mean = jnp.asarray(mean)
        var = jnp.asarray(var, mean.dtype)
        prec = clip_var(1.0 / clip_var(var))
        return Gaussian(eta=clip_finite(mean * prec), prec=prec)

    @staticmethod
    def uniform(shape, dtype=jnp.float32) -> Gaussian:
        """The (clipped) flat message: smallest allowed precision, zero mean."""
        lo, _ = bounds(dtype)
        return Gaussian(eta=jnp.zeros(shape, dtype), prec=jnp.full(shape, lo, dtype))

    # ----- algebra -------------------------------------------------------------------------------
    def __mul__(self, other: Gaussian) -> Gaussian:
        return product(self, other)

    def __truediv__(self, other: Gaussian) -> Gaussian:
        return divide(self, other)

    # ----- conversions ---------------------------------------------------------------------------
    @property
    def var(self) -> jax.Array:
        """Variance ``1 / prec`` (finite: ``prec`` is clipped)."""
        return 1.0 / clip_var(self.prec)

    @property
    def mean(self) -> jax.Array:
        """Mean ``eta / prec``."""
        return clip_finite(self.eta / clip_var(self.prec))

    def to_mean_var(self) -> tuple[jax.Array, jax.Array]:
        """``(mean, var)``."""
        return self.mean, self.var

    def clip(self) -> Gaussian:
        """Same message with the precision clipped to the safe interval (mean preserved)."""
        m = self.mean
        prec = clip_var(self.prec)
        return Gaussian(eta=clip_finite(m * prec), prec=prec)


def clip_finite(x: jax.Array) -> jax.Array:
    """Replace +-inf by the largest finite value of the dtype (NaN inputs are left to the caller)."""
    info = jnp.finfo(x.dtype)
    return jnp.clip(x, info.min, info.max)


def product(a: Gaussian, b: Gaussian) -> Gaussian:
    """Product of two messages (sum of natural parameters), precision clipped."""
    prec = a.prec + b.prec
    m = clip_finite((a.eta + b.eta) / clip_var(prec))
    prec = clip_var(prec)
    return Gaussian(eta=clip_finite(m * prec), prec=prec)


def divide(a: Gaussian, b: Gaussian) -> Gaussian:
    """Quotient ``a / b`` (difference of natural parameters).

    A non-positive resulting precision (an improper message) is clipped to the smallest allowed
    precision; the mean is taken from the unclipped natural parameters when the precision is valid.
    """
    prec = a.prec - b.prec
    lo, _ = bounds(_float_dtype(prec))
    valid = prec >= lo
    m = jnp.where(valid, clip_finite((a.eta - b.eta) / jnp.where(valid, prec, 1.0)), 0.0)
    prec = clip_var(prec)
    return Gaussian(eta=clip_finite(m * prec), prec=prec)


def moment_match(mean: jax.Array, second_moment: jax.Array) -> Gaussian:
    """Gaussian with the given first and second moments (variance ``E x^2 - (E x)^2`` clipped)."""
    return Gaussian.from_mean_var(mean, clip_var(second_moment - mean * mean))


def log_normal_pdf(x: jax.Array, mean: jax.Array, var: jax.Array) -> jax.Array:
    """``log N(x; mean, var)`` elementwise."""
    return -0.5 * (LOG2PI + jnp.log(var) + (x - mean) ** 2 / var)


# erfc(z), z >= 0, in float32 (Press et al., Numerical Recipes, erfcc: a Chebyshev fit of log(erfc(z) / t) in
# t = 1 / (1 + z/2), fractional error < 1.2e-7 for all z >= 0). In float32 arithmetic its relative error is
# that of XLA's erfc (max 1.1e-6 vs 6.9e-7 on [2, 4), 2.1e-6 vs 2.1e-6 on [4, 6.7], the exp(-z^2) rounding)
# from one division, one exp and 9 FMAs; XLA's evaluates erf's and erfc's polynomials everywhere and selects
# (57 operations). float64 keeps XLA's (Cephes) erfc.
_ERFC32 = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398, 1.48851587,
           -0.82215223, 0.17087277)


def _erfc_nonneg(z: jax.Array) -> jax.Array:
    """``erfc(z)`` for ``z >= 0`` (float64: ``jax.lax.erfc``; float32: the fit above)."""
    if jnp.finfo(z.dtype).bits >= 64:
        return jax.lax.erfc(z)
    t = 1.0 / (1.0 + 0.5 * z)
    return t * jnp.exp(_horner(_ERFC32, t) - z * z)


def _series_switch(dtype) -> float:
    """``a`` below which :func:`log_ndtr` sums its left-tail series (and the erfc is taken at this value)."""
    return -19.5 if jnp.finfo(dtype).bits >= 64 else -9.5


def _ndtr_parts(a: jax.Array):
    """The pieces shared by :func:`log_ndtr` and :func:`mills_ratio` (``a`` of a float dtype).

    Returns ``(left, a_l, total, a_m, c, nd, upper)``: ``left = a < thr`` (the far left tail, where the
    12-term series is used), ``a_l`` / ``a_m`` the arguments clamped into the series / the erfc region,
    ``total = sum_n (-1)^n (2n-1)!! a_l^(-2n)``, ``c = erfc(|a_m| / sqrt 2)``, ``nd = Phi(a_m)`` from ``c``
    and ``upper`` the threshold above which ``log Phi(a) = -c/2`` (jax.scipy's segments).
    """
    f64 = jnp.finfo(a.dtype).bits >= 64
    thr = _series_switch(a.dtype)
    left = a < thr
    a_l = jnp.where(left, a, thr)
    t = 1.0 / (a_l * a_l)
    term = jnp.ones_like(a_l)
    total = jnp.ones_like(a_l)
    for n in range(1, 13):
        term = -term * (2 * n - 1) * t
        total = total + term
    a_m = jnp.where(left, thr, a)
    # Phi(a) = erfc(-a/sqrt 2)/2 from one erfc of |a|/sqrt 2 (the constant rounded as jax.scipy's ndtr
    # rounds it: erfc(z) ~ exp(-z^2) amplifies an ulp of the constant 2 z^2 times)
    c = _erfc_nonneg(jnp.abs(a_m) * np.asarray(0.5 * np.sqrt(2.0), a.dtype))
    nd = jnp.where(a_m > 0, 1.0 - 0.5 * c, 0.5 * c)
    return left, a_l, total, a_m, c, nd, (8.0 if f64 else 5.0)


def log_ndtr(a: jax.Array) -> jax.Array:
    """``log Phi(a)`` accurate to a few ulp in the far left tail.

    ``jax.scipy.special.log_ndtr`` truncates its left-tail asymptotic series after 3 terms (relative
    error 2e-11 at a = -20 in float64, which the Mills ratio and then the truncated-normal variance
    amplify). Below ``a = -19.5`` (float64) / ``-9.5`` (float32) we sum 12 terms of
    ``log Phi(a) = log phi(a) - log|a| + log(sum_n (-1)^n (2n-1)!! a^(-2n))`` instead (the terms
    decrease while ``n < a^2/2``, i.e. >= 50 terms at the switch, so 12 are far from divergence).
    Above the switch it is jax.scipy's formula (``log Phi(a)``, and ``-Phi(-a)`` above a = 8 / 5), with
    ``Phi`` from a single ``erfc`` (jax.scipy evaluates ``erf`` and ``erfc`` and its own series everywhere
    and selects) and one ``log`` shared by both branches.
    """
    a = jnp.asarray(a)
    a = a.astype(_float_dtype(a))
    left, a_l, total, a_m, c, nd, upper = _ndtr_parts(a)
    lg = jnp.log(jnp.where(left, -a_l / total, nd))
    return jnp.where(left, -0.5 * a_l * a_l - 0.5 * LOG2PI - lg, jnp.where(a_m > upper, -0.5 * c, lg))


def log_ndtr_and_mills(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(log Phi(a), phi(a) / Phi(a))``, the values of :func:`log_ndtr` and :func:`mills_ratio` from one
    ``erfc``, one ``exp``, one ``log`` and one division (arrays of ``a``'s shape).

    The Mills ratio is ``phi(a) / Phi(a)`` directly above the series switch (both factors are normal
    numbers there: ``phi(-19.5) ~ 1e-83``, ``phi(-9.5) ~ 1e-20``) and ``|a| / sum_n (-1)^n (2n-1)!! a^(-2n)``
    below it, which is ``exp(log phi - log Phi)`` with the series of :func:`log_ndtr` cancelled by hand.
    """
    a = jnp.asarray(a)
    a = a.astype(_float_dtype(a))
    left, a_l, total, a_m, c, nd, upper = _ndtr_parts(a)
    phi = jnp.exp(-0.5 * a_m * a_m) * np.asarray(1.0 / math.sqrt(2.0 * math.pi), a.dtype)
    lam = jnp.where(left, -a_l, phi) / jnp.where(left, total, nd)
    lg = jnp.log(jnp.where(left, lam, nd))
    lphi = jnp.where(left, -0.5 * a_l * a_l - 0.5 * LOG2PI - lg, jnp.where(a_m > upper, -0.5 * c, lg))
    return lphi, lam


def mills_ratio(a: jax.Array) -> jax.Array:
    """``phi(a) / Phi(a)``, stable for very negative ``a`` (:func:`log_ndtr_and_mills`)."""
    return log_ndtr_and_mills(a)[1]


def _truncated_parts(m: jax.Array, v: jax.Array, sign: float):
    """Truncated-normal pieces of ``N(m, v)`` on ``sign z > 0`` for :func:`_truncated` and the ReLU posterior.

    Returns ``(offset, var, log_mass_quad, mass_num, mass_den, a, c)``: ``offset = mean - m``, the variance
    (clipped below), and ``log P(sign z > 0) = log_mass_quad + log(mass_num / mass_den)`` (away from the
    right tail, see :func:`_truncated`), with ``a = sign m / sqrt v`` and ``c = erfc(|a| / sqrt 2)``.

    Below the asymptotic switch (``a < -5`` float32, ``-15`` float64) the mean and variance come from the
    expansions ``a + lam = H(t) / |a|`` and ``1 - a lam - lam^2 = t V(t)``, ``t = 1/a^2``; below the series
    switch of :func:`log_ndtr` (``-9.5`` / ``-19.5``) the log-mass is ``log phi(a) - log lam`` with the same
    ``lam = H(t)/|a| - a`` (its 10-term expansion is accurate to 3e-10 relative at a = -9.5 and 1e-15 at
    -19.5, as the 12-term series of :func:`log_ndtr`). Elsewhere ``Phi(a)`` and ``lam = phi(a) / Phi(a)``
    come from one ``erfc`` and one ``exp``.
    """
    dtype = _float_dtype(v)
    f64 = jnp.finfo(dtype).bits >= 64
    lo, _ = bounds(dtype)
    s = jnp.sqrt(v)
    r = m / s
    a = r if sign > 0 else -r
    # Phi(a) and phi(a) at a_m = max(a, ser) (log_ndtr's series switch; below it the branch uses the series
    # and the values at a_m are unused): erfc(|a| / sqrt 2) and exp(-a^2 / 2) are taken of r, not of a, so
    # the two branches of one (m, v) (relu_negative_branch and relu_moments) compute them once (XLA merges
    # the identical expressions); the same values as _ndtr_parts(a).
    ser = _series_switch(dtype)
    left = a < ser
    a_m = jnp.where(left, ser, a)
    k = np.asarray(0.5 * np.sqrt(2.0), dtype)
    c = jnp.where(left, _erfc_nonneg(jnp.asarray(-ser * k, dtype)), _erfc_nonneg(jnp.abs(r) * k))
    nd = jnp.where(a_m > 0, 1.0 - 0.5 * c, 0.5 * c)
    phi = jnp.where(left, np.exp(-0.5 * ser * ser), jnp.exp(-0.5 * r * r)).astype(dtype)
    lam = phi * np.asarray(1.0 / math.sqrt(2.0 * math.pi), dtype) / nd
    thr = _ASYMPTOTIC_A64 if f64 else _ASYMPTOTIC_A
    asym = a < thr
    a_s = jnp.where(asym, a, thr)
    inv_a = -1.0 / a_s                                  # 1/|a| (a_s <= thr < 0)
    t = inv_a * inv_a
    shift = _horner(_SHIFT_COEFFS, t) * inv_a           # = a + lam
    offset = jnp.where(asym, sign * s * shift - m, sign * s * lam)
    vfac = jnp.where(asym, t * _horner(_VFAC_COEFFS, t), 1.0 - a * lam - lam * lam)
    quad = jnp.where(left, -0.5 * a * a - 0.5 * LOG2PI, 0.0)
    num = jnp.where(left, 1.0, nd)
    den = jnp.where(left, shift - a_s, 1.0)
    return offset, v * jnp.maximum(vfac, lo), quad, num, den, a, c


def _truncated(m: jax.Array, v: jax.Array, sign: float):
    """``(mean, mean - m, var, log_mass)`` of ``N(m, v)`` restricted to ``sign z > 0`` (see below)."""
    offset, var, quad, num, den, a, c = _truncated_parts(m, v, sign)
    upper = 8.0 if jnp.finfo(_float_dtype(v)).bits >= 64 else 5.0   # jax.scipy: log Phi(a) = -Phi(-a) above
    log_mass = jnp.where(a > upper, -0.5 * c, quad + jnp.log(num / den))
    return m + offset, offset, var, log_mass


def truncated_normal_moments(m: jax.Array, v: jax.Array, sign: float) -> tuple[jax.Array, jax.Array,
                                                                               jax.Array]:
    """Moments of ``N(m, v)`` restricted to ``sign * z > 0`` (spec section 2.2a).

    Parameters
    ----------
    m, v: arrays (broadcastable), mean and variance (``v > 0``) of the untruncated normal.
    sign: ``+1.0`` for ``z > 0``, ``-1.0`` for ``z < 0``.

    Returns
    -------
    mean, var, log_mass: ``E[z | sign z > 0]``, ``Var[z | sign z > 0]`` (clipped below at the dtype's
    lower bound) and ``log P(sign z > 0) = log Phi(sign m / sqrt v)``.

    Notes
    -----
    With ``a = sign m / sqrt v`` and ``lam = phi(a)/Phi(a)``: mean ``m + sign sqrt(v) lam``, variance
    ``v (1 - a lam - lam^2)``. In float32 the variance factor loses accuracy for negative ``a``
    (``lam`` inherits the ~1e-7 relative error of ``log Phi(a)``, i.e. an absolute error growing like
    ``a^2``, and ``1 - a lam - lam^2 ~ 1/a^2`` cancels: relative error 3e-3 at a = -5, 1e-1 at a = -15),
    so below ``a = -5`` float32 uses 10-term asymptotic expansions in ``t = 1/a^2`` of ``a + lam`` and
    ``1 - a lam - lam^2`` (coefficients ``_SHIFT_COEFFS``, ``_VFAC_COEFFS``; relative error 2e-3 at
    the switch, 5e-5 at a = -6, decreasing further out). float64 has the same problem later (error
    ~ a^6 eps: 2e-9 at a = -15, 5e-3 at a = -200) and switches at ``a = -15`` (expansion error < 1e-12).
    """
    mean, _, var, log_mass = _truncated(m, v, sign)
    return mean, var, log_mass


def relu_negative_branch(p: jax.Array, vp: jax.Array) -> tuple[jax.Array, ...]:
    """The part of the ReLU posterior that does not depend on the backward message: the truncated normal
    ``N(p, vp)`` on ``z < 0`` (offset, variance, log-mass pieces; :func:`_truncated_parts`). A DAMP iteration
    evaluates the posterior of a hidden layer twice with the same ``(p, vp)`` (forward sweep: old backward
    message; backward sweep: new one) and passes this to both (``neg=`` of :func:`relu_posterior_offset`)."""
    return _truncated_parts(p, vp, -1.0)[:5]


def relu_moments(p: jax.Array, vp: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and variance of ``u = relu(z)``, ``z ~ N(p, vp)``: the ReLU posterior of ``u`` without a backward
    message (a minibatch's first forward sweep, and prediction).

    :func:`relu_posterior` with ``vr`` at the dtype's upper bound stands in for "no message" and agrees with
    this up to ``O(vp / hi)`` (1e-8 relative in float32); here the message is absent exactly and the branch
    weights need no logarithm: ``w+ = Phi(a)``, ``a = p / sqrt(vp)``, is the positive branch's own mass
    (:func:`_truncated_parts`, exact into the far left tail) and ``w- = Phi(-a)`` is ``erfc(a / sqrt 2) / 2``
    from the same ``erfc`` for ``a > 0`` (so ``w-`` keeps its relative accuracy when ``w+ ~ 1``), ``1 - w+``
    otherwise. As in :func:`relu_posterior_offset`, ``Var u = w+ V+ + w+ w- E+^2`` without cancellation.

    Parameters
    ----------
    p, vp: arrays of one shape (e.g. ``(B, N)``), ``vp > 0``.

    Returns
    -------
    eu, vu: ``E u`` and ``Var u`` (clipped below at the dtype's lower bound).
    """
    lo, _ = bounds(_float_dtype(vp))
    offset, vpos, quad, num, den, a, c = _truncated_parts(p, vp, 1.0)
    wpos = jnp.exp(quad) * num / den
    wneg = jnp.where(a > 0, 0.5 * c, 1.0 - wpos)
    mp = p + offset
    return wpos * mp, jnp.maximum(wpos * vpos + wpos * wneg * mp * mp, lo)


def relu_posterior(p: jax.Array, vp: jax.Array, r: jax.Array, vr: jax.Array, neg: tuple | None = None
                   ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Posterior moments of a ReLU node (spec section 2.2b).

    The pre-activation has the forward message ``z ~ N(p, vp)``; the output ``u = relu(z)`` has the
    backward message ``N(u; r, vr)`` (``vr`` at the dtype's upper bound means "no message").

    Parameters
    ----------
    p, vp, r, vr: arrays of one shape (e.g. ``(B, N)``), ``vp, vr > 0``.
    neg: optional :func:`relu_negative_branch` ``(p, vp)`` (computed here when None).

    Returns
    -------
    ez, vz, eu, vu: posterior mean/variance of ``z`` and of ``u`` (variances clipped below).
    """
    dz, vz, eu, vu = relu_posterior_offset(p, vp, r, vr, neg)
    return p + dz, vz, eu, vu


def relu_posterior_offset(p: jax.Array, vp: jax.Array, r: jax.Array, vr: jax.Array, neg: tuple | None = None
                          ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """As :func:`relu_posterior` but returns ``E z - p`` instead of ``E z``.

    Everything is computed without cancellation (needed in float32 once the forward variance ``vp``
    is small compared with ``p^2``): the branch-weight log-ratio in closed form, the mean offset as
    a weighted sum of branch offsets, and the mixture variances as
    ``w- V- + w+ V+ + w- w+ (E+ - E-)^2`` (for ``u``: ``w+ V+ + w+ w- E+^2``) instead of
    ``E z^2 - (E z)^2``, whose float32 rounding (~1e-7 |E z|^2) fed back through ``T_S = (1 - vz/vp)/vp``
    and collapsed the slab variances of Boston runs after ~400 epochs.
    """
    lo, hi = bounds(_float_dtype(vp))
    vr = jnp.minimum(vr, hi)
    inv_tot = 1.0 / (vp + vr)
    inv_vr = 1.0 / vr
    dn, vn, qn, num_n, den_n = relu_negative_branch(p, vp) if neg is None else neg  # E- = p + dn
    vpl = vp * vr * inv_tot
    dpl = (r - p) * (vp * inv_tot)  # m+ - p
    dpp, vpos, qp, num_p, den_p, _, _ = _truncated_parts(p + dpl, vpl, 1.0)  # positive branch: E+ = p + dpl + dpp
    # log w+/w- = log N(p; r, vp+vr) - log N(0; r, vr) + log P+ - log P-, with the first difference in
    # cancellation-free form (a weak backward message, vr at the clip and |r| ~ 1e10, makes each
    # log-density ~1e11 and their float32 difference noise), -log1p(vp/vr)/2 = log(1/sqrt(1 + vp/vr)) and the
    # three logarithms taken as one: log P = quad + log(num/den) for both branches.
    ratio = (num_p * den_n) / (den_p * num_n * jnp.sqrt(1.0 + vp * inv_vr))
    d = qp - qn + jnp.log(ratio) - 0.5 * (p * (p - 2.0 * r) * inv_tot - vp * (r * inv_vr) * (r * inv_tot))
    # w+ = sigmoid(d), w- = sigmoid(-d) from one exp
    e = jnp.exp(-jnp.abs(d))
    inv = 1.0 / (1.0 + e)
    pos = d >= 0
    wpos = jnp.where(pos, 1.0, e) * inv
    wneg = jnp.where(pos, e, 1.0) * inv
    d_pos = dpl + dpp
    dz = wneg * dn + wpos * d_pos
    vz = wneg * vn + wpos * vpos + wneg * wpos * (d_pos - dn) ** 2
    mp = p + d_pos
    eu = wpos * mp
    vu = wpos * vpos + wpos * wneg * mp * mp
    return dz, jnp.maximum(vz, lo), eu, jnp.maximum(vu, lo)
