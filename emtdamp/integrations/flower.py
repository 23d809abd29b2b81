"""Federated training on Flower's Deployment Engine: a ClientApp, a ServerApp and a local launcher.

This is the one module that imports ``flwr`` (``pip install 'emtdamp[flower]'``, Flower 1.42).

- :data:`client_app` runs the method's ``client_update`` on its own data shard. A SuperNode started with
  ``--node-config "partition-id=p num-partitions=N"`` hosts the clients ``k`` with ``k % N == p`` of the
  config's partition (:func:`emtdamp.loops.federated.partition`, the same split as the vmapped simulation).
- :data:`server_app` runs the rounds: it draws each round's clients and local PRNG keys exactly as the
  vmapped simulation does (:func:`emtdamp.loops.federated.select_clients`), sends every selected client the
  packed broadcast (:class:`emtdamp.methods.federated.MessageCodec`, as a Flower ``ArrayRecord``), unpacks
  the uploads and calls the method's ``aggregate`` unchanged. A client that fails or does not answer within
  ``round-timeout`` seconds is dropped from that round (aggregation weight 0, so the others are reweighted)
  and logged in ``metrics.jsonl`` (``missing``); a SuperNode that timed out is not asked again until it
  reconnects. The server writes the run folder of ``emtdamp train`` (``metrics.jsonl`` per round, a
  checkpoint per round, ``summary.json`` with bytes up and down per round) and resumes from its checkpoint.
- :func:`run_local` (``emtdamp flower CONFIG --supernodes N``) starts a SuperLink and N SuperNodes on
  127.0.0.1 on free ports, submits the app with ``flwr run``, waits (bounded) and stops every process it
  started, also on error or Ctrl-C.

Each SuperNode gets its own Runtime API port (``--port``; a second SuperNode on the default 9094 of the
same machine exits at once). On the HTTP 401 "Runtime task-token authentication failed" an earlier attempt
met, see docs/flower.md.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from emtdamp import config as cfgmod
from emtdamp.checkpoints import atomic_write, checkpointed_epoch, restore, save_checkpoint
from emtdamp.data import load
from emtdamp.data.record import DataRecord
from emtdamp.loops.centralised import default_sparsity, evaluate
from emtdamp.loops.federated import partition, reached, select_clients
from emtdamp.methods.federated import flat_bytes
from emtdamp.methods.registry import get_fed_method

APP_MODULE = "emtdamp_flower_app"
ERROR_FILE = "flower_error.txt"


# ----------------------------------------------------------------------------- shared set-up


class Setup:
    """What both sides build from the run's ``config.yaml``: the config, dataset, built method, its server
    template and the clients' padded data (as :func:`emtdamp.loops.federated.train_federated` casts it)."""

    def __init__(self, config_path: str):
        self.cfg = cfgmod.load_config(config_path, [])
        cfg = self.cfg
        self.fm = get_fed_method(cfg.method.name)
        if self.fm is None:
            raise ValueError(f"method.name={cfg.method.name!r} is not a federated method; use emtdamp_fed or fedavg")
        self.hp = cfg.method.hparams
        self.data = load(cfg.data.name, seed=cfg.data.seed, **cfg.data.options)
        self.algo = self.fm.build(cfg.model.spec(), self.data.spec, self.hp, cfg.train.batch_size)
        self.like = jax.eval_shape(self.algo.init, jax.random.PRNGKey(0))
        self.n_selected = max(1, round(self.hp.client_fraction * self.hp.n_clients))

    @functools.cached_property
    def clients(self):
        """``(X, Y, M, counts)`` numpy, leading client axis."""
        cd = partition(self.data, self.hp, self.cfg.train.seed)
        npdt = np.float64 if self.cfg.train.dtype == "float64" else np.float32
        y = cd.y.astype(npdt) if self.data.spec.task == "regression" else cd.y
        return cd.x.astype(npdt), y, cd.mask.astype(npdt), np.asarray(cd.counts)

    @functools.cached_property
    def client_step(self):
        return jax.jit(self.algo.client_update)

    @functools.cached_property
    def aggregate(self):
        return jax.jit(self.algo.aggregate)


@functools.lru_cache(maxsize=4)
def _setup(config_path: str) -> Setup:
    return Setup(config_path)


def _to_records(flat: dict, name: str) -> dict:
    """A flat message as a Flower ``ArrayRecord`` ``name`` plus the arrays' shapes (``name + "-shapes"``:
    Flower stores a 0-d array as shape ``(1,)``)."""
    return {name: ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in flat.items()}),
            f"{name}-shapes": ConfigRecord({k: ",".join(str(n) for n in np.shape(v)) for k, v in flat.items()})}


def _from_records(content: RecordDict, name: str) -> dict:
    rec, shapes = content[name], content[f"{name}-shapes"]
    return {k: rec[k].numpy().reshape(tuple(int(n) for n in str(shapes[k]).split(",") if n)) for k in rec.keys()}


# ----------------------------------------------------------------------------- ClientApp

client_app = ClientApp()


@client_app.query()
def _query(msg: Message, context: Context) -> Message:
    """Which clients this SuperNode hosts: its ``partition-id`` and ``num-partitions`` node config."""
    nc = context.node_config
    return Message(RecordDict({"node": ConfigRecord({"partition-id": int(nc.get("partition-id", 0)),
                                                     "num-partitions": int(nc.get("num-partitions", 1))})}),
                   reply_to=msg)


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    """One client's local update: unpack the broadcast, run ``client_update`` with the key the server drew
    for this (round, client), pack the upload."""
    s = _setup(str(context.run_config["emtdamp-config"]))
    conf = msg.content["config"]
    k = int(conf["client"])
    nc = context.node_config
    if k % int(nc.get("num-partitions", 1)) != int(nc.get("partition-id", 0)):
        raise ValueError(f"client {k} is not hosted by this SuperNode (node config {dict(nc)})")
    fail = os.environ.get("EMTDAMP_FLOWER_FAIL_CLIENT")
    if fail is not None and int(fail) == k:   # fault injection for tests: this client raises
        raise RuntimeError(f"client {k}: failure injected by EMTDAMP_FLOWER_FAIL_CLIENT")
    X, Y, M, counts = s.clients
    server = s.algo.codec.unpack_broadcast(_from_records(msg.content, "broadcast"))
    key = jnp.asarray(np.asarray(conf["key"], np.uint32))
    out = s.client_step(server, jnp.asarray(X[k]), jnp.asarray(Y[k]), jnp.asarray(M[k]), key)
    up = s.algo.codec.pack_upload(server, out)
    meta = ConfigRecord({"client": k, "count": int(counts[k]), "round": int(conf["round"]), "slot": int(conf["slot"])})
    return Message(RecordDict({**_to_records(up, "upload"), "meta": meta}), reply_to=msg)


# ----------------------------------------------------------------------------- ServerApp

server_app = ServerApp()


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    run_dir = Path(str(rc["run-dir"]))
    try:
        serve(grid, str(rc["emtdamp-config"]), run_dir, supernodes=int(rc["supernodes"]),
              round_timeout=float(rc["round-timeout"]), resume=bool(rc["resume"]))
    except BaseException as e:
        (run_dir / ERROR_FILE).write_text(f"{type(e).__name__}: {e}\n")
        raise


def _query_nodes(grid: Grid, node_ids: list[int], timeout: float) -> dict[int, tuple[int, int]]:
    """``{node_id: (partition-id, num-partitions)}`` of the nodes that answered a query."""
    msgs = [Message(RecordDict({"ask": ConfigRecord({"what": "partition"})}), dst_node_id=n, message_type="query")
            for n in node_ids]
    out = {}
    for rep in grid.send_and_receive(msgs, timeout=timeout):
        if rep.has_error():
            continue
        c = rep.content["node"]
        out[rep.metadata.src_node_id] = (int(c["partition-id"]), int(c["num-partitions"]))
    return out


def serve(grid: Grid, config_path: str, run_dir: Path, *, supernodes: int, round_timeout: float,
          resume: bool = False, connect_timeout: float = 120.0) -> dict:
    """The federation's server loop (the body of :data:`server_app`); returns the summary dict.

    Rounds, keys and aggregation are those of :func:`emtdamp.loops.federated.train_federated`; the state is
    checkpointed after every round (``checkpoint.npz`` + ``progress.json``), ``resume`` continues after the
    last checkpointed round.
    """
    s = _setup(config_path)
    cfg, algo, data, hp = s.cfg, s.algo, s.data, s.hp
    DataRecord.from_dataset(data).save(run_dir)
    metrics = run_dir / "metrics.jsonl"
    ckpt, prog = run_dir / "checkpoint.npz", run_dir / "progress.json"
    k_init, k_loop = jax.random.split(jax.random.PRNGKey(cfg.train.seed))
    server = algo.init(k_init)
    done = checkpointed_epoch(ckpt, prog) if resume and ckpt.exists() else 0
    history: list[dict] = []
    if done:
        server, done = restore(ckpt, server, prog)
        history = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
        history = [h for h in history if h["round"] <= done]
        metrics.write_text("".join(json.dumps(h) + "\n" for h in history))
    else:
        metrics.write_text("")
    K, n_sel = hp.n_clients, s.n_selected

    t0 = time.perf_counter()
    nodes: dict[int, tuple[int, int]] = {}
    dead: set[int] = set()
    while len(nodes) < supernodes:
        ids = [n for n in grid.get_node_ids() if n not in nodes]
        if ids:
            nodes.update(_query_nodes(grid, ids, timeout=round_timeout))
        if time.perf_counter() - t0 > connect_timeout:
            raise TimeoutError(f"only {len(nodes)} of {supernodes} SuperNodes answered within {connect_timeout:.0f} s")
        if len(nodes) < supernodes:
            time.sleep(0.5)
    hit = next((h["round"] for h in history if reached(data.spec.task, h["test"], hp.target)), None)
    times: list[float] = []
    t_start = time.perf_counter()
    for r in range(done + 1, cfg.train.epochs + 1):
        tr = time.perf_counter()
        online = set(grid.get_node_ids())
        fresh = [n for n in online if n not in nodes and n not in dead]
        if fresh:
            nodes.update(_query_nodes(grid, fresh, timeout=round_timeout))
        live = {n: pc for n, pc in nodes.items() if n in online and n not in dead}
        sel, keys = select_clients(jax.random.fold_in(k_loop, r), K, n_sel)
        sel, keys = np.asarray(sel), np.asarray(keys)
        broadcast = algo.codec.pack_broadcast(server)
        down = flat_bytes(broadcast)
        out = []
        for j, k in enumerate(sel.tolist()):
            host = next((n for n, (p, N) in sorted(live.items()) if k % N == p), None)
            if host is None:
                continue
            conf = ConfigRecord({"round": r, "client": int(k), "slot": j, "key": [int(v) for v in keys[j]]})
            m = Message(RecordDict({**_to_records(broadcast, "broadcast"), "config": conf}), dst_node_id=host,
                        message_type="train", group_id=str(r))
            out.append((host, m))
        replies = list(grid.send_and_receive([m for _, m in out], timeout=round_timeout)) if out else []
        uploads: dict[int, tuple[dict, int]] = {}
        answered = set()
        for rep in replies:
            answered.add(rep.metadata.src_node_id)
            if rep.has_error():
                continue
            meta = rep.content["meta"]
            j = int(meta["slot"])
            if int(meta["round"]) != r or not 0 <= j < len(sel) or int(meta["client"]) != int(sel[j]):
                continue
            uploads[j] = (_from_records(rep.content, "upload"), int(meta["count"]))
        for host, _ in out:   # a node that answered nothing this round is not asked again until it reconnects
            if host not in answered:
                dead.add(host)
        missing = [int(sel[j]) for j in range(len(sel)) if j not in uploads]
        up_bytes = int(sum(flat_bytes(u) for u, _ in uploads.values()))
        if uploads:
            first = next(iter(uploads.values()))[0]
            msgs = [algo.codec.unpack_upload(server, uploads.get(j, (first, 0))[0]) for j in range(len(sel))]
            weights = jnp.asarray([float(uploads[j][1]) if j in uploads else 0.0 for j in range(len(sel))],
                                  jax.tree_util.tree_leaves(server)[0].dtype)
            stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *msgs)
            server = s.aggregate(server, stacked, weights)
            jax.block_until_ready(server)
        times.append(time.perf_counter() - tr)
        test = evaluate(algo, server, data)
        rec = {"round": r, "wall_s": time.perf_counter() - t_start, "test": test,
               "sparsity": default_sparsity(algo, server),
               "bytes_per_client": up_bytes // max(1, len(uploads)), "bytes_up": up_bytes,
               "bytes_down": down * len(out), "clients": [int(k) for k in sel], "missing": missing}
        if missing:
            print(f"emtdamp flower: round {r}: clients {missing} missing (failed or timed out); aggregated "
                  f"{len(uploads)} of {len(sel)}", file=sys.stderr)
        if hit is None and reached(data.spec.task, test, hp.target):
            hit = r
        history.append(rec)
        with open(metrics, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if cfg.output.checkpoint:
            save_checkpoint(ckpt, server, r)
            atomic_write(prog, lambda f, r=r: f.write(json.dumps({"epoch": r}).encode()))
    summary = _summary(s, history, server, times, hit, t0, supernodes)
    save_checkpoint(ckpt, server, cfg.train.epochs)
    atomic_write(run_dir / "summary.json", lambda f: f.write(json.dumps(summary, indent=2).encode()))
    if cfg.output.plots and history:
        from emtdamp.plots import plot_curves

        plot_curves(history, data.spec.task, run_dir / "curves.png", title=f"{cfg.method.name} · {cfg.data.name}",
                    prunes=any(h["sparsity"].get("neurons_pruned_frac", 0) for h in history))
    return summary


def _summary(s: Setup, history: list[dict], server, times: list[float], hit, t0: float, supernodes: int) -> dict:
    """summary.json: the keys ``emtdamp train`` writes for a federated run, plus the Flower extras."""
    cfg, data, hp = s.cfg, s.data, s.hp
    spec = cfg.model.spec()
    last = history[-1] if history else {}
    return {"method": cfg.method.name, "dataset": cfg.data.name, "seed": cfg.train.seed, "epochs": cfg.train.epochs,
            "test": last.get("test", {}), "sparsity": default_sparsity(s.algo, server),
            "time": {"total_s": time.perf_counter() - t0, "epochs_s": float(np.sum(times)) if times else 0.0,
                     "per_round_s": float(np.median(times)) if times else 0.0,
                     "per_epoch_s": float(np.median(times)) if times else 0.0},
            "data_seed": cfg.data.seed, "n_train": data.spec.n_train, "n_test": int(len(data.x_test)),
            "model_kind": spec.kind, "layer_sizes": list(spec.layer_sizes(data.spec)) if spec.kind == "mlp" else None,
            "rounds": cfg.train.epochs, "rounds_to_target": hit, "target": hp.target,
            "bytes_per_round": last.get("bytes_up", 0), "bytes_down_per_round": last.get("bytes_down", 0),
            "bytes_up_by_round": [h["bytes_up"] for h in history],
            "bytes_down_by_round": [h["bytes_down"] for h in history],
            "n_clients": hp.n_clients, "partition": hp.partition, "engine": "flower", "supernodes": supernodes,
            "missing": {str(h["round"]): h["missing"] for h in history if h["missing"]}}


# ----------------------------------------------------------------------------- local launcher


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "emtdamp-flower"
version = "1.0.0"
description = "emtdamp federated methods on Flower"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "emtdamp"

[tool.flwr.app.components]
serverapp = "{module}:server_app"
clientapp = "{module}:client_app"

[tool.flwr.app.config]
emtdamp-config = ""
run-dir = ""
supernodes = 1
round-timeout = 60.0
resume = false
"""


def write_app(folder: Path) -> Path:
    """A minimal Flower App (pyproject.toml + a module re-exporting this module's apps) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(APP_PYPROJECT.format(module=APP_MODULE))
    (folder / f"{APP_MODULE}.py").write_text('"""emtdamp on Flower (see emtdamp.integrations.flower)."""\n\n'
                                              "from emtdamp.integrations.flower import client_app, server_app\n\n"
                                              '__all__ = ["client_app", "server_app"]\n')
    return folder


SESSION_VAR = "EMTDAMP_FLOWER_SESSION"
"""Environment variable marking every process a :class:`Processes` started and all their descendants."""


class Processes:
    """Processes started in their own sessions and stopped together: SIGTERM, then after ``grace`` seconds
    SIGKILL, to each one's process group (a SuperNode's SuperExec and ClientApps) and to every process that
    carries this launcher's :data:`SESSION_VAR` tag in its environment (the SuperLink's SuperExec starts the
    ServerApp in a session of its own, which a group kill misses). Linux: the tag is read from /proc."""

    def __init__(self, log_dir: Path, env: dict):
        self.tag = uuid.uuid4().hex
        self.log_dir, self.env, self.procs = log_dir, {**env, SESSION_VAR: self.tag}, {}

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        log.close()
        self.procs[name] = p
        return p

    def tagged(self) -> list[int]:
        """Live processes carrying this launcher's tag (exited ones, zombies, have no readable environment)."""
        mark = f"{SESSION_VAR}={self.tag}".encode()
        out = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and int(d.name) != os.getpid():
                try:
                    if mark in (d / "environ").read_bytes().split(b"\0"):
                        out.append(int(d.name))
                except OSError:
                    continue
        return out

    def kill(self, name: str, sig=signal.SIGKILL) -> None:
        """Signal the process group of ``name`` (tests kill a SuperNode with it)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.procs[name].pid, sig)

    def _signal_all(self, sig) -> None:
        for name in reversed(list(self.procs)):
            self.kill(name, sig)
        for pid in self.tagged():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def stop_all(self, grace: float = 5.0) -> None:
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
        while self.tagged() and time.monotonic() < deadline:
            time.sleep(0.1)
        self._signal_all(signal.SIGKILL)
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=2)


def flower_command(name: str) -> str:
    """Path of one of Flower's executables (``flwr``, ``flower-superlink``, ``flower-supernode``): on PATH, else
    beside this Python (a virtual environment that was not activated)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise FileNotFoundError(f"{name} not found on PATH or beside {sys.executable}; pip install 'emtdamp[flower]'")
    return found


def _wait_http(port: int, proc: subprocess.Popen, timeout: float, what: str) -> None:
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not answer on 127.0.0.1:{port} within {timeout:.0f} s")


def run_local(cfg: cfgmod.Config, run_dir: Path, *, supernodes: int, resume: bool = False,
              timeout: float = 3600.0, round_timeout: float = 60.0, on_started=None) -> dict:
    """Run ``cfg`` (a federated method) on a local Flower federation: one SuperLink and ``supernodes``
    SuperNodes on 127.0.0.1, free ports, everything stopped at the end (also on error / Ctrl-C).

    ``on_started(processes)`` (optional) is called once the federation is submitted (tests use it to kill a
    SuperNode mid-run). Returns the run's summary; raises TimeoutError past ``timeout`` seconds and
    RuntimeError (with the ServerApp's error) when the federation fails.
    """
    if get_fed_method(cfg.method.name) is None:
        raise ValueError(f"emtdamp flower: method.name={cfg.method.name!r} is not a federated method "
                         "(use emtdamp_fed or fedavg)")
    if supernodes < 1:
        raise ValueError(f"--supernodes {supernodes}: give at least 1")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.yaml"
    if not (resume and config_path.exists()):
        config_path.write_text(yaml.safe_dump(cfgmod.to_dict(cfg), sort_keys=False))
    for stale in (ERROR_FILE, "summary.json"):
        (run_dir / stale).unlink(missing_ok=True)
    work = Path(tempfile.mkdtemp(prefix="emtdamp-flower-"))
    logs = run_dir / "flower_logs"
    logs.mkdir(exist_ok=True)
    env = {**os.environ, "FLWR_HOME": str(work / "flwr"), "FLWR_DISABLE_UPDATE_CHECK": "1",
           "JAX_COMPILATION_CACHE_DIR": os.environ.get("JAX_COMPILATION_CACHE_DIR",
                                                       str(Path(tempfile.gettempdir()) / "emtdamp-jax-cache")),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "PYTHONUNBUFFERED": "1"}
    procs = Processes(logs, env)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):   # not the main thread: no handler, the finally still cleans up
        signal.signal(signal.SIGTERM, on_term)
    try:
        port = free_port()
        (work / "flwr").mkdir(parents=True)
        (work / "flwr" / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
        link = procs.start("superlink", [flower_command("flower-superlink"), "--insecure", "--host", "127.0.0.1",
                                         "--port", str(port)])
        _wait_http(port, link, 60, "flower-superlink")
        for i in range(supernodes):
            procs.start(f"supernode{i}", [
                flower_command("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                "--host", "127.0.0.1", "--port", str(free_port()),
                "--node-config", f"partition-id={i} num-partitions={supernodes}"])
        app = write_app(work / "app")
        rc = (f'emtdamp-config="{config_path.resolve()}" run-dir="{run_dir.resolve()}" supernodes={supernodes} '
              f"round-timeout={float(round_timeout)} resume={'true' if resume else 'false'}")
        sub = subprocess.run([flower_command("flwr"), "run", str(app), "local", "--run-config", rc, "--format", "json"],
                             env=env, capture_output=True, text=True, timeout=120)
        if sub.returncode != 0:
            raise RuntimeError(f"flwr run failed: {(sub.stdout + sub.stderr).strip()[-400:]}")
        if on_started is not None:
            on_started(procs)
        t = time.monotonic()
        while True:
            if (run_dir / "summary.json").exists():
                return json.loads((run_dir / "summary.json").read_text())
            if (run_dir / ERROR_FILE).exists():
                raise RuntimeError(f"the ServerApp failed: {(run_dir / ERROR_FILE).read_text().strip()} "
                                   f"(logs: {logs})")
            if link.poll() is not None:
                raise RuntimeError(f"flower-superlink exited with code {link.returncode} (logs: {logs})")
            if time.monotonic() - t > timeout:
                raise TimeoutError(f"the federation did not finish within {timeout:.0f} s (logs: {logs}); "
                                   "raise --timeout, or resume it with --resume")
            time.sleep(0.5)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGTERM, previous)
