"""Registries filled on import: load every module of a package once, so each registers what it defines.

Both registries (:mod:`emtdamp.methods.registry`, :mod:`emtdamp.data.registry`) call :func:`import_submodules`
on first lookup. The modules are found on disk and imported by name, so a registry never imports its own
package (no import cycle), and importing one method or loader module never drags in the others.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

_done: set[str] = set()


def import_submodules(package: str, folder: Path, skip: set[str]) -> None:
    """Import ``package.<name>`` for every module ``<name>`` in ``folder`` except ``skip``; once per package."""
    if package in _done:
        return
    _done.add(package)
    for info in pkgutil.iter_modules([str(folder)]):
        if info.name not in skip:
            importlib.import_module(f"{package}.{info.name}")
