"""Physically smaller MLP from an EM-MCMC keep mask (dense :mod:`emtdamp.models.mlp` layout).

Group ``j`` of kernel ``l`` is input unit ``j`` of layer ``l``. A pruned group has zero outgoing
weights, so removing it changes no prediction: for ``l = 0`` the input feature is dropped (the compact
network takes ``x[:, inputs]``), for ``l >= 1`` hidden unit ``j`` of layer ``l - 1`` is removed
(column ``j`` of kernel ``l - 1``, entry ``j`` of its bias, row ``j`` of kernel ``l``).
"""

from __future__ import annotations

import numpy as np


def compact_mlp(params: list[dict], keep: tuple) -> tuple[list[dict], np.ndarray]:
    """``(compact_params, inputs)`` with ``mlp.apply(compact, x[:, inputs]) == mlp.apply(params, x)``.

    ``keep`` is ``EMMCMCState.keep`` for ``mlp_group_spec`` params (leaves ``[b0, W0, b1, W1, ...]``).
    Runs outside jit (numpy).
    """
    kernel_keeps = [np.asarray(k[0]).reshape(-1) for k in keep if len(k)]
    if len(kernel_keeps) != len(params):
        raise ValueError(f"{len(params)} layers but {len(kernel_keeps)} grouped leaves in keep")
    out = []
    for i, layer in enumerate(params):
        w = np.asarray(layer["kernel"])[kernel_keeps[i]]
        b = np.asarray(layer["bias"])
        if i + 1 < len(params):
            nxt = kernel_keeps[i + 1]
            w, b = w[:, nxt], b[nxt]
        out.append({"kernel": w, "bias": b})
    return out, np.flatnonzero(kernel_keeps[0])
