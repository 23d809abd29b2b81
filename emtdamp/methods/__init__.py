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

_LOADED = False


def load_all() -> None:
    """Import every method module once (each registers its methods). Called lazily by the registry
    lookups, so that importing one method module never drags in the others (no import cycles)."""
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for info in pkgutil.iter_modules(__path__):
            if info.name != "base":
                importlib.import_module(f"{__name__}.{info.name}")

__all__ = ["Batch", "DataSpec", "Method", "ModelSpec", "Predictive", "get_method", "hparam",
           "load_all", "method_names", "register"]
