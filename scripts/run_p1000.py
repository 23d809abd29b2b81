"""Large-p-small-n simulation of Deng et al. (2019) (spec baselines.md A.5): SGLD-SA vs SGLD-EM vs SGLD.

``sparse_linear`` data (n=100, p=1000, 3 non-zeros, AR(0.6) features, noise variance 3), a linear
model (``model.hidden = []``) with the SSGL prior on its 1000 coefficients. The three methods run on
the same minibatches, and several independent data draws (``--draws``, data seeds ``seed ..
seed+draws−1``) run beside them: all ``draws × 3`` chains are ONE vmapped program (the states differ
only in arrays: ω schedule, step size, σ₀, λ).

Settings follow the reference R demo -- v1=10, ν=λ=1, a=1, b=p, σ₀=1, ρ₀=0.5, κ₀=κ₁=1, δ₀=0.5,
inverse temperature 1, ε_k = 0.001 k^(−1/3) in original target units, 500k iterations, thinning
100, minibatch 50 as in the paper -- except two knobs the paper calls tuned:
  v0 = 0.01 (R: 0.1) and ω_k = 0.1 (100 + k)^−0.7 (R: min(0.1, 1000 (100+k)^−0.7) ≡ 0.1).
The R values run with ``--v0 0.1 --omega-a 1000 --omega-cap 0.1`` (the R demo also uses the full batch:
``--batch 100``). With them δ falls by ~10 % per iteration for the first few thousand iterations (to
1e-20 .. 1e-72 depending on the chain) before it recovers. The SSGL latents keep log δ and log(1 − δ)
(emtdamp/sgmcmc/ssgl.py), so δ cannot underflow to an absorbing 0 in float32 (the plain float32 update
did, and SGLD-SA then ended up like SGLD-EM). The script prints min δ over the run per draw and method
(from log δ, in float64); ``--dtype float64`` runs everything in float64.
The library standardises targets (y_s = (y − ȳ)/s_y), and Langevin on β_s = β/s_y with step ε/s_y²
is exactly Langevin on β with step ε, so the step size is divided by s_y² (per draw). Metrics are in
original units.

How "posterior means of β1..β3 within 0.3 of the truth" is checked. With n = 100, noise variance 3
and AR(0.6) features, even the oracle (least squares on the true support) misses the generating β_j
by a standard error of ≈ 0.22-0.25 (√(3/100 · (Σ_S⁻¹)_jj)): on one draw, all three land within 0.3
about half the time whatever the sampler does (data seed 0: oracle β1 = 3.40 vs truth 3.03, and
SGLD-SA's posterior mean 3.42). So the check is made over ``--draws`` independent draws: the mean over
draws of (posterior mean − true β_j) must be within 0.3 for j = 1, 2, 3 (SGLD-EM's reported bias on β3
is ≈ 0.65). The table also shows, per draw, whether |posterior mean − truth| < 0.3 for all three,
for SGLD-SA and for the oracle, and whether SGLD-SA is within 0.3 of the oracle (it is not when the
SA latents lock a true coefficient out of the model, e.g. β2 on data seed 5: with AR(0.6) features a
neighbour absorbs its effect, and the learned κ0 keeps it at zero).

CPU cost (issue 17). Each iteration is ~110 small XLA kernels over 9 x 1000 numbers, so the run is bound by
per-kernel overhead, not arithmetic. Run as a script, it therefore (1) keeps XLA's CPU runtime on one core
(``--cpus 1``: XLA sizes its thread pool from the process's CPU affinity; with a pool of two, worker threads
spin waiting for these tiny kernels and cost CPU time without saving wall time) and (2) turns off XLA's YNNPACK
dot and reduce fusions (``--xla-flags``), which handle the (..., 1000, 1) kernels of this linear model one row at
a time (turning them off halves an iteration's CPU time). Neither changes the algorithm or the random streams;
results move only by float rounding (dot and reduction order). The full batch (``--batch 100``) is not
re-shuffled every iteration (the gradient sums over all rows either way). ``docs/speed.md`` has the profile and
the timings (``--draws 3``: 942 -> 358 CPU-s).

Usage: python scripts/run_p1000.py [--draws 8] [--seed 0] [--steps 500000] [--n-test 50] [--dtype float64]
                                   [--cpus 1] [--xla-flags FLAGS] [--noise-dist three_point|gaussian]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from emtdamp import data as edata
from emtdamp import sgmcmc as sg
from emtdamp.methods import Batch, ModelSpec, get_method
from emtdamp.methods.sgmcmc_methods import SGMCMCHParams
from emtdamp.sgmcmc.kernels import DEFAULT_NOISE, NOISE_DISTS

REFERENCE = {"sgld_sa": (1.71, 4.08), "sgld_em": (2.20, 7.21), "sgld": (12.14, 219.15)}
METHODS = ("sgld_sa", "sgld_em", "sgld")
FAST_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=-dot,-reduce --xla_cpu_multi_thread_eigen=false"
"""XLA CPU flags the script sets (module docstring, "CPU cost"); XLA aborts on a flag it does not know, so they are
probed in a subprocess first and dropped if this jaxlib rejects them."""


def configure_cpu_runtime(cpus: int, xla_flags: str) -> str:
    """Before JAX starts its backend: restrict the process to ``cpus`` CPUs (0 = leave the affinity alone) and
    append ``xla_flags`` to ``XLA_FLAGS`` if this jaxlib accepts them. Returns a one-line note of what was set.

    Only the ``__main__`` block calls this (a process importing the script, e.g. the slow test, keeps its runtime).
    """
    notes = []
    if cpus > 0 and hasattr(os, "sched_setaffinity"):
        avail = sorted(os.sched_getaffinity(0))
        if len(avail) > cpus:
            os.sched_setaffinity(0, avail[-cpus:])
            notes.append(f"CPU affinity {avail[-cpus:]} of {avail}")
    if xla_flags.strip():
        env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " " + xla_flags).strip()}
        try:
            ok = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env, capture_output=True,
                                timeout=300).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            os.environ["XLA_FLAGS"] = env["XLA_FLAGS"]
            notes.append(f"XLA_FLAGS={env['XLA_FLAGS']!r}")
        else:
            notes.append(f"this jaxlib rejects {xla_flags!r}; running without it")
    return "; ".join(notes) if notes else "CPU runtime unchanged"


def oracle_fit(ds) -> np.ndarray:
    """Least squares (with intercept) on the true support, original units: (3,) coefficients."""
    y = np.asarray(ds.y_train)[:, 0] * float(ds.y_std[0]) + float(ds.y_mean[0])
    k = len(ds.info["support"])
    return np.linalg.lstsq(np.c_[ds.x_train[:, :k], np.ones(len(y))], y, rcond=None)[0][:k]


def parser() -> argparse.ArgumentParser:
    """The command line of :func:`main`."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=500_000)
    ap.add_argument("--burn-in", type=int, default=None, help="default: 20%% of --steps")
    ap.add_argument("--thin", type=int, default=100)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0, help="first data seed")
    ap.add_argument("--draws", type=int, default=8, help="independent data draws (seeds seed..seed+draws-1)")
    ap.add_argument("--chain-seed", type=int, default=0)
    ap.add_argument("--noise-dist", choices=NOISE_DISTS, default=DEFAULT_NOISE,
                    help="the samplers' injected noise (docs/sgmcmc_sa.md section 2)")
    ap.add_argument("--n-test", type=int, default=50)
    ap.add_argument("--v0", type=float, default=0.01, help="Laplace spike scale (R demo 0.1; tuned, see doc)")
    ap.add_argument("--omega-a", type=float, default=0.1, help="ω_k = min(cap, A (100+k)^-0.7): A")
    ap.add_argument("--omega-cap", type=float, default=1.0, help="ω cap (R demo: A=1000, cap=0.1)")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                    help="array dtype of the whole run (float64 enables jax_enable_x64)")
    ap.add_argument("--cpus", type=int, default=1,
                    help="run as a script: restrict the process to this many CPUs (0 = all; see 'CPU cost')")
    ap.add_argument("--xla-flags", default=FAST_XLA_FLAGS,
                    help="run as a script: XLA flags appended to XLA_FLAGS (give them as --xla-flags='...'; '' = none; "
                         "see 'CPU cost')")
    return ap


def main(argv=None):
    ap = parser()
    args = ap.parse_args(argv)
    if args.draws < 1:
        ap.error("--draws must be >= 1")
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.dtype(args.dtype)

    seeds = list(range(args.seed, args.seed + args.draws))
    dss = [edata.load("sparse_linear", seed=s, n_test=args.n_test) for s in seeds]
    n, p = dss[0].x_train.shape
    burn = args.burn_in if args.burn_in is not None else args.steps // 5
    model = ModelSpec(hidden=(), activation="relu")
    methods = {m: get_method(m) for m in METHODS}
    # The paper / R demo: the likelihood shares σ² with the SSGL prior (SA-updated for SA and EM, frozen
    # at σ₀² for SGLD). The methods' regression noise default is a separate Gibbs-sampled variance, so pin
    # the paper's choice where the hyperparameter exists. All three states run through sgld_sa's step
    # (noise='sa': s² = latents σ², which ω ≡ 0 keeps at σ₀² for SGLD, the 'fixed' value it is built with).
    has_noise = "noise" in {f.name for f in dataclasses.fields(SGMCMCHParams)}
    draw_states = []
    for d, ds in enumerate(dss):
        s_y = float(ds.y_std[0])
        # Original-unit settings mapped to standardised targets: ε/s_y², σ₀ = 1/s_y, λ/s_y² (exact rescaling).
        hp = SGMCMCHParams(learning_rate=1e-3 / s_y ** 2, lr_offset=1.0, lr_decay=1 / 3, inv_temp=1.0,
                           v0=args.v0, v1=10.0, beta_a=1.0, beta_b=-1.0, nu=1.0, lam=1.0 / s_y ** 2,
                           sigma_init=1.0 / s_y, rho_init=0.5, kappa0_init=1.0, kappa1_init=1.0, delta_init=0.5,
                           omega_a=args.omega_a, omega_z=100.0, omega_alpha=0.7, omega_cap=args.omega_cap,
                           weight_decay=1e-4, burn_in=burn, thin=args.thin, n_samples=1,
                           noise_dist=args.noise_dist)
        # n_samples=1: the script reads the posterior means from the running sums over ALL kept samples
        # (sg.posterior_mean); the ring buffer of the latest samples is not used, so one slot suffices
        key = jax.random.fold_in(jax.random.key(args.chain_seed), d)
        hps = {m: hp for m in METHODS}
        if has_noise:
            hps = {m: dataclasses.replace(hp, noise="sa") if m != "sgld" else
                   dataclasses.replace(hp, noise="fixed", likelihood_var=hp.sigma_init ** 2) for m in METHODS}
        algos = {m: methods[m].build(model, ds.spec, hps[m]) for m in METHODS}
        sts = [algos[m].init(key) for m in METHODS]   # same init and noise per draw
        draw_states.append(jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *sts))
    state = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *draw_states)     # (draws, methods, ...)
    # every variant is one step function whose behaviour is in the state's arrays (ω schedule, latents, s²):
    # sgld_sa's step (noise='sa': s² = σ²) is exact for sgld too, whose σ² stays at likelihood_var (ω ≡ 0)
    step = jax.vmap(jax.vmap(algos["sgld_sa"].step, in_axes=(0, None)), in_axes=(0, 0))

    x = jnp.asarray(np.stack([ds.x_train for ds in dss]), dtype)   # (D, n, p)
    y = jnp.asarray(np.stack([ds.y_train for ds in dss]), dtype)   # (D, n, 1)
    nb = n // args.batch
    n_epochs = args.steps // nb

    def step_min(carry, b):
        # carry the running min over iterations of log δ (per draw, method; min over layers)
        st, lo = carry
        st, _ = step(st, b)
        return (st, jnp.minimum(lo, jnp.min(st.latents.log_delta, axis=-1))), None

    full_batch = nb == 1 and args.batch == n

    def epoch(carry, k):
        if full_batch:   # no shuffle: the gradient sums over every row (a shuffle would only reorder the sum)
            batches = Batch(x[None], y[None], jnp.ones((1, len(dss), n), x.dtype))
        else:
            perm = jax.random.permutation(k, n)[: nb * args.batch].reshape(nb, args.batch)
            batches = Batch(jnp.moveaxis(x[:, perm], 0, 1), jnp.moveaxis(y[:, perm], 0, 1),
                            jnp.ones((nb, len(dss), args.batch), x.dtype))
        carry, _ = jax.lax.scan(step_min, carry, batches)
        return carry, None

    run = jax.jit(lambda c, k: jax.lax.scan(epoch, c, jax.random.split(k, n_epochs))[0])
    t0 = time.time()
    min_log_delta0 = jnp.min(state.latents.log_delta, axis=-1)
    state, min_log_delta = run((state, min_log_delta0), jax.random.key(1000 + args.chain_seed))
    jax.block_until_ready(state)
    wall = time.time() - t0
    min_log_delta = np.asarray(min_log_delta, np.float64)                 # (D, M)
    print(f"sparse_linear seeds {seeds[0]}..{seeds[-1]}: n={n}, p={p}, test={dss[0].x_test.shape[0]}; "
          f"{n_epochs * nb} iterations x {len(METHODS)} methods x {len(dss)} draws (one vmapped program) "
          f"in {wall:.1f}s ({args.dtype})")

    per = {m: [] for m in METHODS}
    hdr = (f"{'seed':>4s} {'method':8s} {'MAE':>6s} {'MSE':>7s} {'b1':>6s} {'b2':>6s} {'b3':>6s} "
           f"{'nulls<0.1':>9s} {'sigma2':>7s} {'|b-truth|<0.3':>14s} {'|b-oracle|<0.3':>15s} "
           f"{'min delta':>9s} {'delta end':>9s}")
    print(hdr)
    for d, ds in enumerate(dss):
        s_y, m_y = float(ds.y_std[0]), float(ds.y_mean[0])
        truth = np.asarray(ds.info["beta"])[:3]
        oracle = oracle_fit(ds)
        yt = np.asarray(ds.y_test)[:, 0] * s_y + m_y
        print(f"{seeds[d]:4d} {'truth':8s} {'':6s} {'':7s} {truth[0]:6.2f} {truth[1]:6.2f} {truth[2]:6.2f}")
        print(f"{seeds[d]:4d} {'oracle':8s} {'':6s} {'':7s} {oracle[0]:6.2f} {oracle[1]:6.2f} {oracle[2]:6.2f} "
              f"{'':9s} {'':7s} {str(bool(np.all(np.abs(oracle - truth) < 0.3))):>14s}")
        for i, m in enumerate(METHODS):
            st = jax.tree_util.tree_map(lambda v, d=d, i=i: v[d, i], state)
            mean_params = sg.posterior_mean(st.samples, st.params)
            kern = np.asarray(mean_params[0]["kernel"])[:, 0]
            beta = kern * s_y
            pred = (np.asarray(ds.x_test) @ kern + float(mean_params[0]["bias"][0])) * s_y + m_y
            r = dict(seed=seeds[d], mae=float(np.mean(np.abs(pred - yt))), mse=float(np.mean((pred - yt) ** 2)),
                     beta=beta[:3], truth=truth, oracle=oracle, nulls=float(np.mean(np.abs(beta[3:]) < 0.1)),
                     sigma2=float(st.latents.sigma2) * s_y ** 2, min_log_delta=float(min_log_delta[d, i]),
                     delta_end=float(np.min(np.asarray(st.latents.log_delta, np.float64))))
            per[m].append(r)
            print(f"{seeds[d]:4d} {m:8s} {r['mae']:6.2f} {r['mse']:7.2f} {beta[0]:6.2f} {beta[1]:6.2f} "
                  f"{beta[2]:6.2f} {r['nulls']:9.3f} {r['sigma2']:7.3f} "
                  f"{str(bool(np.all(np.abs(beta[:3] - truth) < 0.3))):>14s} "
                  f"{str(bool(np.all(np.abs(beta[:3] - oracle) < 0.3))):>15s} "
                  f"{np.exp(r['min_log_delta']):9.2e} {np.exp(r['delta_end']):9.2e}")

    print(f"\nmean over {len(dss)} draws (reference: R demo, one draw, 50 test points)")
    print(f"{'method':8s} {'MAE':>6s} {'(ref)':>6s} {'MSE':>7s} {'(ref)':>7s} {'bias b1':>8s} {'bias b2':>8s} "
          f"{'bias b3':>8s} {'nulls<0.1':>9s}")
    summary = {}
    for m in METHODS:
        rs = per[m]
        bias = np.mean([r["beta"] - r["truth"] for r in rs], axis=0)
        summary[m] = dict(mae=float(np.mean([r["mae"] for r in rs])), mse=float(np.mean([r["mse"] for r in rs])),
                          bias=bias, nulls_min=float(min(r["nulls"] for r in rs)))
        s = summary[m]
        print(f"{m:8s} {s['mae']:6.2f} {REFERENCE[m][0]:6.2f} {s['mse']:7.2f} {REFERENCE[m][1]:7.2f} "
              f"{bias[0]:8.3f} {bias[1]:8.3f} {bias[2]:8.3f} {s['nulls_min']:9.3f}")
    sa = per["sgld_sa"]
    lo = [r["min_log_delta"] for r in sa]
    # δ = exp(log δ) > 0 exactly when the stored log δ is finite; min δ is printed from it in float64, so
    # it may lie below the run dtype's range (then lat.delta, a value in that dtype, reads 0 during the dip)
    positive = bool(np.all(np.isfinite(lo)))
    in_range = bool(np.all(np.asarray(lo) > np.log(np.finfo(dtype).tiny)))
    print("SGLD-SA min delta over the run, per draw: " + ", ".join(f"{np.exp(v):.3g}" for v in lo)
          + f"  (log delta {', '.join(f'{v:.1f}' for v in lo)}); log delta finite (delta > 0) throughout: "
          f"{positive}; min delta within {args.dtype}'s normal range: {in_range}")
    beats = [sa[d]["mse"] < min(per["sgld_em"][d]["mse"], per["sgld"][d]["mse"]) for d in range(len(dss))]
    n_truth = sum(bool(np.all(np.abs(r["beta"] - r["truth"]) < 0.3)) for r in sa)
    n_oracle_truth = sum(bool(np.all(np.abs(r["oracle"] - r["truth"]) < 0.3)) for r in sa)
    n_oracle = sum(bool(np.all(np.abs(r["beta"] - r["oracle"]) < 0.3)) for r in sa)
    print(f"draws with b1..b3 all within 0.3 of the truth: SGLD-SA {n_truth}/{len(dss)}, oracle "
          f"{n_oracle_truth}/{len(dss)}; SGLD-SA within 0.3 of the oracle: {n_oracle}/{len(dss)}")
    checks = {
        f"SGLD-SA beats SGLD-EM and SGLD (test MSE) on every draw ({sum(beats)}/{len(dss)})": all(beats),
        "SGLD-SA mean (posterior mean - truth) of b1..b3 within 0.3": bool(np.all(np.abs(summary["sgld_sa"]["bias"])
                                                                               < 0.3)),
        "SGLD-SA >= 99% of nulls |mean| < 0.1 on every draw": summary["sgld_sa"]["nulls_min"] >= 0.99,
    }
    for k, v in checks.items():
        print(f"[{'PASS' if v else 'FAIL'}] {k}")
    return {"per_draw": per, "summary": summary, "wall_s": wall, "delta_positive": positive}, checks


if __name__ == "__main__":
    _args = parser().parse_args()
    print(configure_cpu_runtime(_args.cpus, _args.xla_flags), flush=True)
    main()
