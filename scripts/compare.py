"""Run several configs (same data, network and seed) and print one comparison table.

    python scripts/compare.py configs/emtdamp_boston.yaml configs/boston.yaml \
        configs/boston.yaml:method.name=sgd [--set train.seed=1 ...]

A config may carry its own overrides after a colon (comma-separated). ``--set`` overrides apply to
every config. Each run writes a run folder under runs/compare/. The column ``reach_last`` is the
first epoch at which a run's headline metric (accuracy, or RMSE) is at least as good as the *last*
run's final value (put the baseline last).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from emtdamp import config as cfgmod
from emtdamp.cli import _print_table, summary_row
from emtdamp.runs import run_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="+", help="CONFIG[:key=value,key=value]")
    p.add_argument("--set", nargs="*", default=[], help="overrides applied to every config")
    p.add_argument("--out", default="runs/compare")
    args = p.parse_args(argv)
    rows, curves = [], []
    for i, spec in enumerate(args.configs):
        path, _, own = spec.partition(":")
        overrides = [o for o in own.split(",") if o] + list(args.set)
        cfg = cfgmod.load_config(path, overrides)
        print(f"[{i + 1}/{len(args.configs)}] {Path(path).stem} {' '.join(overrides)}", file=sys.stderr)
        run_dir, summary, _ = run_config(cfg, Path(args.out) / f"run{i:02d}-{cfg.method.name}")
        rows.append(summary_row(summary))
        hist = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        curves.append([h["test"] for h in hist if "test" in h])
    key = "accuracy" if "accuracy" in curves[-1][-1] else "rmse"
    target = curves[-1][-1][key]
    better = (lambda a: a >= target) if key == "accuracy" else (lambda a: a <= target)
    for row, curve in zip(rows, curves, strict=True):
        row["reach_last"] = next((i + 1 for i, t in enumerate(curve) if better(t[key])), "never")
    metric_cols = [c for c in rows[0] if c.startswith("test_")]
    cols = ["method", "dataset", "epochs", *metric_cols, "neurons_pruned", "weights_zero", "params", "seconds",
            "reach_last"]
    _print_table(rows, cols)
    return 0


if __name__ == "__main__":
    sys.exit(main())
