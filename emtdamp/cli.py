"""The ``emtdamp`` command line: train, sweep, list, predict.

    emtdamp train CONFIG [key.path=value ...]
    emtdamp sweep CONFIG [key.path=value ...] [--out DIR]   (sweep.vmap=true: seed/split groups vmapped)
    emtdamp list
    emtdamp predict RUN_DIR DATA --out preds.npz
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from emtdamp import config as cfgmod
from emtdamp.divergence import DivergenceError


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _print_table(rows: list[dict], cols: list[str]) -> None:
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    width = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, width, strict=True)))
    print("  ".join("-" * w for w in width))
    for x in cells:
        print("  ".join(v.ljust(w) for v, w in zip(x, width, strict=True)))


def summary_row(summary: dict, label: str | None = None) -> dict:
    """A flat table row from a summary.json dict."""
    row = {"run": label or summary["method"], "method": summary["method"], "dataset": summary["dataset"],
           "seed": summary["seed"], "epochs": summary["epochs"]}
    row.update({f"test_{k}": v for k, v in summary["test"].items()})
    row.update({"neurons_pruned": summary["sparsity"]["neurons_pruned_frac"],
                "weights_zero": summary["sparsity"]["weights_zero_frac"],
                "params": summary["sparsity"]["params_remaining"],
                "seconds": summary["time"]["total_s"], "s_per_epoch": summary["time"]["per_epoch_s"]})
    return row


def cmd_train(args) -> int:
    from emtdamp.runs import run_config

    if args.resume and Path(args.config).is_dir():  # emtdamp train RUN_DIR --resume
        run_dir = Path(args.config)
        if not (run_dir / "config.yaml").exists():
            raise FileNotFoundError(f"{run_dir / 'config.yaml'} not found: is {run_dir} a run folder?")
        cfg = cfgmod.load_config(run_dir / "config.yaml", [*args.overrides, f"output.dir={run_dir}"])
    else:
        cfg = cfgmod.load_config(args.config, args.overrides)
        if args.resume and cfg.output.dir is None:
            raise cfgmod.ConfigError("--resume needs the run folder: `emtdamp train RUN_DIR --resume` or "
                                     "`emtdamp train CONFIG output.dir=RUN_DIR --resume`")
    if cfg.sweep is not None:
        print(f"note: {args.config} has a sweep block; `emtdamp train` runs the base config only "
              "(use `emtdamp sweep` for the grid)", file=sys.stderr)
    run_dir, summary, _ = run_config(cfg, resume=args.resume)
    row = summary_row(summary)
    cols = [c for c in row if c not in ("run", "dataset", "seed")]
    _print_table([row], cols)
    print(f"run folder: {run_dir}")
    return 0


def cmd_sweep(args) -> int:
    from emtdamp.runs import run_config, run_group, vmap_groups

    raw = cfgmod.apply_overrides(cfgmod.read_yaml(args.config), args.overrides)
    name = Path(args.config).stem
    runs = cfgmod.expand_sweep(raw, name)  # validates the sweep block (sweep.vmap included)
    vmap = raw.get("sweep") is not None and cfgmod.build_dataclass(cfgmod.SweepConfig, raw["sweep"], "sweep").vmap
    out = Path(args.out or f"runs/{name}-sweep")
    out.mkdir(parents=True, exist_ok=True)
    groups = vmap_groups([c for _, c in runs]) if vmap else [[i] for i in range(len(runs))]
    rows: dict[int, dict] = {}
    for g in groups:
        if len(g) == 1:
            i = g[0]
            print(f"[{i + 1}/{len(runs)}] {runs[i][0]}", file=sys.stderr)
            results = [run_config(runs[i][1], out / f"run{i:03d}")]
        else:
            print(f"[{','.join(str(i + 1) for i in g)}/{len(runs)}] {len(g)} runs as one vmapped program: "
                  f"{runs[g[0]][0]} ... {runs[g[-1]][0]}", file=sys.stderr)
            results = run_group([runs[i][1] for i in g], [out / f"run{i:03d}" for i in g])
        for i, (_, summary, _) in zip(g, results, strict=True):
            rows[i] = summary_row(summary, runs[i][0])
        table = [rows[i] for i in sorted(rows)]
        cols = list(dict.fromkeys(k for r in table for k in r))
        with open(out / "sweep.csv", "w", newline="") as f:  # rewritten after each run/group: partial results survive
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(table)
    table = [rows[i] for i in sorted(rows)]
    cols = [c for c in table[0] if c not in ("dataset",)]
    _print_table(table, cols)
    print(f"sweep table: {out / 'sweep.csv'}")
    return 0


def cmd_list(args) -> int:
    from emtdamp.data import dataset_names, loader_options
    from emtdamp.methods import get_method, method_names
    from emtdamp.methods.registry import fed_method_names, get_fed_method

    print("datasets:")
    for n in dataset_names():
        opts = ", ".join(f"{k}={p.default!r}" for k, p in loader_options(n).items())
        print(f"  {n:18s} options: {opts}")
    print("methods:")
    for n in method_names():
        print(f"  {n:18s} {get_method(n).description}")
    print("federated methods:")
    for n in fed_method_names():
        print(f"  {n:18s} {get_fed_method(n).description}")
    return 0


def cmd_predict(args) -> int:
    from emtdamp.data import load
    from emtdamp.runs import load_run

    run = load_run(args.run_dir)   # Run.predictive says so when the folder kept no checkpoint
    cfg = run.config
    if args.data.endswith(".npz"):
        with np.load(args.data) as f:
            if "x" not in f:
                raise KeyError(f"{args.data} must hold an array named 'x' (rows, features)")
            x = np.asarray(f["x"], np.float32)
        try:
            pred = run.predict(x)
        except ValueError as e:
            raise ValueError(f"{args.data}: {e}") from None
    else:
        # the run's own dataset: its test split under the run's options (same split, same scaling)
        x = run.data.x_test if args.data == cfg.data.name else load(args.data, seed=cfg.data.seed).x_test
        pred = run.to_original_units(run.predictive(x))
    out = {k: v for k, v in (("probs", pred.probs), ("mean", pred.mean), ("var", pred.var)) if v is not None}
    np.savez(args.out, **out)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v.shape}" for k, v in out.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emtdamp", description="Sparse Bayesian deep learning in JAX.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one config and write a run folder")
    t.add_argument("config")
    t.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. train.epochs=20")
    t.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last checkpoint (CONFIG may be the run folder)")
    t.set_defaults(fn=cmd_train)
    s = sub.add_parser("sweep", help="expand a config's sweep block and run every combination")
    s.add_argument("config")
    s.add_argument("overrides", nargs="*")
    s.add_argument("--out", default=None, help="folder for the runs and sweep.csv")
    s.set_defaults(fn=cmd_sweep)
    sub.add_parser("list", help="list datasets and methods").set_defaults(fn=cmd_list)
    r = sub.add_parser("predict", help="predict with a trained run's checkpoint")
    r.add_argument("run_dir")
    r.add_argument("data", help="an .npz with an array `x` (raw units) or a dataset name (its test split)")
    r.add_argument("--out", required=True)
    r.set_defaults(fn=cmd_predict)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (cfgmod.ConfigError, KeyError, ValueError, TypeError, FileNotFoundError, FloatingPointError,
            DivergenceError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"emtdamp {args.cmd}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

