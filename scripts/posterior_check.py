"""Posterior-quality report (issue 16, item 6): every method checked against full-batch NUTS.

    python scripts/posterior_check.py                                   # boston, gap, mnist5k; all methods
    python scripts/posterior_check.py --problems boston --data-seeds 0 1 2
    python scripts/posterior_check.py --problems gap --methods adam sghmc_sa --out /tmp/pc.md
    python scripts/posterior_check.py --problems boston --quick         # short budgets (the slow test's Boston run)

Problems (see PROBLEMS below):

- ``boston``: Boston housing, 13-50-1 ReLU, 90/10 split ``data.seed`` (``--data-seeds``). Each method runs its
  shipped Boston config with ``model.hidden=[50] data.options.test_fraction=0.1``; ``nuts`` is the reference.
- ``gap``: the 1-D gap regression ``gap_1d`` (emtdamp/data/gap.py), 1-50-1 ReLU. adam runs
  configs/gap_1d.yaml; every other method its Boston config with the data swapped, the batch size scaled
  so that an epoch has as many minibatches as on Boston (epoch and iteration counts of burn-in, thinning,
  schedules keep their meaning), and the overrides in GAP_OVERRIDES.
- ``mnist5k``: 784-128-10 classification, each method's shipped mnist5k config with ``model.hidden=[128]``;
  no NUTS (too big); OOD = AUROC of the predictive entropy, MNIST test vs Fashion-MNIST test (skipped with a
  note when Fashion-MNIST is not installed: ``make fashion-data``).

Columns (regression; "sd" = the method's total predictive sd, noise included, standardised units):
RMSE / NLL / coverage90 in original units (summary.json's definitions); ``|Δmean|/σ_NUTS`` = mean over
test points of ``|mean_method − mean_NUTS| / sd_NUTS``; ``sd ratio`` = median over test points of
``sd_method / sd_NUTS``; gap problem: ``sd gap`` / ``sd train`` = mean predictive sd (raw units) over the
test points strictly inside the gap / over the training inputs, and their ratio (issue 16 asks >= 2);
``s`` = wall seconds of the run (compile, training, evaluation). ``issue 16`` = the acceptance criteria
of that problem for the Bayesian methods (boston: coverage90 in [0.85, 0.97], NLL <= NUTS + 0.15, RMSE
<= 1.15 x NUTS; gap: ratio >= 2; mnist5k: NLL and ECE <= adam's).

The configs are read from the repository at run time (nothing is copied here). The reference must be the
registered method ``nuts``: without it the script stops with an error, unless ``--no-reference`` is given,
which leaves the NUTS-relative columns empty (for developing the other methods; never a stand-in).
Every method's predictive is its own (no recalibration). Writes the tables to ``--out`` (markdown), the
rows to ``<out>.json`` and the gap figure beside it (``<out stem>_gap.png``). Exit code 1 if a method
failed (its row says why).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import jax
import numpy as np

from emtdamp.config import load_config
from emtdamp.data import DataError, load
from emtdamp.loops.centralised import predict_in_chunks
from emtdamp.methods import method_names
from emtdamp.metrics import classification_metrics, regression_metrics
from emtdamp.runs import run_config

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "nuts"
BAYESIAN = ("emtdamp", "sghmc", "sghmc_sa", "em_mcmc")  # the methods issue 16's acceptance criteria bind

# ---------------------------------------------------------------------------------------------------------
# Per-problem, per-method settings: (config path relative to the repo, extra overrides). Each config is
# loaded from the repo at run time; "common" overrides apply to every method of the problem.
# ---------------------------------------------------------------------------------------------------------
RUN_OVERRIDES = ["output.checkpoint=false", "output.plots=false", "train.progress=false"]

BOSTON_CONFIGS = {
    "nuts": ("configs/nuts_boston.yaml", []),
    "adam": ("configs/boston.yaml", []),
    "emtdamp": ("configs/emtdamp_boston.yaml", []),
    "sghmc": ("configs/sghmc_sa_boston.yaml", ["method.name=sghmc"]),
    "sghmc_sa": ("configs/sghmc_sa_boston.yaml", []),
    "em_mcmc": ("configs/em_mcmc_boston.yaml", []),
}

# The gap problem: adam has its own config; the others run their Boston config with the data swapped, the
# batch size scaled (full batch stays full batch) and, on top, GAP_OVERRIDES (override strings; may use
# "{n_train}" / "{inv_n_train}" of the gap data and "{sgmcmc_lr}" / "{em_mcmc_c2}", below).
# SG-MCMC: the Boston config's step size is set by the step in units of the likelihood curvature,
# ε·N/s² ≈ 0.01 (configs/sghmc_sa_boston.yaml); the gap run keeps that number, with the gap data's own N and
# noise variance s² (standardised: the generator's noise sd over the training targets' sd), "{sgmcmc_lr}".
# At Boston's ε the gap chains (s² 13x smaller, N 4x smaller) would run at ε·N/s² ≈ 0.035 (at the earlier
# 2e-6: 0.07, hot, predictive sd on the training inputs 1.6x NUTS's).
# EM-MCMC likewise: its step per coordinate is τ C²/N on the energy N·lbar, whose curvature is ~N/v, so the step in
# curvature units is τ C²/v. The Boston config's C² = 5e-4 at the noise variance it learns there (v ≈ 0.036
# standardised; chain means 0.028-0.039 over the 8 chains of splits 0-2) is C²/v ≈ 0.014; the gap run keeps that
# number with the gap's s², "{em_mcmc_c2}" (≈ 5e-5). The Boston config's earlier C² = 3e-3 (at v ≈ 0.045; ≈ 2.4e-4
# scaled to the gap), used unscaled, made the gap chains run 14x hotter: the v M-step then settled at 9x the
# generator's noise variance (predictive sd on the training inputs 3x NUTS's) and one chain diverged. At the scaled
# step (β1 = 0.9) the chains needed more than Boston's 8,000 iterations to leave their start (split 1: the training
# loss fell until ≈12,000 iterations), so the budget is 32,000 full-batch iterations, the second half kept every 32
# (500 samples per chain, as on Boston).
SGMCMC_STEP_CURVATURE = 0.01
EM_MCMC_STEP_CURVATURE = 5e-4 / 0.036
GAP_OVERRIDES: dict[str, list[str]] = {
    "nuts": [],
    "adam": [],
    "emtdamp": [],
    "sghmc": ["method.learning_rate={sgmcmc_lr}"],
    "sghmc_sa": ["method.learning_rate={sgmcmc_lr}"],
    "em_mcmc": ["method.c2_peak={em_mcmc_c2}", "train.epochs=32000", "method.burn_in=16000", "method.thin=32"],
}
# Prior hyperparameters the Boston configs tie to the training-set size: set to 1 / N_train there, they make
# the per-weight prior N(0, 1) like NUTS's (sghmc*: ½·N·wd·b²; em_mcmc: N(0, 1/(N eps))). When a Boston
# config holds 1 / 455 (within 5 %) for one of these keys, the gap run gets 1 / N_gap; any other value is
# kept as it is (the config then means something else by it).
GAP_PER_N_TRAIN = {
    "sghmc": ["weight_decay"],
    "sghmc_sa": ["weight_decay"],
    "em_mcmc": ["eps1", "eps_bias"],
}
GAP_CONFIGS = {m: ("configs/gap_1d.yaml", []) if m == "adam" else BOSTON_CONFIGS[m] for m in BOSTON_CONFIGS}

MNIST_CONFIGS = {
    "adam": ("configs/mnist5k.yaml", []),
    "emtdamp": ("configs/emtdamp_mnist5k.yaml", []),
    # the 784-128-10 settings; sghmc with the stronger prior its config comment gives for it
    "sghmc": ("configs/sghmc_sa_mnist5k_128.yaml", ["method.name=sghmc", "method.weight_decay=5e-3"]),
    "sghmc_sa": ("configs/sghmc_sa_mnist5k_128.yaml", []),
    "em_mcmc": ("configs/em_mcmc_mnist5k.yaml", []),
}

PROBLEMS = {
    "boston": {"task": "regression", "reference": True, "configs": BOSTON_CONFIGS,
               "common": ["data.name=boston", "data.options={test_fraction: 0.1}", "model.hidden=[50]"]},
    "gap": {"task": "regression", "reference": True, "configs": GAP_CONFIGS, "dataset": "gap_1d",
            "common": ["model.hidden=[50]"], "extra": GAP_OVERRIDES},
    "mnist5k": {"task": "classification", "reference": False, "configs": MNIST_CONFIGS,
                "common": ["data.name=mnist5k", "model.hidden=[128]"]},
}

# --quick (the slow test's Boston run; its gap run uses the shipped budgets, as the gap criterion is stated
# for them): every budget of the shipped config times a fraction, so that burn-in, thinning and schedules keep
# their proportions: train.epochs and the method's keys below (epoch or iteration counts) are scaled; thinning
# and ring-buffer sizes are kept. nuts: train.epochs = warmup + draws * thin afterwards.
QUICK_FRACTION = {"boston": 0.25, "gap": 0.25, "mnist5k": 0.1}
QUICK_FRACTION_NUTS = 0.5  # window adaptation needs a few hundred transitions to settle
QUICK_SCALED_KEYS = {
    "nuts": ["warmup", "draws"],
    "sghmc": ["burn_in"],
    "sghmc_sa": ["burn_in"],
    "em_mcmc": ["burn_in", "warm_up", "cycle_epochs"],
    "emtdamp": [],
    "adam": [],
}

GAP_RATIO_MIN = 2.0


# ---------------------------------------------------------------------------------------------------------
def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:  # noqa: BLE001 - provenance only
        return "unknown"


def _ood_helpers():
    """``entropy`` and ``auroc`` from scripts/ood_entropy.py (the one definition of the OOD score)."""
    spec = importlib.util.spec_from_file_location("ood_entropy", ROOT / "scripts" / "ood_entropy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.entropy, mod.auroc


def method_config(problem: str, method: str, data_seed: int, run_dir: Path, quick: bool):
    """The resolved config of ``method`` on ``problem`` (see PROBLEMS), from the repo's config files."""
    prob = PROBLEMS[problem]
    if method not in prob["configs"]:
        raise SystemExit(f"posterior_check: no config for method {method!r} on problem {problem!r}; "
                         f"known there: {sorted(prob['configs'])}")
    rel, own = prob["configs"][method]
    path = ROOT / rel
    if not path.exists():
        raise FileNotFoundError(f"{rel} does not exist (the config posterior_check runs {method} with)")
    over = [*own, *prob["common"], f"data.seed={data_seed}", f"output.dir={run_dir}", *RUN_OVERRIDES]
    if problem == "gap" and rel != "configs/gap_1d.yaml":
        gap_cfg = load_config(ROOT / "configs/gap_1d.yaml")
        gap_data = load(gap_cfg.data.name, seed=data_seed, **gap_cfg.data.options)
        boston = load("boston", seed=data_seed, test_fraction=0.1)
        n_gap, n_bos = gap_data.spec.n_train, boston.spec.n_train
        base = load_config(path, own)
        bs = base.train.batch_size
        bs_gap = n_gap if bs >= n_bos else max(1, round(bs * n_gap / n_bos))
        over += [f"data.name={gap_cfg.data.name}", f"data.options={dict(gap_cfg.data.options)}",
                 f"train.batch_size={bs_gap}"]
        for key in GAP_PER_N_TRAIN.get(method, []):
            v = getattr(base.method.hparams, key, None)
            if v is not None and abs(v * n_bos - 1.0) <= 0.05:
                over.append(f"method.{key}={1.0 / n_gap}")
        s2_gap = (float(gap_cfg.data.options["noise"]) / float(gap_data.y_std[0])) ** 2
        lr = SGMCMC_STEP_CURVATURE * s2_gap / n_gap
        over += [o.format(n_train=n_gap, inv_n_train=1.0 / n_gap, sgmcmc_lr=f"{lr:.3e}",
                          em_mcmc_c2=f"{EM_MCMC_STEP_CURVATURE * s2_gap:.3e}")
                 for o in prob["extra"].get(method, [])]
    cfg = load_config(path, over)
    return quick_config(cfg, path, over, problem, method) if quick else cfg


def quick_config(cfg, path: Path, over: list[str], problem: str, method: str):
    """``cfg`` with its budgets scaled down for ``--quick`` (see QUICK_FRACTION)."""
    f = QUICK_FRACTION_NUTS if method == REFERENCE else QUICK_FRACTION[problem]
    scaled = lambda v: max(1, round(v * f))
    q = [f"train.epochs={scaled(cfg.train.epochs)}"]
    hp = cfg.method.hparams
    for key in QUICK_SCALED_KEYS.get(method, []):
        v = getattr(hp, key, None)
        if v:  # 0 (= off / automatic) stays 0
            q.append(f"method.{key}={type(v)(scaled(v))}")
    if method == REFERENCE:
        q[0] = f"train.epochs={scaled(hp.warmup) + scaled(hp.draws) * hp.thin}"
    q.append(f"train.eval_every={min(cfg.train.eval_every, int(q[0].split('=')[1]))}")
    return load_config(path, over + q)


def run_method(problem: str, method: str, data_seed: int, runs_root: Path, quick: bool) -> dict:
    """Train one method on one problem and return its predictions on the test (and training) inputs."""
    run_dir = runs_root / f"{problem}-s{data_seed}-{method}"
    cfg = method_config(problem, method, data_seed, run_dir, quick)
    t0 = time.perf_counter()
    _, summary, res = run_config(cfg, run_dir, progress=False)
    seconds = time.perf_counter() - t0
    data = load(cfg.data.name, seed=cfg.data.seed, **cfg.data.options)
    m = res.algorithm   # the built method that trained the state
    out = {"method": method, "seconds": seconds, "summary": summary, "data": data, "cfg": cfg,
           "test_pred": predict_in_chunks(m, res.state, data.x_test)}
    if problem == "gap":
        out["train_pred"] = predict_in_chunks(m, res.state, data.x_train)
    if problem == "mnist5k":
        out["state"], out["impl"] = res.state, m
    return out


def _sd(pred) -> np.ndarray:
    return np.sqrt(np.maximum(np.asarray(pred.var, np.float64), 1e-12))


def regression_row(r: dict, ref: dict | None, problem: str) -> dict:
    """Table entries of a regression run (``ref`` = the NUTS run on the same split, or None)."""
    data, pred = r["data"], r["test_pred"]
    row = {"method": r["method"], **regression_metrics(pred, data.y_test, data.y_mean, data.y_std),
           "seconds": r["seconds"]}
    if ref is not None:
        sd_ref, mu_ref = _sd(ref["test_pred"]), np.asarray(ref["test_pred"].mean, np.float64)
        row["dmean"] = float(np.mean(np.abs(np.asarray(pred.mean, np.float64) - mu_ref) / sd_ref))
        row["sd_ratio"] = float(np.median(_sd(pred) / sd_ref))
    if problem == "gap":
        in_gap = data.info["test_in_gap"]
        row["sd_gap"] = float(np.mean(_sd(pred)[in_gap]) * data.y_std[0])
        row["sd_train"] = float(np.mean(_sd(r["train_pred"])) * data.y_std[0])
        row["gap_ratio"] = row["sd_gap"] / row["sd_train"]
    diag = r["summary"].get("diagnostics")
    if isinstance(diag, dict) and isinstance(diag.get("rhat"), dict):
        rh = diag["rhat"]
        if "function_max" in rh:  # nuts: function-space R-hat over the test inputs
            row["note"] = "R-hat fn median {} max {}".format(*(_fmt(rh.get(k)) for k in ("function_median",
                                                                                         "function_max")))
        else:  # train.chains > 1: R-hat across chains of the scalar sample buffers (e.g. the noise variance)
            row["note"] = f"{diag.get('chains')} chains; R-hat " + (", ".join(f"{k} {_fmt(v)}" for k, v in rh.items())
                                                                    or "–")
    return row


def classification_row(r: dict, x_ood: np.ndarray | None, ood_note: str) -> dict:
    data = r["data"]
    row = {"method": r["method"], **classification_metrics(r["test_pred"], data.y_test), "seconds": r["seconds"]}
    if x_ood is not None:
        entropy, auroc = _ood_helpers()
        x = x_ood
        if r["cfg"].data.options.get("standardize"):  # the in-distribution pixel transform (as ood_entropy.py)
            raw = load(r["cfg"].data.name, seed=r["cfg"].data.seed, **{**r["cfg"].data.options, "standardize": False})
            x = ((x - raw.x_train.mean(0)) / (raw.x_train.std(0) + 0.1)).astype(np.float32)
        h_in = entropy(np.asarray(r["test_pred"].probs))
        h_out = entropy(np.asarray(predict_in_chunks(r["impl"], r["state"], x).probs))
        row.update(h_in=float(h_in.mean()), h_out=float(h_out.mean()), auroc=auroc(h_in, h_out))
    else:
        row["note"] = ood_note
    return row


def _fmt(v, nd: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if not math.isfinite(v):
        return str(v)
    return f"{v:.{nd}f}" if abs(v) < 1e4 else f"{v:.3g}"


def acceptance(problem: str, row: dict, ref_row: dict | None, adam_row: dict | None) -> str:
    """Issue 16's criteria for one Bayesian method (or the reference), as 'pass' / 'fail: ...' / '–'."""
    if row["method"] not in (*BAYESIAN, REFERENCE) or "error" in row:
        return "–"
    fails = []
    if problem == "boston":
        if row["method"] == REFERENCE or ref_row is None:
            return "–"
        if not 0.85 <= row["coverage90"] <= 0.97:
            fails.append("coverage90")
        if row["nll"] > ref_row["nll"] + 0.15:
            fails.append("NLL")
        if row["rmse"] > 1.15 * ref_row["rmse"]:
            fails.append("RMSE")
    elif problem == "gap":
        if not row["gap_ratio"] >= GAP_RATIO_MIN:
            fails.append(f"gap ratio < {GAP_RATIO_MIN:g}")
    else:
        if adam_row is None or "error" in adam_row or row["method"] == REFERENCE:
            return "–"
        if row["nll"] > adam_row["nll"]:
            fails.append("NLL")
        if row["ece"] > adam_row["ece"]:
            fails.append("ECE")
    return "pass" if not fails else "fail: " + ", ".join(fails)


COLUMNS = {
    "boston": [("split", "split"), ("method", "method"), ("rmse", "RMSE"), ("nll", "NLL"),
               ("coverage90", "coverage90"), ("dmean", "|Δmean|/σ_NUTS"), ("sd_ratio", "sd ratio"),
               ("seconds", "s"), ("accept", "issue 16"), ("note", "note")],
    "gap": [("split", "split"), ("method", "method"), ("rmse", "RMSE"), ("nll", "NLL"), ("coverage90", "coverage90"),
            ("dmean", "|Δmean|/σ_NUTS"), ("sd_ratio", "sd ratio"), ("sd_gap", "sd gap"), ("sd_train", "sd train"),
            ("gap_ratio", "gap / train sd"), ("seconds", "s"), ("accept", "issue 16"), ("note", "note")],
    "mnist5k": [("split", "split"), ("method", "method"), ("accuracy", "accuracy"), ("nll", "NLL"), ("ece", "ECE"),
                ("h_in", "H MNIST"), ("h_out", "H Fashion"), ("auroc", "OOD AUROC"), ("seconds", "s"),
                ("accept", "issue 16"), ("note", "note")],
}


def markdown_table(problem: str, rows: list[dict]) -> str:
    cols = COLUMNS[problem]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "error" in r:
            cells = [str(r["split"]), r["method"]] + ["–"] * (len(cols) - 3) + [f"failed: {r['error']}"]
        else:
            cells = [_fmt(r.get(k)) if k not in ("split", "method") else str(r[k]) for k, _ in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_gap(results: dict[str, dict], ref: dict | None, path: Path) -> None:
    """Predictive mean ± 2 sd of every method beside NUTS on the gap problem (raw units)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m in results if m != REFERENCE]
    panels = ([REFERENCE] if ref is not None else []) + names
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.4 * nrow), squeeze=False, sharex=True, sharey=True)
    any_r = next(iter(results.values()))
    d = any_r["data"]
    xt, xtr = d.info["x_test_raw"], d.info["x_train_raw"]
    ytr = d.y_train[:, 0] * d.y_std[0] + d.y_mean[0]
    lo, hi = d.info["gap"]

    def band(ax, r, color, label, alpha):
        mu = np.asarray(r["test_pred"].mean, np.float64)[:, 0] * d.y_std[0] + d.y_mean[0]
        sd = _sd(r["test_pred"])[:, 0] * d.y_std[0]
        ax.fill_between(xt, mu - 2 * sd, mu + 2 * sd, color=color, alpha=alpha, lw=0, label=f"{label} ± 2 sd")
        ax.plot(xt, mu, color=color, lw=1.5, label=f"{label} mean")

    for ax, name in zip(axes.ravel(), panels, strict=False):
        ax.axvspan(lo, hi, color="gold", alpha=0.15, lw=0, label="gap (no training data)")
        if ref is not None:
            band(ax, ref, "0.45", "NUTS", 0.3)
        if name != REFERENCE:
            band(ax, results[name], "C0", name, 0.3)
        ax.plot(xt, d.info["f_test"], "k--", lw=0.8, label="f(x) = x sin x")
        ax.scatter(xtr, ytr, s=6, color="C3", zorder=3, label="training data")
        r = results[name]
        row = regression_row(r, ref, "gap")
        ax.set_title(f"{name}: gap/train sd = {row['gap_ratio']:.2f}", fontsize=10)
        ax.set_ylim(-6, 5)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    for ax in axes[-1]:
        ax.set_xlabel("x")
    fig.suptitle("gap_1d: predictive mean ± 2 sd (raw units), NUTS in grey", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", nargs="+", choices=list(PROBLEMS), default=list(PROBLEMS))
    ap.add_argument("--methods", nargs="+", default=None,
                    help="methods to check (default: all of the problem); the reference nuts always runs")
    ap.add_argument("--data-seeds", nargs="+", type=int, default=[0], help="data.seed values (splits)")
    ap.add_argument("--quick", action="store_true", help="short budgets (QUICK_FRACTION), for the slow test")
    ap.add_argument("--no-reference", action="store_true",
                    help="run without nuts: the NUTS-relative columns stay empty (development only)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "posterior_check.md"))
    ap.add_argument("--runs-dir", default=None, help="where run folders go (default: a temporary folder)")
    args = ap.parse_args(argv)

    needs_ref = any(PROBLEMS[p]["reference"] for p in args.problems) and not args.no_reference
    if needs_ref and REFERENCE not in method_names():
        raise SystemExit(f"posterior_check: the reference method {REFERENCE!r} is not registered (see `emtdamp "
                         f"list`); it is what every method is compared against. Registered: {method_names()}")
    runs_root = Path(args.runs_dir or tempfile.mkdtemp(prefix="posterior_check-"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = "python scripts/posterior_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    dev = jax.devices()[0]
    sections = [f"# Posterior check (issue 16)\n\nCommand: `{cmd.strip()}`  \n"
                f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; commit {_git_commit()}; "
                f"{platform.node()}, JAX {jax.__version__} on {dev.platform}"
                f"{' (--quick budgets)' if args.quick else ''}.  \n"
                "Columns: see the docstring of scripts/posterior_check.py (sd = total predictive sd; "
                "sd gap / sd train in raw units; s = wall seconds incl. compile).\n"]
    failed = False
    all_rows: dict[str, list[dict]] = {}
    for problem in args.problems:
        prob = PROBLEMS[problem]
        methods = [m for m in (args.methods or prob["configs"]) if m != REFERENCE]
        unknown = [m for m in methods if m not in prob["configs"]]
        if unknown:
            print(f"[{problem}] skipping {unknown}: no config for this problem", flush=True)
            methods = [m for m in methods if m in prob["configs"]]
        use_ref = prob["reference"] and not args.no_reference
        run_list = ([REFERENCE] if use_ref else []) + methods
        x_ood, ood_note = None, ""
        if prob["task"] == "classification":
            try:
                x_ood = load("fashion_mnist").x_test
            except (DataError, OSError) as e:
                ood_note = "OOD skipped: Fashion-MNIST not installed (make fashion-data)"
                print(f"[{problem}] {ood_note} ({str(e).splitlines()[0][:100]})", flush=True)
        rows: list[dict] = []
        for seed in args.data_seeds:
            results: dict[str, dict] = {}
            for method in run_list:
                print(f"[{problem} split {seed}] {method} ...", flush=True)
                try:
                    results[method] = run_method(problem, method, seed, runs_root, args.quick)
                except Exception as e:  # noqa: BLE001 - one failing method must not hide the others' rows
                    failed = True
                    msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
                    traceback.print_exc()
                    print(f"[{problem} split {seed}] {method} FAILED: {msg}", flush=True)
                    rows.append({"split": seed, "method": method, "error": msg})
                    if method == REFERENCE:
                        raise SystemExit(f"posterior_check: the reference {REFERENCE} failed on {problem} split "
                                         f"{seed}: {msg}") from e
                    continue
                r = results[method]
                ref = results.get(REFERENCE) if method != REFERENCE else None
                row = (regression_row(r, ref, problem) if prob["task"] == "regression"
                       else classification_row(r, x_ood, ood_note))
                row["split"] = seed
                rows.append(row)
                shown = {k: row[k] for k in ("rmse", "accuracy", "nll", "coverage90", "ece", "dmean", "sd_ratio",
                                             "gap_ratio", "auroc") if k in row}
                print(f"[{problem} split {seed}] {method} done in {r['seconds']:.1f} s: "
                      + " ".join(f"{k}={_fmt(v)}" for k, v in shown.items()), flush=True)
            split_rows = [r for r in rows if r["split"] == seed]
            ref_row = next((r for r in split_rows if r["method"] == REFERENCE and "error" not in r), None)
            adam_row = next((r for r in split_rows if r["method"] == "adam"), None)
            for r in split_rows:
                r["accept"] = acceptance(problem, r, ref_row, adam_row)
            if problem == "gap" and seed == args.data_seeds[0] and results:
                fig = out.with_name(out.stem + "_gap.png")
                plot_gap({k: v for k, v in results.items()}, results.get(REFERENCE), fig)
                print(f"[gap] figure: {fig}", flush=True)
        all_rows[problem] = rows
        table = markdown_table(problem, rows)
        title = {"boston": "Boston housing, 13-50-1 ReLU, 90/10 split data.seed",
                 "gap": "1-D gap regression (gap_1d), 1-50-1 ReLU",
                 "mnist5k": "mnist5k, 784-128-10 ReLU"}[problem]
        extra = f"\n\nFigure: `{out.with_name(out.stem + '_gap.png').name}`." if problem == "gap" else ""
        if ood_note:
            extra += f"\n\n{ood_note}."
        sections.append(f"## {title}\n\n{table}{extra}\n")
        print(f"\n## {title}\n\n{table}\n", flush=True)
    out.write_text("\n".join(sections))
    out.with_suffix(".json").write_text(json.dumps({"command": cmd.strip(), "quick": args.quick, "rows": all_rows},
                                                   indent=1, default=float))
    print(f"tables written to {out} (rows as JSON: {out.with_suffix('.json')}); run folders under {runs_root}",
          flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
