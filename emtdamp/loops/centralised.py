"""The one training loop every method shares.

Per epoch the whole pass over the (shuffled, padded) training set is *one* jitted call: the
minibatch indices are drawn on device from the epoch key and ``lax.scan`` runs the built algorithm's
``step`` (:attr:`Method.build <emtdamp.methods.base.Method.build>`) over them. The last minibatch is padded
to the batch size with weight-0 rows (no row is dropped, nothing recompiles). ``end_epoch`` runs after
each epoch; the test set is evaluated every
``eval_every`` epochs and at the last one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from emtdamp.data.base import Dataset
from emtdamp.divergence import DivergenceError, DivergenceGuard, DivergenceMonitor
from emtdamp.methods.base import Algorithm, Batch, Method, Mixture, ModelSpec, Predictive
from emtdamp.metrics import classification_metrics, regression_metrics


@dataclasses.dataclass
class TrainResult:
    """Final state, per-epoch history (list of dicts), the final test metrics, timings and the built
    :class:`~emtdamp.methods.base.Algorithm` (whose ``predict`` / ``diagnostics`` read the state).

    ``time``: ``total_s`` (the whole call), ``epochs_s`` (sum of the timed epochs), ``per_epoch_s``
    (median epoch), ``compile_s`` (epoch + ``end_epoch`` programs), ``compile_eval_s`` (evaluation,
    compiled before the first epoch so that no record's ``wall_s`` includes compilation)."""

    state: object
    history: list
    test: dict
    sparsity: dict
    time: dict
    diverged_at: int | None = None   # first epoch the divergence guard flagged (mode "warn"), else None
    algorithm: Algorithm | None = None   # the built method the state belongs to (its predict / diagnostics)


def epoch_batches(key: jax.Array, n: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """Shuffled row indices ``(n_batches, B)`` and row weights ``(n_batches, B)`` (0 = padding).

    ``n_batches = ceil(n / B)``; padding slots point at row 0 with weight 0.
    """
    n_batches = math.ceil(n / batch_size)
    perm = jax.random.permutation(key, n)
    pad = n_batches * batch_size - n
    idx = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)]).reshape(n_batches, batch_size)
    w = jnp.concatenate([jnp.ones((n,)), jnp.zeros((pad,))]).reshape(n_batches, batch_size)
    return idx, w


def make_epoch_fn(algo: Algorithm, batch_size: int, jit: bool = True) -> Callable:
    """``epoch(state, key, x, y) -> (state, mean_loss)``: one jitted, scanned pass over the data.

    For ``K`` chains (``algo.chains``, :func:`~emtdamp.methods.chains.chain_algorithm`) with more than one
    minibatch per epoch, the one-chain epoch is vmapped and chain ``k`` shuffles with ``split(key, K)[k]``:
    each chain its own minibatch order; ``mean_loss`` is the chain mean. With one minibatch (``batch_size >=
    n``) all chains step on the same batch.
    """
    def scanned_epoch(alg):
        def epoch(state, key, x, y):
            idx, w = epoch_batches(key, x.shape[0], batch_size)

            def body(st, iw):
                i, wb = iw
                st, m = alg.step(st, Batch(x=x[i], y=y[i], w=wb.astype(x.dtype)))
                return st, (m["loss"], wb.sum())

            state, (losses, counts) = jax.lax.scan(body, state, (idx, w))
            return state, jnp.sum(losses * counts) / jnp.sum(counts)
        return epoch

    shared = scanned_epoch(algo)
    if algo.chains is None:
        epoch = shared
    else:
        single, n_chains = algo.chains
        per_chain = jax.vmap(scanned_epoch(single), in_axes=(0, 0, None, None))

        def epoch(state, key, x, y):
            if x.shape[0] <= batch_size:    # one minibatch: nothing to order
                return shared(state, key, x, y)
            state, losses = per_chain(state, jax.random.split(key, n_chains), x, y)
            return state, jnp.mean(losses)

    return jax.jit(epoch, donate_argnums=(0,)) if jit else epoch


def predict_in_chunks(algo: Algorithm, state, x: np.ndarray, chunk: int = 2048) -> Predictive:
    """``algo.predict`` on ``x`` in chunks of ``chunk`` rows (bounded memory), concatenated."""
    pred_fn = jax.jit(algo.predict)
    parts = [pred_fn(state, jnp.asarray(x[i: i + chunk])) for i in range(0, len(x), chunk)]
    cat = lambda f: None if getattr(parts[0], f) is None else np.concatenate([np.asarray(getattr(p, f))
                                                                               for p in parts])
    return Predictive(mean=cat("mean"), var=cat("var"), probs=cat("probs"))


def mixture_in_chunks(algo: Algorithm, state, x: np.ndarray, chunk: int = 2048) -> Mixture:
    """``algo.predict_mixture`` on ``x`` in chunks of ``chunk`` rows (numpy; rows on axis 1), or
    ``algo.predict`` as one component when the method has no mixture."""
    if getattr(algo, "predict_mixture", None) is None:   # (federated algorithms have none)
        p = predict_in_chunks(algo, state, x, chunk)
        if p.probs is not None:
            return Mixture(weights=np.ones(1), probs=p.probs[None])
        return Mixture(weights=np.ones(1), mean=p.mean[None], var=p.var[None])
    fn = jax.jit(algo.predict_mixture)
    parts = [fn(state, jnp.asarray(x[i: i + chunk])) for i in range(0, len(x), chunk)]
    cat = lambda f: None if getattr(parts[0], f) is None else np.concatenate([np.asarray(getattr(p, f))
                                                                               for p in parts], axis=1)
    return Mixture(weights=np.asarray(parts[0].weights), mean=cat("mean"), var=cat("var"), probs=cat("probs"))


def evaluate(algo: Algorithm, state, data: Dataset) -> dict:
    """Test metrics of ``state`` on ``data``'s test split (original units)."""
    pred = predict_in_chunks(algo, state, data.x_test)
    if data.spec.task == "regression":
        return regression_metrics(pred, data.y_test, data.y_mean, data.y_std)
    return classification_metrics(pred, data.y_test)


def default_sparsity(algo: Algorithm, state) -> dict:
    """``algo.sparsity(state)`` as plain floats, or the dense defaults."""
    if algo.sparsity is None:
        n = int(sum(x.size for x in jax.tree_util.tree_leaves(state) if hasattr(x, "size")))
        return {"neurons_pruned_frac": 0.0, "weights_zero_frac": 0.0, "params_remaining": n}
    out = {}
    for k, v in algo.sparsity(state).items():
        out[k] = int(v) if k == "params_remaining" else (float(v) if np.ndim(v) == 0 else np.asarray(v).tolist())
    return out


def warm_evaluation(algo: Algorithm, state, data: Dataset) -> float:
    """Compile (by running once) everything an evaluation epoch calls: the test-set predictive, the
    sparsity report and the finiteness check; returns the seconds it took (``time.compile_eval_s``), so
    that no epoch's ``wall_s`` includes compilation."""
    t = time.perf_counter()
    check_finite(state, 0)
    evaluate(algo, state, data)
    default_sparsity(algo, state)
    return time.perf_counter() - t


def check_finite(state, epoch: int) -> None:
    """Raise FloatingPointError naming the leaves holding NaN/inf (instead of training on garbage)."""
    leaves = jax.tree_util.tree_leaves_with_path(state)
    bad = [jax.tree_util.keystr(p) for p, x in leaves
           if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact) and not bool(jnp.all(jnp.isfinite(x)))]
    if bad:
        raise FloatingPointError(f"non-finite values in the state after epoch {epoch} in {bad[:5]}; "
                                 "lower the step size / learning rate or use train.dtype=float64")


def guard_metric(task: str, test: dict) -> tuple[str, float]:
    """The test metric the divergence guard watches: RMSE (regression) or NLL (classification)."""
    name = "rmse" if task == "regression" else "nll"
    return name, float(test[name])


def _diverged(monitor: DivergenceMonitor, msg: str, record: dict) -> bool:
    """Mark ``record`` as diverged; True when the run must stop (mode "stop"), else warn once."""
    record["diverged"] = True
    if monitor.guard.mode == "stop":
        return True
    if not monitor.warned:
        monitor.warned = True
        print(f"warning: {msg}; going on (train.on_divergence=warn)", file=sys.stderr)
    return False


def _stop_error(msg: str, epoch: int) -> DivergenceError:
    return DivergenceError(f"{msg}; lower the step size / learning rate, or set train.on_divergence=warn "
                           "to go on", epoch)


def train(method: Method, hparams, model: ModelSpec, data: Dataset, *, epochs: int, batch_size: int,
          seed: int = 0, dtype: str = "float32", eval_every: int = 1, progress: bool = True,
          on_epoch: Callable[[dict], None] | None = None,
          on_checkpoint: Callable[[object, int], None] | None = None,
          resume: Callable[[object], tuple[object, int]] | None = None,
          divergence: DivergenceGuard | None = None) -> TrainResult:
    """Train ``method`` on ``data`` and evaluate on its test split.

    ``on_epoch(record)`` receives each epoch's record (epoch, wall_s, train_loss, test metrics,
    sparsity) as it is made: run folders stream it to ``metrics.jsonl``. ``on_checkpoint(state,
    epoch)`` is called after every epoch (run folders write an atomic checkpoint).
    ``resume(fresh_state) -> (state, epoch)`` restores a checkpoint: training continues at
    ``epoch + 1`` with the same per-epoch keys, so the result equals an uninterrupted run.
    ``divergence`` is the guard (:mod:`emtdamp.divergence`; default: stop at a 1000-fold growth of
    the training loss or test metric over its best). With mode "stop" it raises
    :class:`~emtdamp.divergence.DivergenceError` after ``on_epoch`` saw the diverged epoch's record
    (marked ``"diverged": true``) and before ``on_checkpoint`` could save the diverged state.
    """
    ctx = jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()
    with ctx:
        return _train(method, hparams, model, data, epochs, batch_size, seed, dtype, eval_every, progress,
                      on_epoch, on_checkpoint, resume, divergence or DivergenceGuard())


def _train(method, hparams, model, data, epochs, batch_size, seed, dtype, eval_every, progress, on_epoch,
           on_checkpoint, resume, guard):
    from tqdm.auto import tqdm

    npdt = np.float64 if dtype == "float64" else np.float32
    x, y, _ = _stack_data([data], npdt)
    bs = min(batch_size, len(data.x_train))
    key = jax.random.PRNGKey(seed)
    init_key, loop_key = jax.random.split(key)
    algo = method.build(model, data.spec, hparams)
    state = algo.init(init_key)
    # the epoch function donates the state: give every leaf its own buffer (init may alias arrays)
    state = jax.tree_util.tree_map(lambda a: a.copy() if isinstance(a, jax.Array) else a, state)
    epoch_fn = make_epoch_fn(algo, bs)
    end_epoch = jax.jit(algo.end_epoch) if algo.end_epoch is not None else None

    t0 = time.perf_counter()
    compiled = epoch_fn.lower(state, loop_key, x, y).compile()
    if end_epoch is not None:
        end_epoch = end_epoch.lower(state, jnp.asarray(1)).compile()
    jax.block_until_ready(jax.random.fold_in(loop_key, 0))   # the per-epoch key op, compiled on first use
    compile_s = time.perf_counter() - t0
    compile_eval_s = warm_evaluation(algo, state, data)

    start = 0
    if resume is not None:
        state, start = resume(state)
    history, test, epoch_times = [], {}, []
    monitor = DivergenceMonitor(guard, method.name)
    bar = tqdm(range(start + 1, epochs + 1), desc=f"{method.name}", unit="epoch", disable=not progress,
               leave=False, mininterval=0.5, initial=start, total=epochs)
    t_start = time.perf_counter()
    for ep in bar:
        te = time.perf_counter()
        state, loss = compiled(state, jax.random.fold_in(loop_key, ep), x, y)
        if end_epoch is not None:
            state = end_epoch(state, jnp.asarray(ep))
        loss = float(loss)
        epoch_times.append(time.perf_counter() - te)
        record = {"epoch": ep, "wall_s": time.perf_counter() - t_start, "train_loss": loss}
        msg = monitor.update(ep, loss)
        if (msg is None or guard.mode != "stop") and (ep % eval_every == 0 or ep == epochs):
            check_finite(state, ep)
            test = evaluate(algo, state, data)
            record.update({"test": test, "sparsity": default_sparsity(algo, state)})
            bar.set_postfix({k: f"{v:.4g}" for k, v in test.items() if k in ("rmse", "accuracy", "nll")},
                            refresh=False)
            msg = monitor.update_metric(ep, *guard_metric(data.spec.task, test)) or msg
        stop = msg is not None and _diverged(monitor, msg, record)
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if stop:
            raise _stop_error(msg, ep)
        if on_checkpoint is not None:
            on_checkpoint(state, ep)
    if not test:  # resumed after the last epoch: evaluate the restored state
        test = evaluate(algo, state, data)
    epochs_s = float(np.sum(epoch_times))
    return TrainResult(state=state, history=history, test=test, sparsity=default_sparsity(algo, state),
                       time={"total_s": time.perf_counter() - t0, "epochs_s": epochs_s,
                             "per_epoch_s": float(np.median(epoch_times)) if epoch_times else 0.0,
                             "compile_s": compile_s, "compile_eval_s": compile_eval_s},
                       diverged_at=monitor.diverged_at, algorithm=algo)


class NotVmappable(RuntimeError):
    """The runs of a group cannot be one vmapped program (training shapes differ, or the method's
    ``init`` / ``step`` / ``end_epoch`` does not trace under ``vmap``): train them one by one."""


@dataclasses.dataclass
class GroupResult:
    """R runs trained together by :func:`train_group`.

    ``runs[i]`` is run i's :class:`TrainResult` (its own state slice, history, test metrics and
    sparsity; its ``time`` is the group's cost divided by R, i.e. amortised per run). ``states`` is
    the final state stacked on a leading run axis of size R. ``time`` holds the group's own timings:
    ``total_s`` (wall time of the whole call: compilation, epochs, evaluation), ``epochs_s`` (the timed
    epochs only), ``per_epoch_s`` (median epoch, all runs together), ``compile_s`` (the epoch and
    ``end_epoch`` programs) and ``compile_eval_s`` (the evaluation, compiled by one warm-up run).
    """

    runs: list
    states: object
    time: dict


def _slice(states, i: int):
    return jax.tree_util.tree_map(lambda a: a[i], states)


def _stack_data(datasets: list[Dataset], npdt) -> tuple[jax.Array, jax.Array, int | None]:
    """Training arrays of the runs: one shared copy (``in_axes`` None) when every run uses the same
    Dataset object, else stacked on a leading run axis (``in_axes`` 0). Raises NotVmappable when the
    runs' training shapes or specs differ."""
    d0 = datasets[0]
    for i, d in enumerate(datasets[1:], 1):
        if d.spec != d0.spec or d.x_train.shape != d0.x_train.shape or d.y_train.shape != d0.y_train.shape:
            raise NotVmappable(f"the datasets differ in shape: run 0 has x_train {d0.x_train.shape} "
                               f"({d0.spec.task}), run {i} has x_train {d.x_train.shape} ({d.spec.task})")
    cast_y = lambda d: d.y_train.astype(npdt) if d.spec.task == "regression" else d.y_train
    if all(d is d0 for d in datasets):
        return jnp.asarray(d0.x_train.astype(npdt)), jnp.asarray(cast_y(d0)), None
    x = jnp.asarray(np.stack([d.x_train.astype(npdt) for d in datasets]))
    y = jnp.asarray(np.stack([cast_y(d) for d in datasets]))
    return x, y, 0


def train_group(method: Method, hparams, model: ModelSpec, datasets: Dataset | list[Dataset], *,
                seeds: list[int], epochs: int, batch_size: int, dtype: str = "float32", eval_every: int = 1,
                progress: bool = False, on_epoch: Callable[[int, dict], None] | None = None,
                on_checkpoint: Callable[[object, int], None] | None = None,
                divergence: DivergenceGuard | None = None) -> GroupResult:
    """Train R = ``len(seeds)`` runs *in one vmapped, jitted program*, each with its own train seed
    and its own dataset (states and data stacked on a leading run axis).

    Parameters
    ----------
    datasets:
        One :class:`Dataset` shared by all runs (not copied), or a list of R datasets whose training
        arrays have the same shapes (``x_train (n, d)``, ``y_train``) and equal ``spec`` — e.g. the
        random 90/10 splits of one data set. Test sets may differ in size (evaluated one by one).
    seeds:
        R train seeds (init and shuffling), one per run.
    eval_every:
        Each run's state is evaluated on its own test split (outside the timed epoch) every
        ``eval_every`` epochs and at the last one; finiteness is checked there per run.
    on_epoch:
        ``on_epoch(i, record)`` for run i's record of each epoch (same fields as :func:`train`).
    on_checkpoint:
        ``on_checkpoint(states, epoch)`` after every epoch with the stacked ``(R, ...)`` state.
    divergence:
        The guard, applied to every run (see :func:`train`); with mode "stop" one diverged run stops
        the group (the message names the run) before the diverged states are checkpointed.

    Returns
    -------
    GroupResult
        Run i equals ``train(method, hparams, model, datasets[i], seed=seeds[i], ...)`` up to float
        reassociation: same init key, same per-epoch keys, same padded minibatches.

    Raises
    ------
    NotVmappable
        When the datasets' training shapes differ or the method does not trace under ``vmap``
        (raised before any epoch runs); callers fall back to :func:`train` per run.
    FloatingPointError
        When a run's state holds NaN/inf at an evaluation epoch (the message names the run).
    """
    ctx = jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()
    with ctx:
        return _train_group(method, hparams, model, datasets, list(seeds), epochs, batch_size, dtype, eval_every,
                            progress, on_epoch, on_checkpoint, divergence or DivergenceGuard())


def _train_group(method, hparams, model, datasets, seeds, epochs, batch_size, dtype, eval_every, progress,
                 on_epoch, on_checkpoint, guard):
    from tqdm.auto import tqdm

    r = len(seeds)
    dsets = [datasets] * r if isinstance(datasets, Dataset) else list(datasets)
    if r == 0 or len(dsets) != r:
        raise ValueError(f"train_group: {len(dsets)} datasets for {r} seeds; give one dataset or one per seed")
    npdt = np.float64 if dtype == "float64" else np.float32
    x, y, data_axis = _stack_data(dsets, npdt)
    spec = dsets[0].spec
    bs = min(batch_size, spec.n_train)
    keys = jnp.stack([jax.random.split(jax.random.PRNGKey(s)) for s in seeds])  # (R, 2, 2): init, loop
    ek = jax.vmap(jax.random.fold_in, in_axes=(0, None))
    algo = method.build(model, spec, hparams)
    t0 = time.perf_counter()
    try:
        states = jax.jit(jax.vmap(algo.init))(keys[:, 0])
        # the epoch function donates the state: give every leaf its own buffer (init may alias arrays)
        states = jax.tree_util.tree_map(lambda a: a.copy() if isinstance(a, jax.Array) else a, states)
        epoch_fn = jax.jit(jax.vmap(make_epoch_fn(algo, bs, jit=False), in_axes=(0, 0, data_axis, data_axis)),
                           donate_argnums=(0,))
        compiled = epoch_fn.lower(states, ek(keys[:, 1], 1), x, y).compile()
        end = None
        if algo.end_epoch is not None:
            end = jax.jit(jax.vmap(algo.end_epoch, in_axes=(0, None))).lower(states, jnp.asarray(1)).compile()
    except Exception as e:  # noqa: BLE001  (anything before the first epoch: the caller trains run by run)
        raise NotVmappable(f"{method.name} does not vmap ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    compile_s = time.perf_counter() - t0
    compile_eval_s = warm_evaluation(algo, _slice(states, 0), dsets[0])

    histories, tests, epoch_times = [[] for _ in range(r)], [{} for _ in range(r)], []
    monitors = [DivergenceMonitor(guard, f"{method.name} (run {i} of the vmapped group, train seed {s})")
                for i, s in enumerate(seeds)]
    bar = tqdm(range(1, epochs + 1), desc=f"{method.name} x{r}", unit="epoch", disable=not progress, leave=False,
               mininterval=0.5)
    t_start = time.perf_counter()
    for ep in bar:
        te = time.perf_counter()
        states, loss = compiled(states, ek(keys[:, 1], ep), x, y)
        if end is not None:
            states = end(states, jnp.asarray(ep))
        loss = np.asarray(loss)
        jax.block_until_ready(states)
        epoch_times.append(time.perf_counter() - te)
        wall = time.perf_counter() - t_start
        records = [{"epoch": ep, "wall_s": wall, "train_loss": float(loss[i])} for i in range(r)]
        msgs = [m.update(ep, float(loss[i])) for i, m in enumerate(monitors)]
        halt = guard.mode == "stop" and any(m is not None for m in msgs)
        if not halt and (ep % eval_every == 0 or ep == epochs):
            for i in range(r):
                st = _slice(states, i)
                try:
                    check_finite(st, ep)
                except FloatingPointError as e:
                    raise FloatingPointError(f"run {i} of the vmapped group (train seed {seeds[i]}): {e}") from None
                tests[i] = evaluate(algo, st, dsets[i])
                records[i].update({"test": tests[i], "sparsity": default_sparsity(algo, st)})
                msgs[i] = monitors[i].update_metric(ep, *guard_metric(spec.task, tests[i])) or msgs[i]
            key = "rmse" if spec.task == "regression" else "accuracy"
            bar.set_postfix({f"mean {key}": f"{np.mean([t[key] for t in tests]):.4g}"}, refresh=False)
        stops = [m is not None and _diverged(monitors[i], m, records[i]) for i, m in enumerate(msgs)]
        for i in range(r):
            histories[i].append(records[i])
            if on_epoch is not None:
                on_epoch(i, records[i])
        if any(stops):
            i = stops.index(True)
            raise _stop_error(msgs[i], ep)
        if on_checkpoint is not None:
            on_checkpoint(states, ep)
    total = time.perf_counter() - t0
    epochs_s = float(np.sum(epoch_times))
    per_epoch = float(np.median(epoch_times))
    runs = []
    for i in range(r):
        st = _slice(states, i)
        runs.append(TrainResult(state=st, history=histories[i], test=tests[i], sparsity=default_sparsity(algo, st),
                                time={"total_s": total / r, "epochs_s": epochs_s / r, "per_epoch_s": per_epoch / r,
                                      "compile_s": compile_s / r, "compile_eval_s": compile_eval_s / r},
                                diverged_at=monitors[i].diverged_at, algorithm=algo))
    return GroupResult(runs=runs, states=states,
                       time={"total_s": total, "epochs_s": epochs_s, "per_epoch_s": per_epoch,
                             "compile_s": compile_s, "compile_eval_s": compile_eval_s, "runs": r})


def train_seeds(method: Method, hparams, model: ModelSpec, data: Dataset, *, seeds: list[int], epochs: int,
                batch_size: int, dtype: str = "float32", curve: bool = False, curve_every: int = 1
                ) -> tuple[list[dict], dict]:
    """Train one model per seed on one dataset *in one vmapped program* (:func:`train_group`).

    Each seed's run equals ``train(..., seed=s)`` up to float reassociation: same init key, same
    per-epoch keys. Returns the per-seed final test metrics (with ``curve=True`` also each seed's
    per-epoch test metrics under ``"curve"``, evaluated outside the timed epochs) and timings
    (``per_epoch_s`` is for all seeds together, ``total_s`` the sum of the timed epochs); the curve holds
    every ``curve_every``-th epoch and the last, each entry with its ``"epoch"``. Raises
    :class:`NotVmappable` when a method's ``init`` or ``step`` is not vmappable; callers fall back
    to :func:`train` per seed.
    """
    g = train_group(method, hparams, model, data, seeds=seeds, epochs=epochs, batch_size=batch_size, dtype=dtype,
                    eval_every=curve_every if curve else epochs, progress=False)
    results = [{"test": run.test, "sparsity": run.sparsity,
                **({"curve": [{**h["test"], "epoch": h["epoch"]} for h in run.history if "test" in h]} if curve
                   else {})} for run in g.runs]
    return results, {"per_epoch_s": g.time["per_epoch_s"], "compile_s": g.time["compile_s"],
                     "total_s": g.time["epochs_s"]}
