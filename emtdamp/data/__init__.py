"""Datasets: real data shipped by packages (never downloaded), the user's own files, synthetic
generators with known ground truth, and federated partitioners.

``load(name, seed=0, **options) -> Dataset``; ``dataset_names()`` lists what is registered. Every
module of this package registers its loaders on import.
"""

from emtdamp.data.base import DataError, Dataset, make_classification, make_regression, model_inputs, validate_arrays
from emtdamp.data.registry import dataset_names, load, load_all, loader_options, register_dataset

load_all()

__all__ = ["DataError", "Dataset", "dataset_names", "load", "load_all", "loader_options", "make_classification",
           "make_regression", "model_inputs", "register_dataset", "validate_arrays"]
