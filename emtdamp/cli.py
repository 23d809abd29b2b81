"""The ``emtdamp`` command line: train, sweep, list, predict, export, plot.

    emtdamp train CONFIG [key.path=value ...]
    emtdamp sweep CONFIG [key.path=value ...] [--out DIR]   (sweep.vmap=true: seed/split groups vmapped)
    emtdamp list
    emtdamp export RUN_DIR --out DIR        (emtdamp.load_exported(DIR).apply(x_raw))
    emtdamp plot RUN_OR_SWEEP_DIR... --out FIG.png
    emtdamp predict RUN_DIR INPUT.csv|INPUT.npz|DATASET --out preds.csv|preds.npz [--levels 0.5,0.9] [--samples N]
    emtdamp flower CONFIG [--supernodes N] [key.path=value ...] [--resume]   (pip install 'emtdamp[flower]')
"""

from __future__ import annotations

import argparse
import csv
import json
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


def _config_or_run_folder(args, command: str) -> cfgmod.Config:
    """The config of ``emtdamp <command> CONFIG [k=v ...]``, or with ``--resume`` that of a run folder given in
    CONFIG's place (its resolved ``config.yaml``, output.dir pointing back at it)."""
    if args.resume and Path(args.config).is_dir():  # emtdamp <command> RUN_DIR --resume
        run_dir = Path(args.config)
        if not (run_dir / "config.yaml").exists():
            raise FileNotFoundError(f"{run_dir / 'config.yaml'} not found: is {run_dir} a run folder?")
        return cfgmod.load_config(run_dir / "config.yaml", [*args.overrides, f"output.dir={run_dir}"])
    cfg = cfgmod.load_config(args.config, args.overrides)
    if args.resume and cfg.output.dir is None:
        raise cfgmod.ConfigError(f"--resume needs the run folder: `emtdamp {command} RUN_DIR --resume` or "
                                 f"`emtdamp {command} CONFIG output.dir=RUN_DIR --resume`")
    return cfg


def cmd_train(args) -> int:
    from emtdamp.runs import run_config

    cfg = _config_or_run_folder(args, "train")
    if cfg.sweep is not None:
        print(f"note: {args.config} has a sweep block; `emtdamp train` runs the base config only "
              "(use `emtdamp sweep` for the grid)", file=sys.stderr)
    run_dir, summary, _ = run_config(cfg, resume=args.resume)
    row = summary_row(summary)
    cols = [c for c in row if c not in ("run", "dataset", "seed")]
    _print_table([row], cols)
    print(f"run folder: {run_dir}")
    return 0


def _write_csv(path: Path, table: list[dict]) -> None:
    cols = list(dict.fromkeys(k for r in table for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(table)


def cmd_sweep(args) -> int:
    from emtdamp.runs import run_config, run_group, vmap_groups
    from emtdamp.sweeps import folder_names, seed_summary

    raw = cfgmod.apply_overrides(cfgmod.read_yaml(args.config), args.overrides)
    name = Path(args.config).stem
    runs = cfgmod.expand_sweep(raw, name)  # validates the sweep block (sweep.vmap included)
    vmap = raw.get("sweep") is not None and cfgmod.build_dataclass(cfgmod.SweepConfig, raw["sweep"], "sweep").vmap
    out = Path(args.out or f"runs/{name}-sweep")
    out.mkdir(parents=True, exist_ok=True)
    labels = [lb for lb, _ in runs]
    dirs = [out / d for d in folder_names(labels)]
    groups = vmap_groups([c for _, c in runs]) if vmap else [[i] for i in range(len(runs))]
    rows: dict[int, dict] = {}
    for g in groups:
        if len(g) == 1:
            i = g[0]
            print(f"[{i + 1}/{len(runs)}] {runs[i][0]}", file=sys.stderr)
            results = [run_config(runs[i][1], dirs[i])]
        else:
            print(f"[{','.join(str(i + 1) for i in g)}/{len(runs)}] {len(g)} runs as one vmapped program: "
                  f"{runs[g[0]][0]} ... {runs[g[-1]][0]}", file=sys.stderr)
            results = run_group([runs[i][1] for i in g], [dirs[i] for i in g])
        for i, (_, summary, _) in zip(g, results, strict=True):
            rows[i] = {**summary_row(summary, runs[i][0]), "folder": dirs[i].name}
        done = sorted(rows)
        table = [rows[i] for i in done]
        # both rewritten after each run/group: partial results survive
        _write_csv(out / "sweep.csv", table)
        _write_csv(out / "summary.csv", seed_summary(table, [labels[i] for i in done]))
    table = [rows[i] for i in sorted(rows)]
    cols = [c for c in table[0] if c not in ("dataset", "folder")]
    _print_table(table, cols)
    print(f"sweep table: {out / 'sweep.csv'}; mean ± sd over seeds per setting: {out / 'summary.csv'}")
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


def _levels(text: str) -> tuple[float, ...]:
    try:
        levels = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--levels {text!r}: give comma-separated levels between 0 and 1, e.g. 0.5,0.9") from None
    if any(not 0 < v < 1 for v in levels):
        raise ValueError(f"--levels {text!r}: every level must lie strictly between 0 and 1, e.g. 0.5,0.9")
    return levels


def cmd_predict(args) -> int:
    from emtdamp.data import load
    from emtdamp.prediction_files import prediction_fields, read_inputs, write_predictions
    from emtdamp.runs import load_run

    levels = _levels(args.levels)
    if args.samples < 0:
        raise ValueError(f"--samples {args.samples}: give a number of draws >= 0")
    if Path(args.out).suffix not in (".npz", ".csv"):
        raise ValueError(f"--out {args.out}: write .npz or .csv")
    run = load_run(args.run_dir)   # Run.predictive says so when the folder kept no checkpoint
    cfg = run.config
    regression = run.record.spec.task == "regression"
    kw = {"levels": levels if regression else (), "n_samples": args.samples, "seed": args.seed}
    if Path(args.data).suffix in (".npz", ".csv"):
        x_raw = read_inputs(args.data, run.record)
        try:
            pred = run.predict(x_raw, **kw)
        except ValueError as e:
            raise ValueError(f"{args.data}: {e}") from None
    else:
        # a dataset's test split (the run's own: same split and scaling; another: its own scaling)
        data = run.data if args.data == cfg.data.name else load(args.data, seed=cfg.data.seed)
        tf = data.info.get("x_transform")
        x_raw = data.x_test if tf is None else data.x_test * np.asarray(tf["std"]) + np.asarray(tf["mean"])
        pred = run.predict(x_raw, **kw)
    fields = prediction_fields(pred, run.record)
    write_predictions(args.out, fields)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {np.shape(v)}" for k, v in fields.items()))
    return 0


def cmd_export(args) -> int:
    from emtdamp.export import export_run
    from emtdamp.runs import load_run

    out = export_run(load_run(args.run_dir), args.out)
    meta = json.loads((out / "model.json").read_text())
    print(f"wrote {out}: {meta['network']}, layers {meta['layer_sizes']}, {meta['n_params']} parameters, "
          f"reads {len(meta['inputs'])} of {meta['n_features']} input features")
    return 0


def cmd_plot(args) -> int:
    from emtdamp.plots import find_runs, plot_runs

    runs = find_runs(args.runs)
    out = plot_runs(runs, args.out, metric=args.metric, group_by=args.group_by)
    print(f"wrote {out} ({len(runs)} runs)")
    return 0


def _flower_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--supernodes", type=int, default=2, help="SuperNodes to start; node p hosts clients k %% N == p")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpointed round")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds the whole federation may take")
    p.add_argument("--round-timeout", dest="round_timeout", type=float, default=120.0,
                   help="seconds a round waits for its clients; later ones are dropped from the round")


def _flower_args(args) -> argparse.Namespace:
    """The flower options given after CONFIG, mixed with the overrides (argparse stops at the first override)."""
    p = argparse.ArgumentParser(prog="emtdamp flower", add_help=False)
    _flower_options(p)
    p.set_defaults(**{k: getattr(args, k) for k in ("supernodes", "resume", "timeout", "round_timeout")})
    p.add_argument("overrides", nargs="*")
    try:
        return p.parse_intermixed_args(args.overrides)
    except SystemExit:
        raise ValueError(f"cannot read the arguments {' '.join(args.overrides)!r}; give key.path=value overrides "
                         "and --supernodes/--resume/--timeout/--round-timeout") from None


def cmd_flower(args) -> int:
    args = argparse.Namespace(**{**vars(args), **vars(_flower_args(args))})
    try:
        from emtdamp.integrations.flower import run_local
    except ImportError as e:
        raise ValueError(f"Flower is not installed ({e}); pip install 'emtdamp[flower]'") from None
    from emtdamp.runs import default_run_dir

    cfg = _config_or_run_folder(args, "flower")
    run_dir = Path(cfg.output.dir or default_run_dir(cfg))
    try:
        summary = run_local(cfg, run_dir, supernodes=args.supernodes, resume=args.resume, timeout=args.timeout,
                            round_timeout=args.round_timeout)
    except (RuntimeError, TimeoutError) as e:
        raise ValueError(str(e)) from None
    except KeyboardInterrupt:
        print(f"emtdamp flower: interrupted; every process it started is stopped; continue with "
              f"`emtdamp flower {run_dir} --resume --supernodes {args.supernodes}`", file=sys.stderr)
        return 130
    row = summary_row(summary)
    row["bytes_up"], row["bytes_down"] = summary["bytes_per_round"], summary["bytes_down_per_round"]
    _print_table([row], [c for c in row if c not in ("run", "dataset", "seed")])
    if summary["missing"]:
        print(f"rounds with missing clients: {summary['missing']}")
    print(f"run folder: {run_dir}")
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
    r.add_argument("data", help="raw input rows: an .npz with an array `x`, a .csv with the training columns "
                                "(target optional), or a dataset name (its test split)")
    r.add_argument("--out", required=True, help="FILE.npz or FILE.csv")
    r.add_argument("--levels", default="0.5,0.9", help="central predictive intervals (regression), e.g. 0.5,0.9")
    r.add_argument("--samples", type=int, default=0, help="posterior-predictive draws per input (0 = none)")
    r.add_argument("--seed", type=int, default=0, help="seed of the draws")
    r.set_defaults(fn=cmd_predict)
    e = sub.add_parser("export", help="write a run's compacted network (pruned units removed) to a folder")
    e.add_argument("run_dir")
    e.add_argument("--out", required=True, help="folder for params.msgpack + model.json")
    e.set_defaults(fn=cmd_export)
    pl = sub.add_parser("plot", help="overlay runs (a sweep folder's runs by default): mean ± sd over seeds")
    pl.add_argument("runs", nargs="+", help="run folders and/or sweep folders")
    pl.add_argument("--out", required=True, help="FIG.png")
    pl.add_argument("--metric", default=None, help="test metric to plot (default: rmse / accuracy)")
    pl.add_argument("--group-by", dest="group_by", default="auto",
                    help="'auto' (settings = what differs apart from seeds), 'run', or config keys, e.g. method.name")
    pl.set_defaults(fn=cmd_plot)
    f = sub.add_parser("flower", help="train a federated config on a local Flower federation (SuperLink + SuperNodes "
                                      "on 127.0.0.1) and write a run folder")
    f.add_argument("config", help="a federated config (method.name emtdamp_fed / fedavg), or a run folder (--resume)")
    _flower_options(f)
    f.add_argument("overrides", nargs=argparse.REMAINDER,
                   help="key.path=value overrides, e.g. method.compress=float16 (options may follow them)")
    f.set_defaults(fn=cmd_flower)
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

