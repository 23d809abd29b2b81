"""The shared training loop, run folders, the summary.json schema and the CLI end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emtdamp import cli
from emtdamp import config as C
from emtdamp.data import load
from emtdamp.loops.centralised import epoch_batches, train
from emtdamp.methods import Batch, ModelSpec, get_method
from emtdamp.runs import SUMMARY_KEYS, load_checkpoint, run_config, save_checkpoint


def test_epoch_batches_cover_each_row_once_with_padding():
    idx, w = epoch_batches(jax.random.PRNGKey(0), 103, 25)
    assert idx.shape == (5, 25) and float(w.sum()) == 103
    real = np.asarray(idx)[np.asarray(w) > 0]
    assert sorted(real.tolist()) == list(range(103))


def test_padding_rows_change_nothing():
    """A step on a batch with extra weight-0 rows equals the step on the real rows alone."""
    data = load("boston")
    m = get_method("adam")
    hp = m.hparams_cls()
    algo = m.build(ModelSpec((8,)), data.spec, hp)
    st = algo.init(jax.random.PRNGKey(0))
    x, y = jnp.asarray(data.x_train[:10]), jnp.asarray(data.y_train[:10])
    a, _ = algo.step(st, Batch(x, y, jnp.ones(10)))
    xp = jnp.concatenate([x, 100 * jnp.ones((6, 13))])
    yp = jnp.concatenate([y, 50 * jnp.ones((6, 1))])
    b, _ = algo.step(st, Batch(xp, yp, jnp.r_[jnp.ones(10), jnp.zeros(6)]))
    for u, v in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7)


def test_train_is_reproducible_from_the_seed():
    data = load("boston")
    m = get_method("sgd")
    r1 = train(m, m.hparams_cls(learning_rate=0.01), ModelSpec((8,)), data, epochs=3, batch_size=32, seed=5,
               progress=False)
    r2 = train(m, m.hparams_cls(learning_rate=0.01), ModelSpec((8,)), data, epochs=3, batch_size=32, seed=5,
               progress=False)
    assert r1.test == r2.test and len(r1.history) == 3


def test_run_folder_and_summary_schema(tmp_path):
    cfg = C.from_dict({"data": {"name": "mnist5k"}, "model": {"hidden": [16]}, "method": {"name": "adam"},
                       "train": {"epochs": 2, "batch_size": 200, "progress": False}}, "tiny")
    run_dir, summary, res = run_config(cfg, tmp_path / "run")
    for f in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoint.npz", "curves.png", "calibration.png"):
        assert (run_dir / f).exists(), f
    s = json.loads((run_dir / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(s)
    assert set(s["test"]) == {"accuracy", "nll", "ece"}
    assert set(s["sparsity"]) >= {"neurons_pruned_frac", "weights_zero_frac", "params_remaining"}
    assert set(s["time"]) == {"total_s", "epochs_s", "per_epoch_s", "compile_s", "compile_eval_s"}
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2] and "accuracy" in lines[-1]["test"]
    assert s["sparsity"]["params_remaining"] == 784 * 16 + 16 + 16 * 10 + 10
    # the resolved config round-trips
    again = C.from_dict(C.read_yaml(run_dir / "config.yaml"))
    assert again.model.hidden == (16,) and again.train.batch_size == 200
    # checkpoints restore exactly, and refuse a mismatched structure
    restored = load_checkpoint(run_dir / "checkpoint.npz", res.state)
    for u, v in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(res.state), strict=True):
        np.testing.assert_array_equal(u, v)
    save_checkpoint(tmp_path / "other.npz", {"a": jnp.ones(3)})
    with pytest.raises(ValueError, match="different method or network"):
        load_checkpoint(tmp_path / "other.npz", res.state)


def test_cli_train_list_predict_end_to_end(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {name: boston}\nmodel: {hidden: [8]}\nmethod: {name: adam}\n"
                   "train: {epochs: 3, batch_size: 64, progress: false}\n")
    out = tmp_path / "run"
    assert cli.main(["train", str(cfg), f"output.dir={out}", "method.learning_rate=0.01"]) == 0
    text = capsys.readouterr().out
    assert "test_rmse" in text and str(out) in text
    assert C.read_yaml(out / "config.yaml")["method"]["learning_rate"] == 0.01
    assert cli.main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "boston" in listing and "adam" in listing
    # predict on raw-unit inputs (npz) and on a dataset's test split
    x_raw = np.asarray(load("boston").info["x_transform"]["mean"])[None, :].repeat(4, 0)
    np.savez(tmp_path / "x.npz", x=x_raw)
    assert cli.main(["predict", str(out), str(tmp_path / "x.npz"), "--out", str(tmp_path / "p.npz")]) == 0
    p = np.load(tmp_path / "p.npz")
    assert p["mean"].shape == (4, 1) and (p["var"] > 0).all() and 5 < p["mean"][0, 0] < 50
    assert cli.main(["predict", str(out), "boston", "--out", str(tmp_path / "q.npz")]) == 0
    assert np.load(tmp_path / "q.npz")["mean"].shape == (51, 1)
    np.savez(tmp_path / "bad.npz", x=np.ones((2, 5)))
    assert cli.main(["predict", str(out), str(tmp_path / "bad.npz"), "--out", str(tmp_path / "r.npz")]) == 2
    assert "expects (n, 13)" in capsys.readouterr().err


def test_cli_reports_config_errors_without_traceback(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {name: boston}\nmethod: {name: adam}\ntrain: {epochs: 1, batchsize: 3}\n")
    assert cli.main(["train", str(cfg)]) == 2
    assert "train: unknown key(s) ['batchsize']" in capsys.readouterr().err
    assert cli.main(["train", str(tmp_path / "missing.yaml")]) == 2


def test_cli_sweep_writes_one_row_per_run(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("data: {name: boston}\nmodel: {hidden: [4]}\nmethod: {name: adam}\n"
                   "train: {epochs: 1, batch_size: 128, progress: false}\n"
                   "output: {plots: false, checkpoint: false}\n"
                   "sweep: {grid: {method.name: [adam, sgd]}, seeds: [0, 1]}\n")
    assert cli.main(["sweep", str(cfg), "--out", str(tmp_path / "sw")]) == 0
    rows = (tmp_path / "sw" / "sweep.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("run,method")


def test_killed_run_resumes_to_the_same_result(tmp_path):
    """SIGKILL mid-run, then --resume: final metrics equal an uninterrupted run of the same seed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {name: mnist5k}\nmodel: {hidden: [32]}\nmethod: {name: adam}\n"
                   "train: {epochs: 40, batch_size: 100, progress: false}\n"
                   "output: {plots: false, checkpoint_every: 1}\n")
    full = tmp_path / "full"
    assert cli.main(["train", str(cfg), f"output.dir={full}"]) == 0
    part = tmp_path / "part"
    proc = subprocess.Popen([sys.executable, "-m", "emtdamp.cli", "train", str(cfg), f"output.dir={part}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline:  # wait until a few epochs are checkpointed, then kill hard
        prog = part / "progress.json"
        if prog.exists() and json.loads(prog.read_text())["epoch"] >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads((part / "progress.json").read_text())["epoch"]
    assert 3 <= done < 40, "the run finished before it could be killed; make it longer"
    assert cli.main(["train", str(part), "--resume"]) == 0
    a = json.loads((full / "summary.json").read_text())
    b = json.loads((part / "summary.json").read_text())
    assert a["test"] == b["test"]
    epochs = [json.loads(x)["epoch"] for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 41))


def test_metrics_against_hand_computed_values():
    from emtdamp.methods import Predictive
    from emtdamp.metrics import classification_metrics, expected_calibration_error, regression_metrics

    y = np.array([[0.0], [1.0], [2.0], [3.0]])
    pred = Predictive(mean=np.array([[0.0], [1.0], [2.0], [5.0]]), var=np.ones((4, 1)))
    m = regression_metrics(pred, y, np.array([10.0]), np.array([2.0]))  # original units: y*2+10
    assert m["rmse"] == pytest.approx(np.sqrt(16 / 4))  # one error of 2 std units = 4 original units
    assert m["nmse"] == pytest.approx(4 / 5)  # sum err^2 = 4 (std units), sum (y - ybar)^2 = 5
    assert m["coverage90"] == 0.75  # |err| = 2 > 1.645 std for the last point only
    nll = 0.5 * (np.log(2 * np.pi * 4) + np.array([0, 0, 0, 16]) / 4)
    assert m["nll"] == pytest.approx(nll.mean())
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    labels = np.array([0, 1, 1])
    c = classification_metrics(Predictive(probs=probs), labels)
    assert c["accuracy"] == pytest.approx(2 / 3)
    assert c["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.8])))
    # bins of width 1/15: 0.9, 0.6, 0.8 fall in separate bins -> ECE = mean |acc - conf|
    assert expected_calibration_error(probs, labels) == pytest.approx((0.1 + 0.6 + 0.2) / 3)


def test_checkpoint_round_trips_typed_prng_keys(tmp_path):
    st = {"key": jax.random.key(3), "a": jnp.arange(3.0)}
    save_checkpoint(tmp_path / "c.npz", st)
    back = load_checkpoint(tmp_path / "c.npz", st)
    np.testing.assert_array_equal(jax.random.key_data(back["key"]), jax.random.key_data(st["key"]))
    np.testing.assert_array_equal(back["a"], st["a"])


def test_loop_tolerates_a_state_whose_leaves_share_one_buffer():
    """The epoch function donates the state; an init returning one array twice must still work."""
    import dataclasses

    m = get_method("adam")

    def aliasing_build(model, spec, hp):
        algo = m.build(model, spec, hp)

        def aliasing_init(key):
            st = algo.init(key)
            return st.replace(noise_var=st.learning_rate)  # two leaves, one buffer

        return dataclasses.replace(algo, init=aliasing_init)

    shared = dataclasses.replace(m, build=aliasing_build)
    data = load("boston")
    res = train(shared, m.hparams_cls(), ModelSpec((4,)), data, epochs=2, batch_size=64, progress=False)
    assert np.isfinite(res.test["rmse"])


def test_vmapped_seeds_equal_separate_runs():
    from emtdamp.loops.centralised import train_seeds

    data = load("boston")
    m = get_method("adam")
    hp = m.hparams_cls(learning_rate=0.01)
    res, _ = train_seeds(m, hp, ModelSpec((8,)), data, seeds=[0, 3], epochs=3, batch_size=64)
    for seed, r in zip([0, 3], res, strict=True):
        one = train(m, hp, ModelSpec((8,)), data, epochs=3, batch_size=64, seed=seed, progress=False)
        assert r["test"]["rmse"] == pytest.approx(one.test["rmse"], rel=1e-4)
    assert res[0]["test"]["rmse"] != res[1]["test"]["rmse"]


def test_vmapped_seed_curves_hold_every_kth_epoch_and_the_last():
    """train_seeds(curve_every=2) over 5 epochs evaluates epochs 2, 4 and 5; the last entry is the final test."""
    from emtdamp.loops.centralised import train_seeds

    data = load("boston")
    m = get_method("adam")
    res, _ = train_seeds(m, m.hparams_cls(), ModelSpec((4,)), data, seeds=[0, 1], epochs=5, batch_size=128,
                         curve=True, curve_every=2)
    for r in res:
        assert [c["epoch"] for c in r["curve"]] == [2, 4, 5]
        assert r["curve"][-1]["rmse"] == r["test"]["rmse"]


def test_resume_trusts_the_epoch_stored_with_the_state(tmp_path):
    """A crash between writing checkpoint.npz (epoch 4) and progress.json (still 3) must not replay epoch 4 on
    the epoch-4 state: the resumed run reads the epoch from the checkpoint and ends as the uninterrupted run."""
    import shutil

    base = ("data: {name: boston}\nmodel: {hidden: [8]}\nmethod: {name: adam, learning_rate: 0.01}\n"
            "train: {epochs: %d, batch_size: 64, progress: false}\noutput: {plots: false, checkpoint_every: 1}\n")
    (tmp_path / "six.yaml").write_text(base % 6)
    (tmp_path / "four.yaml").write_text(base % 4)
    full, four = tmp_path / "full", tmp_path / "four"
    assert cli.main(["train", str(tmp_path / "six.yaml"), f"output.dir={full}"]) == 0
    assert cli.main(["train", str(tmp_path / "four.yaml"), f"output.dir={four}"]) == 0
    crashed = tmp_path / "crashed"
    shutil.copytree(full, crashed)
    shutil.copy(four / "checkpoint.npz", crashed / "checkpoint.npz")      # the state after epoch 4 ...
    (crashed / "progress.json").write_text(json.dumps({"epoch": 3}))     # ... progress.json not yet updated
    (crashed / "summary.json").unlink()
    assert cli.main(["train", str(crashed), "--resume"]) == 0
    a = json.loads((full / "summary.json").read_text())
    b = json.loads((crashed / "summary.json").read_text())
    assert a["test"] == b["test"]
    assert [json.loads(ln)["epoch"] for ln in (crashed / "metrics.jsonl").read_text().splitlines()] == list(range(1, 7))
