"""Choose settings on training rows only: Boston 13-50-1 with a validation split carved from the training set.

    python scripts/boston_validation.py configs/emtdamp_boston.yaml "method.evidence=once train.chains=1" \
        "train.chains=8" "train.chains=8 train.epochs=25"

For each ``data.seed`` in ``--data-seeds`` (default 0 1 2) the 455 training rows of the issue-16 split
(``test_fraction 0.1``) are permuted by ``numpy.random.default_rng(1000 + data.seed)``: the first 91 are the
validation rows, the other 364 are trained on (through ``data.name=npz``; the test rows are never read).
Each variant (a space-separated list of overrides, applied after ``model.hidden=[50]``) prints validation
RMSE / NLL / coverage90 per split (original units, $1000s) and their mean. This is how docs/emtdamp.md
section 9.0 chose the shipped EM-TDAMP Boston settings.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from emtdamp.config import load_config
from emtdamp.data import load
from emtdamp.loops.centralised import predict_in_chunks
from emtdamp.metrics import regression_metrics
from emtdamp.runs import run_config

N_VALIDATION = 91   # 20 % of the 455 training rows


def validation_npz(seed: int, folder: Path) -> Path:
    """Write the fit/validation split of ``data.seed`` (raw targets; inputs as the loader standardised them)."""
    d = load("boston", seed=seed, test_fraction=0.1)
    x = np.asarray(d.x_train, np.float64)
    y = np.asarray(d.y_train, np.float64) * d.y_std + d.y_mean
    perm = np.random.default_rng(1000 + seed).permutation(len(x))
    va, tr = perm[:N_VALIDATION], perm[N_VALIDATION:]
    path = folder / f"boston_validation_{seed}.npz"
    np.savez(path, x_train=x[tr], y_train=y[tr], x_test=x[va], y_test=y[va])
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("variants", nargs="+", help='override lists, e.g. "train.chains=8 train.epochs=25" ("" = as is)')
    ap.add_argument("--data-seeds", nargs="+", type=int, default=[0, 1, 2])
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="boston_validation-"))
    files = {s: validation_npz(s, root) for s in args.data_seeds}
    for variant in args.variants:
        rows = []
        for s in args.data_seeds:
            over = ["data.name=npz", f"data.options={{path: {files[s]}}}", "model.hidden=[50]",
                    "output.checkpoint=false", "output.plots=false", "train.progress=false",
                    f"output.dir={root / 'run'}", *variant.split()]
            cfg = load_config(args.config, over)
            _, _, res = run_config(cfg, root / "run", progress=False)
            d = load(cfg.data.name, seed=cfg.data.seed, **cfg.data.options)
            m = regression_metrics(predict_in_chunks(res.algorithm, res.state, d.x_test), d.y_test, d.y_mean,
                                   d.y_std)
            rows.append((m["rmse"], m["nll"], m["coverage90"]))
        r = np.array(rows)
        per = "  ".join(f"{a:.3f}/{b:.3f}/{c:.2f}" for a, b, c in r)
        print(f"{variant or '(as is)'} | {per} | mean {r[:, 0].mean():.3f} / {r[:, 1].mean():.3f} / "
              f"{r[:, 2].mean():.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
