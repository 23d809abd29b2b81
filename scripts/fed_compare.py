"""Federated comparison: every method of a fed config's sweep on the same splits, one plot.

    python scripts/fed_compare.py configs/fed_mnist5k.yaml [key=value ...] [--out runs/fed_compare]

Prints, per method, the headline test metric per round at a few rounds, the final metric, the first
round at which each method reaches the *last* method's final metric (by convention the baseline,
FedAvg), and writes ``rounds.png`` (test metric vs round, all methods) into the output folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from emtdamp import config as cfgmod
from emtdamp.runs import run_config


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    raw = cfgmod.apply_overrides(cfgmod.read_yaml(args.config), args.overrides)
    name = Path(args.config).stem
    out = Path(args.out or f"runs/{name}-compare")
    out.mkdir(parents=True, exist_ok=True)
    runs = cfgmod.expand_sweep(raw, name)
    curves, finals = {}, {}
    for i, (_label, cfg) in enumerate(runs):
        tag = cfg.method.name + (f"-{cfg.method.hparams.aggregation}" if hasattr(cfg.method.hparams, "aggregation")
                                 else "")
        print(f"[{i + 1}/{len(runs)}] {tag}", file=sys.stderr)
        run_dir, summary, _ = run_config(cfg, out / f"run{i:02d}-{tag}")
        task_key = "accuracy" if "accuracy" in summary["test"] else "nmse"
        hist = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        curves[tag] = [h["test"][task_key] for h in hist]
        finals[tag] = summary
    better = (lambda a, b: a >= b) if task_key == "accuracy" else (lambda a, b: a <= b)
    base_tag = list(curves)[-1]
    base_final = curves[base_tag][-1]
    print(f"\nheadline metric: test {task_key}; baseline = {base_tag} (final {base_final:.4f})")
    marks = [r for r in (1, 5, 10, 15, 20, 30, 40, 60, 100) if r <= len(curves[base_tag])]
    print(f"{'method':<24}" + "".join(f"{'r' + str(r):>8}" for r in marks) + f"{'final':>8}{'reach base':>12}"
          f"{'bytes/round':>13}{'s/round':>9}")
    for tag, c in curves.items():
        hit = next((i + 1 for i, v in enumerate(c) if better(v, base_final)), None)
        print(f"{tag:<24}" + "".join(f"{c[r - 1]:>8.4f}" for r in marks) + f"{c[-1]:>8.4f}{str(hit):>12}"
              f"{finals[tag]['bytes_per_round']:>13}{finals[tag]['time']['per_round_s']:>9.3f}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for tag, c in curves.items():
        ax.plot(range(1, len(c) + 1), c, label=tag)
    ax.set_xlabel("round")
    ax.set_ylabel(f"test {task_key}")
    ax.set_title(name)
    if task_key == "nmse":
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "rounds.png", dpi=110)
    print(f"plot: {out / 'rounds.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
