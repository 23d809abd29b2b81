"""emtdamp.plots: curves, reliability diagram and multi-run overlay on synthetic histories and run folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.collections import PolyCollection
from matplotlib.ticker import MaxNLocator

from emtdamp import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def _history(epochs: int = 3, task: str = "regression", eval_every: int = 1, seed: int = 0,
             offset: float = 0.0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for ep in range(1, epochs + 1):
        rec = {"epoch": ep, "wall_s": 0.1 * ep, "train_loss": 1.0 / ep + 0.01 * rng.normal()}
        if ep % eval_every == 0 or ep == epochs:
            if task == "regression":
                rec["test"] = {"rmse": 3 + offset + 2 / ep + 0.05 * rng.normal(), "nll": 2.5 + 1 / ep,
                               "nmse": 0.2, "coverage90": 0.9 + 0.02 * rng.normal()}
            else:
                rec["test"] = {"accuracy": 0.9 - 0.1 / ep, "nll": 0.3 + 0.2 / ep, "ece": 0.02 + 0.01 / ep}
            frac = min(0.5, 0.05 * ep)
            rec["sparsity"] = {"neurons_pruned_frac": frac, "weights_zero_frac": frac, "params_remaining": 900}
        out.append(rec)
    return out


def _panels(fig) -> list[str]:
    return [ax.get_label() for ax in fig.axes]


def _ax(fig, label: str):
    return next(ax for ax in fig.axes if ax.get_label() == label)


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


# ------------------------------------------------------------------------------------------------- curves


def test_plot_curves_writes_png(tmp_path):
    path = tmp_path / "curves.png"
    plots.plot_curves(_history(), "regression", path, title="sghmc_sa · boston", prunes=True)
    assert _is_png(path)


def test_curves_regression_panels_title_and_integer_ticks():
    fig = plots.curves_figure(_history(3), "regression", title="sghmc_sa · boston", prunes=False)
    assert _panels(fig) == ["train_loss", "test.rmse", "test.nll", "test.coverage90"]
    assert "sghmc_sa" in fig.get_suptitle() and "boston" in fig.get_suptitle()
    fig.canvas.draw()
    for ax in fig.axes:
        locator = ax.xaxis.get_major_locator()
        assert isinstance(locator, MaxNLocator)
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert ax.get_xlabel() == "epoch"
    assert "nats" in _ax(fig, "test.nll").get_ylabel()


def test_curves_coverage_panel_has_dashed_reference_at_90():
    fig = plots.curves_figure(_history(5), "regression", title="sgd · boston", prunes=False)
    refs = [ln for ln in _ax(fig, "test.coverage90").lines if list(ln.get_ydata()) == [0.9, 0.9]]
    assert refs and refs[0].get_linestyle() == "--"


def test_curves_sparsity_panel_only_when_prunes():
    on = plots.curves_figure(_history(4), "regression", title="emtdamp · boston", prunes=True)
    off = plots.curves_figure(_history(4), "regression", title="emtdamp · boston", prunes=False)
    assert "sparsity" in _panels(on) and len(on.axes) == 5
    assert "sparsity" not in _panels(off) and len(off.axes) == 4
    labels = _ax(on, "sparsity").get_legend_handles_labels()[1]
    assert "neurons pruned" in labels and "weights zero" in labels


def test_curves_classification_panels():
    fig = plots.curves_figure(_history(6, "classification"), "classification", title="adam · mnist5k", prunes=False)
    assert _panels(fig) == ["train_loss", "test.accuracy", "test.nll", "test.ece"]
    assert "final 88.3%" in _ax(fig, "test.accuracy").get_title()


def test_curves_last_epoch_only_and_missing_keys_do_not_fail(tmp_path):
    hist = _history(10, eval_every=10)
    del hist[-1]["test"]["nll"]
    del hist[3]["train_loss"]
    fig = plots.curves_figure(hist, "regression", title="sgd · boston", prunes=True)
    rmse = _ax(fig, "test.rmse")
    assert len(rmse.lines[0].get_xdata()) == 1 and "epoch 10" in rmse.get_title()
    assert any("not recorded" in t for t in _texts(_ax(fig, "test.nll")))
    # no evaluated epoch, an empty history, federated rounds without a train loss
    plots.plot_curves([{"epoch": 1, "wall_s": 0.1, "train_loss": 0.5}], "regression", tmp_path / "a.png",
                      title="t", prunes=True)
    plots.plot_curves([], "classification", tmp_path / "b.png", title="t", prunes=True)
    rounds = [{"round": r, "wall_s": r, "test": {"accuracy": 0.8, "nll": 0.5}} for r in (1, 2, 3)]
    fed = plots.curves_figure(rounds, "classification", title="fedavg · mnist5k", prunes=False)
    assert fed.axes[0].get_xlabel() == "round"
    assert any("not recorded" in t for t in _texts(_ax(fed, "train_loss")))
    assert _is_png(tmp_path / "a.png") and _is_png(tmp_path / "b.png")


def test_curves_mark_diverged_epochs():
    hist = _history(6)
    hist[4]["diverged"] = True
    hist[4]["train_loss"] = 1e6
    hist = hist[:5]
    fig = plots.curves_figure(hist, "regression", title="sgld · boston", prunes=False)
    assert "diverged at epoch 5" in fig.get_suptitle()
    for ax in fig.axes:
        marks = [ln for ln in ax.lines if list(ln.get_xdata()) == [5, 5]]
        assert marks, ax.get_label()
    assert "diverged" in _ax(fig, "train_loss").get_legend_handles_labels()[1]
    assert _ax(fig, "train_loss").get_ylim()[1] < 10   # the y range stays on the healthy losses


# ----------------------------------------------------------------------------------------------- calibration


def _probs(n: int = 500, k: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = 2.5 * rng.normal(size=(n, k))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.where(rng.random(n) < p.max(1) - 0.1, p.argmax(1), rng.integers(0, k, n))
    return p, y


def test_plot_calibration_counts_ece_and_legend_clear_of_bars(tmp_path):
    p, y = _probs()
    path = tmp_path / "calibration.png"
    plots.plot_calibration(p, y, path, title="sghmc_sa · mnist5k")
    assert _is_png(path)
    fig = plots.calibration_figure(p, y, title="sghmc_sa · mnist5k", n_bins=10)
    ax = fig.axes[0]
    counts = [t for t in ax.texts if t.get_gid() == "count"]
    conf_bins = np.minimum((p.max(1) * 10).astype(int), 9)
    assert len(counts) == len(np.unique(conf_bins))
    assert sum(int(t.get_text().replace(",", "")) for t in counts) == len(y)
    assert "ECE = " in ax.get_title() and "sghmc_sa · mnist5k" in ax.get_title()
    fig.canvas.draw()
    (legend,) = fig.legends
    axes_box, legend_box = ax.get_window_extent(), legend.get_window_extent()
    assert legend_box.y1 <= axes_box.y0   # below the axes: it covers no bar


def test_calibration_ece_matches_metrics_module():
    from emtdamp.metrics import expected_calibration_error, reliability_bins

    p, y = _probs(800, 10, seed=3)
    for n_bins in (10, 15):
        fig = plots.calibration_figure(p, y, title="x", n_bins=n_bins)
        ece = expected_calibration_error(p, y, n_bins)
        assert f"ECE = {ece:.3f} ({n_bins} bins)" in fig.axes[0].get_title()
        share, _, _ = reliability_bins(p, y, n_bins)
        labels = [t.get_text() for t in fig.axes[0].texts]      # the per-bin counts written on the bars
        assert sorted(int(t) for t in labels if t.isdigit()) == sorted(int(round(v * len(y))) for v in share if v)


def test_calibration_binary_and_bad_shapes():
    rng = np.random.default_rng(1)
    p1 = rng.random(100)
    fig = plots.calibration_figure(p1, (rng.random(100) < p1).astype(int), title="binary")
    assert "ECE" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="probs"):
        plots.calibration_figure(np.ones((5, 3)) / 3, np.zeros(4, int), title="x")


# ------------------------------------------------------------------------------------------- runs overlay


def _write_run(folder: Path, method: str, seed: int, history: list[dict], **method_kw) -> Path:
    folder.mkdir(parents=True)
    cfg = {"data": {"name": "boston", "seed": seed, "options": {"test_fraction": 0.1}},
           "model": {"hidden": [32], "activation": "relu"},
           "method": {"name": method, **method_kw},
           "train": {"epochs": len(history), "seed": seed, "progress": False},
           "output": {"dir": str(folder), "plots": True}}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    return folder


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    for s in range(3):
        _write_run(root / f"run00{s}", "sghmc_sa", s, _history(6, seed=s), learning_rate=0.01)
    _write_run(root / "run003", "sgd", 0, _history(6, seed=9, offset=1.0), learning_rate=0.01, momentum=0.9)
    (root / "sweep.csv").write_text("run,rmse\n")
    return root


def test_find_runs_expands_sweeps_and_rejects_other_paths(sweep, tmp_path):
    runs = plots.find_runs([sweep])
    assert [r.name for r in runs] == ["run000", "run001", "run002", "run003"]
    assert plots.find_runs([sweep / "run001", sweep]) == [sweep / "run001", sweep / "run000", sweep / "run002",
                                                          sweep / "run003"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plots.find_runs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        plots.find_runs([tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match="is a file"):
        plots.find_runs([sweep / "sweep.csv"])
    with pytest.raises(ValueError, match="no run folders"):
        plots.find_runs([])


def test_plot_runs_groups_seeds_into_mean_and_band(sweep, tmp_path):
    out = plots.plot_runs([sweep], tmp_path / "figs" / "overlay.png")
    assert out == tmp_path / "figs" / "overlay.png" and _is_png(out)
    fig = plots.runs_figure([sweep])
    assert _panels(fig) == ["test.rmse", "test.nll"]
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.lines if not ln.get_label().startswith("_")}
    assert set(lines) == {"method=sghmc_sa (3 seeds)", "method=sgd (1 run)"}
    legend_texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend_texts == ["method=sghmc_sa (3 seeds)", "method=sgd (1 run)"]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert [b.get_label() for b in bands] == ["_band method=sghmc_sa"]
    seeds = np.array([[r["test"]["rmse"] for r in _history(6, seed=s)] for s in range(3)])
    np.testing.assert_allclose(lines["method=sghmc_sa (3 seeds)"].get_ydata(), seeds.mean(0))
    assert "boston" in fig.get_suptitle() and "2 settings, 4 runs" in fig.get_suptitle()
    assert ax.get_ylabel() == "RMSE" and ax.get_xlabel() == "epoch"


def test_plot_runs_labels_name_the_differing_key(tmp_path):
    for i, lr in enumerate((0.01, 0.001)):
        for s in range(2):
            _write_run(tmp_path / "sw" / f"run{i}{s}", "sghmc_sa", s, _history(4, seed=s + 5 * i), learning_rate=lr)
    fig = plots.runs_figure([tmp_path / "sw"])
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["method.learning_rate=0.01 (2 seeds)", "method.learning_rate=0.001 (2 seeds)"]
    assert "sghmc_sa" in fig.get_suptitle()


def test_plot_runs_group_by_run_and_by_key(sweep):
    per_run = plots.runs_figure([sweep], group_by="run")
    assert [t.get_text() for t in per_run.legends[0].get_texts()] == [f"run00{i} (1 run)" for i in range(4)]
    assert not [c for c in per_run.axes[0].collections if isinstance(c, PolyCollection)]
    by_lr = plots.runs_figure([sweep], group_by="method.learning_rate")
    assert [t.get_text() for t in by_lr.legends[0].get_texts()] == ["method.learning_rate=0.01 (4 seeds)"]
    with pytest.raises(ValueError, match="group_by"):
        plots.runs_figure([sweep], group_by="method.nope")


def test_plot_runs_metric_choice(tmp_path):
    for s in range(2):
        _write_run(tmp_path / "cls" / f"r{s}", "adam", s, _history(5, "classification", seed=s))
    fig = plots.runs_figure([tmp_path / "cls"])
    assert _panels(fig) == ["test.accuracy", "test.nll"]
    assert _panels(plots.runs_figure([tmp_path / "cls"], metric="ece")) == ["test.ece", "test.nll"]
    assert _panels(plots.runs_figure([tmp_path / "cls"], metric="nll")) == ["test.nll"]
    with pytest.raises(ValueError, match="rmse"):
        plots.runs_figure([tmp_path / "cls"], metric="rmse")
    _write_run(tmp_path / "reg", "adam", 0, _history(5))
    with pytest.raises(ValueError, match="mix regression and classification"):
        plots.runs_figure([tmp_path / "cls", tmp_path / "reg"])
    assert _panels(plots.runs_figure([tmp_path / "cls", tmp_path / "reg"], metric="nll")) == ["test.nll"]


def test_plot_runs_without_evaluated_epochs(tmp_path):
    bare = [{"epoch": e, "wall_s": e, "train_loss": 1.0} for e in (1, 2)]
    _write_run(tmp_path / "a", "sgd", 0, bare)
    with pytest.raises(ValueError, match="no evaluated epochs"):
        plots.runs_figure([tmp_path / "a"])
    _write_run(tmp_path / "b", "sgd", 1, _history(3))
    with pytest.warns(UserWarning, match="left out 1 run"):
        fig = plots.runs_figure([tmp_path / "a", tmp_path / "b"])
    assert "1 setting, 1 run" in fig.get_suptitle()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.yaml").write_text(yaml.safe_dump({"method": {"name": "sgd"}}))
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plots.runs_figure([tmp_path / "c"])


def test_import_is_cheap():
    code = ("import sys, emtdamp.plots; bad = [m for m in ('matplotlib', 'jax', 'yaml') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
