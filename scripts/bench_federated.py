"""Seconds per federated round: one vmapped (jitted) client update vs a Python loop over clients vs Flower.

    python scripts/bench_federated.py [--method emtdamp_fed|fedavg] [--clients 10 100 1000] [--flower 3 10]

Boston-sized clients (13-64-1 network, rows dealt iid); every client is selected every round.
Prints a table: clients, vmapped s/round, loop s/round, loop/vmapped ratio, Flower s/round. Compile time
excluded. The Python loop calls the client step jitted once (``jitted_client_step``), so the ratio is the
cost of dispatching clients one by one, not of re-tracing.

The Flower column (for the client counts given to ``--flower``, 1 SuperNode per client, all on this machine:
``emtdamp flower configs/fed_boston.yaml method.n_clients=K --supernodes K``) is the median wall time of
rounds 2.. (round 1 compiles); Flower starts one ClientApp process per message, which dominates it.
It needs ``pip install 'emtdamp[flower]'``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from emtdamp.data import load
from emtdamp.data.partition import iid
from emtdamp.loops.federated import make_round_fn, python_loop_round
from emtdamp.methods import ModelSpec
from emtdamp.methods.registry import get_fed_method


def bench(method: str, n_clients: int, rows_per_client: int, repeats: int, loop_repeats: int) -> tuple[float, float]:
    data = load("boston")
    n = n_clients * rows_per_client
    reps = int(np.ceil(n / len(data.x_train)))
    x = np.tile(data.x_train, (reps, 1))[:n]
    y = np.tile(data.y_train, (reps, 1))[:n]
    fm = get_fed_method(method)
    hp = fm.hparams_cls(n_clients=n_clients, partition="iid")
    algo = fm.build(ModelSpec((64,)), data.spec, hp, 32)
    server = algo.init(jax.random.PRNGKey(0))
    cd = iid(x, y, n_clients, seed=0)
    X, Y, M, C = map(jnp.asarray, (cd.x, cd.y, cd.mask, cd.counts))
    key = jax.random.PRNGKey(1)
    rf = make_round_fn(algo, n_clients, devices=jax.devices()[:1])
    jax.block_until_ready(rf(server, key, X, Y, M, C))  # compile
    jax.block_until_ready(rf(server, key, X, Y, M, C))  # warm-up
    t = time.perf_counter()
    for r in range(repeats):
        out, _ = rf(server, jax.random.fold_in(key, r), X, Y, M, C)
    jax.block_until_ready(out)
    t_vmap = (time.perf_counter() - t) / repeats
    sel = np.arange(n_clients)
    jax.block_until_ready(python_loop_round(algo, server, key, X, Y, M, C, sel))  # compile (client step, aggregate)
    t = time.perf_counter()
    for r in range(loop_repeats):
        out = python_loop_round(algo, server, jax.random.fold_in(key, r), X, Y, M, C, sel)
    jax.block_until_ready(out)
    t_loop = (time.perf_counter() - t) / loop_repeats
    return t_vmap, t_loop


def bench_flower(method: str, n_clients: int, rounds: int = 3) -> float:
    """Median s/round (rounds 2..) of a local Flower federation of ``n_clients`` SuperNodes on fed_boston."""
    from emtdamp import config as cfgmod
    from emtdamp.integrations.flower import run_local

    raw = cfgmod.read_yaml(Path(__file__).resolve().parents[1] / "configs" / "fed_boston.yaml")
    raw.pop("sweep", None)
    if method != raw["method"]["name"]:
        raw["method"] = {"name": method, "partition": "iid"}
    raw["method"]["n_clients"] = n_clients
    raw["train"]["epochs"] = rounds
    raw["output"] = {**raw.get("output", {}), "plots": False}
    cfg = cfgmod.from_dict(raw, name="bench_flower")
    with tempfile.TemporaryDirectory(prefix="bench-flower-") as d:
        run_local(cfg, Path(d) / "run", supernodes=n_clients, timeout=1800, round_timeout=600)
        hist = [json.loads(ln) for ln in (Path(d) / "run" / "metrics.jsonl").read_text().splitlines() if ln]
    walls = [h["wall_s"] for h in hist]
    return float(np.median(np.diff(walls))) if len(walls) > 1 else float(walls[0])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="fedavg")
    p.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--rows", type=int, default=40, help="rows per client")
    p.add_argument("--flower", type=int, nargs="*", default=[], help="client counts for the Flower column, e.g. 3 10")
    args = p.parse_args(argv)
    print(f"method {args.method}, {args.rows} rows/client, 13-64-1, device {jax.devices()[0].platform}")
    print(f"{'clients':>8} {'vmap s/round':>13} {'loop s/round':>13} {'loop/vmap':>10} {'flower s/round':>15}")
    counts = sorted(set(args.clients) | set(args.flower))
    bench(args.method, counts[0], args.rows, repeats=2, loop_repeats=1)  # discarded: a process's first bench is slow
    for k in counts:
        tv, tl = bench(args.method, k, args.rows, repeats=5, loop_repeats=1 if k >= 1000 else 2)
        tf = f"{bench_flower(args.method, k):>15.2f}" if k in args.flower else f"{'-':>15}"
        print(f"{k:>8} {tv:>13.4f} {tl:>13.4f} {tl / tv:>10.1f} {tf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
