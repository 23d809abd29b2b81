"""``emtdamp export``: a trained MLP run as a physically smaller network in a folder of its own, and
:func:`load_exported` giving a pure ``apply(x_raw)`` on raw feature rows.

What is exported is one network, pruned units removed:

- ``emtdamp``: the masked posterior-mean (plug-in) network, :func:`emtdamp.tdamp.prune.compact` (groups
  whose support probability π is below 0.5 are dropped, as ``sparsity`` counts them);
- ``em_mcmc``: the final iterate compacted by its keep masks, :func:`emtdamp.em_mcmc.compact_mlp`;
- every other MLP method (adam, sgd, the SG-MCMC family): its final weights (SG-MCMC: the last sample),
  with hidden units whose outgoing weights are all zero removed (:func:`emtdamp.models.mlp.compact_dense`).

Input features whose first-layer rows are all zero are dropped too (the exported network records which
raw columns it reads). The folder holds ``params.msgpack`` (flax serialisation of
``{"layers": [{"kernel", "bias"}, ...]}``) and ``model.json`` (architecture, activation, inputs, the
input and target transforms, class names, provenance). The exported network's parameter count is the
run's ``sparsity.params_remaining`` for emtdamp and em_mcmc.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

FORMAT = "emtdamp-mlp/1"


def exported_network(run) -> tuple[list[dict], np.ndarray, str]:
    """``(layers, inputs, what)`` of a :class:`~emtdamp.runs.Run` (see the module docstring); ``what`` says
    which network it is. Raises ValueError (one line, naming the fix) for runs it cannot export."""
    cfg = run.config
    name = cfg.method.name
    run.require_state()
    if cfg.model.kind != "mlp":
        raise ValueError(f"emtdamp export writes MLP runs; this run's model.kind is {cfg.model.kind!r} (its params "
                         "are in checkpoint.npz, restore them with emtdamp.load_run(...).state)")
    if cfg.train.chains > 1:
        raise ValueError(f"this run trained {cfg.train.chains} chains; export one network: train with train.chains=1")
    st = run.state
    if name == "emtdamp":
        from emtdamp.tdamp import prune

        layers, _ = prune.compact(st)
        layers, inputs = _drop_dead_inputs(layers)
        return layers, inputs, "the masked posterior-mean (plug-in) network"
    if name == "em_mcmc":
        from emtdamp.em_mcmc import compact_mlp

        layers, inputs = compact_mlp(st.params, st.opt.keep)
        return [_np(p) for p in layers], np.asarray(inputs), "the final iterate, compacted by its keep masks"
    params = getattr(st, "params", None)
    if not isinstance(params, (list, tuple)):
        raise ValueError(f"emtdamp export does not know how to read {name}'s state; export supports emtdamp, "
                         "em_mcmc, adam, sgd and the SG-MCMC methods on an MLP")
    from emtdamp.models.mlp import compact_dense

    layers, inputs = compact_dense([_np(p) for p in params])
    return layers, inputs, "the final weights" if name in ("adam", "sgd") else "the last posterior sample"


def _np(layer: dict) -> dict:
    return {"kernel": np.asarray(layer["kernel"], np.float32), "bias": np.asarray(layer["bias"], np.float32)}


def _drop_dead_inputs(layers: list[dict]) -> tuple[list[dict], np.ndarray]:
    inputs = np.flatnonzero(np.any(np.asarray(layers[0]["kernel"]) != 0, axis=1))
    first = {"kernel": np.asarray(layers[0]["kernel"])[inputs], "bias": np.asarray(layers[0]["bias"])}
    return [_np(first), *(_np(p) for p in layers[1:])], inputs


def export_run(run, out_dir: str | Path) -> Path:
    """Write ``out_dir/params.msgpack`` and ``out_dir/model.json`` for ``run``; returns ``out_dir``."""
    from flax import serialization

    layers, inputs, what = exported_network(run)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rec = run.record
    n_params = int(sum(p["kernel"].size + p["bias"].size for p in layers))
    meta = {"format": FORMAT, "task": rec.spec.task, "activation": run.config.model.activation,
            "layer_sizes": [int(layers[0]["kernel"].shape[0]), *(int(p["kernel"].shape[1]) for p in layers)],
            "inputs": [int(i) for i in inputs], "n_features": rec.spec.n_features, "n_params": n_params,
            "network": what, "method": run.config.method.name, "source_run": str(run.dir),
            "data": rec.to_dict()}
    (out / "params.msgpack").write_bytes(serialization.msgpack_serialize({"layers": layers}))
    (out / "model.json").write_text(json.dumps(meta, indent=1))
    return out


@dataclasses.dataclass(frozen=True)
class Exported:
    """A network written by :func:`export_run`: ``apply(x_raw)`` maps raw rows ``(n, n_features)`` to the
    regression mean ``(n, d_out)`` in target units or the class probabilities ``(n, K)``; ``layers`` are the
    compact weights; ``meta`` is ``model.json``."""

    apply: Callable[[np.ndarray], np.ndarray]
    layers: list
    meta: dict

    @property
    def n_params(self) -> int:
        return int(self.meta["n_params"])


def load_exported(path: str | Path) -> Exported:
    """Open a folder written by ``emtdamp export`` (no run folder, no training data needed)."""
    import jax
    import jax.numpy as jnp
    from flax import serialization

    from emtdamp.data.record import DataRecord
    from emtdamp.models import mlp

    path = Path(path)
    if not (path / "model.json").exists() or not (path / "params.msgpack").exists():
        raise FileNotFoundError(f"{path} is not an exported network (it needs model.json and params.msgpack); "
                                "write one with `emtdamp export RUN --out DIR`")
    meta = json.loads((path / "model.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}/model.json has format {meta.get('format')!r}; this emtdamp reads {FORMAT!r}")
    raw = serialization.msgpack_restore((path / "params.msgpack").read_bytes())["layers"]
    layers = [{"kernel": jnp.asarray(raw[k]["kernel"]), "bias": jnp.asarray(raw[k]["bias"])}
              for k in sorted(raw, key=int)] if isinstance(raw, dict) else [
        {"kernel": jnp.asarray(p["kernel"]), "bias": jnp.asarray(p["bias"])} for p in raw]
    rec = DataRecord.from_dict(meta["data"])
    inputs = np.asarray(meta["inputs"], np.int64)
    act, task, d = meta["activation"], meta["task"], meta["n_features"]
    net = jax.jit(lambda x: mlp.apply(layers, x, act))

    def apply(x_raw: np.ndarray) -> np.ndarray:
        x_raw = np.asarray(x_raw)
        if x_raw.ndim != 2 or x_raw.shape[1] != d:
            raise ValueError(f"x has shape {x_raw.shape}; the network expects (n, {d}) raw features")
        out = np.asarray(net(jnp.asarray(rec.model_inputs(x_raw)[:, inputs])))
        if task == "classification":
            return np.asarray(jax.nn.softmax(out, axis=-1))
        y_mean, y_std = rec.y_scale
        return out * y_std + y_mean

    return Exported(apply=apply, layers=layers, meta=meta)
