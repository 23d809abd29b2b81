"""Training methods. Every module of this package registers its methods on import.

Use :func:`get_method` to look one up; ``emtdamp list`` prints them.
"""

import importlib
import pkgutil

from emtdamp.methods.base import (
    Batch,
    DataSpec,
    Method,
    ModelSpec,
    Predictive,
    get_method,
    hparam,
    method_names,
    register,
)

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["Batch", "DataSpec", "Method", "ModelSpec", "Predictive", "get_method", "hparam",
           "method_names", "register"]
