"""The one registry of training methods, centralised (:class:`~emtdamp.methods.base.Method`) and federated
(:class:`~emtdamp.methods.federated.FedMethod`), by name (``method.name`` in configs).

Method modules register a zero-argument factory with :func:`register` / :func:`register_fed` when they are
imported; the lookups import every module of :mod:`emtdamp.methods` once, on first use
(:func:`load_all`), so importing one method module never drags in the others.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from emtdamp.plugins import import_submodules

# modules of emtdamp.methods that define no method (the contracts, this registry, the chains wrapper)
_NOT_METHODS = {"base", "registry", "federated", "chains"}
_CENTRAL: dict[str, Callable[[], Any]] = {}
_FEDERATED: dict[str, Callable[[], Any]] = {}


def _register(table: dict, name: str) -> Callable:
    def deco(factory: Callable) -> Callable:
        if name in _CENTRAL or name in _FEDERATED:
            raise ValueError(f"method {name!r} registered twice")
        table[name] = factory
        return factory

    return deco


def register(name: str) -> Callable:
    """Decorator registering a zero-argument factory that returns a centralised
    :class:`~emtdamp.methods.base.Method`."""
    return _register(_CENTRAL, name)


def register_fed(name: str) -> Callable:
    """Decorator registering a zero-argument factory that returns a :class:`~emtdamp.methods.federated.FedMethod`."""
    return _register(_FEDERATED, name)


def load_all() -> None:
    """Import every method module of :mod:`emtdamp.methods` once (each registers its methods)."""
    import_submodules("emtdamp.methods", Path(__file__).parent, _NOT_METHODS)


def get_method(name: str):
    """The centralised method called ``name``; the error lists the registered names."""
    load_all()
    if name not in _CENTRAL:
        fed = f" ({name!r} is a federated method)" if name in _FEDERATED else ""
        raise KeyError(f"unknown method {name!r}{fed}; registered methods: {sorted(_CENTRAL)}")
    return _CENTRAL[name]()


def get_fed_method(name: str):
    """The federated method called ``name``, or None if it is not a federated method."""
    load_all()
    return _FEDERATED[name]() if name in _FEDERATED else None


def method_names() -> list[str]:
    """Names of the centralised methods."""
    load_all()
    return sorted(_CENTRAL)


def fed_method_names() -> list[str]:
    """Names of the federated methods."""
    load_all()
    return sorted(_FEDERATED)
