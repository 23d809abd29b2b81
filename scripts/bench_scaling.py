"""Per-epoch cost of every centralised method as the network grows, against adam and the GEMM limit.

    python scripts/bench_scaling.py [--sizes 128,512,512-512,1024-1024] [--methods adam,sghmc,...]
                                    [--repeats 5] [--platform cpu|gpu] [--out benchmarks/scaling]
                                    [--fed-clients 10,100,1000,10000] [--fed-data mnist5k|fashion_mnist]
                                    [--fed-chunk 256] [--fed-rounds 3]

What is timed is what users run: each method is built from its shipped MNIST-5k config (``model.hidden``
replaced by the size under test) and trained through the library's own epoch program
(:func:`emtdamp.loops.centralised.make_epoch_fn`: one jitted, donated ``lax.scan`` over the shuffled,
padded minibatches, then the method's ``end_epoch``), exactly as ``emtdamp.fit`` / ``train`` call it. The
reference row ``gemm`` is the plain jitted forward + backward matrix products of the same shapes (the
minibatch gather, ``x W_1 ... W_L`` forward, ``dW_l = a_{l-1}^T d_l`` and ``d_{l-1} = d_l W_l^T``
backward, and an SGD update so nothing is dead code): the arithmetic floor of any gradient method.

All programs of one size are compiled first (``compile_s``: epoch + ``end_epoch``), then the epochs run
*interleaved* (every repeat times one epoch of every method in turn), so a load change on the shared
machine hits every method alike; ``min_s`` is the fastest epoch, ``spread`` = (max − min) / min.
Ratios use the minima. ``--fed-clients`` adds the federated rounds (``emtdamp_fed`` and ``fedavg`` of
configs/fed_mnist5k.yaml, or configs/fed_fashion_mnist.yaml with ``--fed-data fashion_mnist``; Dirichlet(0.5)
split, full participation) at those client counts: the median s/round over ``--fed-rounds`` rounds and the
peak resident memory of a fresh process running only that row. ``--fed-chunk`` (a comma list: one row per
value) sets ``method.client_chunk``, the clients vmapped at once (0 = all selected clients in one vmap).
Where Dirichlet(0.5) cannot give every client a row, the row falls back to an iid split and says so in its
note.

Writes ``OUT.md`` and ``OUT.csv`` (``--out``; none with ``--out ''``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# method -> (shipped config, overrides): the settings users run on MNIST-5k
METHODS = {
    "adam": ("configs/mnist5k.yaml", []),
    "sgd": ("configs/mnist5k.yaml", ["method.name=sgd"]),
    "sgld": ("configs/sghmc_sa_mnist5k.yaml", ["method.name=sgld"]),
    "sghmc": ("configs/sghmc_sa_mnist5k.yaml", ["method.name=sghmc"]),
    "sgld_sa": ("configs/sghmc_sa_mnist5k.yaml", ["method.name=sgld_sa"]),
    "sghmc_sa": ("configs/sghmc_sa_mnist5k.yaml", []),
    "em_mcmc": ("configs/em_mcmc_mnist5k.yaml", []),
    "emtdamp": ("configs/emtdamp_mnist5k.yaml", []),
}
DEFAULT_METHODS = "adam,sghmc,sghmc_sa,em_mcmc,emtdamp"
DEFAULT_SIZES = "128,512,512-512,1024-1024"


def parse_sizes(text: str) -> list[tuple[int, ...]]:
    """``"128,512-512"`` (hidden widths, ``-`` between layers; a full ``784-128-10`` is accepted too)."""
    out = []
    for item in text.split(","):
        w = tuple(int(v) for v in item.strip().split("-") if v)
        if len(w) >= 3 and w[0] == 784 and w[-1] == 10:
            w = w[1:-1]
        out.append(w)
    return out


def gemm_epoch(sizes: tuple[int, ...], batch: int):
    """``epoch(ws, key, x, lr) -> ws``: the plain forward + backward products of one epoch (see module doc)."""
    import jax
    import jax.numpy as jnp

    from emtdamp.loops.centralised import epoch_batches

    def epoch(ws, key, x, lr):
        idx, _ = epoch_batches(key, x.shape[0], batch)

        def body(ws, i):
            acts = [x[i]]
            for w in ws:
                acts.append(acts[-1] @ w)
            d = acts[-1]
            new = list(ws)
            for layer in range(len(ws) - 1, -1, -1):
                new[layer] = ws[layer] - lr * (acts[layer].T @ d)
                if layer:
                    d = d @ ws[layer].T
            return new, None

        ws, _ = jax.lax.scan(body, ws, idx)
        return ws

    shapes = list(zip(sizes[:-1], sizes[1:], strict=True))
    ws = [jnp.full(s, 1e-3, jnp.float32) for s in shapes]
    return jax.jit(epoch, donate_argnums=(0,)), ws


def gemm_flops(sizes: tuple[int, ...], batch: int, n_batches: int) -> float:
    """FLOPs of :func:`gemm_epoch`: forward 2·B·Σ d_in d_out, backward twice that minus the input gradient."""
    s = sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    return float(n_batches * batch * (6 * s - 2 * sizes[0] * sizes[1]))


class Case:
    """One compiled epoch program and its state (a method, or the GEMM reference)."""

    def __init__(self, name, run, compile_s):
        self.name, self.run, self.compile_s, self.times = name, run, compile_s, []


def method_case(name: str, hidden: tuple[int, ...], datasets: dict, batch: int, seed: int) -> Case:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from emtdamp.config import load_config
    from emtdamp.loops.centralised import make_epoch_fn
    from emtdamp.runs import method_of

    path, overrides = METHODS[name]
    cfg = load_config(ROOT / path, [*overrides, f"model.hidden=[{','.join(map(str, hidden))}]"])
    opts = dict(cfg.data.options)
    key_data = tuple(sorted(opts.items()))
    if key_data not in datasets:
        from emtdamp.data import load
        datasets[key_data] = load("mnist5k", seed=0, **opts)
    data = datasets[key_data]
    method = method_of(cfg)
    algo = method.build(cfg.model.spec(), data.spec, cfg.method.hparams)
    init_key, loop_key = jax.random.split(jax.random.PRNGKey(seed))
    state = algo.init(init_key)
    state = jax.tree_util.tree_map(lambda a: a.copy() if isinstance(a, jax.Array) else a, state)
    x = jnp.asarray(data.x_train.astype(np.float32))
    y = jnp.asarray(data.y_train)
    t0 = time.perf_counter()
    compiled = make_epoch_fn(algo, min(batch, len(data.x_train))).lower(state, loop_key, x, y).compile()
    end = None
    if algo.end_epoch is not None:
        end = jax.jit(algo.end_epoch).lower(state, jnp.asarray(1)).compile()
    compile_s = time.perf_counter() - t0
    box = {"state": state, "ep": 0}

    def run():
        box["ep"] += 1
        st, loss = compiled(box["state"], jax.random.fold_in(loop_key, box["ep"]), x, y)
        if end is not None:
            st = end(st, jnp.asarray(box["ep"]))
        jax.block_until_ready(st)
        float(loss)
        box["state"] = st

    return Case(name, run, compile_s)


def gemm_case(hidden: tuple[int, ...], x, batch: int) -> Case:
    import jax
    import jax.numpy as jnp

    sizes = (x.shape[1], *hidden, 10)
    fn, ws = gemm_epoch(sizes, batch)
    key = jax.random.PRNGKey(0)
    lr = jnp.asarray(1e-9, jnp.float32)
    t0 = time.perf_counter()
    compiled = fn.lower(ws, key, x, lr).compile()
    compile_s = time.perf_counter() - t0
    box = {"ws": ws}

    def run():
        box["ws"] = compiled(box["ws"], key, x, lr)
        jax.block_until_ready(box["ws"])

    return Case("gemm", run, compile_s)


def bench_size(hidden, methods, repeats, batch, seed, datasets) -> list[dict]:
    import jax.numpy as jnp
    import numpy as np

    from emtdamp.data import load

    key0 = ()
    if key0 not in datasets:
        datasets[key0] = load("mnist5k", seed=0)
    x = jnp.asarray(datasets[key0].x_train.astype(np.float32))
    cases = [gemm_case(hidden, x, batch)] + [method_case(m, hidden, datasets, batch, seed) for m in methods]
    for c in cases:     # one untimed epoch each (first-call overheads)
        c.run()
    for _ in range(repeats):
        for c in cases:
            t = time.perf_counter()
            c.run()
            c.times.append(time.perf_counter() - t)
    sizes = (x.shape[1], *hidden, 10)
    n_batches = -(-x.shape[0] // batch)
    flops = gemm_flops(sizes, batch, n_batches)
    mins = {c.name: min(c.times) for c in cases}
    rows = []
    for c in cases:
        t = np.asarray(c.times)
        rows.append({"network": "-".join(map(str, sizes)), "method": c.name, "min_s": float(t.min()),
                     "median_s": float(np.median(t)), "spread": float((t.max() - t.min()) / t.min()),
                     "x_adam": float(t.min() / mins["adam"]) if "adam" in mins else float("nan"),
                     "x_gemm": float(t.min() / mins["gemm"]), "compile_s": c.compile_s,
                     "gemm_gflops": flops / 1e9, "repeats": len(t)})
    return rows


FED_CONFIGS = {"mnist5k": ("configs/fed_mnist5k.yaml", 0.9), "fashion_mnist": ("configs/fed_fashion_mnist.yaml", 0.85)}


def fed_one(name: str, clients: int, chunk: int, data: str, rounds: int, partition: str = "dirichlet") -> dict:
    """One federated row in this process: ``rounds`` rounds of ``name`` over ``clients`` clients of ``data``
    (the method block of :data:`FED_CONFIGS`' config, ``client_chunk = chunk``); s/round and peak RSS."""
    from emtdamp.config import load_config
    from emtdamp.loops.federated import chunk_layout
    from emtdamp.runs import run_config

    path, target = FED_CONFIGS[data]
    block = f"{{name: {name}, n_clients: {clients}, partition: {partition}, alpha: 0.5, target: {target}"
    block += ", beta: 1.0, gamma: 1.0, aggregation: tempered, server_step: 0.3" if name == "emtdamp_fed" \
        else ", optimizer: adam, learning_rate: 0.001"
    block += f", client_chunk: {chunk}}}"
    cfg = load_config(ROOT / path, [f"method={block}", f"train.epochs={rounds}", f"train.eval_every={rounds}",
                                    "train.progress=false", "output.checkpoint=false", "output.plots=false"])
    n_chunks, per_chunk = chunk_layout(clients, chunk)
    t = time.perf_counter()
    _, summary, _ = run_config(cfg, run_dir=f"/tmp/bench_scaling_fed/{data}-{name}-{clients}-{chunk}", progress=False)
    return {"data": data, "method": name, "clients": clients, "partition": partition, "chunk": chunk,
            "layout": f"{n_chunks}x{per_chunk}", "s_per_round": summary["time"].get("per_round_s", float("nan")),
            "compile_s": summary["time"].get("compile_s", float("nan")), "wall_s": time.perf_counter() - t,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "error": ""}


def fed_rows(clients: list[int], rounds: int, data: str, chunks: list[int]) -> list[dict]:
    """s/round and peak RSS of the federated methods at each client count and chunk, each row in a fresh
    process (``--fed-one``) so its peak RSS is its own."""
    rows = []
    for k in clients:
        for chunk in chunks:
            for name in ("emtdamp_fed", "fedavg"):
                row = None
                for partition in ("dirichlet", "iid"):
                    spec = json.dumps({"name": name, "clients": k, "chunk": chunk, "data": data, "rounds": rounds,
                                       "partition": partition})
                    out = subprocess.run([sys.executable, __file__, "--fed-one", spec], capture_output=True,
                                         text=True)
                    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("FEDROW ")]
                    last_err = (out.stderr.strip().splitlines() or [""])[-1][:160]
                    row = json.loads(lines[-1][7:]) if lines else failed_fed_row(
                        json.loads(spec), f"exit {out.returncode}: {last_err}", float("nan"))
                    if partition == "dirichlet" and "could not draw a Dirichlet" in row["error"]:
                        continue   # Dirichlet(0.5) leaves a client empty: fall back to iid and say so
                    break
                if row["partition"] == "iid" and not row["error"]:
                    row["error"] = f"iid split: Dirichlet(0.5) could not give every one of the {k} clients a row"
                rows.append(row)
                print(f"  fed {data} {name:<12} clients {k:>6} chunk {chunk:>5} ({row['layout']})  "
                      f"{row['s_per_round']:.4f} s/round  peak RSS {row['peak_rss_mb']:.0f} MB  "
                      f"[{row['partition']}] {row['error']}", flush=True)
    return rows


def fed_one_main(spec: str) -> int:
    """``--fed-one JSON``: run :func:`fed_one` and print its row as ``FEDROW {json}``."""
    a = json.loads(spec)
    try:
        row = fed_one(a["name"], a["clients"], a["chunk"], a["data"], a["rounds"], a["partition"])
    except Exception as e:   # noqa: BLE001  (a client count a method refuses: report, go on)
        row = failed_fed_row(a, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}",
                             resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print("FEDROW " + json.dumps(row), flush=True)
    return 0


def failed_fed_row(spec: dict, error: str, peak_rss_mb: float) -> dict:
    """The row of a federated run that did not finish (``spec``: the ``--fed-one`` arguments): no timings."""
    return {"data": spec["data"], "method": spec["name"], "clients": spec["clients"], "partition": spec["partition"],
            "chunk": spec["chunk"], "layout": "", "s_per_round": float("nan"), "compile_s": float("nan"),
            "wall_s": float("nan"), "peak_rss_mb": peak_rss_mb, "error": error}


def render(rows: list[dict], fed: list[dict], header: str, fed_header: str = "") -> str:
    lines = [header, "",
             "| network | method | min s/epoch | median s | spread | × adam | × GEMM | compile s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['network']} | {r['method']} | {r['min_s']:.4f} | {r['median_s']:.4f} | "
                     f"{100 * r['spread']:.0f}% | {r['x_adam']:.2f} | {r['x_gemm']:.2f} | {r['compile_s']:.2f} |")
    if fed:
        lines += ["", fed_header, "", "| data | method | clients | partition | client_chunk (chunks x clients) | "
                  "s/round | compile s | peak RSS MB (row's process) | note |", "|---|---|---|---|---|---|---|---|---|"]
        for r in fed:
            lines.append(f"| {r['data']} | {r['method']} | {r['clients']} | {r['partition']} | {r['chunk']} "
                         f"({r['layout']}) | {r['s_per_round']:.4f} | {r['compile_s']:.1f} | {r['peak_rss_mb']:.0f} "
                         f"| {r['error']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=DEFAULT_SIZES, help="hidden widths per network, e.g. 128,512-512")
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma list of {sorted(METHODS)}")
    p.add_argument("--repeats", type=int, default=5, help="timed epochs per method (interleaved)")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--platform", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--fed-clients", default="", help="e.g. 10,100,1000,10000 (empty: no federated rows)")
    p.add_argument("--fed-rounds", type=int, default=3)
    p.add_argument("--fed-data", default="mnist5k", choices=sorted(FED_CONFIGS),
                   help="federated rows' dataset (fashion_mnist: 60,000 rows, enough for 10,000 clients)")
    p.add_argument("--fed-chunk", default="256",
                   help="method.client_chunk of the federated rows, comma list (0 = all clients in one vmap)")
    p.add_argument("--fed-one", default="", help=argparse.SUPPRESS)   # internal: one federated row (JSON)
    p.add_argument("--out", default="benchmarks/scaling", help="output stem (OUT.md, OUT.csv); '' = print only")
    args = p.parse_args(argv)
    if args.fed_one:
        return fed_one_main(args.fed_one)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        print(f"error: unknown method(s) {bad}; choose from {sorted(METHODS)}", file=sys.stderr)
        return 2
    os.environ["JAX_PLATFORMS"] = args.platform if args.platform == "cpu" else "cuda"
    import jax

    dev = jax.devices()[0]
    header = (f"Per-epoch seconds on mnist5k (4,000 rows, batch {args.batch}), {dev.platform} "
              f"({dev.device_kind}, {os.cpu_count()} CPUs visible), jax {jax.__version__}; {args.repeats} "
              f"interleaved epochs per method after one warm-up epoch; ratios of minima. "
              f"`python scripts/bench_scaling.py --sizes {args.sizes} --methods {args.methods} "
              f"--repeats {args.repeats}`")
    print(header, flush=True)
    rows, datasets = [], {}
    for hidden in parse_sizes(args.sizes):
        rs = bench_size(hidden, methods, args.repeats, args.batch, args.seed, datasets)
        rows += rs
        for r in rs:
            print(f"{r['network']:<18}{r['method']:<10}{r['min_s']:>9.4f} s  med {r['median_s']:.4f}  "
                  f"spread {100 * r['spread']:3.0f}%  x adam {r['x_adam']:5.2f}  x gemm {r['x_gemm']:6.2f}  "
                  f"compile {r['compile_s']:6.2f} s", flush=True)
    fed = fed_rows([int(v) for v in args.fed_clients.split(",") if v.strip()], args.fed_rounds, args.fed_data,
                   [int(v) for v in args.fed_chunk.split(",") if v.strip()]) if args.fed_clients else []
    fed_header = ""
    if fed:
        fed_header = (f"Federated rows: `--fed-clients {args.fed_clients} --fed-data {args.fed_data} --fed-chunk "
                      f"{args.fed_chunk} --fed-rounds {args.fed_rounds}` ({FED_CONFIGS[args.fed_data][0]}, "
                      f"784-128-10, 1 local epoch, all clients every round; median of {args.fed_rounds} rounds; each "
                      f"row in a fresh process).")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(render(rows, fed, header, fed_header))
        with out.with_suffix(".csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        if fed:
            with out.with_name(out.name + "_fed.csv").open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(fed[0]))
                w.writeheader()
                w.writerows(fed)
        print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
