"""EM-TDAMP's E-step: turbo deep approximate message passing over an MLP (spec sections 2 and 6).

Public API::

    state = init(key, layer_sizes, hparams)
    state, info = step(state, x_batch, y_batch, hparams, w=None)      # E-step + PasP
    state = emtdamp.tdamp.em.m_step(state, hparams, info["zstats"])         # M-step
    state, metrics = epoch(state, xs, ys, ws, hparams)                # jitted scan of both
    state = end_epoch(state, hparams)                                 # evidence="once" bookkeeping
    mean, var = predict(state, x)  /  probs = predict(state, x, task="classification")
"""

from emtdamp.tdamp.state import LayerState, TdampHParams, TdampState, init, layer_sizes
from emtdamp.tdamp.turbo import ZStats, damp_minibatch, end_epoch, epoch, forward_moments, pasp, predict, step

__all__ = ["LayerState", "TdampHParams", "TdampState", "ZStats", "damp_minibatch", "end_epoch", "epoch",
           "forward_moments", "init", "layer_sizes", "pasp", "predict", "step"]
