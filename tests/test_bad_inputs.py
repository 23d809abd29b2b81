"""Bad inputs through the CLI, as a user meets them: one line naming the problem and the fix, exit code 2,
no traceback. Labels that are not 0..K-1 (and ``data.options.labels=remap``), unsplit ``npz`` files, and
``method.name`` / ``data.name`` overrides that leave the previous block's keys behind."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emtdamp.data import DataError, load

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.hidden=[4]", "train.epochs=2", "train.batch_size=16", "train.progress=false", "output.plots=false"]


def _train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``emtdamp train ARGS`` in a fresh interpreter (as the killed-run test in test_train_cli.py starts it)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "emtdamp.cli", "train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The run failed with exit code 2 and exactly one stderr line, holding every needle; that line."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("emtdamp train: error: ")
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _write_csv(path: Path, labels) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(len(labels), 3))
    rows = (f"{r[0]},{r[1]},{r[2]},{lab}" for r, lab in zip(x, labels, strict=True))
    path.write_text("a,b,c,label\n" + "\n".join(rows))
    return path


@pytest.fixture
def csv_config(tmp_path: Path) -> Path:
    """A csv classification config whose labels are 1..3 (60 rows, 20 per class)."""
    _write_csv(tmp_path / "d.csv", np.tile([1, 2, 3], 20))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{name: csv, seed: 0, options: {{path: {tmp_path / 'd.csv'}, target: label, "
                   "task: classification}}\nmethod: {name: adam}\n")
    return cfg


def test_labels_one_to_k_are_refused_with_the_remap_fix(csv_config, tmp_path):
    proc = _train(str(csv_config), *TINY, f"output.dir={tmp_path / 'run'}", cwd=tmp_path)
    _one_line_error(proc, "labels must be 0..K-1; found the values [1, 2, 3] (3 classes)",
                    "data.options.labels=remap")
    assert not (tmp_path / "run" / "summary.json").exists()


def test_remap_trains_and_records_label_names(csv_config, tmp_path):
    out = tmp_path / "run"
    proc = _train(str(csv_config), *TINY, "data.options.labels=remap", f"output.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and "accuracy" in summary["test"]
    import emtdamp

    run = emtdamp.load_run(out)
    assert run.data.info["label_names"] == [1, 2, 3] and run.data.spec.n_outputs == 3
    # the loader itself: classes 0..2 in sorted order, stratified split, JSON-able names
    d = load("csv", path=str(tmp_path / "d.csv"), target="label", task="classification", labels="remap")
    assert sorted(set(d.y_train.tolist())) == [0, 1, 2] and np.bincount(d.y_test).tolist() == [2, 2, 2]
    assert json.loads(json.dumps(d.info["label_names"])) == [1, 2, 3]
    # labels already 0..K-1: the names are the class ids
    _write_csv(tmp_path / "z.csv", np.tile([0, 1, 2], 20))
    assert load("csv", path=str(tmp_path / "z.csv"), target="label", task="classification").info[
        "label_names"] == [0, 1, 2]


def test_text_and_non_integer_labels(tmp_path):
    words = _write_csv(tmp_path / "w.csv", np.tile(["dog", "cat", "emu"], 20))
    cfg = tmp_path / "w.yaml"
    cfg.write_text(f"data: {{name: csv, options: {{path: {words}, target: label, task: classification}}}}\n"
                   "method: {name: adam}\n")
    proc = _train(str(cfg), *TINY, f"output.dir={tmp_path / 'run'}", cwd=tmp_path)
    _one_line_error(proc, "found text labels ['cat', 'dog', 'emu'] (3 classes)", "data.options.labels=remap")
    d = load("csv", path=str(words), target="label", task="classification", labels="remap")
    assert d.info["label_names"] == ["cat", "dog", "emu"] and d.spec.n_outputs == 3
    halves = _write_csv(tmp_path / "h.csv", np.tile([0.5, 1.5], 30))
    with pytest.raises(DataError, match=r"non-integer values \[0.5, 1.5\].*data.options.labels=remap"):
        load("csv", path=str(halves), target="label", task="classification")
    assert load("csv", path=str(halves), target="label", task="classification",
                labels="remap").info["label_names"] == [0.5, 1.5]
    np.savez(tmp_path / "k.npz", x_train=np.ones((6, 2)), y_train=np.tile([1, 2], 3), x_test=np.ones((2, 2)),
             y_test=[1, 2])
    with pytest.raises(DataError, match=r"found the values \[1, 2\] \(2 classes\); set data.options.labels=remap"):
        load("npz", path=str(tmp_path / "k.npz"), task="classification")


def test_npz_unsplit_trains_and_its_split_follows_the_seed(tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(80, 3)), np.repeat([0, 1], 40)
    f = tmp_path / "xy.npz"
    np.savez(f, x=x, y=y)
    cfg = tmp_path / "n.yaml"
    cfg.write_text(f"data: {{name: npz, options: {{path: {f}, task: classification, test_fraction: 0.25}}}}\n"
                   "method: {name: adam}\n")
    out = tmp_path / "run"
    proc = _train(str(cfg), *TINY, f"output.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2
    a, b, c = (load("npz", seed=s, path=str(f), task="classification", test_fraction=0.25) for s in (3, 3, 4))
    assert a.x_train.shape == (60, 3) and a.x_test.shape == (20, 3)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.x_test, c.x_test)
    assert np.bincount(a.y_test).tolist() == [10, 10]  # stratified
    assert a.info["split_seed"] == 3 and a.info["label_names"] == [0, 1]
    r = load("npz", path=str(f))  # regression, default test_fraction 0.1
    assert r.x_test.shape == (8, 3) and r.spec.task == "regression"


def test_method_name_switch_names_the_foreign_keys_and_the_block_fix(tmp_path):
    proc = _train(str(ROOT / "configs" / "emtdamp_boston.yaml"), "method.name=adam", cwd=tmp_path)
    _one_line_error(proc, "method.name=adam left keys of the config's method emtdamp that adam does not take",
                    "'beta'", "'sigma0_sq'", 'replace the whole block instead: "method={name: adam}"')


def test_data_name_switch_names_the_foreign_options_and_the_block_fix(csv_config, tmp_path):
    proc = _train(str(csv_config), "data.name=npz", cwd=tmp_path)
    _one_line_error(proc, "data.name=npz left options of the config's dataset csv that npz does not take: "
                    "['target']", '"data={name: npz, seed: 0, options: {path: ..., task: classification}}"')
