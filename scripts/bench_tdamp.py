"""Seconds per epoch of EM-TDAMP vs adam on the Boston and MNIST networks (same batch size).

    python scripts/bench_tdamp.py [--epochs 5] [--dtype float32]

Each row times `--epochs` epochs after compilation (median per-epoch time of the shared training
loop: one jitted lax.scan per epoch) and prints the ratio emtdamp / adam. The MNIST row uses
mnist5k (4,000 training images) with the 784-128-10 network and batch 100; Boston 13-64-1 with
batch 32.
"""

from __future__ import annotations

import argparse
import sys

import jax

from emtdamp.data import load
from emtdamp.loops.centralised import train
from emtdamp.methods import ModelSpec, get_method

CASES = [("boston", {}, (64,), 32), ("mnist5k", {"standardize": True}, (128,), 100)]


def per_epoch(method_name: str, data, hidden, batch: int, epochs: int, dtype: str) -> tuple[float, float]:
    m = get_method(method_name)
    res = train(m, m.hparams_cls(), ModelSpec(hidden), data, epochs=epochs, batch_size=batch, dtype=dtype,
                eval_every=epochs, progress=False)
    return res.time["per_epoch_s"], res.time["compile_s"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = p.parse_args(argv)
    print(f"device: {jax.devices()[0].device_kind} ({jax.devices()[0].platform}), dtype {args.dtype}, "
          f"median of {args.epochs} epochs")
    print(f"{'dataset':<10}{'network':<14}{'batch':>6}{'emtdamp s/ep':>14}{'adam s/ep':>12}{'ratio':>8}"
          f"{'emtdamp compile s':>19}")
    for name, opts, hidden, batch in CASES:
        data = load(name, **opts)
        net = "-".join(map(str, (data.spec.n_features, *hidden, data.spec.n_outputs)))
        te, ce = per_epoch("emtdamp", data, hidden, batch, args.epochs, args.dtype)
        ta, _ = per_epoch("adam", data, hidden, batch, args.epochs, args.dtype)
        print(f"{name:<10}{net:<14}{batch:>6}{te:>14.4f}{ta:>12.4f}{te / ta:>8.1f}{ce:>19.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
