"""Datasets: real data shipped by packages (never downloaded), the user's own files, synthetic
generators with known ground truth, and federated partitioners.

``load(name, seed=0, **options) -> Dataset``; ``dataset_names()`` lists what is registered. Every
module of this package registers its loaders on import.
"""

import importlib
import pkgutil

from emtdamp.data.base import DataError, Dataset, make_classification, make_regression, model_inputs, validate_arrays
from emtdamp.data.registry import dataset_names, load, loader_options, register_dataset

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["DataError", "Dataset", "dataset_names", "load", "loader_options", "make_classification",
           "make_regression", "model_inputs", "register_dataset", "validate_arrays"]
