"""Seconds per federated round: one vmapped (jitted) client update vs a Python loop over clients.

    python scripts/bench_federated.py [--method emtdamp_fed|fedavg] [--clients 10 100 1000]

Boston-sized clients (13-64-1 network, rows dealt iid); every client is selected every round.
Prints a table: clients, vmapped s/round, loop s/round, loop/vmapped ratio. Compile time excluded.
"""

from __future__ import annotations

import argparse
import sys
import time

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
    jax.block_until_ready(python_loop_round(algo, server, key, X, Y, M, C, sel[:1]))  # compile
    t = time.perf_counter()
    for r in range(loop_repeats):
        out = python_loop_round(algo, server, jax.random.fold_in(key, r), X, Y, M, C, sel)
    jax.block_until_ready(out)
    t_loop = (time.perf_counter() - t) / loop_repeats
    return t_vmap, t_loop


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="fedavg")
    p.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--rows", type=int, default=40, help="rows per client")
    args = p.parse_args(argv)
    print(f"method {args.method}, {args.rows} rows/client, 13-64-1, device {jax.devices()[0].platform}")
    print(f"{'clients':>8} {'vmap s/round':>13} {'loop s/round':>13} {'loop/vmap':>10}")
    for k in args.clients:
        tv, tl = bench(args.method, k, args.rows, repeats=5, loop_repeats=1 if k >= 1000 else 2)
        print(f"{k:>8} {tv:>13.4f} {tl:>13.4f} {tl / tv:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
