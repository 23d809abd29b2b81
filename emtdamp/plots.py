"""Figures for run folders: training curves, reliability diagrams and multi-run overlays.

``plot_curves`` draws one run's ``metrics.jsonl`` history (``curves.png``), ``plot_calibration`` a classifier's
reliability diagram (``calibration.png``) and ``plot_runs`` overlays several run folders (``emtdamp plot``), with
the runs that differ only in their seeds averaged into one line with a mean ± sd band. Each has a ``*_figure``
twin that returns the matplotlib :class:`~matplotlib.figure.Figure` instead of saving it.

The figures are drawn on matplotlib's Agg canvas attached to each figure (no ``pyplot``, no global backend
switch), and matplotlib is imported inside the functions, so ``import emtdamp.plots`` stays cheap (it imports
only :mod:`emtdamp.metrics`, which needs no JAX).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emtdamp.metrics import expected_calibration_error, reliability_bins

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["calibration_figure", "curves_figure", "find_runs", "plot_calibration", "plot_curves", "plot_runs",
           "runs_figure"]

DPI = 110
DIVERGED_COLOR = "crimson"
# Config keys that do not define a setting: the seeds (averaged over), where the run was written, the sweep
# that produced it and the progress bar.
SEED_KEYS = ("train.seed", "data.seed")
IGNORED_PREFIXES = ("output.", "sweep.")
IGNORED_KEYS = ("train.progress",)


@dataclass(frozen=True)
class _MetricInfo:
    title: str
    ylabel: str
    percent: bool = False
    better: str | None = None   # "lower" / "higher"


_METRICS = {
    "rmse": _MetricInfo("Test RMSE", "RMSE", better="lower"),
    "mae": _MetricInfo("Test MAE", "MAE", better="lower"),
    "nmse": _MetricInfo("Test NMSE", "NMSE (unit free)", better="lower"),
    "accuracy": _MetricInfo("Test accuracy", "accuracy", percent=True, better="higher"),
    "nll": _MetricInfo("Test NLL", "NLL (nats per test point)", better="lower"),
    "coverage90": _MetricInfo("Coverage of the 90% interval", "test targets inside", percent=True),
    "ece": _MetricInfo("Test ECE", "expected calibration error", better="lower"),
}


def _metric_info(key: str, y_units: str | None = None) -> _MetricInfo:
    info = _METRICS.get(key, _MetricInfo(f"Test {key}", key))
    if y_units and key in ("rmse", "mae"):
        info = _MetricInfo(info.title, f"{info.ylabel} ({y_units})", info.percent, info.better)
    return info


# --------------------------------------------------------------------------------------------------- helpers


def _new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure on its own Agg canvas (no pyplot state, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _number(v: Any) -> float:
    """``v`` as a float; NaN for anything that is not a finite number (missing, None, strings, inf)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return math.nan
    v = float(v)
    return v if math.isfinite(v) else math.nan


def _x_key(records: Sequence[Mapping]) -> str:
    """``"round"`` for federated histories, else ``"epoch"``."""
    return "round" if records and all("round" in r and "epoch" not in r for r in records) else "epoch"


def _x_of(record: Mapping, fallback: int) -> float:
    x = _number(record.get("epoch", record.get("round")))
    return float(fallback) if math.isnan(x) else x


def _fmt(v: float, percent: bool) -> str:
    return f"{v:.1%}" if percent else f"{v:.4g}"


def _integer_x(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _percent_y(ax: Axes) -> None:
    from matplotlib.ticker import PercentFormatter

    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1))


def _marker_size(n_points: int) -> float:
    """Markers that stay visible for a handful of points and do not clutter long curves."""
    return 6.0 if n_points <= 3 else 3.5


def _not_recorded(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}\nnot recorded", transform=ax.transAxes, ha="center", va="center", color="0.45",
            fontsize=10)
    ax.set_yticks([])


def _x_limits(ax: Axes, xs: Sequence[float]) -> None:
    lo, hi = min(xs), max(xs)
    pad = max(0.5, 0.03 * (hi - lo))
    ax.set_xlim(lo - pad, hi + pad)


def _clip_diverged_ylim(ax: Axes, good: np.ndarray, bad: np.ndarray) -> None:
    """Keep the y range on the healthy values when diverged ones would squash it."""
    good, bad = good[np.isfinite(good)], bad[np.isfinite(bad)]
    if good.size == 0 or bad.size == 0:
        return
    lo, hi = float(good.min()), float(good.max())
    span = max(hi - lo, 1e-12 * max(abs(hi), 1.0))
    if bad.max() > hi + 3 * span or bad.min() < lo - 3 * span:
        if ax.get_yscale() == "log":
            ax.set_ylim(lo / 1.5, hi * 1.5)
        else:
            ax.set_ylim(lo - 0.1 * span, hi + 0.1 * span)


# ------------------------------------------------------------------------------------------ curves (one run)


def curves_figure(history: Sequence[Mapping], task: str, *, title: str, prunes: bool,
                  y_units: str | None = None) -> Figure:
    """The figure :func:`plot_curves` saves (see there); returned instead of saved, for inspection.

    Each panel's axes carries a label (``ax.get_label()``): ``train_loss``, ``test.<metric>`` and ``sparsity``.
    """
    records = [r for r in history if isinstance(r, Mapping)]
    regression = task == "regression"
    x_key = _x_key(records)
    xs = [_x_of(r, i + 1) for i, r in enumerate(records)]
    diverged = [x for x, r in zip(xs, records, strict=True) if r.get("diverged")]
    panels = ["train_loss", "test.rmse" if regression else "test.accuracy", "test.nll",
              "test.coverage90" if regression else "test.ece"] + (["sparsity"] if prunes else [])

    if len(panels) == 4:
        fig = _new_figure((9.5, 6.6))
        grid = fig.add_gridspec(2, 2)
        slots = [grid[0, 0], grid[0, 1], grid[1, 0], grid[1, 1]]
    else:
        fig = _new_figure((12.5, 6.6))
        grid = fig.add_gridspec(2, 6)
        slots = [grid[0, 0:2], grid[0, 2:4], grid[0, 4:6], grid[1, 0:3], grid[1, 3:6]]
    axes: list[Axes] = []
    for slot, name in zip(slots, panels, strict=True):
        ax = fig.add_subplot(slot, sharex=axes[0] if axes else None, label=name)
        axes.append(ax)
        if name == "train_loss":
            _train_loss_panel(ax, records, xs)
        elif name == "sparsity":
            _sparsity_panel(ax, records, xs)
        else:
            _metric_panel(ax, records, xs, name.split(".", 1)[1], y_units)
        ax.set_xlabel(x_key)
        ax.grid(alpha=0.3)
        _integer_x(ax)
        for i, x in enumerate(diverged):
            ax.axvline(x, color=DIVERGED_COLOR, ls=":", lw=1.6, label="diverged" if i == 0 else None, zorder=1)
    if xs:
        _x_limits(axes[0], xs)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8, framealpha=0.85)

    info = []
    if records:
        last = records[-1]
        info.append(f"{len(records)} {x_key}{'s' * (len(records) != 1)}")
        wall = _number(last.get("wall_s"))
        if not math.isnan(wall):
            info.append(f"{wall:.3g} s")
    if diverged:
        info.append(f"diverged at {x_key} {int(diverged[0])}")
    fig.suptitle(title + (f"  ({', '.join(info)})" if info else ""), fontsize=13, fontweight="bold")
    return fig


def _train_loss_panel(ax: Axes, records: list[Mapping], xs: list[float]) -> None:
    y = np.array([_number(r.get("train_loss")) for r in records])
    ax.set_title("Train loss (method objective)", fontsize=10)
    if not np.isfinite(y).any():
        _not_recorded(ax, "train loss")
        return
    x = np.array(xs)
    ok = np.isfinite(y)
    ax.plot(x, y, color="C0", marker="o" if ok.sum() <= 40 else None, ms=_marker_size(int(ok.sum())), lw=1.5)
    ax.set_ylabel("train loss")
    good = np.array([not r.get("diverged") for r in records])
    finite = y[ok & good]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 100:
        ax.set_yscale("log")
        ax.set_ylabel("train loss (log scale)")
    _clip_diverged_ylim(ax, y[good], y[~good])
    last = y[ok][-1]
    ax.set_title(f"Train loss (method objective) — final {_fmt(last, False)}", fontsize=10)


def _metric_panel(ax: Axes, records: list[Mapping], xs: list[float], key: str, y_units: str | None) -> None:
    info = _metric_info(key, y_units)
    hint = {"lower": " (↓ better)", "higher": " (↑ better)"}.get(info.better or "", "")
    pts = [(x, _number(r["test"].get(key)), bool(r.get("diverged")))
           for x, r in zip(xs, records, strict=True) if isinstance(r.get("test"), Mapping)]
    pts = [p for p in pts if not math.isnan(p[1])]
    ax.set_title(info.title + hint, fontsize=10)
    if not pts:
        _not_recorded(ax, f"test {key}")
        return
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    bad = np.array([p[2] for p in pts])
    color = {"nll": "C2", "coverage90": "C9", "ece": "C9"}.get(key, "C1")
    ax.plot(x, y, color=color, marker="o" if len(pts) <= 40 else None, ms=_marker_size(len(pts)), lw=1.5)
    ax.set_ylabel(info.ylabel)
    if key == "coverage90":
        ax.axhline(0.9, color="0.3", ls="--", lw=1.2, label="nominal 90%")
        lo = min(0.8, float(y.min()) - 0.02)
        ax.set_ylim(max(lo, -0.02), 1.02)
    if key == "accuracy" and not bad.any():
        ax.set_ylim(max(0.0, float(y.min()) - 0.05), min(1.005, float(y.max()) + 0.03))
    if info.percent:
        _percent_y(ax)
    _clip_diverged_ylim(ax, y[~bad], y[bad])
    at = f" ({_x_key(records)} {int(x[-1])})" if len(pts) == 1 else ""
    ax.set_title(f"{info.title}{hint} — final {_fmt(y[-1], info.percent)}{at}", fontsize=10)


def _sparsity_panel(ax: Axes, records: list[Mapping], xs: list[float]) -> None:
    ev = [(x, r["sparsity"]) for x, r in zip(xs, records, strict=True) if isinstance(r.get("sparsity"), Mapping)]
    ax.set_title("Sparsity", fontsize=10)
    series = [("neurons_pruned_frac", "neurons pruned", "C3"), ("weights_zero_frac", "weights zero", "C4"),
              ("inputs_pruned_frac", "inputs pruned", "C5")]
    drawn = False
    for key, label, color in series:
        pts = [(x, _number(s.get(key))) for x, s in ev]
        pts = [p for p in pts if not math.isnan(p[1])]
        if not pts or (key == "inputs_pruned_frac" and max(p[1] for p in pts) == 0):
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, label=label,
                marker="o" if len(pts) <= 40 else None, ms=_marker_size(len(pts)), lw=1.5)
        drawn = True
    if not drawn:
        _not_recorded(ax, "sparsity")
        return
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("share of the network")
    _percent_y(ax)
    remaining = [_number(s.get("params_remaining")) for _, s in ev]
    remaining = [v for v in remaining if not math.isnan(v)]
    if remaining:
        dense = _number(ev[-1][1].get("params_dense"))
        total = dense if not math.isnan(dense) else remaining[0]
        ax.set_title(f"Sparsity — {int(remaining[-1]):,} of {int(total):,} parameters remain", fontsize=10)


def plot_curves(history: list[dict], task: str, path: str | Path, *, title: str, prunes: bool,
                y_units: str | None = None) -> None:
    """Save one run's training curves (``curves.png``) to ``path``.

    Parameters
    ----------
    history
        The run's ``metrics.jsonl`` records: ``epoch`` (``round`` for federated runs), ``wall_s``,
        ``train_loss`` and, on evaluated epochs, ``test`` and ``sparsity`` dicts; ``"diverged": true`` marks an
        epoch the divergence guard flagged. Missing keys leave a panel saying "not recorded".
    task
        ``"regression"`` or ``"classification"``.
    path
        Where the PNG goes (its folder is created).
    title
        The figure's title, e.g. ``"sghmc_sa · boston"``; the number of epochs, the wall time and the first
        diverged epoch are appended.
    prunes
        Add the sparsity panel (share of neurons pruned and of weights at zero, parameters remaining).
    y_units
        Units of the regression target (e.g. ``"$1000s"``), written on the RMSE axis.

    Notes
    -----
    Panels: train loss; test RMSE (regression) or accuracy (classification); test NLL; coverage of the central
    90 % predictive interval with a dashed line at the nominal 90 % (regression) or ECE (classification); and
    sparsity when ``prunes``. Epoch ticks are integers; diverged epochs are dotted red vertical lines.
    """
    fig = curves_figure(history, task, title=title, prunes=prunes, y_units=y_units)
    _save(fig, path)


# -------------------------------------------------------------------------------------- reliability diagram


def _reliability(probs: np.ndarray, y: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin: (count, mean top-class confidence, accuracy); empty bins NaN
    (:func:`emtdamp.metrics.reliability_bins`, with counts instead of shares)."""
    share, mconf, acc = reliability_bins(probs, y, n_bins)
    return np.rint(share * len(y)).astype(np.int64), mconf, acc


def _as_probs(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, np.float64)
    y = np.asarray(y).reshape(-1)
    if probs.ndim == 1:  # binary: p(class 1)
        probs = np.stack([1 - probs, probs], axis=1)
    if probs.ndim != 2 or probs.shape[0] != y.shape[0] or probs.shape[0] == 0:
        raise ValueError(f"plot_calibration needs probs (n, classes) and labels (n,); got {probs.shape} and "
                         f"{y.shape}: pass the predictive class probabilities of the test rows and their labels")
    return probs, y.astype(np.int64)


def calibration_figure(probs: np.ndarray, y: np.ndarray, *, title: str, n_bins: int = 15) -> Figure:
    """The figure :func:`plot_calibration` saves (see there); returned instead of saved, for inspection."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    probs, y = _as_probs(probs, y)
    count, mconf, acc = _reliability(probs, y, n_bins)
    ok = count > 0
    ece = expected_calibration_error(probs, y, n_bins)
    accuracy = float(np.mean(probs.argmax(1) == y))
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    width = 1.0 / n_bins

    fig = _new_figure((5.4, 5.9))
    ax = fig.add_subplot(label="reliability")
    ax.plot([0, 1], [0, 1], ls="--", color="0.35", lw=1.2, zorder=1)
    ax.bar(edges[:-1][ok], acc[ok], width=width, align="edge", color="C0", alpha=0.85, edgecolor="k", lw=0.6,
           zorder=2, gid="accuracy")
    gap_lo, gap_hi = np.minimum(acc[ok], mconf[ok]), np.maximum(acc[ok], mconf[ok])
    ax.bar(edges[:-1][ok], gap_hi - gap_lo, bottom=gap_lo, width=width, align="edge", facecolor="none",
           edgecolor="C3", hatch="///", lw=0.8, zorder=3, gid="gap")
    rotate = n_bins > 12
    for b in np.flatnonzero(ok):
        ax.text(edges[b] + width / 2, max(acc[b], mconf[b]) + 0.012, f"{count[b]:,}", ha="center", va="bottom",
                fontsize=7 if rotate else 8, rotation=90 if rotate else 0, color="0.15", gid="count", zorder=4)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.13 if rotate else 1.08)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy in bin")
    ax.set_aspect("auto")
    ax.grid(alpha=0.25, zorder=0)
    ax.set_title(f"{title}\nECE = {ece:.3f} ({n_bins} bins) · accuracy {accuracy:.1%} · n = {len(y):,}",
                 fontsize=10)
    handles = [Patch(facecolor="C0", alpha=0.85, edgecolor="k", label="accuracy in bin"),
               Patch(facecolor="none", edgecolor="C3", hatch="///", label="gap to mean confidence"),
               Line2D([], [], ls="--", color="0.35", label="perfect calibration"),
               Line2D([], [], ls="none", marker="$123$", ms=16, color="0.15", label="test points in bin")]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    return fig


def plot_calibration(probs: np.ndarray, y: np.ndarray, path: str | Path, *, title: str, n_bins: int = 15) -> None:
    """Save a reliability diagram (``calibration.png``) of a classifier's predictive to ``path``.

    Parameters
    ----------
    probs
        ``(n, classes)`` predictive class probabilities of the test rows (``(n,)``: p(class 1) of a binary task).
    y
        ``(n,)`` integer labels.
    path
        Where the PNG goes (its folder is created).
    title
        First title line, e.g. ``"sghmc_sa · mnist5k"``; the second gives the ECE (with ``n_bins`` bins, so it
        matches ``summary.json``'s only when ``n_bins`` is the same), the accuracy and ``n``.
    n_bins
        Equal-width bins on the top-class confidence.

    Notes
    -----
    Bars: accuracy per confidence bin, the hatched red part the gap to the bin's mean confidence, the dashed
    diagonal perfect calibration; the number of test points in each bin is written above its bar; the legend
    sits below the axes, clear of the bars. Empty bins have no bar.
    """
    fig = calibration_figure(probs, y, title=title, n_bins=n_bins)
    _save(fig, path)


# ------------------------------------------------------------------------------------------ multi-run overlay


def _is_run(path: Path) -> bool:
    return (path / "config.yaml").is_file()


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Expand ``paths`` into run folders: a run folder (holds ``config.yaml``) stays, a sweep folder (its
    subfolders are run folders) gives its runs in name order; duplicates are dropped, order kept.

    Raises
    ------
    FileNotFoundError
        A path does not exist, or is neither a run folder nor a folder holding run folders.
    ValueError
        No paths were given.
    """
    if not paths:
        raise ValueError("no run folders given: pass run folders or a sweep folder, e.g. `emtdamp plot runs/sweep`")
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist: pass a run folder (with config.yaml) or a sweep folder")
        if _is_run(p):
            found = [p]
        elif p.is_dir():
            found = sorted(c for c in p.iterdir() if c.is_dir() and _is_run(c))
            if not found:
                raise FileNotFoundError(f"{p} is not a run folder (no config.yaml) and holds no run folders: pass a "
                                        "folder written by `emtdamp train` or `emtdamp sweep`")
        else:
            raise FileNotFoundError(f"{p} is a file, not a run folder: pass the folder that holds its config.yaml")
        out.extend(f for f in found if f not in out)
    return out


@dataclass
class _Run:
    path: Path
    flat: dict[str, Any]          # flattened config, seeds and ignored keys removed
    records: list[dict]


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _setting_keys(flat: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in flat.items()
            if k not in SEED_KEYS and k not in IGNORED_KEYS and not k.startswith(IGNORED_PREFIXES)}


def _read_records(path: Path) -> list[dict]:
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics} not found: {path} has no training history yet (re-run "
                                "`emtdamp train`, or leave this folder out)")
    lines = [ln for ln in metrics.read_text().splitlines() if ln.strip()]
    records = []
    for i, ln in enumerate(lines):
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:  # a run stopped mid-write: the last line may be cut short
                break
            raise ValueError(f"{metrics} line {i + 1} is not JSON ({e.msg}): fix or delete that line") from None
        if isinstance(rec, dict):
            records.append(rec)
    return records


def _load_run(path: Path) -> _Run:
    import yaml

    try:
        cfg = yaml.safe_load((path / "config.yaml").read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path / 'config.yaml'} is not valid YAML ({e}): fix it or leave {path} out") from None
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{path / 'config.yaml'} is not a mapping of config blocks: leave {path} out")
    return _Run(path=path, flat=_setting_keys(_flatten(cfg)), records=_read_records(path))


def _value_str(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list | tuple):
        return "[" + ",".join(_value_str(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return json.dumps(v, sort_keys=True, default=str)
    return str(v)


def _key_str(k: str) -> str:
    """``method.name`` -> ``method`` (likewise ``data.name``), other keys as they are."""
    return k[: -len(".name")] if k.endswith(".name") and k.count(".") == 1 else k


def _value_or_missing(setting: Mapping[str, Any], key: str) -> str:
    return _value_str(setting[key]) if key in setting else "\0missing"


def _labels(settings: list[dict[str, Any]]) -> list[str]:
    """One label per setting: the config keys whose values differ between settings.

    A method's own hyperparameters are compared only between settings of the same method (so ``adam`` vs ``sgd``
    reads ``method=adam`` / ``method=sgd`` rather than listing every default that differs).
    """
    if len(settings) == 1:
        s = settings[0]
        name = s.get("method.name")
        return [f"method={name}" if name is not None else "all runs"]
    keys = sorted({k for s in settings for k in s}, key=lambda k: (k != "method.name", k))
    differ = [k for k in keys if len({_value_or_missing(s, k) for s in settings}) > 1]
    by_method = "method.name" in differ
    labels = []
    for s in settings:
        parts = []
        for k in differ:
            if by_method and k.startswith("method.") and k != "method.name":
                same = [t for t in settings if t.get("method.name") == s.get("method.name")]
                if len({_value_or_missing(t, k) for t in same}) <= 1:
                    continue
            if k in s:
                parts.append(f"{_key_str(k)}={_value_str(s[k])}")
        labels.append(", ".join(parts) or "(defaults)")
    return labels


def _group(runs: list[_Run], group_by: str) -> tuple[list[list[_Run]], list[str]]:
    if group_by == "run":
        return [[r] for r in runs], [r.path.name for r in runs]
    if group_by == "auto":
        groups: dict[str, list[_Run]] = {}
        for r in runs:
            groups.setdefault(json.dumps(r.flat, sort_keys=True, default=str), []).append(r)
        members = list(groups.values())
        return members, _labels([g[0].flat for g in members])
    keys = [k.strip() for k in group_by.split(",") if k.strip()]
    known = sorted({k for r in runs for k in r.flat})
    unknown = [k for k in keys if k not in known]
    if not keys or unknown:
        raise ValueError(f"group_by={group_by!r}: {', '.join(unknown) or 'no keys'} not in the runs' configs; use "
                         f"'auto', 'run' or comma-separated config keys such as {', '.join(known[:4])}")
    by_value: dict[tuple, list[_Run]] = {}
    for r in runs:
        by_value.setdefault(tuple(_value_str(r.flat.get(k)) for k in keys), []).append(r)
    labels = [", ".join(f"{_key_str(k)}={v}" for k, v in zip(keys, vals, strict=True)) for vals in by_value]
    return list(by_value.values()), labels


def _series(run: _Run, key: str) -> dict[float, float]:
    """{epoch: test[key]} over the run's evaluated, non-diverged epochs."""
    out = {}
    for i, r in enumerate(run.records):
        test = r.get("test")
        if isinstance(test, Mapping) and not r.get("diverged"):
            v = _number(test.get(key))
            if not math.isnan(v):
                out[_x_of(r, i + 1)] = v
    return out


def _evaluated(run: _Run) -> bool:
    return any(isinstance(r.get("test"), Mapping) and r["test"] for r in run.records)


def _pick_metric(runs: list[_Run], metric: str | None) -> str:
    keys = {k for r in runs for rec in r.records if isinstance(rec.get("test"), Mapping) for k in rec["test"]}
    if metric is not None:
        if metric not in keys:
            raise ValueError(f"metric {metric!r} is not among the runs' test metrics: use one of "
                             f"{', '.join(sorted(keys))}")
        return metric
    tasks = {"regression" if "rmse" in {k for rec in r.records if isinstance(rec.get("test"), Mapping)
                                        for k in rec["test"]} else "classification" for r in runs}
    if len(tasks) > 1:
        raise ValueError("the runs mix regression and classification: plot them separately, or pass metric= "
                         "(--metric) with a metric both report, such as nll")
    return "rmse" if tasks == {"regression"} else "accuracy"


def _colors(n: int) -> list:
    import matplotlib

    if n <= 10:
        return [f"C{i}" for i in range(n)]
    cmap = matplotlib.colormaps["tab20" if n <= 20 else "viridis"]
    return [cmap(i / max(n - 1, 1)) if n > 20 else cmap(i) for i in range(n)]


def runs_figure(run_dirs: Sequence[str | Path], *, metric: str | None = None, group_by: str = "auto") -> Figure:
    """The figure :func:`plot_runs` saves (see there); returned instead of saved, for inspection.

    Each panel's axes carries the label ``test.<metric>``; each setting's line has its legend label, and its
    mean ± sd band (a ``PolyCollection``) the label ``_band <setting>``.
    """
    paths = find_runs(run_dirs)
    runs = [_load_run(p) for p in paths]
    empty = [r for r in runs if not _evaluated(r)]
    runs = [r for r in runs if _evaluated(r)]
    if not runs:
        raise ValueError(f"no evaluated epochs in {', '.join(str(r.path) for r in empty)} (metrics.jsonl has no "
                         "'test' records): train with train.eval_every <= train.epochs, or wait for an evaluation")
    if empty:
        warnings.warn(f"left out {len(empty)} run(s) with no evaluated epochs: "
                      f"{', '.join(str(r.path) for r in empty)}", stacklevel=2)
    key = _pick_metric(runs, metric)
    panel_keys = [key] + (["nll"] if key != "nll" and any(_series(r, "nll") for r in runs) else [])
    groups, labels = _group(runs, group_by)
    x_key = "round" if all(_x_key(r.records) == "round" for r in runs) else "epoch"

    ncol = 1 if len(groups) <= 1 else 2 if len(groups) <= 12 else 3
    fig = _new_figure((5.2 * len(panel_keys) + 0.6, 5.0 + 0.22 * min(math.ceil(len(groups) / ncol), 12)))
    axes = [fig.add_subplot(1, len(panel_keys), i + 1, label=f"test.{k}") for i, k in enumerate(panel_keys)]
    colors = _colors(len(groups))
    all_x: list[float] = []
    handles = []
    banded = False
    for gi, (members, label) in enumerate(zip(groups, labels, strict=True)):
        n_div = sum(any(rec.get("diverged") for rec in r.records) for r in members)
        tag = f"{len(members)} seeds" if len(members) > 1 else "1 run"
        if n_div:
            tag += f", {n_div} diverged"
        full_label = f"{label} ({tag})"
        for ax, k in zip(axes, panel_keys, strict=True):
            series = [_series(r, k) for r in members]
            xs = sorted({x for s in series for x in s})
            if not xs:
                continue
            all_x.extend(xs)
            table = np.array([[s.get(x, np.nan) for x in xs] for s in series])
            n = np.sum(np.isfinite(table), axis=0)
            mean = np.nanmean(table, axis=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                sd = np.where(n >= 2, np.nanstd(table, axis=0, ddof=1), np.nan) if len(members) > 1 else None
            x = np.array(xs)
            if len(xs) == 1:  # one evaluated epoch: dodge the settings so their error bars do not overlap
                x = x + (gi - (len(groups) - 1) / 2) * min(0.1, 0.6 / len(groups))
            (line,) = ax.plot(x, mean, color=colors[gi], lw=1.8, marker="o" if len(xs) <= 30 else None, ms=3.5,
                              label=full_label)
            if sd is not None and np.isfinite(sd).any():
                banded = True
                if len(xs) == 1:
                    ax.errorbar(x, mean, yerr=sd, color=colors[gi], capsize=4, lw=1.2)
                ax.fill_between(x, mean - sd, mean + sd, color=colors[gi], alpha=0.18, lw=0,
                                label=f"_band {label}")
            if ax is axes[0]:
                handles.append(line)
    for ax, k in zip(axes, panel_keys, strict=True):
        info = _metric_info(k)
        hint = {"lower": " (↓ better)", "higher": " (↑ better)"}.get(info.better or "", "")
        ax.set_title(info.title + hint, fontsize=10)
        ax.set_xlabel(x_key)
        ax.set_ylabel(info.ylabel)
        ax.grid(alpha=0.3)
        _integer_x(ax)
        if info.percent:
            _percent_y(ax)
        if k == "coverage90":
            ax.axhline(0.9, color="0.3", ls="--", lw=1.2)
        if all_x:
            _x_limits(ax, all_x)
    if not handles:
        raise ValueError(f"no run reports test {key!r} on a non-diverged epoch: pick another metric (--metric)")

    common = []
    for k in ("data.name", "method.name"):
        vals = {_value_str(r.flat.get(k)) for r in runs if k in r.flat}
        if len(vals) == 1:
            common.append(vals.pop())
    n_set, n_run = len(groups), len(runs)
    head = " · ".join(common + [f"{n_set} setting{'s' * (n_set > 1)}, {n_run} run{'s' * (n_run > 1)}"])
    fig.suptitle(head + ("  (mean ± sd over seeds)" if banded else ""), fontsize=12, fontweight="bold")
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=8.5, frameon=False)
    return fig


def plot_runs(run_dirs: list[Path], path: str | Path, *, metric: str | None = None, group_by: str = "auto") -> Path:
    """Overlay several runs' test curves in one figure and save it to ``path``; returns ``path``.

    Parameters
    ----------
    run_dirs
        Run folders and/or sweep folders (expanded by :func:`find_runs`).
    path
        Where the PNG goes (its folder is created).
    metric
        The test metric of the first panel; default ``rmse`` for regression runs and ``accuracy`` for
        classification runs (told apart by their records). The second panel is the test NLL.
    group_by
        ``"auto"``: runs whose configs differ only in ``train.seed`` / ``data.seed`` (``output.*``, ``sweep.*``
        and ``train.progress`` ignored) form one setting, labelled by the config keys that differ between
        settings (``method=sghmc_sa``, ``method.learning_rate=0.01``); ``"run"``: one line per run, labelled by
        its folder name; or comma-separated config keys (``"method.name"``): runs grouped by those values only.

    Notes
    -----
    Each setting is one line, the mean over its runs per epoch (diverged epochs left out), with a shaded
    mean ± sd band when it has two or more runs; the legend below the panels gives each setting's label and
    number of seeds.

    Raises
    ------
    FileNotFoundError
        A path is not a run or sweep folder, or a run has no ``metrics.jsonl``.
    ValueError
        No run has an evaluated epoch (runs without one are left out with a warning when others have), the runs
        mix tasks, or ``metric`` / ``group_by`` name something the runs do not have.
    """
    fig = runs_figure(run_dirs, metric=metric, group_by=group_by)
    return _save(fig, path)
