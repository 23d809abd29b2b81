"""Ke & Fan's variable-selection experiments (spec B.5) with EM-MCMC, our table beside the reference.

Usage::

    python scripts/run_em_mcmc_selection.py                 # Ex1, Ex2, Ex3 with configs/em_mcmc_ex*.yaml
    python scripts/run_em_mcmc_selection.py --only ex1 --epochs 1000 --seed 1

Reads ``configs/em_mcmc_ex{1,2,3}.yaml`` (data / model / method / train blocks) and trains with its
own epoch loop (``jax.lax.scan`` over the minibatches of an epoch, ``end_epoch`` after each epoch,
as the shared training loop does; several epochs are fused into one jitted call for speed).
Regression MSE is reported in original target units (standardised MSE times ``y_std**2``), as the
reference notebooks compute it on raw targets. Acceptance (issue 6): true inputs kept, >= 99% of the
null inputs removed, test metric within 15% of the reference.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from emtdamp.data import load
from emtdamp.methods import Batch, ModelSpec, get_method

ROOT = pathlib.Path(__file__).resolve().parents[1]

REFERENCE = {  # spec B.5, official notebooks (one GPU run each)
    "ex1": {"metric": "mse", "value": 1.1079, "sparsity": 0.9897, "kept": "x1..x5"},
    "ex2": {"metric": "mse", "value": 2.4935, "sparsity": 0.9931, "kept": "x1..x5"},
    "ex3": {"metric": "acc", "value": 0.961, "sparsity": 0.9873, "kept": "x1..x4"},
}


def _batches(key, x, y, batch_size: int):
    """One epoch of shuffled, padded minibatches as stacked arrays ``(nb, B, ...)``."""
    n = x.shape[0]
    nb = -(-n // batch_size)
    perm = jax.random.permutation(key, n)
    pad = nb * batch_size - n
    idx = jnp.concatenate([perm, perm[:pad]])
    w = jnp.concatenate([jnp.ones(n, x.dtype), jnp.zeros(pad, x.dtype)])
    xb = x[idx].reshape(nb, batch_size, *x.shape[1:])
    yb = y[idx].reshape(nb, batch_size, *y.shape[1:])
    return Batch(xb, yb, w.reshape(nb, batch_size))


def train(method, hparams, ds, hidden, activation, epochs: int, batch_size: int, seed: int,
          chunk: int = 50, log_every: int = 500):
    """Train ``method`` for ``epochs`` epochs; returns the final state and a log of (epoch, loss)."""
    key = jax.random.key(seed)
    k_init, k_data = jax.random.split(key)
    model = ModelSpec(hidden=tuple(hidden), activation=activation)
    algo = method.build(model, ds.spec, hparams)
    state = algo.init(k_init)
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)

    def one_epoch(state, epoch):
        batches = _batches(jax.random.fold_in(k_data, epoch), x, y, batch_size)
        state, metrics = jax.lax.scan(algo.step, state, batches)
        state = algo.end_epoch(state, epoch)
        return state, jnp.mean(metrics["loss"])

    @jax.jit
    def run_chunk(state, epochs_arr):
        return jax.lax.scan(one_epoch, state, epochs_arr)

    log = []
    e = 0
    t0 = time.time()
    while e < epochs:
        n = min(chunk, epochs - e)
        state, losses = run_chunk(state, jnp.arange(e, e + n, dtype=jnp.int32))
        e += n
        if e % log_every == 0 or e == epochs:
            sp = algo.sparsity(state)
            log.append((e, float(losses[-1])))
            print(f"  epoch {e:5d}  loss {float(losses[-1]):.4f}  groups pruned "
                  f"{sp['neurons_pruned_frac']:.4f}  ({time.time() - t0:.0f}s)", flush=True)
    return state, log, algo


def evaluate(name: str, algo, state, ds) -> dict:
    pred = algo.predict(state, jnp.asarray(ds.x_test))
    if ds.spec.task == "regression":
        mse_std = float(jnp.mean((pred.mean - ds.y_test) ** 2))
        metric = mse_std * float(ds.y_std[0] ** 2)
    else:
        metric = float(jnp.mean(jnp.argmax(pred.probs, -1) == ds.y_test))
    first = state.opt.keep[[i for i, k in enumerate(state.opt.keep) if len(k)][0]][0]
    kept = np.flatnonzero(np.asarray(first).reshape(-1))
    support = list(ds.info["support"])
    p = ds.spec.n_features
    null_removed = (p - len(support) - len(set(kept) - set(support))) / (p - len(support))
    leaves = jax.tree_util.tree_leaves(state.params)
    n_all = sum(int(v.size) for v in leaves)
    zeros = sum(int(jnp.sum(v == 0)) for v in leaves)
    return {"metric": metric, "kept_inputs": [int(i) for i in kept], "true_kept": set(support) <= set(kept),
            "null_removed_frac": null_removed, "sparsity_all_params": zeros / n_all,
            **algo.sparsity(state)}


def run(which: str, epochs: int | None, seed: int | None, overrides: dict | None = None) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / f"em_mcmc_{which}.yaml").read_text())
    d, m, mt, tr = cfg["data"], cfg["model"], dict(cfg["method"]), cfg["train"]
    method = get_method(mt.pop("name"))
    for k, v in (overrides or {}).items():
        mt[k] = yaml.safe_load(v) if k not in ("estep",) else v
        if isinstance(mt[k], str) and k != "estep":
            mt[k] = float(mt[k])
    hp = method.hparams_cls(**mt)
    ds = load(d["name"], seed=d.get("seed", 0), **d.get("options", {}))
    ep = epochs or tr["epochs"]
    print(f"[{which}] {d['name']} P={ds.spec.n_features} net {ds.spec.n_features}-"
          f"{'-'.join(map(str, m['hidden']))}-{ds.spec.n_outputs}, {ep} epochs", flush=True)
    t0 = time.time()
    state, _, algo = train(method, hp, ds, m["hidden"], m.get("activation", "relu"), ep, tr["batch_size"],
                     tr.get("seed", 0) if seed is None else seed)
    res = evaluate(which, algo, state, ds)
    res["seconds"] = time.time() - t0
    res["epochs"] = ep
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=["ex1", "ex2", "ex3"])
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    ap.add_argument("--seed", type=int, default=None, help="override train.seed")
    ap.add_argument("--json", type=str, default=None, help="write results here")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override method hyperparameters, e.g. --set estep=soft warm_up=80")
    args = ap.parse_args(argv)
    over = dict(kv.split("=", 1) for kv in args.set)
    results = {w: run(w, args.epochs, args.seed, over) for w in args.only}
    print("\n| exp | metric | ours | reference | within 15% | sparsity (all params) ours / ref "
          "| true inputs kept | null inputs removed | kept inputs | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ok_all = True
    for w, r in results.items():
        ref = REFERENCE[w]
        rel = abs(r["metric"] - ref["value"]) / ref["value"]
        ok = r["true_kept"] and r["null_removed_frac"] >= 0.99 and (
            rel <= 0.15 or (ref["metric"] == "mse" and r["metric"] < ref["value"])
            or (ref["metric"] == "acc" and r["metric"] > ref["value"]))
        ok_all &= ok
        kept = [f"x{i + 1}" for i in r["kept_inputs"]]
        kept_s = ",".join(kept[:10]) + ("..." if len(kept) > 10 else "")
        print(f"| {w} | {ref['metric']} | {r['metric']:.4f} | {ref['value']} | {'yes' if rel <= 0.15 else 'no'} "
              f"({rel:.1%}) | {r['sparsity_all_params']:.4f} / {ref['sparsity']} | {r['true_kept']} "
              f"| {r['null_removed_frac']:.4f} | {kept_s} | {r['seconds']:.0f} |")
    print("\nacceptance:", "PASS" if ok_all else "FAIL")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
