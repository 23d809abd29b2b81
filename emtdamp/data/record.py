"""What a trained model needs to know about its training data to predict on new raw rows, without the data:
the :class:`~emtdamp.methods.base.DataSpec`, the input transform, the target scaling, the class names and
the column names. Every run folder keeps it as ``data.json``, so a run predicts after its data has moved.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from emtdamp.data.base import Dataset
from emtdamp.methods.base import DataSpec

FILE = "data.json"


@dataclasses.dataclass(frozen=True)
class DataRecord:
    """The data facts prediction needs (JSON-able; arrays as lists).

    Attributes
    ----------
    name: dataset name (``data.name``).
    spec: the :class:`DataSpec` the model was built for.
    x_mean, x_std: the input transform ``(x_raw − x_mean) / x_std`` per feature, ``(d,)``; None = identity.
    y_mean, y_std: the target standardisation ``(d_out,)`` (regression), None for classification.
    label_names: class ``k``'s original label (classification), None for regression.
    feature_names: the input columns in order (csv data), else None.
    target: the target column (csv data), else None.
    """

    name: str
    spec: DataSpec
    x_mean: tuple[float, ...] | None = None
    x_std: tuple[float, ...] | None = None
    y_mean: tuple[float, ...] | None = None
    y_std: tuple[float, ...] | None = None
    label_names: tuple[Any, ...] | None = None
    feature_names: tuple[str, ...] | None = None
    target: str | None = None

    @classmethod
    def from_dataset(cls, ds: Dataset) -> DataRecord:
        """The record of a loaded :class:`Dataset` (its transforms from ``ds.info`` and ``y_mean``/``y_std``)."""
        tf = ds.info.get("x_transform")
        tup = lambda a: None if a is None else tuple(float(v) for v in np.asarray(a, np.float64).reshape(-1))
        reg = ds.spec.task == "regression"
        names = ds.info.get("label_names")
        if not reg and names is None:
            names = list(range(ds.spec.n_outputs))
        feats = ds.info.get("feature_names")
        return cls(name=ds.name, spec=ds.spec, x_mean=tup(tf["mean"]) if tf else None,
                   x_std=tup(tf["std"]) if tf else None, y_mean=tup(ds.y_mean) if reg else None,
                   y_std=tup(ds.y_std) if reg else None,
                   label_names=None if reg else tuple(_plain(v) for v in names),
                   feature_names=None if feats is None else tuple(str(f) for f in feats),
                   target=ds.info.get("target"))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["spec"] = dataclasses.asdict(self.spec)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DataRecord:
        spec = dict(d["spec"])
        if spec.get("image_shape") is not None:
            spec["image_shape"] = tuple(spec["image_shape"])
        tup = lambda a: None if a is None else tuple(a)
        return cls(name=d["name"], spec=DataSpec(**spec), x_mean=tup(d.get("x_mean")), x_std=tup(d.get("x_std")),
                   y_mean=tup(d.get("y_mean")), y_std=tup(d.get("y_std")), label_names=tup(d.get("label_names")),
                   feature_names=tup(d.get("feature_names")), target=d.get("target"))

    def save(self, folder: Path) -> Path:
        """Write ``folder/data.json``."""
        path = Path(folder) / FILE
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, folder: Path) -> DataRecord:
        """Read ``folder/data.json``."""
        return cls.from_dict(json.loads((Path(folder) / FILE).read_text()))

    def model_inputs(self, x_raw: np.ndarray) -> np.ndarray:
        """Raw rows ``(n, d)`` -> the model's float32 inputs, as the loader mapped the training rows."""
        x = np.asarray(x_raw, np.float64)
        if self.x_mean is not None:
            x = (x - np.asarray(self.x_mean)) / np.asarray(self.x_std)
        return x.astype(np.float32)

    @property
    def y_scale(self) -> tuple[np.ndarray, np.ndarray]:
        """``(y_mean, y_std)`` arrays ``(d_out,)`` (regression)."""
        return np.asarray(self.y_mean, np.float32), np.asarray(self.y_std, np.float32)


def _plain(v: Any) -> Any:
    """A JSON-able label: numpy scalars to Python scalars, everything else as given (str stays str)."""
    return v.item() if hasattr(v, "item") else v
