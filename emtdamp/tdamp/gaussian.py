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
from jax.scipy.special import log_ndtr as _jax_log_ndtr

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
        return Gaussian(eta=_finite(mean * prec), prec=prec)

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
        return _finite(self.eta / clip_var(self.prec))

    def to_mean_var(self) -> tuple[jax.Array, jax.Array]:
        """``(mean, var)``."""
        return self.mean, self.var

    def clip(self) -> Gaussian:
        """Same message with the precision clipped to the safe interval (mean preserved)."""
        m = self.mean
        prec = clip_var(self.prec)
        return Gaussian(eta=_finite(m * prec), prec=prec)


def _finite(x: jax.Array) -> jax.Array:
    """Replace +-inf by the largest finite value of the dtype (NaN inputs are left to the caller)."""
    info = jnp.finfo(x.dtype)
    return jnp.clip(x, info.min, info.max)


def product(a: Gaussian, b: Gaussian) -> Gaussian:
    """Product of two messages (sum of natural parameters), precision clipped."""
    prec = a.prec + b.prec
    m = _finite((a.eta + b.eta) / clip_var(prec))
    prec = clip_var(prec)
    return Gaussian(eta=_finite(m * prec), prec=prec)


def divide(a: Gaussian, b: Gaussian) -> Gaussian:
    """Quotient ``a / b`` (difference of natural parameters).

    A non-positive resulting precision (an improper message) is clipped to the smallest allowed
    precision; the mean is taken from the unclipped natural parameters when the precision is valid.
    """
    prec = a.prec - b.prec
    lo, _ = bounds(_float_dtype(prec))
    valid = prec >= lo
    m = jnp.where(valid, _finite((a.eta - b.eta) / jnp.where(valid, prec, 1.0)), 0.0)
    prec = clip_var(prec)
    return Gaussian(eta=_finite(m * prec), prec=prec)


def moment_match(mean: jax.Array, second_moment: jax.Array) -> Gaussian:
    """Gaussian with the given first and second moments (variance ``E x^2 - (E x)^2`` clipped)."""
    return Gaussian.from_mean_var(mean, clip_var(second_moment - mean * mean))


def log_normal_pdf(x: jax.Array, mean: jax.Array, var: jax.Array) -> jax.Array:
    """``log N(x; mean, var)`` elementwise."""
    return -0.5 * (LOG2PI + jnp.log(var) + (x - mean) ** 2 / var)


def log_ndtr(a: jax.Array) -> jax.Array:
    """``log Phi(a)`` accurate to a few ulp in the far left tail.

    ``jax.scipy.special.log_ndtr`` truncates its left-tail asymptotic series after 3 terms (relative
    error 2e-11 at a = -20 in float64, which the Mills ratio and then the truncated-normal variance
    amplify). Below ``a = -19.5`` (float64) / ``-9.5`` (float32) we sum 12 terms of
    ``log Phi(a) = log phi(a) - log|a| + log(sum_n (-1)^n (2n-1)!! a^(-2n))`` instead (the terms
    decrease while ``n < a^2/2``, i.e. >= 50 terms at the switch, so 12 are far from divergence).
    """
    a = jnp.asarray(a)
    dtype = _float_dtype(a)
    a = a.astype(dtype)
    thr = -19.5 if jnp.finfo(dtype).bits >= 64 else -9.5
    left = a < thr
    a_l = jnp.where(left, a, thr)
    t = 1.0 / (a_l * a_l)
    term = jnp.ones_like(a_l)
    total = jnp.ones_like(a_l)
    for n in range(1, 13):
        term = -term * (2 * n - 1) * t
        total = total + term
    series = -0.5 * a_l * a_l - 0.5 * LOG2PI - jnp.log(-a_l) + jnp.log(total)
    return jnp.where(left, series, _jax_log_ndtr(jnp.where(left, thr, a)))


def mills_ratio(a: jax.Array) -> jax.Array:
    """``phi(a) / Phi(a)``, stable for very negative ``a`` (computed as ``exp(log phi - log Phi)``)."""
    return jnp.exp(-0.5 * a * a - 0.5 * LOG2PI - log_ndtr(a))


def _truncated(m: jax.Array, v: jax.Array, sign: float):
    """``(mean, mean - m, var, log_mass)`` of ``N(m, v)`` restricted to ``sign z > 0`` (see below)."""
    dtype = _float_dtype(v)
    lo, _ = bounds(dtype)
    s = jnp.sqrt(v)
    a = sign * m / s
    lam = mills_ratio(a)
    offset = sign * s * lam
    mean = m + offset
    vfac = 1.0 - a * lam - lam * lam
    thr = _ASYMPTOTIC_A if jnp.finfo(dtype).bits < 64 else _ASYMPTOTIC_A64
    asym = a < thr
    a_s = jnp.where(asym, a, thr)
    t = 1.0 / (a_s * a_s)
    shift = _horner(_SHIFT_COEFFS, t) / jnp.abs(a_s)  # = a + lam
    mean = jnp.where(asym, sign * s * shift, mean)
    offset = jnp.where(asym, sign * s * shift - m, offset)
    vfac = jnp.where(asym, t * _horner(_VFAC_COEFFS, t), vfac)
    return mean, offset, v * jnp.maximum(vfac, lo), log_ndtr(a)


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


def relu_posterior(p: jax.Array, vp: jax.Array, r: jax.Array, vr: jax.Array
                   ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Posterior moments of a ReLU node (spec section 2.2b).

    The pre-activation has the forward message ``z ~ N(p, vp)``; the output ``u = relu(z)`` has the
    backward message ``N(u; r, vr)`` (``vr`` at the dtype's upper bound means "no message").

    Parameters
    ----------
    p, vp, r, vr: arrays of one shape (e.g. ``(B, N)``), ``vp, vr > 0``.

    Returns
    -------
    ez, vz, eu, vu: posterior mean/variance of ``z`` and of ``u`` (variances clipped below).
    """
    dz, vz, eu, vu = relu_posterior_offset(p, vp, r, vr)
    return p + dz, vz, eu, vu


def relu_posterior_offset(p: jax.Array, vp: jax.Array, r: jax.Array, vr: jax.Array
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
    tot = vp + vr
    _, dn, vn, lmn = _truncated(p, vp, -1.0)  # negative branch: E- = p + dn
    vpl = vp * vr / tot
    dpl = (r - p) * (vp / tot)  # m+ - p
    _, dpp, vpos, lmp = _truncated(p + dpl, vpl, 1.0)  # positive branch: E+ = p + dpl + dpp
    # log N(p; r, vp+vr) - log N(0; r, vr) in cancellation-free form: with a weak backward message
    # (vr at the clip, |r| ~ 1e10) each log-density is ~1e11 and their float32 difference is noise.
    log_ratio = -0.5 * jnp.log1p(vp / vr) - 0.5 * (p * (p - 2.0 * r) / tot - vp * (r / vr) * (r / tot))
    wpos = jax.nn.sigmoid(log_ratio + lmp - lmn)
    wneg = jax.nn.sigmoid(-(log_ratio + lmp - lmn))
    d_pos = dpl + dpp
    dz = wneg * dn + wpos * d_pos
    vz = wneg * vn + wpos * vpos + wneg * wpos * (d_pos - dn) ** 2
    mp = p + d_pos
    eu = wpos * mp
    vu = wpos * vpos + wpos * wneg * mp * mp
    return dz, jnp.maximum(vz, lo), eu, jnp.maximum(vu, lo)
