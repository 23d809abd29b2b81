"""scripts/paper.py: the κ sweep's quick mode writes its csv / md / png; an unknown dataset is one line, exit 2."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "paper.py"
METHODS = {"emtdamp", "group_lasso", "group_snip", "adam_prune", "em_mcmc"}


@pytest.mark.slow   # ~55 s (two κ values x five methods x two seeds, compiled): a script, not the library
def test_kappa_quick_writes_csv_md_png(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "kappa", "--dataset", "boston", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "kappa_boston.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["method", "kappa", "mean", "sd", "n_seeds", "params_mean"]
        rows = list(reader)
    assert len(rows) == len(METHODS) * 2                      # --quick: 2 κ values per method
    assert {r["method"] for r in rows} == METHODS
    assert len({float(r["kappa"]) for r in rows}) == 2
    for r in rows:
        assert int(r["n_seeds"]) == 2, r
        for col in ("kappa", "mean", "sd", "params_mean"):
            assert math.isfinite(float(r[col])), r
        assert 0.0 < float(r["mean"]) and float(r["params_mean"]) > 0
    md = (out / "kappa_boston.md").read_text()
    assert "| κ (kept share) |" in md and "EM-TDAMP (paper)" in md and "±" in md
    png = out / "kappa_boston.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[10/10]" in proc.stderr                           # one progress line per (method, κ) cell


def test_unknown_dataset_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "kappa", "--dataset", "nope", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "nope" in lines[0] and "boston, mnist5k, fashion_mnist" in lines[0]
    assert not (tmp_path / "o").exists()


def _paper_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("paper_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["paper_script"] = mod     # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_curves_dataset_and_noise_arguments_are_one_line_exit_2(tmp_path):
    for argv in (["curves", "--dataset", "nope"], ["curves", "--dataset", "boston", "--epochs", "1"],
                 ["noise", "--seeds", "0"]):
        proc = subprocess.run([sys.executable, str(SCRIPT), *argv, "--out", str(tmp_path / "o")],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "o").exists()


def test_metrics_per_dataset_and_first_reach():
    paper = _paper_module()
    assert paper.FIGURES["boston"].value({"test": {"nmse": 0.25}}) == 0.25
    assert paper.FIGURES["mnist5k"].value({"test": {"accuracy": 0.94}}) == pytest.approx(0.06)
    curve = {1: 0.5, 2: 0.3, 3: 0.2, 4: 0.25}
    assert paper.first_reach(curve, 0.3) == 2           # first epoch at or below the target
    assert paper.first_reach(curve, 0.2) == 3
    assert paper.first_reach(curve, 0.1) is None
    assert paper.sentence("test NMSE") == "Test NMSE"


def test_every_paper_config_is_valid_and_shares_the_kappa_knob():
    from emtdamp import config as cfgmod

    paper = _paper_module()
    for dataset in paper.DATASETS:
        for m in paper.METHODS:
            cfg = cfgmod.from_dict(cfgmod.read_yaml(paper.CONFIG_DIR / f"kappa_{dataset}_{m}.yaml"))
            assert cfg.data.name == dataset and cfg.method.name == m
            assert cfg.method.hparams.target_density == 1.0   # set per run by the sweep
    for dataset in paper.CURVE_DATASETS:
        for m in (*paper.CURVE_METHODS, *(paper.FED_METHODS if dataset in paper.FED_DATASETS else ())):
            cfg = cfgmod.from_dict(cfgmod.read_yaml(paper.curve_config(dataset, m)))
            assert cfg.data.name == dataset and cfg.method.name == m


def test_read_curve_reads_epochs_and_rounds(tmp_path):
    import json

    paper = _paper_module()
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"epoch": 1, "test": {"accuracy": 0.9}}) + "\n" + json.dumps({"epoch": 2}) + "\n"
        + json.dumps({"round": 3, "test": {"accuracy": 0.95}}) + "\n")
    got = paper.read_curve(tmp_path, paper.FIGURES["mnist5k"])
    assert set(got) == {1, 3} and got[1] == pytest.approx(0.1) and got[3] == pytest.approx(0.05)


@pytest.mark.slow   # ~3 min on a loaded 2-core machine: four centralised + two federated methods, compiled
def test_curves_and_noise_short_runs_write_csv_md_png(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "curves", "--dataset", "boston", "--seeds", "2", "--epochs",
                           "3", "--rounds", "2", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "curves_boston.csv") as f:
        rows = list(csv.DictReader(f))
    got = {(r["panel"], r["method"]) for r in rows}
    assert got == {("central", m) for m in ("emtdamp", "adam", "group_lasso", "group_snip")} | \
        {("fed", "emtdamp_fed"), ("fed", "fedavg")}
    assert {int(r["epoch"]) for r in rows if r["panel"] == "central"} == {1, 2, 3}
    assert {int(r["epoch"]) for r in rows if r["panel"] == "fed"} == {1, 2}
    assert all(int(r["n_seeds"]) == 2 and math.isfinite(float(r["mean"])) for r in rows)
    md = (out / "curves_boston.md").read_text()
    assert "Epochs to reach adam's final seed-mean test NMSE" in md and "Rounds to reach FedAvg" in md
    assert (out / "curves_boston.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    proc = subprocess.run([sys.executable, str(SCRIPT), "noise", "--seeds", "1", "--epochs", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "noise_mnist5k.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["v_update"], int(r["epoch"])) for r in rows] == [(o, e) for o in ("closed_form", "numerical", "fixed")
                                                               for e in (1, 2)]
    fixed = [float(r["v_mean"]) for r in rows if r["v_update"] == "fixed"]
    assert fixed == [1.0, 1.0]                            # v_update=fixed keeps v0 = 1
    closed = [float(r["v_mean"]) for r in rows if r["v_update"] == "closed_form"]
    assert all(v != 1.0 for v in closed)                  # the closed-form M-step moves v (a model with a v)
    assert all(0 < float(r["error_mean"]) < 0.9 for r in rows)
    assert (out / "noise_mnist5k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_reads_back_only_cells_with_the_same_resolved_config(tmp_path):
    import json

    import yaml

    from emtdamp import config as cfgmod

    paper = _paper_module()
    cfgs = paper.make_configs("group_snip", "boston", 0.3, [0, 1], None)
    dirs = [tmp_path / f"seed={s}" for s in (0, 1)]
    for cfg, d, acc in zip(cfgs, dirs, (0.1, 0.2), strict=True):
        d.mkdir()
        (d / "config.yaml").write_text(yaml.safe_dump(cfgmod.to_dict(cfg), sort_keys=False))
        (d / "summary.json").write_text(json.dumps({"test": {"nmse": acc}}))
    got = paper.finished_cell(cfgs, dirs)
    assert [g["test"]["nmse"] for g in got] == [0.1, 0.2]
    assert paper.finished_cell(paper.make_configs("group_snip", "boston", 0.5, [0, 1], None), dirs) is None
    (dirs[1] / "summary.json").unlink()                 # an unfinished run: the cell is trained again
    assert paper.finished_cell(cfgs, dirs) is None
