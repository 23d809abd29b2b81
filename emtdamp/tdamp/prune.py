"""Group (neuron) pruning for EM-TDAMP states, sparsity reports and physical compaction (spec section 4).

A group is row ``j`` of kernel ``l`` (all outgoing weights of unit ``j`` of layer ``l``; for ``l = 0``
an input feature). Two modes:

- ``"target"``: after ``warm`` epochs keep, per layer, the ``ceil(kappa_t N_l)`` live groups with the
  largest evidence accumulated over the epoch (``lam_acc``; ties broken by the slab signal-to-noise
  ``sum_i slab_m^2 / slab_v``), with ``kappa_t`` ramping linearly from 1 to ``kappa`` over ``ramp``
  epochs; the rest are hard-masked (mask = rho = pi = 0, W_hat = mu0 = 0) and training goes on.
- ``"free"``: after ``warm`` epochs, hard-mask every live group whose posterior support ``pi <= 0.5``.

A group counts as *active* when it is not masked and ``pi > 0.5`` (:func:`active_groups`); the
sparsity report and :func:`compact` use that definition, so in free mode without hard masking they
describe the network that a 0.5 threshold would give.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from emtdamp.tdamp.gaussian import bounds
from emtdamp.tdamp.state import TdampState

PRUNE_MODES = ("none", "free", "target")


def apply_masks(state: TdampState, masks: list[jax.Array]) -> TdampState:
    """Hard-mask groups: for ``m_l = 0`` set mask = rho = pi = 0, W_hat = mu0 = slab_m = 0, V_W = tiny.

    Parameters
    ----------
    masks: per layer ``(N_l,)`` arrays, 1 = keep (combined with the existing mask).
    """
    layers = []
    for lay, m in zip(state.layers, masks, strict=True):
        m = jnp.asarray(m, lay.mask.dtype) * lay.mask
        lo, _ = bounds(lay.W.dtype)
        col = m[:, None]
        layers.append(lay.replace(mask=m, rho=lay.rho * m, pi=lay.pi * m, W=lay.W * col, mu0=lay.mu0 * col,
                                  slab_m=lay.slab_m * col, VW=jnp.where(col > 0, lay.VW, lo)))
    return state.replace(layers=layers)


def target_density(epochs_done: jax.Array, kappa: float, warm: int, ramp: int) -> jax.Array:
    """Kept-group share ``kappa_t`` after ``epochs_done`` completed epochs (1 before ``warm``).

    ``kappa_t = 1 - (1 - kappa) min(1, (epochs_done + 1 - warm) / ramp)`` once ``epochs_done >= warm``
    (the prototype's schedule with ``epochs_done = ep + 1``).
    """
    e = jnp.asarray(epochs_done, jnp.float32)
    frac = jnp.clip((e + 1.0 - warm) / max(ramp, 1), 0.0, 1.0)
    return jnp.where(e >= warm, 1.0 - (1.0 - kappa) * frac, 1.0)


def topk_masks(state: TdampState, density: jax.Array, prune_inputs: bool = True) -> list[jax.Array]:
    """Per layer, the mask keeping the ``ceil(density N_l)`` live groups with the largest ``lam_acc``.

    ``density`` may be a traced scalar (the number kept is dynamic; ranks come from a sort).
    """
    masks = []
    for l, lay in enumerate(state.layers):
        n = lay.mask.shape[0]
        if l == 0 and not prune_inputs:
            masks.append(jnp.ones_like(lay.mask))
            continue
        alive = lay.mask > 0
        score = jnp.where(alive, lay.lam_acc, -jnp.inf)
        snr = jnp.sum(lay.slab_m ** 2 / lay.slab_v, axis=1)
        order = jnp.lexsort((-snr, -score))  # primary: score descending; ties: snr descending
        rank = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
        k = jnp.ceil(jnp.asarray(density, jnp.float32) * n - 1e-6).astype(jnp.int32)
        masks.append(((rank < k) & alive).astype(lay.mask.dtype))
    return masks


def free_masks(state: TdampState, threshold: float = 0.5, prune_inputs: bool = True) -> list[jax.Array]:
    """Per layer, keep the groups with ``pi > threshold``."""
    return [jnp.ones_like(lay.mask) if (l == 0 and not prune_inputs) else (lay.pi > threshold).astype(lay.mask.dtype)
            for l, lay in enumerate(state.layers)]


def reset_evidence(state: TdampState) -> TdampState:
    """Zero the accumulated group evidence ``lam_acc`` (done at every epoch end)."""
    return state.replace(layers=[lay.replace(lam_acc=jnp.zeros_like(lay.lam_acc)) for lay in state.layers])


def end_epoch(state: TdampState, epochs_done: jax.Array, mode: str = "none", kappa: float = 1.0,
              warm: int = 10, ramp: int = 20, prune_inputs: bool = True, threshold: float = 0.5
              ) -> TdampState:
    """Pruning schedule at an epoch end, then the ``lam_acc`` reset (jittable; ``epochs_done`` traced).

    Parameters
    ----------
    epochs_done: number of completed epochs (1 after the first epoch).
    mode: ``"none"``, ``"free"`` or ``"target"``; kappa, warm, ramp: target mode schedule;
    prune_inputs: whether input features (layer-0 groups) may be pruned; threshold: free mode.
    """
    if mode not in PRUNE_MODES:
        raise ValueError(f"prune mode {mode!r}; choose one of {PRUNE_MODES}")
    if mode != "none":
        active = jnp.asarray(epochs_done) >= warm
        if mode == "target":
            masks = topk_masks(state, target_density(epochs_done, kappa, warm, ramp), prune_inputs)
        else:
            masks = free_masks(state, threshold, prune_inputs)
        masks = [jnp.where(active, m, jnp.ones_like(m)) for m in masks]
        state = apply_masks(state, masks)
    return reset_evidence(state)


def active_groups(state: TdampState, threshold: float = 0.5) -> list[jax.Array]:
    """Per layer ``(N_l,)`` bool: group not masked and ``pi > threshold``."""
    return [(lay.mask > 0) & (lay.pi > threshold) for lay in state.layers]


def masked_state(state: TdampState, threshold: float = 0.5) -> TdampState:
    """The state with every inactive group (:func:`active_groups`) hard-masked."""
    return apply_masks(state, active_groups(state, threshold))


def compact(state: TdampState, threshold: float = 0.5) -> tuple[list[dict], tuple[int, ...]]:
    """Physically smaller network equal to the masked posterior-mean (plug-in) network.

    Hidden unit ``j`` of layer ``l`` is dropped when its outgoing group is inactive: column ``j`` of
    kernel ``l-1``, entry ``j`` of bias ``l-1`` and row ``j`` of kernel ``l`` go. Inactive *input*
    features keep their (zeroed) rows so that the network still takes the original inputs.

    Returns
    -------
    params: list of ``{"kernel": (n_in, n_out), "bias": (n_out,)}`` (:mod:`emtdamp.models.mlp` layout, numpy).
    layer_sizes: ``(N_0, kept_1, ..., kept_{L-1}, N_L)``.
    """
    act = [np.asarray(a) for a in active_groups(state, threshold)]
    L = len(state.layers)
    params = []
    for l, lay in enumerate(state.layers):
        W = np.asarray(lay.W) * act[l][:, None]
        b = np.asarray(lay.b)
        if l > 0:
            W = W[act[l]]
        if l < L - 1:
            W = W[:, act[l + 1]]
            b = b[act[l + 1]]
        params.append({"kernel": W, "bias": b})
    sizes = (params[0]["kernel"].shape[0], *(p["kernel"].shape[1] for p in params))
    return params, sizes


def sparsity(state: TdampState, threshold: float = 0.5) -> dict:
    """Sparsity report (called outside jit; Python numbers).

    Returns
    -------
    dict with ``neurons_pruned_frac`` (hidden units removed / hidden units), ``inputs_pruned_frac``,
    ``weights_zero_frac`` (kernel entries absent from the compacted network, zeroed input rows
    included, / dense kernel entries), ``params_remaining`` (kernel + bias entries of the compacted
    network minus its zeroed input rows), ``params_dense``, ``group_density`` (active groups / groups
    over all layers) and ``group_density_l{l}`` per layer.
    """
    act = [np.asarray(a) for a in active_groups(state, threshold)]
    params, sizes = compact(state, threshold)
    dense_sizes = (state.layers[0].W.shape[0], *(lay.W.shape[1] for lay in state.layers))
    n_hidden = sum(dense_sizes[1:-1])
    kept_hidden = sum(sizes[1:-1])
    dense_w = sum(a * b for a, b in zip(dense_sizes[:-1], dense_sizes[1:], strict=True))
    dense_b = sum(dense_sizes[1:])
    dead_inputs = int((~act[0]).sum())
    kept_w = sum(p["kernel"].size for p in params) - dead_inputs * sizes[1]
    kept_b = sum(p["bias"].size for p in params)
    out = {
        "neurons_pruned_frac": float(1.0 - kept_hidden / n_hidden) if n_hidden else 0.0,
        "inputs_pruned_frac": float(dead_inputs / dense_sizes[0]),
        "weights_zero_frac": float(1.0 - kept_w / dense_w),
        "params_remaining": int(kept_w + kept_b),
        "params_dense": int(dense_w + dense_b),
        "group_density": float(sum(a.sum() for a in act) / sum(a.size for a in act)),
    }
    for l, a in enumerate(act):
        out[f"group_density_l{l}"] = float(a.mean())
    return out
