"""Name -> loader registry. Loaders are functions ``f(seed=0, **options) -> Dataset``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from emtdamp.data.base import Dataset
from emtdamp.plugins import import_submodules

_LOADERS: dict[str, Callable[..., Dataset]] = {}
_NOT_LOADERS = {"base", "registry", "partition"}


def load_all() -> None:
    """Import every loader module of :mod:`emtdamp.data` once (each registers its datasets on import)."""
    import_submodules("emtdamp.data", Path(__file__).parent, _NOT_LOADERS)


def register_dataset(name: str):
    """Decorator: register ``f(seed: int = 0, **options) -> Dataset`` under ``name``.

    The keyword arguments of ``f`` (besides ``seed``) are the options a config may set in
    ``data.options``; unknown options are rejected by :func:`load`.
    """

    def deco(fn):
        if name in _LOADERS:
            raise ValueError(f"dataset {name!r} registered twice")
        _LOADERS[name] = fn
        return fn

    return deco


def loader(name: str) -> Callable[..., Dataset]:
    load_all()
    if name not in _LOADERS:
        raise KeyError(f"unknown dataset {name!r}; available datasets: {sorted(_LOADERS)}")
    return _LOADERS[name]


def loader_options(name: str) -> dict[str, inspect.Parameter]:
    """The options (keyword parameters other than ``seed``) a dataset accepts."""
    sig = inspect.signature(loader(name))
    return {k: p for k, p in sig.parameters.items() if k != "seed"}


def load(name: str, seed: int = 0, **options) -> Dataset:
    """Load dataset ``name`` with split/generation ``seed``; unknown options raise a clear error."""
    allowed = loader_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"dataset {name!r} got unknown option(s) {unknown}; allowed: {sorted(allowed)}")
    return loader(name)(seed=seed, **options)


def dataset_names() -> list[str]:
    load_all()
    return sorted(_LOADERS)
