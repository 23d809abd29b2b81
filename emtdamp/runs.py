"""Run folders: one config in, a folder out.

A run folder holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one line per epoch,
written as the run goes), ``summary.json``, ``checkpoint.npz`` (the final state's leaves, written
atomically) and ``curves.png``.

:func:`fit` trains a config from Python and :func:`load_run` opens a finished folder; both return a
:class:`Run` (config, summary, history, state, and ``predict`` on raw inputs). ``emtdamp train`` /
``emtdamp predict`` are the same calls from the command line.

:func:`run_group` trains several configs that differ only in ``data.seed`` / ``train.seed`` as one
vmapped program (:func:`emtdamp.loops.centralised.train_group`) and writes the same folder for each run.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import functools
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import yaml

from emtdamp import config as cfgmod
from emtdamp.checkpoints import (
    atomic_write,
    checkpoint_epoch,
    checkpointed_epoch,
    load_checkpoint,
    previous_path,
    restore,
    save_checkpoint,
)
from emtdamp.data import Dataset, load
from emtdamp.data.record import FILE as DATA_RECORD
from emtdamp.data.record import DataRecord
from emtdamp.divergence import DivergenceError, DivergenceGuard
from emtdamp.loops.centralised import (
    NotVmappable,
    TrainResult,
    mixture_in_chunks,
    predict_in_chunks,
    train,
    train_group,
)
from emtdamp.loops.federated import train_federated
from emtdamp.methods import Method, Predictive, get_method
from emtdamp.methods.base import DataSpec, Mixture
from emtdamp.methods.chains import with_chains
from emtdamp.methods.registry import get_fed_method

SUMMARY_KEYS = ("method", "dataset", "seed", "epochs", "test", "sparsity", "time")


def method_of(cfg: cfgmod.Config) -> Method:
    """The centralised method a config trains: ``method.name``, run as ``train.chains`` vmapped chains."""
    return with_chains(get_method(cfg.method.name), cfg.train.chains)


def default_run_dir(cfg: cfgmod.Config) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return Path("runs") / f"{cfg.name}-{stamp}"


def run_config(cfg: cfgmod.Config, run_dir: str | Path | None = None, progress: bool | None = None,
               resume: bool = False) -> tuple[Path, dict, TrainResult]:
    """Train ``cfg`` and write its run folder; returns (folder, summary, result).

    The state is checkpointed atomically after every epoch (``checkpoint.npz`` + ``progress.json``).
    With ``resume=True`` a run folder holding a checkpoint continues from it (``metrics.jsonl`` is cut
    back to the checkpointed epoch), and finishes with the same result as an uninterrupted run.
    """
    run_dir = _start_run_dir(cfg, run_dir)
    data = load(cfg.data.name, seed=cfg.data.seed, **cfg.data.options)
    DataRecord.from_dataset(data).save(run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    ckpt, prog = run_dir / "checkpoint.npz", run_dir / "progress.json"
    if resume and ckpt.exists() and not previous_path(ckpt).exists():
        checkpoint_epoch(ckpt)   # an unreadable checkpoint with no previous one to fall back to: say so, stop
    done = checkpointed_epoch(ckpt, prog) if resume else 0
    if done:
        kept = [ln for ln in metrics_path.read_text().splitlines() if ln and json.loads(ln)["epoch"] <= done]
        metrics_path.write_text("".join(k + "\n" for k in kept))
    else:
        metrics_path.write_text("")

    def on_checkpoint(state, epoch):
        if cfg.output.checkpoint and (epoch % cfg.output.checkpoint_every == 0 or epoch == cfg.train.epochs):
            save_checkpoint(ckpt, state, epoch)
            atomic_write(prog, lambda f: f.write(json.dumps({"epoch": epoch}).encode()))

    def resume_from(fresh):
        return restore(ckpt, fresh, prog) if done else (fresh, 0)

    def on_epoch(record):
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    fm = get_fed_method(cfg.method.name)
    if fm is not None:
        return _run_federated(cfg, fm, data, run_dir, on_epoch, progress)
    method = method_of(cfg)
    with _divergence_note(cfg, [run_dir]):
        res = train(method, cfg.method.hparams, cfg.model.spec(), data, epochs=cfg.train.epochs,
                    batch_size=cfg.train.batch_size, seed=cfg.train.seed, dtype=cfg.train.dtype,
                    eval_every=cfg.train.eval_every,
                    progress=cfg.train.progress if progress is None else progress, on_epoch=on_epoch,
                    on_checkpoint=on_checkpoint, resume=resume_from, divergence=divergence_guard(cfg))
    summary = _summary(cfg, data, res)
    _finish(cfg, run_dir, summary, res, data)
    return run_dir, summary, res


def divergence_guard(cfg: cfgmod.Config) -> DivergenceGuard:
    """The divergence guard of ``cfg``'s ``train`` block (``on_divergence``, ``divergence_factor``)."""
    return DivergenceGuard(mode=cfg.train.on_divergence, factor=cfg.train.divergence_factor)


@contextlib.contextmanager
def _divergence_note(cfg: cfgmod.Config, run_dirs: list[Path]):
    """Re-raise a :class:`DivergenceError` with where the last good checkpoint is (or that there is none)."""
    try:
        yield
    except DivergenceError as e:
        progs = [d / "progress.json" for d in run_dirs]
        if cfg.output.checkpoint and all(p.exists() for p in progs):
            ep = checkpointed_epoch(run_dirs[0] / "checkpoint.npz", run_dirs[0] / "progress.json")
            where = (f"the checkpoint of epoch {ep}, the last good one, is kept in "
                     f"{run_dirs[0] if len(run_dirs) == 1 else run_dirs[0].parent}")
        else:
            where = "no checkpoint was written before it"
        raise DivergenceError(f"{e}; {where}", e.epoch) from None


def _start_run_dir(cfg: cfgmod.Config, run_dir: str | Path | None) -> Path:
    """Create the run folder and write its resolved ``config.yaml``."""
    run_dir = Path(run_dir or cfg.output.dir or default_run_dir(cfg))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfgmod.to_dict(cfg), sort_keys=False))
    return run_dir


def _summary(cfg: cfgmod.Config, data, res, **extra) -> dict:
    """The summary.json dict of a finished run (the keys every run writes, then ``extra``)."""
    return {"method": cfg.method.name, "dataset": cfg.data.name, "seed": cfg.train.seed,
            "epochs": cfg.train.epochs, "test": res.test, "sparsity": res.sparsity, "time": res.time,
            "data_seed": cfg.data.seed, "n_train": data.spec.n_train, "n_test": int(len(data.x_test)),
            **_model_summary(cfg, data),
            **({"diverged_at": res.diverged_at} if getattr(res, "diverged_at", None) is not None else {}), **extra}


def _seedless(cfg: cfgmod.Config) -> str:
    """A config's identity apart from its data split / train seeds (and run folder)."""
    d = cfgmod.to_dict(cfg)
    d["data"].pop("seed")
    d["train"].pop("seed")
    d["output"].pop("dir")
    return json.dumps(d, sort_keys=True, default=str)


def vmap_groups(cfgs: list[cfgmod.Config]) -> list[list[int]]:
    """Indices of ``cfgs`` grouped by everything except ``data.seed`` and ``train.seed``, in order of
    first appearance (each group can be one vmapped program, see :func:`run_group`)."""
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        groups.setdefault(_seedless(cfg), []).append(i)
    return list(groups.values())


def _group_obstacle(cfgs: list[cfgmod.Config]) -> str | None:
    """Why ``cfgs`` cannot be one vmapped program before looking at the data, or None."""
    if len({_seedless(c) for c in cfgs}) > 1:
        return "the configs differ in more than data.seed / train.seed"
    if get_fed_method(cfgs[0].method.name) is not None:
        return f"{cfgs[0].method.name} is a federated method (trained in rounds, not vmapped)"
    return None


def run_group(cfgs: list[cfgmod.Config], run_dirs: list[str | Path], progress: bool | None = None
              ) -> list[tuple[Path, dict, TrainResult]]:
    """Train configs that differ only in ``data.seed`` / ``train.seed`` as *one* vmapped program and
    write each run's folder exactly as :func:`run_config` does (config.yaml, metrics.jsonl,
    summary.json, checkpoint.npz + progress.json, plots); each summary adds ``"vmapped_group"``
    (the group size) and ``"group_time"`` (the group's timings; ``time`` is amortised per run).

    Falls back to :func:`run_config` run by run, with a one-line note on stderr saying why, when the
    group cannot be vmapped: configs that differ otherwise, a federated method, datasets whose
    training shapes differ, or a method whose init/step does not trace under vmap. Returns
    ``(folder, summary, result)`` per config, in order.
    """
    if len(cfgs) != len(run_dirs):
        raise ValueError(f"run_group: {len(cfgs)} configs but {len(run_dirs)} run folders")
    if len(cfgs) == 1:
        return [run_config(cfgs[0], run_dirs[0], progress)]
    reason = _group_obstacle(cfgs)
    if reason is None:
        try:
            return _run_group_vmapped(cfgs, [Path(d) for d in run_dirs], progress)
        except NotVmappable as e:
            reason = str(e)
    print(f"note: {len(cfgs)} runs ({cfgs[0].method.name}) not vmapped: {reason}; running them one by one",
          file=sys.stderr)
    return [run_config(c, d, progress) for c, d in zip(cfgs, run_dirs, strict=True)]


def _run_group_vmapped(cfgs, run_dirs: list[Path], progress):
    c0 = cfgs[0]
    datasets = [load(c.data.name, seed=c.data.seed, **c.data.options) for c in cfgs]
    method = method_of(c0)
    dirs = [_start_run_dir(c, d) for c, d in zip(cfgs, run_dirs, strict=True)]
    for d, data in zip(dirs, datasets, strict=True):
        DataRecord.from_dataset(data).save(d)
    for d in dirs:
        (d / "metrics.jsonl").write_text("")

    def on_epoch(i, record):
        with open(dirs[i] / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_checkpoint(states, epoch):
        if c0.output.checkpoint and (epoch % c0.output.checkpoint_every == 0 or epoch == c0.train.epochs):
            for i, d in enumerate(dirs):
                save_checkpoint(d / "checkpoint.npz", jax.tree_util.tree_map(lambda a, i=i: a[i], states), epoch)
                atomic_write(d / "progress.json", lambda f: f.write(json.dumps({"epoch": epoch}).encode()))

    with _divergence_note(c0, dirs):
        g = train_group(method, c0.method.hparams, c0.model.spec(), datasets, seeds=[c.train.seed for c in cfgs],
                        epochs=c0.train.epochs, batch_size=c0.train.batch_size, dtype=c0.train.dtype,
                        eval_every=c0.train.eval_every, progress=c0.train.progress if progress is None else progress,
                        on_epoch=on_epoch, on_checkpoint=on_checkpoint, divergence=divergence_guard(c0))
    out = []
    for cfg, d, data, res in zip(cfgs, dirs, datasets, g.runs, strict=True):
        summary = _summary(cfg, data, res, vmapped_group=len(cfgs), group_time=g.time)
        _finish(cfg, d, summary, res, data)
        out.append((d, summary, res))
    return out


def _model_summary(cfg, data) -> dict:
    """The network in summary.json: dense layer sizes, plus the conv stack for a CNN."""
    spec = cfg.model.spec()
    out = {"model_kind": spec.kind, "layer_sizes": list(spec.layer_sizes(data.spec))}
    if spec.kind == "cnn":
        out.update(conv=list(spec.conv), kernel_size=spec.kernel_size, image_shape=list(data.spec.image_shape or ()))
        out["layer_sizes"] = None  # dense sizes alone would misdescribe a CNN
    if spec.kind == "flax":
        out.update(layer_sizes=None, module=str(cfg.model.module), module_kwargs=dict(cfg.model.kwargs))
    return out


def _finish(cfg, run_dir: Path, summary: dict, res, data) -> None:
    state, history, algo = res.state, res.history, res.algorithm
    if getattr(algo, "diagnostics", None) is not None:  # MCMC convergence (R-hat / ESS), e.g. nuts
        summary["diagnostics"] = diag = algo.diagnostics(state)
        high = {k: round(v, 3) for k, v in (diag.get("rhat") or {}).items() if v is not None and v > 1.05}
        if high:
            print(f"warning: {cfg.method.name} chains have not converged ({run_dir}): R-hat > 1.05 for {high}; "
                  "run longer (warmup/draws) or more chains", file=sys.stderr)
    # the final state, always (output.checkpoint only switches the periodic checkpoints off), before the summary
    ckpt = run_dir / "checkpoint.npz"
    last = (history[-1].get("epoch", history[-1].get("round")) if history else None)
    if not (cfg.output.checkpoint and ckpt.exists() and checkpointed_epoch(ckpt) == last):
        save_checkpoint(ckpt, state, last)
    atomic_write(run_dir / "summary.json", lambda f: f.write(json.dumps(summary, indent=2).encode()))
    if cfg.output.plots:
        from emtdamp.plots import plot_calibration, plot_curves

        title = f"{cfg.method.name} · {cfg.data.name}"
        prunes = any(r.get("sparsity", {}).get("neurons_pruned_frac", 0) or r.get("sparsity", {}).get(
            "weights_zero_frac", 0) for r in history)
        plot_curves(history, data.spec.task, run_dir / "curves.png", title=title, prunes=bool(prunes))
        if data.spec.task == "classification":
            probs = predict_in_chunks(algo, state, data.x_test).probs
            plot_calibration(probs, data.y_test, run_dir / "calibration.png", title=title)


def _run_federated(cfg, fm, data, run_dir: Path, on_round, progress):
    res = train_federated(fm, cfg.method.hparams, cfg.model.spec(), data, rounds=cfg.train.epochs,
                          batch_size=cfg.train.batch_size, seed=cfg.train.seed, dtype=cfg.train.dtype,
                          progress=cfg.train.progress if progress is None else progress, on_round=on_round)
    summary = _summary(cfg, data, res, rounds=cfg.train.epochs, rounds_to_target=res.rounds_to_target,
                       target=cfg.method.hparams.target, bytes_per_round=res.bytes_per_round,
                       bytes_down_per_round=res.bytes_down_per_round,
                       n_clients=cfg.method.hparams.n_clients, partition=cfg.method.hparams.partition)
    _finish(cfg, run_dir, summary, res, data)
    return run_dir, summary, res


class Prediction(NamedTuple):
    """A run's predictive distribution on raw input rows, in the data's original units.

    Regression: ``mean`` and ``var`` of shape ``(n, d_out)`` in target units (``var`` includes the
    observation noise; ``sd`` is its square root); ``probs`` is None. Classification: ``probs`` of shape
    ``(n, K)`` (rows sum to one); ``mean``/``var`` are None. For the sampling methods it is the mixture
    over their posterior samples (and chains), for EM-TDAMP its moment-propagated predictive.

    ``intervals`` (regression, when levels were asked for): ``{level: (lower, upper)}`` central
    predictive intervals ``(n, d_out)`` in target units, the quantiles ``(1 ∓ level)/2`` of the
    predictive mixture (:mod:`emtdamp.predictive`). ``samples`` (when asked for): posterior-predictive
    draws, regression ``(S, n, d_out)`` targets, classification ``(S, n)`` labels.
    """

    mean: np.ndarray | None = None
    var: np.ndarray | None = None
    probs: np.ndarray | None = None
    intervals: dict | None = None
    samples: np.ndarray | None = None

    @property
    def entropy(self) -> np.ndarray | None:
        """Predictive entropy ``(n,)`` in nats (classification), None for regression."""
        from emtdamp.predictive import entropy
        return None if self.probs is None else entropy(self.probs)

    @property
    def sd(self) -> np.ndarray | None:
        """Predictive standard deviation ``(n, d_out)`` (regression), None for classification."""
        return None if self.var is None else np.sqrt(self.var)


@dataclasses.dataclass
class Run:
    """A trained run: its folder and everything in it, from :func:`fit` or :func:`load_run`.

    Attributes
    ----------
    dir: the run folder.
    config: the resolved :class:`emtdamp.config.Config` it was trained with.
    summary: ``summary.json`` as a dict (test metrics, sparsity, timings, diagnostics); None when the
        folder holds no summary (a run stopped before its end).
    history: ``metrics.jsonl``: one dict per epoch (``train_loss``, and ``test`` metrics where evaluated).
    state: the method's final state pytree (None when the folder has no ``checkpoint.npz``).
    """

    dir: Path
    config: cfgmod.Config
    summary: dict | None
    history: list[dict]
    state: Any

    @functools.cached_property
    def data(self) -> Dataset:
        """The run's dataset (same split and scaling as in training), loaded on first use (prediction does
        not need it: see :attr:`record`)."""
        c = self.config.data
        return load(c.name, seed=c.seed, **c.options)

    @functools.cached_property
    def record(self) -> DataRecord:
        """What prediction needs about the training data (spec, transforms, class and column names): the
        folder's ``data.json``; for folders written before it existed, read off the reloaded dataset."""
        if (self.dir / DATA_RECORD).exists():
            return DataRecord.load(self.dir)
        return DataRecord.from_dataset(self.data)

    @functools.cached_property
    def algorithm(self):
        """The run's method built for its model, data and hyperparameters (an
        :class:`~emtdamp.methods.base.Algorithm`, with its chains, or a federated
        :class:`~emtdamp.methods.federated.FedAlgorithm`): its ``predict`` reads :attr:`state`."""
        return _algorithm_and_template(self.config, self.record.spec)[0]

    def require_state(self) -> None:
        """Raise FileNotFoundError (one line, naming the fix) when the folder kept no final state."""
        if self.state is None:
            raise FileNotFoundError(f"{self.dir / 'checkpoint.npz'} not found: the run stopped before its end (or an "
                                    "older emtdamp ran it with output.checkpoint: false); train it again")

    def predictive(self, x: np.ndarray) -> Predictive:
        """The method's own predictive on *model* inputs ``x (n, d)`` (already scaled like ``data.x_test``),
        in standardised target units (:class:`emtdamp.methods.Predictive`)."""
        self.require_state()
        with jax.enable_x64(self.config.train.dtype == "float64"):
            return predict_in_chunks(self.algorithm, self.state, np.asarray(x, np.float32))

    def mixture(self, x: np.ndarray) -> Mixture:
        """The predictive on *model* inputs ``x (n, d)`` as its mixture components (one per kept posterior
        sample and chain; one Gaussian for EM-TDAMP / adam), standardised units
        (:class:`emtdamp.methods.base.Mixture`, numpy)."""
        self.require_state()
        with jax.enable_x64(self.config.train.dtype == "float64"):
            return mixture_in_chunks(self.algorithm, self.state, np.asarray(x, np.float32))

    def predict(self, x_raw: np.ndarray, *, levels: tuple[float, ...] = (), n_samples: int = 0,
                seed: int = 0) -> Prediction:
        """Predictive on raw feature rows ``x_raw (n, d)``, in the units of the training data's own files
        (regression features before standardisation, image pixels 0-255), returned in original target units.

        ``levels``, e.g. ``(0.5, 0.9)``: central predictive intervals (regression); ``n_samples``: that many
        posterior-predictive draws, reproducible from ``seed``. Both come from the predictive mixture.
        Raises ValueError (one line, naming the fix) for a wrong shape, NaN/inf rows or bad levels.
        """
        x_raw = np.asarray(x_raw)
        d = self.record.spec.n_features
        if x_raw.ndim != 2 or x_raw.shape[1] != d:
            raise ValueError(f"x has shape {x_raw.shape}; the model expects (n, {d}) in the training data's raw "
                             "units")
        bad = ~np.isfinite(x_raw.astype(np.float64))
        if bad.any():
            raise ValueError(f"{int(bad.any(1).sum())} rows of x hold NaN/inf; drop or impute them first")
        x = self.record.model_inputs(x_raw)
        out = self.to_original_units(self.predictive(x))
        if not levels and n_samples <= 0:
            return out
        from emtdamp.predictive import central_intervals, sample_mixture
        if levels and out.probs is not None:
            raise ValueError("predictive intervals are for regression; a classifier's predictive is its class "
                             "probabilities (drop levels)")
        mix = self.mixture(x)
        if mix.mean is not None:
            y_mean, y_std = self.record.y_scale
            mix = mix._replace(mean=mix.mean * y_std + y_mean, var=mix.var * y_std ** 2)
        return out._replace(intervals=central_intervals(mix, levels) if levels else None,
                            samples=sample_mixture(mix, n_samples, seed) if n_samples > 0 else None)

    def to_original_units(self, pred: Predictive) -> Prediction:
        """A standardised :class:`~emtdamp.methods.Predictive` in the data's original target units."""
        if pred.probs is not None:
            return Prediction(probs=np.asarray(pred.probs))
        y_mean, y_std = self.record.y_scale
        return Prediction(mean=np.asarray(pred.mean) * y_std + y_mean, var=np.asarray(pred.var) * y_std ** 2)


def _algorithm_and_template(cfg: cfgmod.Config, spec: DataSpec):
    """The built method of ``cfg`` and the shape of its state (the structure a checkpoint is restored into)."""
    fm = get_fed_method(cfg.method.name)
    with jax.enable_x64(cfg.train.dtype == "float64"):
        if fm is not None:
            algo = fm.build(cfg.model.spec(), spec, cfg.method.hparams, cfg.train.batch_size)
        else:
            algo = method_of(cfg).build(cfg.model.spec(), spec, cfg.method.hparams)
        like = jax.eval_shape(algo.init, jax.random.PRNGKey(cfg.train.seed))
    return algo, like


def _read_history(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _as_config(config: str | Path | Mapping | cfgmod.Config, overrides: list[str],
               key_paths: dict[str, Any]) -> cfgmod.Config:
    """``config`` (a YAML path, a dict of blocks or a Config) with CLI-style overrides applied, validated."""
    if isinstance(config, cfgmod.Config):
        raw, name = cfgmod.to_dict(config), config.name
    elif isinstance(config, Mapping):
        raw, name = copy.deepcopy(dict(config)), "config"
    elif isinstance(config, (str, Path)):
        raw, name = cfgmod.read_yaml(config), Path(config).stem
    else:
        raise TypeError(f"config must be a YAML path, a dict of config blocks or an emtdamp Config, "
                        f"got {type(config).__name__}")
    raw = cfgmod.apply_overrides(raw, overrides)
    raw = cfgmod.apply_settings(raw, [(k.replace("__", ".").split("."), v, f"{k.replace('__', '.')}={v!r}")
                                      for k, v in key_paths.items()])
    model = raw.get("model")
    if isinstance(model, dict) and model.get("module") is not None and not isinstance(model["module"], str):
        raw["model"] = {**model, "module": _import_path(model["module"])}
    return cfgmod.from_dict(raw, name=name)


def _import_path(module: Any) -> str:
    """``"package.module:ClassName"`` of a flax Module class given as an object (configs and config.yaml hold
    the path); ValueError when the path does not lead back to the same class (a class made inside a
    function, or an instance)."""
    from emtdamp.models.flax_adapter import resolve_module

    path = f"{getattr(module, '__module__', '')}:{getattr(module, '__qualname__', '')}"
    try:
        same = resolve_module(path) is module
    except ValueError:
        same = False
    if not same:
        raise cfgmod.ConfigError(f"model.module: {module!r} is not a class importable by name (got {path!r}); "
                                 "define it at module level, or give 'package.module:ClassName'")
    if path.startswith("__main__:"):
        print(f"note: model.module={path} lives in the running script; emtdamp.load_run of this run works in "
              "this process only (move the class into a module to reload the run elsewhere)", file=sys.stderr)
    return path


def fit(config: str | Path | Mapping | cfgmod.Config, *overrides: str, run_dir: str | Path | None = None,
        progress: bool | None = None, resume: bool = False, **key_paths: Any) -> Run:
    """Train a config and write its run folder, as ``emtdamp train`` does; returns the :class:`Run`.

    ``config``: a YAML path, a dict of config blocks (``{"data": ..., "method": ...}``) or a Config. In a dict,
    ``model.module`` (``model.kind: flax``) may be the flax Module class itself; the run records its import path.
    Overrides use the CLI's ``key.path`` names, as strings (``fit(cfg, "train.epochs=5")``) or keywords
    (``fit(cfg, **{"train.epochs": 5})``, or ``train__epochs=5``: ``__`` stands for the dot).
    ``run_dir`` (default ``output.dir``, else ``runs/<name>-<time>``), ``progress`` (default
    ``train.progress``) and ``resume`` are as for the CLI. Bad configs raise
    :class:`emtdamp.config.ConfigError` with the CLI's one-line message.
    """
    cfg = _as_config(config, list(overrides), key_paths)
    if resume and run_dir is None and cfg.output.dir is None:
        raise cfgmod.ConfigError("resume=True needs the run folder: pass run_dir= (or output.dir)")
    out, summary, res = run_config(cfg, run_dir, progress=progress, resume=resume)
    return Run(dir=out, config=cfg, summary=summary, history=_read_history(out), state=res.state)


def load_run(path: str | Path) -> Run:
    """Open a run folder written by ``emtdamp train`` / :func:`fit` (its state restored from checkpoint.npz)."""
    run_dir = Path(path)
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"{run_dir / 'config.yaml'} not found: is {run_dir} a run folder written by "
                                "`emtdamp train`?")
    cfg = cfgmod.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()), run_dir.name)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    run = Run(dir=run_dir, config=cfg, summary=summary, history=_read_history(run_dir), state=None)
    if (run_dir / "checkpoint.npz").exists():
        algo, like = _algorithm_and_template(cfg, run.record.spec)
        run.__dict__["algorithm"] = algo  # the cached_property, from the build that gave the template
        with jax.enable_x64(cfg.train.dtype == "float64"):
            run.state = load_checkpoint(run_dir / "checkpoint.npz", like)
    return run
