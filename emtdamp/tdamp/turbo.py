"""The TDAMP E-step on a minibatch (turbo loop of Module A and Module B), PasP, prediction, epochs.

One DAMP iteration = a forward sweep through the layers (spec 2.3), then a backward sweep that at
each layer computes the output-side messages, the message to the layer below, the likelihood
messages to the weights, one turbo exchange with Module B, and the damped denoiser update. The
``I_A`` iterations run in a ``lax.fori_loop``; the layers (different shapes) in a static Python loop.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from emtdamp.tdamp import em, evidence, module_a, module_b
from emtdamp.tdamp.class_probs import class_probs, softmax_probs
from emtdamp.tdamp.gaussian import bounds, clip_var, relu_moments, relu_negative_branch, relu_posterior
from emtdamp.tdamp.state import OUTPUT_MODELS, LayerState, TdampHParams, TdampState, ZStats, initial_slab_var


def _output(hp: TdampHParams, P, VP, y, v, w):
    """``S, T_S, stat, count`` of the output layer and (classification) the ``(B,)`` predictive log-score."""
    if hp.task == "regression":
        return (*module_a.gaussian_output(P, VP, y, v, w), None)
    if hp.output_model == "softmax":
        return module_a.softmax_output_and_log_lik(P, VP, y, w)
    return module_a.probit_output_and_log_lik(P, VP, y, v, w)


def _damp_iteration(hp: TdampHParams, x, y, w, v, carry, first: bool = False):
    """One forward + backward sweep.

    ``carry = (layers, S_prev, R, VR, lam_sum, stat, count, P_L, VP_L, bias_post, log_lik)``; ``bias_post`` is the
    per-layer undamped bias posterior ``(mean, var)`` and group log-evidence ``Lambda`` of the iteration
    (the bias and support sites for the "once" evidence bookkeeping). ``first``: the first iteration of a
    minibatch, whose ``S_prev`` is zero (no Onsager term, :func:`module_a.forward_layer`).
    """
    layers, S_prev, R, VR, lam_sum = carry[:5]
    L = len(layers)
    beta = hp.beta
    # W * W of the layers with unknown inputs (forward T_U W^2 and backward T_S (W^2)^T share it)
    W2 = [None] + [lay.W * lay.W for lay in layers[1:]]
    # ---- forward sweep (jax.named_scope labels name the parts in profiles and HLO dumps) ------
    U, TU = [x], [None]
    P, VP, neg = [None] * L, [None] * L, [None] * L
    for l in range(L):
        with jax.named_scope(f"forward_{l}"):
            P[l], VP[l], _ = module_a.forward_layer(layers[l], U[l], TU[l], None if first else S_prev[l], W2[l])
        if l < L - 1:
            with jax.named_scope(f"relu_forward_{l}"):
                neg[l] = relu_negative_branch(P[l], VP[l])   # shared with the backward sweep's posterior
                if first:   # no backward message yet (R = 0, V_R = hi): the plain ReLU moments
                    u, tu = relu_moments(P[l], VP[l])
                else:
                    _, _, u, tu = relu_posterior(P[l], VP[l], R[l], VR[l], neg[l])
            U.append(u)
            TU.append(tu)
    # ---- backward sweep ---------------------------------------------------------------------
    layers, S_prev, R, VR, lam_sum = list(layers), list(S_prev), list(R), list(VR), list(lam_sum)
    bias_post = list(carry[9])
    stat = count = None
    for l in reversed(range(L)):
        if l == L - 1:
            with jax.named_scope("output"):
                S, TS, stat, count, log_lik = _output(hp, P[l], VP[l], y, v, w)
        else:
            with jax.named_scope(f"relu_backward_{l}"):
                S, TS = module_a.hidden_output(P[l], VP[l], R[l], VR[l], w, neg[l])
        S_prev[l] = S
        layer = layers[l]
        if l > 0:
            with jax.named_scope(f"message_to_input_{l}"):
                R[l - 1], VR[l - 1] = module_a.message_to_input(layer, U[l], S, TS, W2[l])
        with jax.named_scope(f"weights_{l}"):
            W_n, VW_n, m_pl, v_pl, pi, lam = module_b.denoise_layer(
                layer, *module_a.weight_products(U[l], TU[l], S, TS), beta, R[l - 1] if l > 0 else None)
        with jax.named_scope(f"bias_{l}"):
            b_n, vb_n = module_b.denoise_bias(module_a.bias_message(layer.b, S, TS), layer.b0, layer.vb0)
        lam_sum[l] = lam_sum[l] + lam
        bias_post[l] = (b_n, vb_n, lam)
        layers[l] = layer.replace(W=W_n, VW=VW_n, b=beta * b_n + (1.0 - beta) * layer.b,
                                  vb=beta * vb_n + (1.0 - beta) * layer.vb, slab_m=m_pl, slab_v=v_pl, pi=pi)
    return (layers, S_prev, R, VR, lam_sum, stat, count, P[L - 1], VP[L - 1], bias_post, log_lik)


def damp_minibatch(state: TdampState, x: jax.Array, y: jax.Array, hparams: TdampHParams,
                   w: jax.Array | None = None) -> tuple[TdampState, ZStats, jax.Array, jax.Array]:
    """E-step on one minibatch: ``I_A`` DAMP iterations with turbo exchange (no PasP, no M-step).

    Returns the updated state (weights, biases, slab posteriors, pi, lam_acc), the output-layer
    statistics of the last iteration and the v E-step statistic/count (at the current v).
    """
    return _damp_minibatch(state, x, y, hparams, w)[:4]


def _damp_minibatch(state: TdampState, x: jax.Array, y: jax.Array, hparams: TdampHParams,
                    w: jax.Array | None = None):
    """:func:`damp_minibatch` plus the last iteration's undamped bias posteriors and group evidence
    (list of ``(mean, var, Lambda)``) and (classification) its ``(B,)`` predictive log-score
    (the output model's log-score of the output messages, None for regression)."""
    dtype = state.v.dtype
    x = jnp.asarray(x, dtype)
    B = x.shape[0]
    w = jnp.ones((B,), dtype) if w is None else jnp.asarray(w, dtype)
    y = jnp.asarray(y, dtype) if hparams.task == "regression" else jnp.asarray(y, jnp.int32)
    _, hi = bounds(dtype)
    layers = list(state.layers)
    S_prev = [jnp.zeros((B, lay.W.shape[1]), dtype) for lay in layers]
    R = [jnp.zeros((B, lay.W.shape[1]), dtype) for lay in layers[:-1]]
    VR = [jnp.full((B, lay.W.shape[1]), hi, dtype) for lay in layers[:-1]]
    lam_sum = [jnp.zeros_like(lay.lam_acc) for lay in layers]
    K = layers[-1].W.shape[1]
    zero = jnp.zeros((), dtype)
    bias_post = [(lay.b0, lay.vb0, jnp.zeros_like(lay.lam_acc)) for lay in layers]
    log_lik = None if hparams.task == "regression" else jnp.zeros((B,), dtype)
    carry = (layers, S_prev, R, VR, lam_sum, zero, zero, jnp.zeros((B, K), dtype), jnp.ones((B, K), dtype),
             bias_post, log_lik)
    carry = _damp_iteration(hparams, x, y, w, state.v, carry, first=True)
    if hparams.n_iter > 1:
        body = lambda _, c: _damp_iteration(hparams, x, y, w, state.v, c)
        carry = jax.lax.fori_loop(1, hparams.n_iter, body, carry)
    layers, _, _, _, lam_sum, stat, count, P_L, VP_L, bias_post, log_lik = carry
    layers = [lay.replace(lam_acc=lay.lam_acc + ls) for lay, ls in zip(layers, lam_sum, strict=True)]
    return state.replace(layers=layers), ZStats(P=P_L, VP=VP_L, y=y, w=w), stat, count, bias_post, log_lik


def set_prior_once(state: TdampState, batch_rows: jax.Array, hparams: TdampHParams) -> TdampState:
    """``evidence="once"``: set every layer's prior ``(mu0, s0, b0, vb0)`` to the cavity of the coming
    minibatch of ``batch_rows`` real rows (:func:`emtdamp.tdamp.evidence.cavity`); in
    ``rho_mode="group"`` also the support prior ``rho`` (clipped to ``[eps, 1 - eps]``, masked)."""
    cav = evidence.cavity(state.evidence, batch_rows)
    eps = hparams.rho_clip
    layers = []
    for lay, (m, s, bm, bv, lg) in zip(state.layers, cav, strict=True):
        lay = lay.replace(mu0=m, s0=s, b0=bm, vb0=bv)
        if hparams.rho_mode == "group":
            lay = lay.replace(rho=jnp.clip(jax.nn.sigmoid(lg), eps, 1.0 - eps) * lay.mask)
        layers.append(lay)
    return state.replace(layers=layers)


def record_sites_once(state: TdampState, bias_post: list, batch_rows: jax.Array) -> TdampState:
    """``evidence="once"``: add the minibatch's likelihood messages (slab posterior / prior for the
    weights, undamped bias posterior / prior for the biases, group log-evidence for the supports) to
    the evidence bookkeeping."""
    sites = []
    for lay, (bm, bv, lam) in zip(state.layers, bias_post, strict=True):
        pw, ew = evidence.site(lay.slab_m, lay.slab_v, lay.mu0, lay.s0)
        pb, eb = evidence.site(bm, bv, lay.b0, lay.vb0)
        sites.append((pw, ew, pb, eb, lam * lay.mask))
    return state.replace(evidence=evidence.add_sites(state.evidence, sites, batch_rows))


def end_epoch(state: TdampState, hparams: TdampHParams) -> TdampState:
    """Epoch end of the E-step bookkeeping: with ``evidence="once"`` the epoch's sites become the
    previous epoch's (:func:`emtdamp.tdamp.evidence.roll`); otherwise the state is returned unchanged."""
    if hparams.evidence != "once":
        return state
    return state.replace(evidence=evidence.roll(state.evidence))


def pasp(state: TdampState, hparams: TdampHParams) -> TdampState:
    """Posterior-as-prior (spec 2.6) with stabilized forgetting.

    ``lambda_f = 1`` (default): slab prior <- slab posterior, bias prior <- bias posterior, exactly.

    ``lambda_f < 1``: the new prior is the geometric mixture ``posterior^lambda_f x prior_0^(1 - lambda_f)``
    of the posterior and the *initial* zero-mean prior ``N(0, sigma0^2)`` (``N(0, sigmab0^2)`` for
    biases), i.e. in natural parameters::

        1/s0 = lambda_f / slab_v + (1 - lambda_f) / sigma0^2,   mu0 = s0 lambda_f slab_m / slab_v

    (stabilized forgetting, Kulhavy & Zarrop 1993). The spec's plain division ``s0 = slab_v / lambda_f``
    (the tempered PasP of Lucibello et al.) has the same effect on well-determined weights but lets the
    prior variance of a weight that receives no evidence grow by ``1/lambda_f`` per minibatch up to the
    clip (1e8): the incoming weights of a pruned or switched-off hidden unit then give that unit a
    forward variance ~1e8, which leaks into the output variance through the tiny ``V_W`` of its
    (masked) outgoing row and drowns the output messages ``T_S = 1/(V_P + v)``. Here such weights
    relax to the initial prior instead. The stationary prior precision is ``1/sigma0^2`` plus
    ``1/(1 - lambda_f)`` minibatches of evidence, so ``lambda_f = 1 - B/n`` keeps about one epoch of
    data in the prior (instead of the ever-growing ``epochs x n`` rows of pure PasP, which freezes the
    weights; see docs/emtdamp.md section 9).
    """
    lf = hparams.lambda_f
    if lf == 1.0:
        layers = [lay.replace(mu0=lay.slab_m, s0=clip_var(lay.slab_v), b0=lay.b, vb0=clip_var(lay.vb))
                  for lay in state.layers]
        return state.replace(layers=layers)
    layers = []
    for lay in state.layers:
        s_init = initial_slab_var(hparams, lay.W.shape[0])
        prec = clip_var(lf / lay.slab_v + (1.0 - lf) / s_init)
        precb = clip_var(lf / lay.vb + (1.0 - lf) / hparams.sigmab0_sq)
        # in-place updates (module_b.after): after the group evidence (its llr reads the old prior) and the
        # slab posterior (whose computation reads the old prior)
        mu0 = module_b.after((lf / lay.slab_v) * lay.slab_m / prec, lay.lam_acc)
        s0 = module_b.after(clip_var(1.0 / prec), lay.lam_acc, lay.slab_m, lay.slab_v)
        layers.append(lay.replace(mu0=mu0, s0=s0,
                                  b0=(lf / lay.vb) * lay.b / precb, vb0=clip_var(1.0 / precb)))
    return state.replace(layers=layers)


def step(state: TdampState, x_batch: jax.Array, y_batch: jax.Array, hparams: TdampHParams,
         w: jax.Array | None = None) -> tuple[TdampState, dict]:
    """One minibatch of EM-TDAMP's E-step: ``I_A`` turbo DAMP iterations, then PasP.

    With ``hparams.evidence == "once"`` the prior is first set to the minibatch's cavity (initial
    prior x the evidence of the other rows, counted once) and the minibatch's likelihood messages are
    recorded afterwards instead of PasP (:mod:`emtdamp.tdamp.evidence`).

    The M-step (:func:`emtdamp.tdamp.em.m_step`) is separate; :func:`epoch` chains both.

    Parameters
    ----------
    state: current state.
    x_batch: ``(B, N_0)`` inputs. y_batch: ``(B, K)`` float targets (regression) or ``(B,)`` int
        labels (classification).
    hparams: static settings.
    w: optional ``(B,)`` row weights (1 = real row, 0 = padding row that contributes nothing).

    Returns
    -------
    state: updated weights, biases, supports, PasP priors, ``v_stat``/``v_count`` (+ epoch sums),
        ``count + 1``.
    info: dict with ``"loss"`` (weighted MSE of the forward mean for regression; mean negative
        probit-product log-score for classification, both from the last iteration's forward
        messages), ``"v"`` and ``"zstats"`` (:class:`ZStats` for the v M-step).
    """
    once = hparams.evidence == "once"
    if once:
        B = x_batch.shape[0]
        rows = jnp.sum(jnp.ones((B,), state.v.dtype) if w is None else jnp.asarray(w, state.v.dtype))
        state = set_prior_once(state, rows, hparams)
    state, zs, stat, count, bias_post, log_lik = _damp_minibatch(state, x_batch, y_batch, hparams, w)
    if once:
        state = record_sites_once(state, bias_post, rows)
    elif hparams.pasp:
        with jax.named_scope("pasp"):
            state = pasp(state, hparams)
    state = state.replace(v_stat=stat, v_count=count, v_stat_acc=state.v_stat_acc + stat,
                          v_count_acc=state.v_count_acc + count, count=state.count + 1)
    wsum = jnp.maximum(jnp.sum(zs.w), 1.0)
    if hparams.task == "regression":
        loss = jnp.sum(zs.w[:, None] * (zs.y - zs.P) ** 2) / (wsum * zs.P.shape[1])
    else:
        loss = -jnp.sum(zs.w * log_lik) / wsum     # probit: = module_a.probit_log_lik(zs.P, zs.VP, zs.y, state.v)
    return state, {"loss": loss, "v": state.v, "zstats": zs}


def forward_moments(state: TdampState, x: jax.Array, plug_in: bool = False) -> tuple[jax.Array, jax.Array]:
    """Moment propagation (spec 6): mean and variance ``(n, K)`` of ``z_L`` for inputs ``x (n, N_0)``.

    ``plug_in=True`` propagates the posterior-mean network (``W_hat, b_hat``, plain ReLU); the
    variance is then that of the last layer given deterministic inputs.
    """
    dtype = state.v.dtype
    U, TU = jnp.asarray(x, dtype), None
    L = len(state.layers)
    P = VP = None
    for l, lay in enumerate(state.layers):
        P, VP, _ = module_a.forward_layer(lay, U, TU, None)
        if l < L - 1:
            if plug_in:
                U, TU = jnp.maximum(P, 0.0), None
            else:
                U, TU = relu_moments(P, VP)
    return P, VP


def predict(state: TdampState, x: jax.Array, plug_in: bool = False, task: str | None = None,
            class_rule: str = "product", output_model: str = "probit"):
    """Predictive distribution (spec 6).

    Parameters
    ----------
    state: trained state; x: ``(n, N_0)`` inputs.
    plug_in: use the posterior-mean network instead of moment propagation.
    task: ``"regression"`` or ``"classification"``; default: regression if the output width is 1,
        else classification is *not* guessed -- pass it explicitly for K > 1 regression.
    class_rule: classification only, :mod:`emtdamp.tdamp.class_probs`: ``"product"`` (the spec's
        ``p(c) propto prod_{i != c} Phi((E z_c - E z_i)/sqrt(v + Var z_c + Var z_i))``) or ``"max"`` (the
        probability that class ``c`` has the largest noisy score); probit output model only.
    output_model: the classification likelihood the state was trained with (``TdampHParams.output_model``):
        ``"probit"`` (by ``class_rule``) or ``"softmax"`` (:func:`emtdamp.tdamp.class_probs.softmax_probs`,
        ``softmax(kappa(Var z) o E z)``).

    Returns
    -------
    Regression: ``(mean, var)`` each ``(n, K)``, ``var = Var[z_L] + v``.
    Classification: ``probs (n, K)``.
    """
    P, VP = forward_moments(state, x, plug_in)
    if task is None:
        task = "regression" if P.shape[1] == 1 else "classification"
    if task == "regression":
        return P, VP + state.v
    if output_model == "softmax":
        return softmax_probs(P, VP)
    if output_model != "probit":
        raise ValueError(f"output_model must be one of {OUTPUT_MODELS}, got {output_model!r}")
    return class_probs(P, VP, state.v, class_rule)


@functools.partial(jax.jit, static_argnames=("hparams",))
def epoch(state: TdampState, xs: jax.Array, ys: jax.Array, ws: jax.Array | None, hparams: TdampHParams
          ) -> tuple[TdampState, dict]:
    """One pass over stacked minibatches with ``lax.scan``: E-step + PasP + M-step per minibatch.

    Parameters
    ----------
    xs: ``(n_batches, B, N_0)``; ys: ``(n_batches, B, K)`` or ``(n_batches, B)``; ws:
    ``(n_batches, B)`` row weights or None.

    Returns the final state and per-minibatch metrics ``{"loss", "v"}`` of shape ``(n_batches,)``.
    The per-epoch parts (v schedule ``"epoch"``, pruning, evidence reset) are not applied here.
    """
    if ws is None:
        ws = jnp.ones(xs.shape[:2], state.v.dtype)

    def body(s, batch):
        x, y, w = batch
        s, info = step(s, x, y, hparams, w)
        s = em.m_step(s, hparams, info["zstats"])
        return s, {"loss": info["loss"], "v": s.v}

    return jax.lax.scan(body, state, (xs, ys, ws))


__all__ = ["LayerState", "ZStats", "damp_minibatch", "end_epoch", "epoch", "forward_moments", "pasp", "predict", "step"]
