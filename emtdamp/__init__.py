"""emtdamp: sparse Bayesian deep learning in JAX (EM-TDAMP, SG-MCMC-SA, EM-MCMC, baselines).

The Python entry points (the command line ``emtdamp train`` / ``emtdamp predict`` calls the same)::

    import emtdamp

    run = emtdamp.fit("configs/boston.yaml", **{"train.epochs": 20})   # trains, writes the run folder
    run.summary["test"]                                                 # test metrics, original units
    again = emtdamp.load_run(run.dir)                                   # reopen a finished folder
    pred = again.predict(x_raw, levels=(0.9,))                          # mean / var / intervals (or probs)
    net = emtdamp.load_exported("exported/")                            # after `emtdamp export RUN --out exported/`

``fit``, ``load_run``, ``Run`` and ``Prediction`` live in :mod:`emtdamp.runs`; ``get_method`` /
``method_names`` (the registry of the pure ``init`` / ``step`` / ``predict`` methods) in
:mod:`emtdamp.methods`; ``load_exported`` in :mod:`emtdamp.export`. They are imported on first use, so
``import emtdamp`` does not load JAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {"fit": "emtdamp.runs", "load_run": "emtdamp.runs", "Run": "emtdamp.runs", "Prediction": "emtdamp.runs",
         "get_method": "emtdamp.methods", "method_names": "emtdamp.methods", "load_exported": "emtdamp.export"}

__all__ = ["Prediction", "Run", "__version__", "fit", "get_method", "load_exported", "load_run", "method_names"]

if TYPE_CHECKING:
    from emtdamp.export import load_exported
    from emtdamp.methods import get_method, method_names
    from emtdamp.runs import Prediction, Run, fit, load_run


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'emtdamp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
