"""One comparison table across methods and datasets -> benchmarks/results.md (and `make bench`).

    python scripts/benchmark.py [--seeds 0 1 2] [--datasets boston mnist5k fashion_mnist]
                                [--methods adam sgd emtdamp sghmc sghmc_sa em_mcmc] [--quick]

Every method runs on the same network per dataset (Boston 13-64-1, MNIST/Fashion 784-128-10) and
seed set, with the method settings of the shipped configs for that dataset (`configs/*`), seeds
vmapped in one program (`emtdamp.loops.centralised.train_seeds`; sequential where a method does not vmap).
MNIST / Fashion-MNIST share one budget (EPOCHS, BATCH); on Boston (OWN_BUDGET) each method runs with its
config's own budget too (train.epochs, train.batch_size, train.chains: the calibrated SG-MCMC / EM-MCMC
configs are 8,000-iteration full-batch chains whose burn-in alone exceeds the shared 100 epochs of batch 32);
methods without a Boston config keep EPOCHS / BATCH. The *budget* column says which.
Each (dataset, method) runs in its own process so that its peak memory (max RSS) is its own.
Columns: test metric mean ± sd over seeds, NLL, ECE (classification), sparsity, epochs for the
seed-mean curve to reach adam's final seed-mean metric, seconds per epoch (all seeds together,
and per seed), compile seconds and peak RSS. A second table gives the per-epoch cost of each
method on the MNIST network relative to adam, and the achieved GFLOP/s of the EM-TDAMP epoch
against a plain jitted `jnp.dot` of the same GEMM shapes on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

EPOCHS = {"boston": 100, "mnist5k": 20, "fashion_mnist": 5}
BATCH = {"boston": 32, "mnist5k": 100, "fashion_mnist": 100}
HIDDEN = {"boston": (64,), "mnist5k": (128,), "fashion_mnist": (128,)}
# where each method's settings for a dataset come from (first config whose runs name the method)
OWN_BUDGET = {"boston"}  # datasets whose methods run with their config's epochs / batch size / chains
CURVE_POINTS = 100  # a long own-budget run is evaluated on about this many epochs (the reach-adam curve)
SOURCES = {
    "boston": ["configs/emtdamp_boston.yaml", "configs/sghmc_sa_boston.yaml", "configs/em_mcmc_boston.yaml",
               "configs/boston.yaml"],
    "mnist5k": ["configs/emtdamp_mnist5k.yaml", "configs/sghmc_sa_mnist5k.yaml", "configs/em_mcmc_mnist5k.yaml",
                "configs/mnist5k.yaml"],
    "fashion_mnist": ["configs/emtdamp_fashion_mnist.yaml", "configs/sghmc_sa_fashion_mnist.yaml",
                      "configs/em_mcmc_fashion_mnist.yaml", "configs/fashion_mnist.yaml"],
}


def settings(dataset: str, method: str):
    """(data options, method hparams, train config or None) from the first shipped config that runs
    ``method`` on ``dataset``."""
    from emtdamp import config as C
    from emtdamp.methods import get_method

    for path in SOURCES[dataset]:
        raw = C.read_yaml(path)
        base = C.from_dict({k: v for k, v in raw.items() if k != "sweep"}, "b")  # the config's own run first
        for cfg in [base, *(c for _, c in C.expand_sweep(raw, "b"))]:
            if cfg.method.name == method and cfg.data.name == dataset:
                return dict(cfg.data.options), cfg.method.hparams, cfg.train
    return {}, get_method(method).hparams_cls(), None


def budget(dataset: str, train_cfg, epochs: int, quick: bool) -> tuple[int, int, int]:
    """(epochs, batch size, chains) a method runs with on ``dataset`` (see OWN_BUDGET)."""
    if dataset in OWN_BUDGET and train_cfg is not None:
        e = max(1, train_cfg.epochs // 5) if quick else train_cfg.epochs
        return e, train_cfg.batch_size, train_cfg.chains
    return epochs, BATCH[dataset], 1


def worker(dataset: str, method: str, seeds: list[int], epochs: int, quick: bool = False) -> dict:
    from emtdamp.data import load
    from emtdamp.loops.centralised import train, train_seeds
    from emtdamp.methods import ModelSpec, get_method
    from emtdamp.methods.chains import with_chains

    opts, hp, train_cfg = settings(dataset, method)
    epochs, batch, chains = budget(dataset, train_cfg, epochs, quick)
    every = max(1, epochs // CURVE_POINTS)
    data = load(dataset, **opts)
    m = with_chains(get_method(method), chains)
    model = ModelSpec(HIDDEN[dataset])
    try:
        res, tm = train_seeds(m, hp, model, data, seeds=seeds, epochs=epochs, batch_size=batch, curve=True,
                              curve_every=every)
        mode = "vmapped"
    except Exception as e:  # noqa: BLE001  (a method that does not vmap runs seed by seed)
        print(f"{method}: seeds not vmappable ({type(e).__name__}); running them one by one", file=sys.stderr)
        res, tms = [], []
        for s in seeds:
            r = train(m, hp, model, data, epochs=epochs, batch_size=batch, seed=s, progress=False, eval_every=every)
            res.append({"test": r.test, "sparsity": r.sparsity,
                        "curve": [{**h["test"], "epoch": h["epoch"]} for h in r.history if "test" in h]})
            tms.append(r.time)
        tm = {"per_epoch_s": float(sum(t["per_epoch_s"] for t in tms)), "compile_s": tms[0]["compile_s"]}
        mode = "sequential"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
    return {"dataset": dataset, "method": method, "mode": mode, "results": res, "time": tm, "peak_mib": peak,
            "data_options": opts, "budget": {"epochs": epochs, "batch_size": batch, "chains": chains}}


def gflops_table(seconds: dict) -> list[str]:
    """Achieved GFLOP/s of the EM-TDAMP epoch (spec §8: 10 GEMMs per layer, 4 for the input layer)
    against jitted jnp.dot chains of the same shapes."""
    import jax
    import jax.numpy as jnp

    n, b, sizes = 4000, 100, (784, 128, 10)
    nb = -(-n // b)
    shapes = [(sizes[i + 1], sizes[i]) for i in range(len(sizes) - 1)]
    gemms = [4 if i == 0 else 10 for i in range(len(shapes))]
    flops = nb * sum(g * 2 * o * i * b for g, (o, i) in zip(gemms, shapes, strict=True))
    mats = [(jnp.ones((o, i), jnp.float32), jnp.ones((i, b), jnp.float32)) for o, i in shapes]

    @jax.jit
    def chain(ms):
        acc = 0.0
        for (w, u), g in zip(ms, gemms, strict=True):
            for _ in range(g):
                acc = acc + jnp.sum(jnp.dot(w, u + acc * 0))
        return acc

    jax.block_until_ready(chain(mats))
    t = time.perf_counter()
    reps = nb * 5
    for _ in range(reps):
        out = chain(mats)
    jax.block_until_ready(out)
    dot_s = (time.perf_counter() - t) / reps * nb
    rows = ["| quantity | value |", "|---|---|",
            f"| EM-TDAMP GEMM FLOPs per mnist5k epoch (784-128-10, batch 100) | {flops / 1e9:.2f} GFLOP |",
            f"| jnp.dot of the same GEMM shapes, per epoch | {dot_s:.4f} s ({flops / dot_s / 1e9:.1f} GFLOP/s) |"]
    if "emtdamp" in seconds:
        rows.append(f"| EM-TDAMP epoch (one seed) | {seconds['emtdamp']:.4f} s ({flops / seconds['emtdamp'] / 1e9:.1f} "
                    f"GFLOP/s, {dot_s / seconds['emtdamp']:.0%} of the matmul limit) |")
    return rows


def in_process_costs(methods: list[str]) -> dict:
    """Median seconds per mnist5k epoch of each method, all measured in this process."""
    from emtdamp.data import load
    from emtdamp.loops.centralised import train
    from emtdamp.methods import ModelSpec, get_method

    out = {}
    for m in methods:
        opts, hp, _ = settings("mnist5k", m)
        r = train(get_method(m), hp, ModelSpec(HIDDEN["mnist5k"]), load("mnist5k", **opts), epochs=3,
                  batch_size=BATCH["mnist5k"], eval_every=3, progress=False)
        out[m] = r.time["per_epoch_s"]
    return out


def epochs_of(dataset: str, quick: bool) -> int:
    """The shared epoch budget of ``dataset`` (a fifth with ``--quick``)."""
    return max(1, EPOCHS[dataset] // 5) if quick else EPOCHS[dataset]


def fmt(vals, digits=4):
    a = np.asarray(vals, float)
    return f"{a.mean():.{digits}f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.{digits}f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--datasets", nargs="+", default=list(EPOCHS))
    p.add_argument("--methods", nargs="+", default=["adam", "sgd", "emtdamp", "sghmc", "sghmc_sa", "em_mcmc"])
    p.add_argument("--quick", action="store_true", help="a fifth of the epochs (smoke run)")
    p.add_argument("--out", default="benchmarks/results.md")
    p.add_argument("--worker", nargs=2, metavar=("DATASET", "METHOD"), help=argparse.SUPPRESS)
    p.add_argument("--epochs", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.seeds, args.epochs, args.quick)))
        return 0
    out = {}
    for ds in args.datasets:
        epochs = epochs_of(ds, args.quick)
        for m in args.methods:
            own = " (or its config's own budget)" if ds in OWN_BUDGET else ""
            print(f"[{ds}] {m}: {len(args.seeds)} seeds x {epochs} epochs{own}", file=sys.stderr, flush=True)
            cmd = [sys.executable, __file__, "--worker", ds, m, "--epochs", str(epochs),
                   "--seeds", *map(str, args.seeds), *(["--quick"] if args.quick else [])]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                print(r.stderr[-2000:], file=sys.stderr)
                continue
            out[(ds, m)] = json.loads(r.stdout.strip().splitlines()[-1])
    import jax

    dev = jax.devices()[0]
    lines = ["# Benchmark results", "",
             f"Machine: {platform.node()} — {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, "
             f"JAX {jax.__version__} on {dev.platform}; seeds {args.seeds}; "
             f"command `python scripts/benchmark.py{' --quick' if args.quick else ''}`.", "",
             "Test metric: RMSE in $1000s (Boston) or accuracy; mean ± sd over seeds. *reach adam*: first epoch at "
             "which the seed-mean curve is at least as good as adam's final seed-mean value. *s/epoch*: all seeds in "
             "one vmapped program (per seed in brackets).", ""]
    per_epoch_mnist = {}
    for ds in args.datasets:
        rows = [(m, out[(ds, m)]) for m in args.methods if (ds, m) in out]
        if not rows:
            continue
        key = "rmse" if "rmse" in rows[0][1]["results"][0]["test"] else "accuracy"
        better = (lambda a, b: a <= b) if key == "rmse" else (lambda a, b: a >= b)
        mean_curve = lambda r, key=key: np.mean([[t[key] for t in s["curve"]] for s in r["results"]], axis=0)
        base = mean_curve(out[(ds, "adam")])[-1] if (ds, "adam") in out else None
        shared = (f"batch {BATCH[ds]}, {epochs_of(ds, args.quick)} epochs"
                  + ("; methods with a Boston config: its own budget" if ds in OWN_BUDGET else ""))
        lines += [f"## {ds} ({'-'.join(map(str, ('in', *HIDDEN[ds], 'out')))}, {shared})", "",
                  f"| method | test {key} | NLL | ECE | weights zero | neurons pruned | reach adam | s/epoch | "
                  "compile s | peak MiB | budget (batch / epochs / chains) | seeds |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for m, r in rows:
            res = r["results"]
            curve = mean_curve(r)
            epochs_at = [t["epoch"] for t in res[0]["curve"]]
            reach = next((epochs_at[i] for i, v in enumerate(curve) if base is not None and better(v, base)), "never")
            b = r.get("budget") or {"batch_size": BATCH[ds], "epochs": len(curve), "chains": 1}
            ece = fmt([x["test"]["ece"] for x in res]) if "ece" in res[0]["test"] else "–"
            s_ep = r["time"]["per_epoch_s"]
            lines.append(f"| {m} | {fmt([x['test'][key] for x in res])} | {fmt([x['test']['nll'] for x in res], 3)} | "
                         f"{ece} | {np.mean([x['sparsity']['weights_zero_frac'] for x in res]):.3f} | "
                         f"{np.mean([x['sparsity']['neurons_pruned_frac'] for x in res]):.3f} | {reach} | "
                         f"{s_ep:.4f} ({s_ep / len(res):.4f}) | {r['time']['compile_s']:.1f} | {r['peak_mib']:.0f} | "
                         f"{b['batch_size']} / {b['epochs']} / {b['chains']} | {r['mode']} |")
        lines.append("")
    if "mnist5k" in args.datasets:
        per_epoch_mnist = in_process_costs(args.methods)
    if per_epoch_mnist:
        lines += ["## Per-epoch cost on the MNIST network (784-128-10, batch 100), relative to adam", "",
                  "All methods timed in this one process, one seed, median of 3 epochs after compilation.", "",
                  "| method | s/epoch | / adam |", "|---|---|---|"]
        a = per_epoch_mnist.get("adam")
        for m, s in per_epoch_mnist.items():
            lines.append(f"| {m} | {s:.4f} | {s / a:.2f} |" if a else f"| {m} | {s:.4f} | – |")
        lines += ["", *gflops_table(per_epoch_mnist), ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
