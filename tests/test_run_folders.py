"""Run folders a user can hand on (issue: run folders): prediction from the folder alone (data.json), CSV
and npz in and out with intervals and draws, the final state always written, and unreadable checkpoints
(one-line errors, ``--resume`` falling back to the previous checkpoint)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emtdamp import cli
from emtdamp.checkpoints import previous_path
from emtdamp.runs import load_run

ROOT = Path(__file__).resolve().parents[1]


def _write_csv(path: Path, x: np.ndarray, y: np.ndarray | None, names: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names + (["price"] if y is not None else []))
        for i in range(len(x)):
            w.writerow([f"{v:.6g}" for v in x[i]] + ([f"{y[i]:.6g}"] if y is not None else []))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emtdamp.cli", *args], capture_output=True, text=True,
                          timeout=600, env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu",
                                            "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """sghmc on a 200-row CSV regression (columns in a shuffled order, the target in the middle), trained
    with periodic checkpoints off; returns (run folder, its parent folder, new raw rows)."""
    tmp = tmp_path_factory.mktemp("csvrun")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)) * [1.0, 10.0, 0.1] + [0.0, 50.0, 1.0]
    y = 2 * x[:, 0] + 0.1 * x[:, 1] - 5 * x[:, 2] + rng.normal(size=200) * 0.3
    with open(tmp / "train.csv", "w", newline="") as f:          # target column between the features
        w = csv.writer(f)
        w.writerow(["b", "price", "a", "c"])
        for i in range(200):
            w.writerow([f"{x[i, 0]:.6g}", f"{y[i]:.6g}", f"{x[i, 1]:.6g}", f"{x[i, 2]:.6g}"])
    out = tmp / "run"
    r = _cli("train", str(ROOT / "configs" / "boston.yaml"),
             f"data={{name: csv, options: {{path: {tmp / 'train.csv'}, target: price}}}}",
             "method={name: sghmc, burn_in: 30, thin: 2, n_samples: 8}", "model.hidden=[8]", "train.epochs=10",
             "train.batch_size=32", "train.progress=false", "output.plots=false", "output.checkpoint=false",
             f"output.dir={out}")
    assert r.returncode == 0, r.stderr
    new = rng.normal(size=(5, 3)) * [1.0, 10.0, 0.1] + [0.0, 50.0, 1.0]
    _write_csv(tmp / "new.csv", new[:, [1, 0, 2]], None, ["a", "b", "c"])   # other column order, no target
    return out, tmp, new


def test_final_state_written_even_with_checkpoints_off(csv_run):
    out, _, _ = csv_run
    assert (out / "checkpoint.npz").exists() and (out / "data.json").exists()
    run = load_run(out)
    assert run.state is not None and run.record.feature_names == ("b", "a", "c") and run.record.target == "price"


def test_predict_from_csv_after_the_training_csv_is_gone(csv_run):
    out, tmp, _ = csv_run
    before = tmp / "before.csv"
    assert cli.main(["predict", str(out), str(tmp / "new.csv"), "--out", str(before)]) == 0
    moved = tmp / "moved.csv"
    (tmp / "train.csv").rename(moved)                     # the data is gone from where it was trained
    try:
        after = tmp / "after.csv"
        r = _cli("predict", str(out), str(tmp / "new.csv"), "--out", str(after), "--levels", "0.5,0.9")
        assert r.returncode == 0, r.stderr
    finally:
        moved.rename(tmp / "train.csv")
    rows_b = list(csv.DictReader(open(before)))
    rows_a = list(csv.DictReader(open(after)))
    assert list(rows_a[0]) == ["mean", "var", "sd", "lower_50", "upper_50", "lower_90", "upper_90"]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for k in rb:
            assert float(ra[k]) == pytest.approx(float(rb[k]), rel=1e-6)
        lo9, lo5, m, hi5, hi9 = (float(ra[k]) for k in ("lower_90", "lower_50", "mean", "upper_50", "upper_90"))
        assert lo9 < lo5 < m < hi5 < hi9
    # the same rows as the Python API gives on the CSV's raw features, put back in the training column order
    a_b_c = np.loadtxt(tmp / "new.csv", delimiter=",", skiprows=1)
    pred = load_run(out).predict(a_b_c[:, [1, 0, 2]])
    np.testing.assert_allclose([float(r["mean"]) for r in rows_a], pred.mean[:, 0], rtol=1e-5)


def test_samples_have_shape_draws_by_rows(csv_run):
    out, tmp, new = csv_run
    np.savez(tmp / "new.npz", x=new)
    assert cli.main(["predict", str(out), str(tmp / "new.npz"), "--out", str(tmp / "s.npz"), "--samples", "50"]) == 0
    p = np.load(tmp / "s.npz")
    assert p["samples"].shape == (50, 5) and p["mean"].shape == (5, 1) and p["lower_90"].shape == (5, 1)
    assert cli.main(["predict", str(out), str(tmp / "new.csv"), "--out", str(tmp / "s.csv"), "--samples", "3"]) == 0
    header = next(csv.reader(open(tmp / "s.csv")))
    assert header[-3:] == ["sample_0", "sample_1", "sample_2"]


def test_predict_input_errors_are_one_line(csv_run, capsys):
    out, tmp, _ = csv_run
    _write_csv(tmp / "short.csv", np.ones((2, 2)), None, ["a", "b"])
    assert cli.main(["predict", str(out), str(tmp / "short.csv"), "--out", str(tmp / "z.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "lacks the training column(s) ['c']" in err and len(err.splitlines()) == 1
    assert cli.main(["predict", str(out), str(tmp / "new.csv"), "--out", str(tmp / "z.csv"), "--levels", "90"]) == 2
    assert "strictly between 0 and 1" in capsys.readouterr().err
    assert cli.main(["predict", str(out), str(tmp / "new.csv"), "--out", str(tmp / "z.txt")]) == 2
    assert "write .npz or .csv" in capsys.readouterr().err


def test_classification_output_has_label_names_and_entropy(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 2))
    lab = np.where(x[:, 0] > 0, "cat", "dog")
    with open(tmp_path / "c.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["u", "v", "kind"])
        for i in range(120):
            w.writerow([f"{x[i, 0]:.5g}", f"{x[i, 1]:.5g}", lab[i]])
    out = tmp_path / "run"
    r = _cli("train", str(ROOT / "configs" / "boston.yaml"),
             f"data={{name: csv, options: {{path: {tmp_path / 'c.csv'}, target: kind, task: classification, "
             "labels: remap}}", "method={name: adam, learning_rate: 0.01}", "model.hidden=[8]", "train.epochs=5",
             "train.progress=false", "output.plots=false", f"output.dir={out}")
    assert r.returncode == 0, r.stderr
    _write_csv(tmp_path / "q.csv", np.array([[2.0, 0.0], [-2.0, 0.0]]), None, ["u", "v"])
    assert cli.main(["predict", str(out), str(tmp_path / "q.csv"), "--out", str(tmp_path / "p.csv"),
                     "--samples", "4"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert set(rows[0]) >= {"prob_cat", "prob_dog", "label", "entropy", "sample_0"}
    assert [r["label"] for r in rows] == ["cat", "dog"]
    assert all(0 <= float(r["entropy"]) <= np.log(2) + 1e-9 for r in rows)
    assert rows[0]["sample_0"] in ("cat", "dog")


def test_truncated_checkpoint_errors_and_resume_falls_back(tmp_path):
    out = tmp_path / "run"
    base = [str(ROOT / "configs" / "boston.yaml"), "model.hidden=[4]", "train.epochs=3", "train.progress=false",
            "output.plots=false", "output.checkpoint_every=2", f"output.dir={out}"]
    assert _cli("train", *base).returncode == 0
    ckpt = out / "checkpoint.npz"
    assert previous_path(ckpt).exists()                   # the epoch-2 checkpoint kept beside the final one
    ckpt.write_bytes(ckpt.read_bytes()[:100])             # a crash mid-copy: truncated
    r = _cli("predict", str(out), "boston", "--out", str(tmp_path / "p.npz"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "unreadable" in r.stderr and "delete it" in r.stderr
    r = _cli("train", *base[:2], "train.epochs=4", *base[3:], "--resume")
    assert r.returncode == 0, r.stderr
    assert "resuming from the previous checkpoint" in r.stderr and "(epoch 2)" in r.stderr
    assert load_run(out).history[-1]["epoch"] == 4
    # no previous checkpoint to fall back to: a one-line error, exit 2
    previous_path(ckpt).unlink()
    ckpt.write_bytes(b"not a zip file")
    r = _cli("train", *base, "--resume")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "unreadable" in r.stderr
