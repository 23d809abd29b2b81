"""emtdamp on Flower's Deployment Engine (emtdamp/integrations/flower.py, `emtdamp flower`).

The federations run a real SuperLink and real SuperNodes on 127.0.0.1 (free ports; every process is stopped
by ``run_local``, also on failure). Flower starts one ClientApp process per message, so a round costs
~15-25 s on a 2-core machine: the federation tests are in the slow tier (``.ci/run`` runs them separately).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("flwr", reason="Flower is not installed: pip install -e '.[dev]' (or '.[flower]')")

from emtdamp import config as cfgmod  # noqa: E402
from emtdamp.checkpoints import load_checkpoint  # noqa: E402
from emtdamp.data import load  # noqa: E402
from emtdamp.integrations import flower as fl  # noqa: E402
from emtdamp.loops.federated import train_federated  # noqa: E402
from emtdamp.methods.registry import get_fed_method  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BOSTON = str(ROOT / "configs" / "fed_boston.yaml")


def _simulate(cfg):
    data = load(cfg.data.name, seed=cfg.data.seed, **cfg.data.options)
    return train_federated(get_fed_method(cfg.method.name), cfg.method.hparams, cfg.model.spec(), data,
                           rounds=cfg.train.epochs, batch_size=cfg.train.batch_size, seed=cfg.train.seed,
                           progress=False)


def _history(run_dir):
    return [json.loads(ln) for ln in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
               for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True))


def _no_leftovers(procs: fl.Processes):
    """Nothing the launcher started runs on: neither its processes, nor their process groups, nor any process
    carrying its environment tag (descendants in other sessions included); zombies (exited) excepted."""
    out = subprocess.run(["ps", "-eo", "pgid=,stat=,pid=,args="], capture_output=True, text=True).stdout
    for name, p in procs.procs.items():
        assert p.poll() is not None, f"{name} still running"
        alive = [ln for ln in out.splitlines() if ln.split()[0] == str(p.pid) and not ln.split()[1].startswith("Z")]
        assert not alive, f"processes of {name}'s group still running: {alive}"
    assert procs.tagged() == [], "processes started by the federation still running"


# ----------------------------------------------------------------------------- default tier (fast)


def test_generated_app_is_a_valid_flower_app(tmp_path):
    from flwr.cli.config_utils import load_and_validate

    app = fl.write_app(tmp_path / "app")
    config, _ = load_and_validate(app / "pyproject.toml", check_module=False)
    comps = config["tool"]["flwr"]["app"]["components"]
    assert comps == {"serverapp": f"{fl.APP_MODULE}:server_app", "clientapp": f"{fl.APP_MODULE}:client_app"}
    assert set(config["tool"]["flwr"]["app"]["config"]) == {"emtdamp-config", "run-dir", "supernodes",
                                                            "round-timeout", "resume"}


def test_processes_stop_whole_groups_and_ports_are_local(tmp_path):
    procs = fl.Processes(tmp_path, dict(os.environ))
    # a parent that starts a child in its group (as a SuperNode starts its SuperExec and ClientApps) and one in
    # a session of its own (as the SuperLink's SuperExec starts the ServerApp), all sleeping
    procs.start("tree", [sys.executable, "-c", "import subprocess, time; subprocess.Popen(['sleep', '60']); "
                         "subprocess.Popen(['sleep', '61'], start_new_session=True); time.sleep(60)"])
    time.sleep(1.0)
    assert len(procs.tagged()) == 3
    t = time.monotonic()
    procs.stop_all(grace=2)
    assert time.monotonic() - t < 10
    _no_leftovers(procs)
    port = fl.free_port()
    assert 1024 <= port < 65536


def test_cli_flower_rejects_a_centralised_config(capsys):
    from emtdamp.cli import main

    assert main(["flower", str(ROOT / "configs" / "boston.yaml"), "--supernodes", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a federated method" in err[0]


# ----------------------------------------------------------------------------- slow tier: real federations


@pytest.mark.slow
def test_three_supernodes_equal_the_vmapped_simulation(tmp_path):
    """3 SuperNodes, 3 rounds of fed_boston (one client per SuperNode): the server's posterior equals the
    vmapped simulation's with the same keys (max abs difference <= 1e-5 in float32) and so do the metrics."""
    cfg = cfgmod.load_config(BOSTON, ["method.n_clients=3", "train.epochs=3", "output.plots=false"])
    started = []
    summary = fl.run_local(cfg, tmp_path / "run", supernodes=3, timeout=400, round_timeout=120,
                           on_started=started.append)
    _no_leftovers(started[0])
    sim = _simulate(cfg)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.npz", jax.eval_shape(lambda: sim.state))
    assert _max_diff(state, sim.state) <= 1e-5
    hist = _history(tmp_path / "run")
    assert [h["round"] for h in hist] == [1, 2, 3] and all(not h["missing"] for h in hist)
    for h, g in zip(hist, sim.history, strict=True):
        for k, v in g["test"].items():
            assert h["test"][k] == pytest.approx(v, rel=1e-4, abs=1e-5), (h["round"], k)
        assert h["bytes_up"] == g["bytes_up"] and h["bytes_down"] == g["bytes_down"]
    assert summary["bytes_up_by_round"] == [g["bytes_up"] for g in sim.history]
    assert summary["engine"] == "flower" and summary["missing"] == {}


@pytest.mark.slow
def test_a_killed_supernode_is_dropped_and_the_run_finishes(tmp_path):
    """SuperNode 2 (client 2 of 3) is killed once round 1 is logged: later rounds aggregate clients 0 and 1
    (reweighted), log client 2 as missing, every round is checkpointed and the run ends with its summary."""
    cfg = cfgmod.load_config(BOSTON, ["method.n_clients=3", "train.epochs=4", "output.plots=false"])
    run = tmp_path / "run"
    killed, holder = threading.Event(), []

    def killer(procs):
        holder.append(procs)

        def watch():
            t = time.monotonic()
            while time.monotonic() - t < 300:
                if (run / "metrics.jsonl").exists() and len(_history(run)) >= 1:
                    procs.kill("supernode2")
                    killed.set()
                    return
                time.sleep(0.2)

        threading.Thread(target=watch, daemon=True).start()

    summary = fl.run_local(cfg, run, supernodes=3, timeout=600, round_timeout=45, on_started=killer)
    assert killed.is_set()
    _no_leftovers(holder[0])
    hist = _history(run)
    assert [h["round"] for h in hist] == [1, 2, 3, 4]
    lost = [h for h in hist if h["missing"]]
    assert lost and all(h["missing"] == [2] for h in lost) and hist[-1]["missing"] == [2]
    assert summary["missing"] == {str(h["round"]): [2] for h in lost}
    assert all(h["bytes_up"] == 2 * h["bytes_per_client"] for h in lost)
    # the rounds without client 2 still learn: the final RMSE is within 15% of the clean simulation's. 15% is
    # the noise of a clean run: its 4-round RMSE has a 14% relative sd across data splits (3.86-5.54 over
    # data.seed 0-4); dropping client 2 from round 2 or 3 on (the kill lands between them) gives 4.20 / 4.23
    # against the clean 4.07 (both computed with the same keys outside Flower), so the margin is ~4x.
    clean = _simulate(cfg)
    assert summary["test"]["rmse"] == pytest.approx(clean.test["rmse"], rel=0.15)
    assert summary["test"]["rmse"] < hist[0]["test"]["rmse"]


@pytest.mark.slow
def test_resume_after_a_server_crash_gives_the_uninterrupted_result(tmp_path):
    """The SuperLink (and with it the ServerApp) is killed after round 2's checkpoint; `--resume` starts a new
    federation that continues at round 3 and ends with the state of an uninterrupted 3-round simulation."""
    cfg = cfgmod.load_config(BOSTON, ["method.n_clients=2", "train.epochs=3", "output.plots=false"])
    run = tmp_path / "run"

    def crash(procs):
        def watch():
            t = time.monotonic()
            while time.monotonic() - t < 300:
                if (run / "progress.json").exists() and json.loads((run / "progress.json").read_text())["epoch"] >= 2:
                    procs.kill("superlink")
                    return
                time.sleep(0.1)

        threading.Thread(target=watch, daemon=True).start()

    with pytest.raises(RuntimeError):
        fl.run_local(cfg, run, supernodes=2, timeout=400, round_timeout=120, on_started=crash)
    done = [h["round"] for h in _history(run)]
    assert done[:2] == [1, 2] and not (run / "summary.json").exists()
    fl.run_local(cfg, run, supernodes=2, resume=True, timeout=400, round_timeout=120)
    assert [h["round"] for h in _history(run)] == [1, 2, 3]
    sim = _simulate(cfg)
    state = load_checkpoint(run / "checkpoint.npz", jax.eval_shape(lambda: sim.state))
    assert _max_diff(state, sim.state) <= 1e-5
