"""Sweep folders: run folders named after what a sweep varies, and ``summary.csv``, the mean ± sd over seeds of
every setting.

A sweep's runs (:func:`emtdamp.config.expand_sweep`) carry labels such as
``method.name=sghmc_sa,train.seed=1``. :func:`folder_names` turns them into folder names a reader can scan,
``method=sghmc_sa,seed=1``: each key is shortened to its last part (``method.name`` to the block name
``method``) unless two varied keys would then read the same; characters that do not belong in a file name
become ``_``; repeated names get ``-2``, ``-3`` suffixes. :func:`seed_summary` groups the per-run rows of
``sweep.csv`` by everything but the seeds and reports each numeric column's mean and sample sd.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

SEED_KEYS = ("train.seed", "data.seed")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+\-]")


def _pairs(label: str) -> list[tuple[str, str]]:
    """``"a.b=1,c=x"`` -> ``[("a.b", "1"), ("c", "x")]`` (a value may hold commas inside brackets/braces)."""
    out, depth, cur = [], 0, ""
    for ch in label:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [tuple(p.split("=", 1)) if "=" in p else (p, "") for p in out if p]


def _short(key: str) -> str:
    parts = key.split(".")
    return parts[0] if parts[-1] == "name" and len(parts) == 2 else parts[-1]


def folder_names(labels: Sequence[str], max_len: int = 120) -> list[str]:
    """One folder name per sweep label (see the module docstring), unique, at most ``max_len`` characters."""
    pairs = [_pairs(lb) for lb in labels]
    keys = {k for p in pairs for k, _ in p}
    shorts: dict[str, str] = {}
    for k in keys:
        s = _short(k)
        clash = any(_short(o) == s for o in keys if o != k)
        shorts[k] = k if clash else s
    names, seen = [], {}
    for lb, p in zip(labels, pairs, strict=True):
        name = ",".join(f"{shorts[k]}={v}" if v else shorts[k] for k, v in p) if p else lb
        name = _UNSAFE.sub("_", name)[:max_len] or "run"
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return names


def setting_of(label: str) -> str:
    """A sweep label without its seed entries: the setting the run belongs to."""
    return ",".join(f"{k}={v}" for k, v in _pairs(label) if k not in SEED_KEYS) or "(all)"


def seed_summary(rows: Sequence[dict], labels: Sequence[str]) -> list[dict]:
    """Mean ± sd over seeds per setting: ``rows`` are the ``sweep.csv`` rows (dicts) of the runs labelled
    ``labels``; returns one dict per setting, in order of first appearance, with ``setting``, ``runs`` and
    ``<column>_mean`` / ``<column>_sd`` (sample sd, ``ddof=1``; empty with one run) for every numeric column
    except ``seed`` and ``epochs``."""
    import math

    groups: dict[str, list[dict]] = {}
    for row, lb in zip(rows, labels, strict=True):
        groups.setdefault(setting_of(lb), []).append(row)
    out = []
    for setting, rs in groups.items():
        agg: dict = {"setting": setting, "runs": len(rs)}
        for col in rs[0]:
            if col in ("seed", "epochs", "run"):
                continue
            vals = [r.get(col) for r in rs]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                if len({str(v) for v in vals}) == 1:
                    agg[col] = vals[0]
                continue
            m = sum(vals) / len(vals)
            agg[f"{col}_mean"] = m
            agg[f"{col}_sd"] = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else ""
        out.append(agg)
    return out
