"""The in-memory dataset type every loader and generator returns, and its validation."""

from __future__ import annotations

import dataclasses

import numpy as np

from emtdamp.methods.base import DataSpec


class DataError(ValueError):
    """Bad input data: the message names the dataset, the problem, the rows affected and the fix."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train/test arrays plus what methods need to know.

    Attributes
    ----------
    name: dataset name (as in configs).
    x_train, x_test: ``(n, d)`` float32 features, already standardised / scaled.
    y_train, y_test: regression ``(n, d_out)`` float32 standardised targets; classification
        ``(n,)`` int32 labels in ``[0, K)``.
    spec: :class:`~emtdamp.methods.base.DataSpec`.
    y_mean, y_std: ``(d_out,)`` train statistics used to standardise regression targets
        (metrics are reported in original units: ``y = y_std * y_std_units + y_mean``); for
        classification ``None``.
    info: free-form provenance (split seed, source file, ground truth of synthetic data).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    spec: DataSpec
    y_mean: np.ndarray | None = None
    y_std: np.ndarray | None = None
    info: dict = dataclasses.field(default_factory=dict)


def validate_arrays(name: str, x: np.ndarray, y: np.ndarray, task: str, n_classes: int | None = None,
                    part: str = "data") -> None:
    """Raise :class:`DataError` for mismatched lengths, NaN/inf features or targets, bad labels."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 2:
        raise DataError(f"dataset {name!r} ({part}): features must be a 2-D array (rows, features), "
                        f"got shape {x.shape}")
    if len(x) != len(y):
        raise DataError(f"dataset {name!r} ({part}): {len(x)} feature rows but {len(y)} targets; "
                        "features and targets must have the same number of rows")
    if len(x) == 0:
        raise DataError(f"dataset {name!r} ({part}): no rows")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise DataError(f"dataset {name!r} ({part}): {int(bad.sum())} of {len(x)} rows have NaN or inf "
                        f"features (first bad row {int(np.argmax(bad))}); clean or drop them first")
    if task == "regression":
        ybad = ~np.isfinite(y.reshape(len(y), -1)).all(axis=1)
        if ybad.any():
            raise DataError(f"dataset {name!r} ({part}): {int(ybad.sum())} of {len(y)} rows have NaN or "
                            f"inf targets (first bad row {int(np.argmax(ybad))})")
    elif task == "classification":
        if y.ndim != 1:
            raise DataError(f"dataset {name!r} ({part}): class labels must be 1-D, got shape {y.shape}")
        if not np.all(np.isfinite(y)) or not np.all(np.equal(np.mod(y, 1), 0)):
            raise DataError(f"dataset {name!r} ({part}): class labels must be integers")
        if n_classes is not None:
            out = (y < 0) | (y >= n_classes)
            if out.any():
                raise DataError(f"dataset {name!r} ({part}): {int(out.sum())} of {len(y)} labels are outside "
                                f"[0, {n_classes}) (e.g. {y[out][0]}); labels must be 0..K-1")
    else:
        raise DataError(f"dataset {name!r}: task must be 'regression' or 'classification', got {task!r}")


def _check_stats(name: str, **stats: np.ndarray) -> None:
    """Standardisation statistics that overflow (a column whose squares exceed float64, ~1e154) would
    silently zero that column: report it instead."""
    for what, a in stats.items():
        a = np.asarray(a, np.float64)
        if not np.isfinite(a).all():
            cols = np.flatnonzero(~np.isfinite(a.reshape(-1)))
            raise DataError(f"dataset {name!r}: {what} of column(s) {cols.tolist()} overflow (values too large to "
                            "standardise, |x| above ~1e154); rescale the raw data first")


def model_inputs(data: Dataset, x_raw: np.ndarray) -> np.ndarray:
    """Map raw feature rows ``x_raw (n, d)`` to the model's inputs, as the loader mapped ``data``'s own rows.

    Uses ``data.info["x_transform"]`` (``(x - mean) / std``, per feature; written by the loaders that
    rescale: regression standardisation, image pixels 0-255 to [0, 1] or standardised pixels); rows of a
    loader without a transform are used as given. Returns float32 ``(n, d)``.
    """
    x = np.asarray(x_raw, np.float64)
    tf = data.info.get("x_transform")
    if tf is not None:
        x = (x - np.asarray(tf["mean"])) / np.asarray(tf["std"])
    return x.astype(np.float32)


def make_regression(name: str, x_tr, y_tr, x_te, y_te, info: dict | None = None,
                    standardize_x: bool = True) -> Dataset:
    """Validate, standardise features and targets with *train* statistics, and pack a Dataset."""
    x_tr, x_te = np.asarray(x_tr, np.float64), np.asarray(x_te, np.float64)
    y_tr = np.asarray(y_tr, np.float64).reshape(len(y_tr), -1)
    y_te = np.asarray(y_te, np.float64).reshape(len(y_te), -1)
    validate_arrays(name, x_tr, y_tr, "regression", part="train")
    validate_arrays(name, x_te, y_te, "regression", part="test")
    if x_tr.shape[1] != x_te.shape[1]:
        raise DataError(f"dataset {name!r}: train has {x_tr.shape[1]} features, test {x_te.shape[1]}")
    info = dict(info or {})
    if standardize_x:
        with np.errstate(over="ignore", invalid="ignore"):
            mx, sx = x_tr.mean(0), x_tr.std(0)
        _check_stats(name, **{"feature mean": mx, "feature sd": sx})
        sx = np.where(sx > 0, sx, 1.0)
        x_tr, x_te = (x_tr - mx) / sx, (x_te - mx) / sx
        info["x_transform"] = {"mean": mx, "std": sx}  # raw features -> model inputs (used by predict)
    with np.errstate(over="ignore", invalid="ignore"):
        my, sy = y_tr.mean(0), y_tr.std(0)
    sy = np.where(sy > 0, sy, 1.0)
    _check_stats(name, **{"target mean": my, "target sd": sy})
    spec = DataSpec(task="regression", n_features=x_tr.shape[1], n_outputs=y_tr.shape[1], n_train=len(x_tr))
    return Dataset(name=name, x_train=x_tr.astype(np.float32), y_train=((y_tr - my) / sy).astype(np.float32),
                   x_test=x_te.astype(np.float32), y_test=((y_te - my) / sy).astype(np.float32), spec=spec,
                   y_mean=my.astype(np.float32), y_std=sy.astype(np.float32), info=info)


def make_classification(name: str, x_tr, y_tr, x_te, y_te, n_classes: int | None = None,
                        info: dict | None = None) -> Dataset:
    """Validate and pack a classification Dataset (features used as given).

    ``info["label_names"]`` (the original label of each class id, e.g. from
    :func:`emtdamp.data.real.encode_labels`) defaults to ``list(range(K))``.
    """
    y_tr, y_te = np.asarray(y_tr), np.asarray(y_te)
    k = int(n_classes if n_classes is not None else max(y_tr.max(), y_te.max()) + 1)
    validate_arrays(name, x_tr, y_tr, "classification", k, part="train")
    validate_arrays(name, x_te, y_te, "classification", k, part="test")
    info = dict(info or {})
    info.setdefault("label_names", list(range(k)))
    spec = DataSpec(task="classification", n_features=np.asarray(x_tr).shape[1], n_outputs=k,
                    n_train=len(x_tr))
    return Dataset(name=name, x_train=np.asarray(x_tr, np.float32), y_train=y_tr.astype(np.int32),
                   x_test=np.asarray(x_te, np.float32), y_test=y_te.astype(np.int32), spec=spec,
                   info=info)
