"""Training methods: the contracts (:mod:`emtdamp.methods.base` for centralised methods,
:mod:`emtdamp.methods.federated` for federated ones), the registry (:mod:`emtdamp.methods.registry`) and one
module per method family, each registering its methods on import.

Use :func:`get_method` / :func:`get_fed_method` to look one up; ``emtdamp list`` prints them.
"""

from emtdamp.methods.base import Algorithm, Batch, DataSpec, Method, ModelSpec, Predictive, hparam
from emtdamp.methods.registry import (
                                      fed_method_names,
                                      get_fed_method,
                                      get_method,
                                      load_all,
                                      method_names,
                                      register,
                                      register_fed,
)

__all__ = ["Algorithm", "Batch", "DataSpec", "Method", "ModelSpec", "Predictive", "fed_method_names", "get_fed_method",
           "get_method", "hparam", "load_all", "method_names", "register", "register_fed"]
