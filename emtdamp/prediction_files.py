"""Files in and out of ``emtdamp predict``: raw input rows from ``.npz`` (array ``x``) or ``.csv`` (the
training columns, target optional), and the predictive written as ``.npz`` or ``.csv``.

Output fields (:func:`prediction_fields`), regression: ``mean``, ``var``, ``sd``, ``lower_<L>`` / ``upper_<L>``
for every interval level ``L`` in percent (``lower_90`` = the 5 % quantile), and ``samples`` (``(S, n)``).
Classification: ``probs``, ``label`` (the most probable class's name), ``entropy`` (nats), ``label_names``
and label draws ``samples`` when asked for. A ``.csv`` has one column per output (``mean``, or ``mean_j`` for
several; ``prob_<label>``; ``sample_<s>``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from emtdamp.data.record import DataRecord


def read_inputs(path: str | Path, record: DataRecord) -> np.ndarray:
    """Raw feature rows ``(n, d)`` from ``path``: an ``.npz`` holding ``x``, or a ``.csv`` with a header.

    A CSV is matched to the training columns by name when the run was trained on CSV data (extra
    columns such as the target are ignored; missing ones are named in the error); otherwise it must
    have exactly ``d`` columns.
    """
    path = Path(path)
    d = record.spec.n_features
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix == ".npz":
        with np.load(path) as f:
            if "x" not in f:
                raise ValueError(f"{path} must hold an array named 'x' (rows, {d} features); it has {list(f.files)}")
            return np.asarray(f["x"], np.float64)
    if path.suffix != ".csv":
        raise ValueError(f"{path}: predict reads .npz (array x) or .csv (the training columns); got {path.suffix!r}")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{path} is empty; it needs a header row and one row per input")
    header = [h.strip().strip('"') for h in rows[0]]
    body = [r for r in rows[1:] if any(c.strip() for c in r)]
    if record.feature_names is not None:
        missing = [c for c in record.feature_names if c not in header]
        if missing:
            raise ValueError(f"{path} lacks the training column(s) {missing}; it needs {list(record.feature_names)} "
                             f"(the target {record.target!r} may be left out)")
        cols = [header.index(c) for c in record.feature_names]
    elif len(header) == d:
        cols = list(range(d))
    else:
        raise ValueError(f"{path} has {len(header)} columns; the model takes {d} features (in the training data's "
                         "order)")
    try:
        x = np.array([[float(r[c]) for c in cols] for r in body], np.float64)
    except (ValueError, IndexError) as e:
        raise ValueError(f"{path}: a row is not numeric or is short ({e}); every input column must hold a number") \
            from None
    return x.reshape(len(body), len(cols))


def prediction_fields(pred, record: DataRecord) -> dict[str, np.ndarray]:
    """The named output arrays of a :class:`emtdamp.runs.Prediction`, as ``.npz`` stores them.

    Regression: ``mean``, ``var``, ``sd`` ``(n, d_out)``, ``lower_<L>`` / ``upper_<L>`` ``(n, d_out)`` per
    level ``L`` in percent, ``samples`` ``(S, n)`` (``(S, n, d_out)`` for several outputs). Classification:
    ``probs`` ``(n, K)``, ``label_names`` ``(K,)``, ``label`` ``(n,)`` (most probable class), ``entropy``
    ``(n,)`` nats, ``samples`` ``(S, n)`` label names.
    """
    out: dict[str, np.ndarray] = {}
    if pred.probs is not None:
        names = np.asarray([str(v) for v in (record.label_names or range(pred.probs.shape[1]))])
        out.update(probs=np.asarray(pred.probs), label_names=names, label=names[np.argmax(pred.probs, axis=1)],
                   entropy=pred.entropy)
        if pred.samples is not None:
            out["samples"] = names[pred.samples]
        return out
    out.update(mean=np.asarray(pred.mean), var=np.asarray(pred.var), sd=pred.sd)
    for level, (lo, hi) in (pred.intervals or {}).items():
        out[f"lower_{100 * level:g}"], out[f"upper_{100 * level:g}"] = lo, hi
    if pred.samples is not None:
        out["samples"] = pred.samples[..., 0] if pred.mean.shape[1] == 1 else pred.samples
    return out


def csv_columns(fields: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One column per output: ``(n, d)`` arrays split into ``name`` (``d = 1``) or ``name_j``; ``probs`` into
    ``prob_<label>``; ``samples`` ``(S, n)`` into ``sample_<s>``; ``label_names`` dropped (in the headers)."""
    cols: dict[str, np.ndarray] = {}
    for k, v in fields.items():
        v = np.asarray(v)
        if k == "label_names":
            continue
        if k == "probs":
            cols.update({f"prob_{name}": v[:, j] for j, name in enumerate(fields["label_names"])})
        elif k == "samples":
            if v.ndim != 2:
                raise ValueError("samples of a multi-output regression do not fit a CSV; write --out FILE.npz")
            cols.update({f"sample_{i}": v[i] for i in range(v.shape[0])})
        elif v.ndim == 2:
            cols.update({k: v[:, 0]} if v.shape[1] == 1 else {f"{k}_{j}": v[:, j] for j in range(v.shape[1])})
        else:
            cols[k] = v
    return cols


def write_predictions(path: str | Path, fields: dict[str, np.ndarray]) -> Path:
    """Write ``fields`` (:func:`prediction_fields`) as ``.npz`` (arrays as they are) or ``.csv`` (one row per
    input, :func:`csv_columns`)."""
    path = Path(path)
    if path.suffix == ".npz":
        np.savez(path, **fields)
        return path
    if path.suffix != ".csv":
        raise ValueError(f"--out {path}: write .npz or .csv")
    cols = csv_columns(fields)
    n = len(next(iter(cols.values())))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(cols))
        for i in range(n):
            w.writerow([_cell(v[i]) for v in cols.values()])
    return path


def _cell(v) -> str:
    return f"{float(v):.9g}" if isinstance(v, (float, np.floating)) else str(v)
