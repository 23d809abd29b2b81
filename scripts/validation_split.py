"""Choose settings on training rows only: a validation split carved from the training set (Boston, mnist5k,
Fashion-MNIST).

    python scripts/validation_split.py configs/emtdamp_boston.yaml "method.evidence=once train.chains=1" \\
        "train.chains=8" "train.chains=8 train.epochs=25"
    python scripts/validation_split.py --dataset mnist5k configs/sghmc_sa_mnist5k_128.yaml \\
        "method.name=sghmc" "method.name=sghmc method.weight_decay=5e-3"

For each ``data.seed`` in ``--data-seeds`` (default 0 1 2) the training rows of that split are divided by a seed
of their own, ``1000 + data.seed``, and trained on through ``data.name=npz``; the test rows are never read.

- ``boston`` (the issue-16 split, ``test_fraction 0.1``, 455 training rows): ``numpy.random.default_rng(1000 +
  data.seed)`` permutes them, the first 91 are the validation rows, the other 364 are trained on; the model is
  13-50-1 (``model.hidden=[50]`` before the variant). Prints validation RMSE / NLL / coverage90 (original units,
  $1000s).
- ``mnist5k`` (4,000 training images): 1,000 validation images stratified by class (``split_indices(4000, ...,
  1000 + data.seed, labels=y, n_test=1000)``), 3,000 trained on; pixels in [0, 1], or, when the config sets
  ``data.options.standardize: true``, standardised as the loader would (the spec's ``(x - mean) / (sd + 0.1)``)
  with the statistics of the 3,000 images trained on. Prints validation accuracy / NLL / ECE.
- ``fashion_mnist`` (the 60,000 training images of Debian's ``dataset-fashion-mnist``): 12,000 validation images
  stratified by class the same way (seed ``1000 + data.seed``), 48,000 trained on; pixels as for mnist5k.

Each variant (a space-separated list of overrides; ``""`` = the config as is) prints its figures per split and
their mean. This is how docs/emtdamp.md section 9.0, docs/em_mcmc.md section 10 and the config comments chose
the shipped Boston and mnist5k settings they say were chosen on validation rows.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from emtdamp.config import load_config
from emtdamp.data import load
from emtdamp.data.real import pixel_inputs, split_indices
from emtdamp.loops.centralised import predict_in_chunks
from emtdamp.metrics import classification_metrics, regression_metrics
from emtdamp.runs import run_config

# Per dataset: validation rows (Boston: 20 % of the 455 training rows; mnist5k: 25 % of 4,000; Fashion-MNIST: 20 %
# of 60,000), the npz task, overrides applied before the variant, and how the three figures print (per split;
# their mean).
DATASETS = {
    "boston": {"n_validation": 91, "task": "regression", "overrides": ["model.hidden=[50]"],
               "split_fmt": "{:.3f}/{:.3f}/{:.2f}", "mean_fmt": "{:.3f}"},
    "mnist5k": {"n_validation": 1000, "task": "classification", "overrides": [],
                "split_fmt": "{:.4f}/{:.4f}/{:.4f}", "mean_fmt": "{:.4f}"},
    "fashion_mnist": {"n_validation": 12000, "task": "classification", "overrides": [],
                      "split_fmt": "{:.4f}/{:.4f}/{:.4f}", "mean_fmt": "{:.4f}"},
}


def validation_npz(seed: int, folder: Path, dataset: str = "boston", standardize: bool = False) -> Path:
    """Write the fit/validation split of ``data.seed`` of ``dataset`` and return the file.

    Boston: raw targets, inputs as the loader standardised them; images: integer labels, pixels in [0, 1] or
    (``standardize``) standardised with the fit images' statistics (:func:`emtdamp.data.real.pixel_inputs`).
    """
    if dataset not in DATASETS:
        raise ValueError(f"validation_split: unknown dataset {dataset!r}; choose from {sorted(DATASETS)}")
    if standardize and dataset == "boston":
        raise ValueError(f"data.options.standardize applies to the image carves only, not {dataset!r}; drop it or "
                         "pass --dataset mnist5k or fashion_mnist")
    n_val = DATASETS[dataset]["n_validation"]
    path = folder / f"{dataset}_validation_{seed}{'_std' if standardize else ''}.npz"
    if dataset == "boston":
        d = load("boston", seed=seed, test_fraction=0.1)
        x = np.asarray(d.x_train, np.float64)
        y = np.asarray(d.y_train, np.float64) * d.y_std + d.y_mean
        perm = np.random.default_rng(1000 + seed).permutation(len(x))
        va, tr = perm[:n_val], perm[n_val:]
        x_fit, x_val = x[tr], x[va]
    else:  # images
        d = load(dataset, seed=seed)
        x = np.asarray(d.x_train)
        y = np.asarray(d.y_train).reshape(-1)
        tr, va = split_indices(len(y), n_val / len(y), 1000 + seed, labels=y, n_test=n_val)
        x_fit, x_val, _ = pixel_inputs(x[tr], x[va], standardize)
    np.savez(path, x_train=x_fit, y_train=y[tr], x_test=x_val, y_test=y[va])
    return path


def _figures(dataset: str, res, d) -> tuple[float, float, float]:
    pred = predict_in_chunks(res.algorithm, res.state, d.x_test)
    if dataset == "boston":
        m = regression_metrics(pred, d.y_test, d.y_mean, d.y_std)
        return m["rmse"], m["nll"], m["coverage90"]
    m = classification_metrics(pred, np.asarray(d.y_test).reshape(-1))
    return m["accuracy"], m["nll"], m["ece"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("variants", nargs="+", help='override lists, e.g. "train.chains=8 train.epochs=25" ("" = as is)')
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="boston")
    ap.add_argument("--data-seeds", nargs="+", type=int, default=[0, 1, 2])
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="validation_split-"))
    standardize = bool(load_config(args.config).data.options.get("standardize", False))
    try:
        files = {s: validation_npz(s, root, args.dataset, standardize) for s in args.data_seeds}
    except ValueError as e:
        ap.error(f"{args.config}: {e}")
    ds = DATASETS[args.dataset]
    for variant in args.variants:
        rows = []
        for s in args.data_seeds:
            over = ["data.name=npz", f"data.options={{path: {files[s]}, task: {ds['task']}}}", *ds["overrides"],
                    "output.checkpoint=false", "output.plots=false", "train.progress=false",
                    f"output.dir={root / 'run'}", *variant.split()]
            cfg = load_config(args.config, over)
            _, _, res = run_config(cfg, root / "run", progress=False)
            rows.append(_figures(args.dataset, res, load(cfg.data.name, seed=cfg.data.seed, **cfg.data.options)))
        r = np.array(rows)
        per = "  ".join(ds["split_fmt"].format(*row) for row in r)
        mean = " / ".join(ds["mean_fmt"].format(v) for v in r.mean(0))
        print(f"{variant or '(as is)'} | {per} | mean {mean}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
