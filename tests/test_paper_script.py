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
    assert "nope" in lines[0] and "boston" in lines[0] and "not implemented yet" in lines[0]
    assert not (tmp_path / "o").exists()
