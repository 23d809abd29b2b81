"""Reproduce figures of the EM-TDAMP paper (Xu, Liu, Zhang, Lau, IEEE TSP 2024) with emtdamp.

    python scripts/paper.py kappa --dataset boston [--seeds 3] [--epochs N] [--quick] --out DIR

``kappa``: the paper's kept-share sweep (spec ``shared/spec/emtdamp.md`` section 7.2, "Converged performance
vs kept-group share"). For each kept share κ in {0.1, 0.2, 0.3, 0.5, 0.7, 1.0} and each method (``emtdamp``
with ``prune: target``, ``group_lasso``, ``group_snip``, ``adam_prune``, ``em_mcmc`` with its one-shot cut),
``--seeds`` train seeds are trained from ``configs/paper/kappa_<dataset>_<method>.yaml`` with
``method.target_density = κ`` (the knob all five share: the share of neuron groups kept per layer). The runs
of one (method, κ) differ only in ``train.seed`` and are trained as one vmapped program
(:func:`emtdamp.runs.run_group`; per-run :func:`emtdamp.fit` if that fails). The metric is test NMSE.

Writes into ``--out``: ``kappa_<dataset>.csv`` (``method, kappa, mean, sd, n_seeds, params_mean``: test NMSE
mean and sample sd over seeds, mean compacted parameter count), ``kappa_<dataset>.md`` (table with the
paper's values beside ours), ``kappa_<dataset>.png`` (NMSE vs κ, ± sd error bars), ``kappa_<dataset>_runs.csv``
(one row per run) and the run folders under ``runs/``. ``--epochs N`` retrains every method for N epochs and
scales the configs' epoch-valued schedule settings (warm-up, ramp, fine-tuning, burn-in) in proportion.
``--quick``: 2 κ values, 2 seeds, 3 epochs (a smoke test of the pipeline, not a result).

JAX's persistent compilation cache (``--out``/jax_cache, ``--no-cache`` to switch off) lets the runs of
different κ reuse one compiled program: κ is an array in every method's state.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs" / "paper"

KAPPAS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
QUICK_KAPPAS = (0.3, 1.0)
METHODS = ("emtdamp", "group_lasso", "group_snip", "adam_prune", "em_mcmc")
LABELS = {"emtdamp": "EM-TDAMP", "group_lasso": "group lasso", "group_snip": "group SNIP",
          "adam_prune": "adam + prune", "em_mcmc": "EM-MCMC"}
DATASETS = ("boston",)
NOT_YET = ("mnist5k", "fashion_mnist")

# Epoch-valued settings of each method's config, scaled with --epochs: key -> (lowest value, may it equal
# the number of epochs). The rest of a config does not depend on the horizon.
EPOCH_KEYS = {
    "emtdamp": {"warm": (0, True), "ramp": (1, True)},
    "group_lasso": {"warm": (0, True)},
    "group_snip": {},
    "adam_prune": {"finetune_epochs": (1, False)},
    "em_mcmc": {"warm_up": (0, False), "burn_in": (0, False), "cycle_epochs": (1, True)},
}

# The paper's converged test NMSE vs kept share (spec section 7.2, read off its Boston figure; [F]).
# Columns of the figure: 10 % ... 100 %; None: not in the figure (em_mcmc is not one of its methods).
_PAPER_BOSTON = {
    "emtdamp": [0.305, 0.221, 0.164, 0.130, 0.119, 0.127, 0.127, 0.132, 0.133, 0.131],
    "group_lasso": ["≈1.0", 0.95, 0.58, 0.34, 0.189, 0.152, 0.144, 0.144, 0.144, 0.144],
    "group_snip": [0.41, 0.30, 0.28, 0.31, 0.22, 0.26, 0.198, 0.192, 0.198, 0.197],
    "adam_prune": ["≈1.0", "≈1.0", "≈1.0", "≈1.0", "≈1.0", ">1", "(hidden)", "(hidden)", 0.34, 0.199],
}
PAPER = {"boston": {m: {round(0.1 * (i + 1), 1): v for i, v in enumerate(vals)} for m, vals in _PAPER_BOSTON.items()}}
PAPER_NAMES = {"emtdamp": "EM-TDAMP", "group_lasso": "Group reg.", "group_snip": "Group SNIP", "adam_prune": "Adam"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def scaled_settings(method: str, raw: dict, epochs: int) -> dict:
    """``method.<key>`` overrides that rescale the config's epoch-valued settings to ``epochs``."""
    base = int(raw["train"]["epochs"])
    out = {}
    if epochs == base:
        return out
    for key, (lo, may_equal) in EPOCH_KEYS[method].items():
        if key not in raw["method"]:
            continue
        v = max(lo, round(raw["method"][key] * epochs / base))
        out[f"method.{key}"] = min(v, epochs if may_equal else epochs - 1)
    return out


def make_configs(method: str, dataset: str, kappa: float, seeds: list[int], epochs: int | None):
    """The validated configs of one (method, κ) cell, one per train seed."""
    from emtdamp import config as cfgmod

    path = CONFIG_DIR / f"kappa_{dataset}_{method}.yaml"
    raw = cfgmod.read_yaml(path)
    settings: dict = {"method.target_density": kappa}
    if epochs is not None:
        settings.update({"train.epochs": epochs, "train.eval_every": epochs})
        settings.update(scaled_settings(method, raw, epochs))
    cfgs = []
    for s in seeds:
        items = [(k.split("."), v, f"{k}={v}") for k, v in {**settings, "train.seed": s}.items()]
        cfgs.append(cfgmod.from_dict(cfgmod.apply_settings(raw, items), name=path.stem))
    return cfgs


def train_cell(cfgs, run_dirs) -> list[dict | None]:
    """Train one cell's seeds as one vmapped group; per run with :func:`emtdamp.fit` if the group fails.
    Returns each run's summary (None for a run that failed even alone)."""
    import emtdamp
    from emtdamp.runs import run_group

    try:
        return [summary for _, summary, _ in run_group(cfgs, run_dirs, progress=False)]
    except Exception as e:  # noqa: BLE001 - any failure of the group: retry the runs one by one
        log(f"  note: the vmapped group failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "training the runs one by one")
    out = []
    for cfg, d in zip(cfgs, run_dirs, strict=True):
        try:
            out.append(emtdamp.fit(cfg, run_dir=d, progress=False).summary)
        except Exception as e:  # noqa: BLE001 - record the failure, go on with the sweep
            log(f"  run {d} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            out.append(None)
    return out


def mean_sd(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else math.nan
    return m, sd


def fmt(v: float, digits: int = 3) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def paper_value(dataset: str, method: str, kappa: float) -> str:
    v = PAPER.get(dataset, {}).get(method, {}).get(round(kappa, 1))
    if v is None:
        return "–"
    return v if isinstance(v, str) else f"{v:.3g}"


def _median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return math.nan if n == 0 else (v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2]))


def _compare(rows: dict, base: list[str], k: float, stat: str) -> tuple[float, str, float] | None:
    """(EM-TDAMP's value, the best baseline, its value) of ``stat`` (mean or median) at κ = k."""
    get = (lambda r: r["mean"]) if stat == "mean" else (lambda r: _median(r["vals"]))
    ours = get(rows[("emtdamp", k)])
    others = {m: get(rows[(m, k)]) for m in base if math.isfinite(get(rows[(m, k)]))}
    if not others or not math.isfinite(ours):
        return None
    best = min(others, key=others.get)
    return ours, best, others[best]


def verdict(rows: dict, methods: list[str], kappas: list[float]) -> list[str]:
    """Lines saying whether EM-TDAMP's mean NMSE beats every baseline's at κ <= 0.5, and by how much (and the
    same for the median over seeds, which a few bad seeds do not move)."""
    if "emtdamp" not in methods:
        return []
    base = [m for m in methods if m != "emtdamp"]
    low = [k for k in kappas if k <= 0.5 + 1e-9]
    if not base or not low:
        return []
    lines, wins, median_wins = [], 0, 0
    for k in low:
        c = _compare(rows, base, k, "mean")
        if c is None:
            lines.append(f"- κ = {k:g}: not comparable (missing results)")
            continue
        ours, best, theirs = c
        gap = theirs - ours
        wins += gap > 0
        sd_o, sd_b = rows[("emtdamp", k)]["sd"], rows[(best, k)]["sd"]
        line = (f"- κ = {k:g}: mean EM-TDAMP {ours:.3f} (sd {fmt(sd_o)}) vs best baseline {LABELS[best]} "
                f"{theirs:.3f} (sd {fmt(sd_b)}): {'better' if gap > 0 else 'worse'} by {abs(gap):.3f} "
                f"({100 * abs(gap) / theirs:.0f} % of the baseline's NMSE)")
        cm = _compare(rows, base, k, "median")
        if cm is not None:
            mo, mb, mt = cm
            median_wins += mt > mo
            line += (f"; median EM-TDAMP {mo:.3f} vs best {LABELS[mb]} {mt:.3f}: "
                     f"{'better' if mt > mo else 'worse'} by {abs(mt - mo):.3f}")
        lines.append(line)
    head = (f"**EM-TDAMP's mean test NMSE beats every baseline at every κ ≤ 0.5** ({wins}/{len(low)} κ values)"
            if wins == len(low) else
            f"**EM-TDAMP's mean test NMSE does not beat every baseline at every κ ≤ 0.5**: it is best at "
            f"{wins} of {len(low)} of those κ")
    sd_ours = [rows[("emtdamp", k)]["sd"] for k in low if math.isfinite(rows[("emtdamp", k)]["sd"])]
    sd_base = [rows[(m, k)]["sd"] for m in base for k in low if math.isfinite(rows[(m, k)]["sd"])]
    head += f"; by the median over seeds (which a few bad seeds do not move) it is best at {median_wins} of {len(low)}."
    if sd_ours and sd_base:
        head += (f" Average sd over seeds at κ ≤ 0.5: EM-TDAMP {sum(sd_ours) / len(sd_ours):.3f}, the baselines "
                 f"{sum(sd_base) / len(sd_base):.3f}.")
    return [head, "", *lines]


def notes(dataset: str, methods: list[str], kappas: list[float], rows: dict, dense: float) -> list[str]:
    """Data-driven remarks: the unpruned end (κ = 1) against the paper, and runs that pruned below κ = 1."""
    out = []
    if 1.0 in kappas:
        paper = PAPER.get(dataset, {})
        parts = [f"{LABELS[m]} {fmt(rows[(m, 1.0)]['mean'])}"
                 + (f" (paper {paper_value(dataset, m, 1.0)})" if m in paper else "") for m in methods]
        out.append("Unpruned (κ = 1): " + ", ".join(parts) + ".")
        for m in methods:
            ps = rows[(m, 1.0)]["all_params"]
            below = [p for p in ps if math.isfinite(dense) and p < dense]
            if below:
                why = " (its report counts a group whose posterior support π is ≤ 0.5 as removed)" \
                    if m == "emtdamp" else ""
                out.append(f"At κ = 1, {len(below)} of {len(ps)} {LABELS[m]} runs still removed groups on their "
                           f"own{why}: {', '.join(f'{p:.0f}' for p in below)} parameters of {dense:.0f}.")
    return out


def write_outputs(out: Path, dataset: str, methods: list[str], kappas: list[float], rows: dict, budget: str,
                  wall: float, command: str) -> None:
    stem = f"kappa_{dataset}"
    with open(out / f"{stem}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "kappa", "mean", "sd", "n_seeds", "params_mean"])
        for m in methods:
            for k in kappas:
                r = rows[(m, k)]
                w.writerow([m, k, f"{r['mean']:.6g}", f"{r['sd']:.6g}", r["n"], f"{r['params']:.6g}"])

    has_paper = [m for m in methods if m in PAPER.get(dataset, {})]
    head = ["κ (kept share)"]
    for m in methods:
        head.append(f"{LABELS[m]} (ours)")
        if m in has_paper:
            head.append(f"{PAPER_NAMES[m]} (paper)")
    lines = [f"# Test NMSE vs kept-group share κ, {dataset} (EM-TDAMP paper's sparsity sweep)", "",
             f"Test NMSE (lower is better), mean ± sd over seeds; \"(paper)\": the paper's converged value read off "
             f"its figure (spec `shared/spec/emtdamp.md` §7.2, ±2 % of the axis; \"–\": not in the figure). "
             f"Produced by `{command}` in {wall:.0f} s.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in kappas:
        cells = [f"{k:.1f}"]
        for m in methods:
            r = rows[(m, k)]
            cell = f"{fmt(r['mean'])} ± {fmt(r['sd'])}" if r["n"] else "failed"
            if r["n"] and r["n"] < r["n_planned"]:
                cell += f" ({r['n']}/{r['n_planned']} seeds)"
            cells.append(cell)
            if m in has_paper:
                cells.append(paper_value(dataset, m, k))
        lines.append("| " + " | ".join(cells) + " |")
    dense = max((r["dense"] for r in rows.values() if math.isfinite(r["dense"])), default=math.nan)
    lines += ["", f"Parameters of the compacted network (mean over seeds; dense: {fmt(dense, 0)}):", "",
              "| κ | " + " | ".join(LABELS[m] for m in methods) + " |", "|" + "---|" * (len(methods) + 1)]
    for k in kappas:
        lines.append(f"| {k:.1f} | " + " | ".join(fmt(rows[(m, k)]["params"], 0) for m in methods) + " |")
    lines += ["", *notes(dataset, methods, kappas, rows, dense)]
    lines += ["", f"**Budget / scale.** {budget}", "", *verdict(rows, methods, kappas), ""]
    (out / f"{stem}.md").write_text("\n".join(lines))

    plot(out / f"{stem}.png", dataset, methods, kappas, rows, budget)


def _paper_number(v) -> float:
    """A figure value as a number for plotting: "≈1.0" -> 1.0; ">1", "(hidden)" -> nan (a gap in the line)."""
    if isinstance(v, str):
        return float(v[1:]) if v.startswith("≈") else math.nan
    return float(v)


def plot(path: Path, dataset: str, methods: list[str], kappas: list[float], rows: dict, budget: str) -> None:
    """Left: our mean ± sd per method (dodged slightly along x so the error bars do not overlap); right: the
    paper's curves for the same methods, same axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(METHODS, ("C3", "C0", "C2", "C1", "C4"), strict=True))
    paper = PAPER.get(dataset, {})
    with_paper = [m for m in methods if m in paper]
    ncols = 2 if with_paper else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.2 * ncols, 4.8), dpi=120, sharey=True, squeeze=False)
    ax = axes[0, 0]
    width = 0.012
    for j, m in enumerate(methods):
        ks = [k for k in kappas if rows[(m, k)]["n"]]
        dx = (j - (len(methods) - 1) / 2) * width
        mean = [rows[(m, k)]["mean"] for k in ks]
        sd = [rows[(m, k)]["sd"] if math.isfinite(rows[(m, k)]["sd"]) else 0.0 for k in ks]
        ax.errorbar([k + dx for k in ks], mean, yerr=sd, color=colors[m], marker="o", ms=4,
                    lw=2.2 if m == "emtdamp" else 1.3, capsize=3, label=LABELS[m], zorder=3 if m == "emtdamp" else 2)
    ax.set_title("this run: mean ± sd over seeds", fontsize=10)
    if with_paper:
        pax = axes[0, 1]
        for m in with_paper:
            pk = sorted(paper[m])
            pax.plot(pk, [_paper_number(paper[m][k]) for k in pk], color=colors[m], marker="s", ms=3,
                     lw=2.2 if m == "emtdamp" else 1.3, label=f"{PAPER_NAMES[m]} (paper)")
        pax.set_title("paper (read off its figure, spec §7.2)", fontsize=10)
    for a in axes[0]:
        a.set_yscale("log")
        a.set_xticks(kappas)
        a.set_xticklabels([f"{k:g}" for k in kappas])
        a.set_xlim(0.05, 1.05)
        a.set_xlabel("κ: share of neuron groups kept per layer")
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=8, loc="upper right")
    ax.set_ylabel("test NMSE (log scale, lower is better)")
    fig.suptitle(f"{dataset.capitalize()}: test NMSE vs kept-group share κ")
    fig.text(0.01, 0.01, budget, fontsize=6.5, color="0.35", wrap=True)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def kappa_sweep(args, argv: list[str] | None = None) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_cache:
        import jax

        jax.config.update("jax_compilation_cache_dir", str((out / "jax_cache").resolve()))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    kappas = list(QUICK_KAPPAS if args.quick else KAPPAS)
    n_seeds = 2 if args.quick and args.seeds is None else (args.seeds or 3)
    epochs = 3 if args.quick and args.epochs is None else args.epochs
    methods = list(args.methods or METHODS)
    seeds = list(range(n_seeds))
    t0 = time.perf_counter()
    rows, per_run = {}, []
    n_cells = len(methods) * len(kappas)
    for i, (m, k) in enumerate([(m, k) for m in methods for k in kappas]):
        t = time.perf_counter()
        cfgs = make_configs(m, args.dataset, k, seeds, epochs)
        dirs = [out / "runs" / m / f"kappa={k:g}" / f"seed={s}" for s in seeds]
        summaries = train_cell(cfgs, dirs)
        vals, params, dense = [], [], []
        for s, summ in zip(seeds, summaries, strict=True):
            if summ is None:
                continue
            nmse = float(summ["test"]["nmse"])
            sp = summ.get("sparsity", {})
            per_run.append({"method": m, "kappa": k, "seed": s, "nmse": nmse, "rmse": summ["test"]["rmse"],
                            "params_remaining": sp.get("params_remaining"), "group_density": sp.get("group_density"),
                            "epochs": summ.get("epochs"), "seconds": summ.get("time", {}).get("total_s")})
            if math.isfinite(nmse):
                vals.append(nmse)
                params.append(float(sp.get("params_remaining", math.nan)))
                dense.append(float(sp.get("params_dense", math.nan)))
        mean, sd = mean_sd(vals)
        rows[(m, k)] = {"mean": mean, "sd": sd, "n": len(vals), "n_planned": len(seeds), "vals": vals,
                        "all_params": params,
                        "dense": max(dense) if dense else math.nan,
                        "params": sum(params) / len(params) if params else math.nan}
        log(f"[{i + 1}/{n_cells}] {m:12s} κ={k:<4g} test NMSE {fmt(mean)} ± {fmt(sd)} ({len(vals)}/{len(seeds)} "
            f"seeds, params {fmt(rows[(m, k)]['params'], 0)}, {time.perf_counter() - t:.1f} s; "
            f"total {time.perf_counter() - t0:.0f} s)")
    wall = time.perf_counter() - t0
    with open(out / f"kappa_{args.dataset}_runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(per_run[0]) if per_run else ["method"])
        w.writeheader()
        w.writerows(per_run)
    ep = epochs if epochs is not None else cfgs[0].train.epochs
    budget = (f"{ep} epochs per run (the paper trains 1000 rounds = epochs; EM-TDAMP's curve there is flat after "
              f"~250), {n_seeds} train seeds on one 404/102 split (data.seed 0; the sd is over initialisation and "
              f"minibatch order), 13-64-1 ReLU MLP, batch 32, κ ∈ {{{', '.join(f'{k:g}' for k in kappas)}}}; "
              "configs/paper/kappa_boston_<method>.yaml. The baselines' adam settings are defaults, not tuned; "
              "adam + prune fine-tunes 20 % of the epochs after its cut (the paper's Adam appears not to).")
    if args.quick:
        budget = "QUICK smoke run, not a result: " + budget
    command = "python scripts/paper.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_outputs(out, args.dataset, methods, kappas, rows, budget, wall, command)
    log(f"wrote {out / f'kappa_{args.dataset}.csv'}, .md, .png in {wall:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="figure", required=True)
    k = sub.add_parser("kappa", help="test metric vs kept-group share κ, every method")
    k.add_argument("--dataset", required=True, help="boston (mnist5k and fashion_mnist: not implemented yet)")
    k.add_argument("--seeds", type=int, default=None, help="number of train seeds (default 3; --quick: 2)")
    k.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the configs'; --quick: 3)")
    k.add_argument("--quick", action="store_true", help="2 κ values, 2 seeds, 3 epochs (smoke test)")
    k.add_argument("--methods", nargs="+", choices=METHODS, default=None, help="subset of the methods")
    k.add_argument("--no-cache", action="store_true", help="no persistent JAX compilation cache")
    k.add_argument("--out", required=True, help="output folder")
    args = p.parse_args(argv)
    if args.dataset not in DATASETS:
        why = "is not implemented yet" if args.dataset in NOT_YET else "is not a dataset of this figure"
        print(f"paper.py kappa: --dataset {args.dataset} {why}; implemented: {', '.join(DATASETS)} "
              f"({' and '.join(NOT_YET)} are not implemented yet)", file=sys.stderr)
        return 2
    if args.seeds is not None and args.seeds < 1 or args.epochs is not None and args.epochs < 2:
        print("paper.py kappa: --seeds must be >= 1 and --epochs >= 2", file=sys.stderr)
        return 2
    return kappa_sweep(args, argv)


if __name__ == "__main__":
    sys.exit(main())
