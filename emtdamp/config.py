"""Experiment configs: YAML -> frozen, typed, validated dataclasses.

A config has the blocks ``data``, ``model``, ``method``, ``train``, ``output`` and an optional
``sweep``. Unknown keys, wrong types and out-of-range values raise :class:`ConfigError` naming the
key path and what is allowed. ``key.path=value`` overrides (values parsed as YAML) are applied
before validation, so they get the same checks.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import itertools
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from emtdamp.methods.base import ModelSpec


class ConfigError(ValueError):
    """A config problem; the message names the key path, the problem and what is allowed."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    name: str = "boston"
    seed: int = 0
    options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    hidden: tuple[int, ...] = (64,)
    activation: str = "relu"
    kind: str = "mlp"  # "cnn": conv layers first (image data only), see emtdamp.models.cnn
    conv: tuple[int, ...] = (32, 64)  # output channels of the conv layers (kind: cnn)
    kernel_size: int = 3  # conv kernels are kernel_size x kernel_size (kind: cnn)
    module: str = ""  # kind: flax: "package.module:ClassName" of a flax.linen / flax.nnx Module
    kwargs: dict = dataclasses.field(default_factory=dict)  # kind: flax: the module's constructor arguments

    def spec(self) -> ModelSpec:
        frozen = lambda v: tuple(frozen(x) for x in v) if isinstance(v, list) else v
        return ModelSpec(hidden=tuple(self.hidden), activation=self.activation, kind=self.kind,
                         conv=tuple(self.conv), kernel_size=self.kernel_size, module=self.module or None,
                         kwargs=tuple(sorted((k, frozen(v)) for k, v in self.kwargs.items())))


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    name: str
    hparams: Any  # an instance of the method's hparams_cls


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    batch_size: int = 32
    seed: int = 0
    dtype: str = "float32"
    eval_every: int = 1
    progress: bool = True
    on_divergence: str = "stop"      # stop | warn | ignore (emtdamp.divergence)
    divergence_factor: float = 1000.0  # growth of the train loss / test metric over its best that counts
    chains: int = 1                  # independent chains / fits, vmapped, predictive mixed (emtdamp.methods.chains)


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    dir: str | None = None
    checkpoint: bool = True
    checkpoint_every: int = 5
    plots: bool = True


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """``grid``: key path -> list of values (their product is run); ``seeds``: train.seed values per
    grid point; ``vmap``: train the runs that differ only in ``data.seed`` / ``train.seed`` as one
    vmapped program each (``emtdamp sweep``; falls back to run by run where that is impossible)."""

    grid: dict = dataclasses.field(default_factory=dict)
    seeds: tuple[int, ...] = ()
    vmap: bool = False


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    data: DataConfig
    model: ModelConfig
    method: MethodConfig
    train: TrainConfig
    output: OutputConfig
    sweep: SweepConfig | None = None


# Bounds of the generic blocks (method hparams carry their own in field metadata).
_RANGES = {
    "train.epochs": (1, 10_000_000), "train.batch_size": (1, 10_000_000), "train.seed": (0, 2**31 - 1),
    "train.eval_every": (1, 10_000_000), "output.checkpoint_every": (1, 10_000_000), "data.seed": (0, 2**31 - 1),
    "model.kernel_size": (1, 64), "train.divergence_factor": (1.0 + 1e-9, 1e300),
    "train.chains": (1, 1024),
}
_CHOICES = {"train.dtype": ("float32", "float64"), "train.on_divergence": ("stop", "warn", "ignore"),
            "model.activation": ("relu", "tanh", "gelu", "sigmoid"),
            "model.kind": ("mlp", "cnn", "flax")}
_BLOCKS = ("data", "model", "method", "train", "output", "sweep")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (lists -> tuples)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], path)
    if tp is Any:
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list of {_type_name(args[0])}, got {value!r}")
        return tuple(_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string: accept numeric text
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported field type {tp!r}")


def _check_bounds(value: Any, path: str, rng: tuple | None, choices: tuple | None) -> None:
    vals = value if isinstance(value, tuple) else (value,)
    for v in vals:
        if rng is not None and v is not None and not (rng[0] <= v <= rng[1]):
            raise ConfigError(f"{path}: {v!r} is out of range; allowed [{rng[0]}, {rng[1]}]")
        if choices is not None and v not in choices:
            raise ConfigError(f"{path}: {v!r} is not allowed; choose one of {list(choices)}")


def build_dataclass(cls: type, raw: dict | None, path: str, ranges: dict | None = None,
                    choices: dict | None = None) -> Any:
    """Build frozen dataclass ``cls`` from ``raw``, rejecting unknown keys, wrong types, bad values.

    Field bounds come from ``field.metadata["range"|"choices"]`` or from the ``ranges``/``choices``
    dicts keyed by the full path.
    """
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; allowed keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        key = f"{path}.{name}" if path else name
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: required key is missing")
            continue
        value = _coerce(raw[name], hints[name], key)
        rng = f.metadata.get("range") or (ranges or {}).get(key)
        ch = f.metadata.get("choices") or (choices or {}).get(key)
        _check_bounds(value, key, rng, ch)
        kwargs[name] = value
    return cls(**kwargs)


def _check_data_options(data: DataConfig) -> None:
    from emtdamp.data.registry import dataset_names, loader_options

    if data.name not in dataset_names():
        raise ConfigError(f"data.name: unknown dataset {data.name!r}; available: {dataset_names()}")
    allowed = loader_options(data.name)
    for k, v in data.options.items():
        if k not in allowed:
            raise ConfigError(f"data.options.{k}: unknown option for dataset {data.name!r}; "
                              f"allowed: {sorted(allowed)}")
        default = allowed[k].default
        if default is not inspect.Parameter.empty and default is not None and v is not None:
            tp = type(default)
            if tp is float and isinstance(v, int) and not isinstance(v, bool):
                continue
            if not isinstance(v, tp) or (tp is int and isinstance(v, bool)):
                raise ConfigError(f"data.options.{k}: expected {tp.__name__} (like the default {default!r}), "
                                  f"got {v!r}")


def all_method_names() -> list[str]:
    """Centralised and federated method names."""
    from emtdamp.methods import method_names
    from emtdamp.methods.registry import fed_method_names

    return sorted(set(method_names()) | set(fed_method_names()))


def hparams_cls_of(name: str) -> type:
    from emtdamp.methods import get_method
    from emtdamp.methods.registry import get_fed_method

    fm = get_fed_method(name)
    return fm.hparams_cls if fm is not None else get_method(name).hparams_cls


def _build_method(raw: dict | None) -> MethodConfig:
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"method: expected a mapping with a `name` key, got {raw!r}")
    raw = dict(raw or {})
    name = raw.pop("name", None)
    names = all_method_names()
    if name is None:
        raise ConfigError(f"method.name: required; choose one of {names}")
    if not isinstance(name, str) or name not in names:
        raise ConfigError(f"method.name: unknown method {name!r}; choose one of {names}")
    return MethodConfig(name=name, hparams=build_dataclass(hparams_cls_of(name), raw, "method"))


def _check_chains(name: str, chains: int) -> None:
    """``train.chains > 1`` needs a centralised method that does not run its own chains."""
    from emtdamp.methods.chains import OWN_CHAINS
    from emtdamp.methods.registry import get_fed_method

    if name in OWN_CHAINS:
        raise ConfigError(f"train.chains={chains}: {name} runs its own chains; set method.chains={chains} "
                          "and leave train.chains=1")
    if get_fed_method(name) is not None:
        raise ConfigError(f"train.chains={chains}: federated method {name} has no chain axis; "
                          "leave train.chains=1 (vary train.seed in a sweep instead)")


def from_dict(raw: dict, name: str = "config") -> Config:
    """Validate a raw config mapping (as read from YAML, overrides applied) into a :class:`Config`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping with blocks {list(_BLOCKS)}, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_BLOCKS))
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown}; allowed blocks: {list(_BLOCKS)}")
    data = build_dataclass(DataConfig, raw.get("data"), "data", _RANGES, _CHOICES)
    _check_data_options(data)
    model = build_dataclass(ModelConfig, raw.get("model"), "model", _RANGES, _CHOICES)
    if any(h < 1 for h in model.hidden):
        raise ConfigError(f"model.hidden: widths must be >= 1, got {list(model.hidden)}")
    if any(c < 1 for c in model.conv):
        raise ConfigError(f"model.conv: channel counts must be >= 1, got {list(model.conv)}")
    if model.kind == "cnn" and not model.conv:
        raise ConfigError("model.conv: model.kind=cnn needs at least one conv layer, e.g. model.conv=[32,64] "
                          "(or use model.kind=mlp)")
    if model.kind == "flax" and not model.module:
        raise ConfigError("model.module: model.kind=flax needs model.module='package.module:ClassName' (a flax.linen "
                          "or flax.nnx Module class importable from the working folder), constructor arguments "
                          "in model.kwargs")
    if model.kind != "flax" and (model.module or model.kwargs):
        raise ConfigError(f"model.module / model.kwargs are for model.kind=flax (got model.kind={model.kind}); "
                          "set model.kind=flax to use your own module")
    method = _build_method(raw.get("method"))
    train = build_dataclass(TrainConfig, raw.get("train"), "train", _RANGES, _CHOICES)
    if train.chains > 1:
        _check_chains(method.name, train.chains)
    check = getattr(method.hparams, "check_train", None)  # optional cross-field check of a method
    resolve = getattr(method.hparams, "with_train", None)  # optional: fields derived from the train block
    try:
        if callable(check):
            check(train)
        if callable(resolve):
            method = dataclasses.replace(method, hparams=resolve(train))
    except ValueError as e:
        raise ConfigError(f"method: {e}") from None
    output = build_dataclass(OutputConfig, raw.get("output"), "output", _RANGES)
    sweep = None
    if raw.get("sweep") is not None:
        sweep = build_dataclass(SweepConfig, raw["sweep"], "sweep")
        for k, vals in sweep.grid.items():
            if not isinstance(vals, list) or not vals:
                raise ConfigError(f"sweep.grid.{k}: expected a non-empty list of values, got {vals!r}")
            if k.split(".")[0] not in _BLOCKS[:-1]:
                raise ConfigError(f"sweep.grid.{k}: key paths start with one of {list(_BLOCKS[:-1])}")
    return Config(name=name, data=data, model=model, method=method, train=train, output=output, sweep=sweep)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` -> (["a", "b", "c"], value parsed as YAML, e.g. ``[64,64]`` -> list)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY.PATH=VALUE, e.g. train.epochs=20")
    key, _, value = text.partition("=")
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r}: malformed key path {key!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from None
    return key.split("."), parsed


def set_path(raw: dict, path: list[str], value: Any) -> dict:
    """Return a deep copy of ``raw`` with ``raw[p0][p1]...= value`` (creating mappings as needed)."""
    out = copy.deepcopy(raw)
    node = out
    for i, p in enumerate(path[:-1]):
        if node.get(p) is None:
            node[p] = {}
        if not isinstance(node[p], dict):
            raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a mapping")
        node = node[p]
    node[path[-1]] = value
    return out


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``raw`` (a deep copy) with the ``key.path=value`` strings applied in order.

    An override that switches ``method.name`` or ``data.name`` while the config's block keeps keys of the
    previous method / options of the previous dataset that the new one does not take raises
    :class:`ConfigError` naming those keys and the whole-block override that replaces them.
    """
    return apply_settings(raw, [(*parse_override(o), o) for o in overrides])


def apply_settings(raw: dict, settings: list[tuple[list[str], Any, str]]) -> dict:
    """Apply ``(key path, value, how it was written)`` settings in order, as :func:`apply_overrides` does.

    ``how`` (e.g. ``"method.name=adam"``) only names the setting in the error for a ``method.name`` /
    ``data.name`` switch that leaves keys of the previous method / dataset behind (see
    :func:`check_name_switches`).
    """
    before = raw
    for path, value, _ in settings:
        raw = set_path(raw, list(path), value)
    check_name_switches(before, raw, settings)
    return raw


# block -> (where its foreign keys live, what the keys are called, what the named thing is called)
_SWITCHES = {"method": ((), "keys", "method"), "data": (("options",), "options", "dataset")}


def check_name_switches(before: dict, after: dict, settings: list[tuple[list[str], Any, str]]) -> None:
    """Raise :class:`ConfigError` when ``settings`` changed ``method.name`` / ``data.name`` of ``before`` but
    ``after`` still holds keys (method) / options (data) that came from ``before``'s block, that no setting
    wrote, and that the new method / dataset does not take. Unknown new names are left to :func:`from_dict`."""
    for block, (sub, what, kind) in _SWITCHES.items():
        old_block, new_block = before.get(block), after.get(block)
        if not isinstance(old_block, dict) or not isinstance(new_block, dict):
            continue
        old_name, new_name = old_block.get("name"), new_block.get("name")
        if not isinstance(new_name, str) or old_name == new_name:
            continue
        switch = next((how for path, _, how in settings if list(path) == [block, "name"]), None)
        if switch is None or any(list(path) in ([block], [block, *sub]) for path, _, _ in settings):
            continue  # the block (or its options) was replaced as a whole: nothing was carried over
        old_keys, new_keys = _sub_block(old_block, sub), _sub_block(new_block, sub)
        written = {path[len(sub) + 1] for path, _, _ in settings
                   if len(path) > len(sub) + 1 and list(path[: len(sub) + 1]) == [block, *sub]}
        try:
            allowed = _allowed_keys(block, new_name)
        except (KeyError, ValueError):
            continue
        foreign = sorted(k for k in new_keys if k in old_keys and k not in written and k not in allowed
                         and k != "name")
        if foreign:
            kept = {k: v for k, v in new_keys.items() if k in allowed and k != "name"}
            raise ConfigError(f"{switch} left {what} of the config's {kind} {old_name} that {new_name} does not "
                              f"take: {foreign}; replace the whole block instead: "
                              f"{_block_example(block, new_name, new_block, kept)}")


def _sub_block(block: dict, sub: tuple[str, ...]) -> dict:
    for p in sub:
        block = block.get(p) if isinstance(block, dict) else None
    return block if isinstance(block, dict) else {}


def _allowed_keys(block: str, name: str) -> set[str]:
    """The method's hparams keys or the dataset's options; KeyError / ValueError for an unknown name."""
    if block == "method":
        if name not in all_method_names():
            raise KeyError(name)
        return {f.name for f in dataclasses.fields(hparams_cls_of(name))}
    from emtdamp.data.registry import loader_options

    return set(loader_options(name))


def _flow(value: Any) -> str:
    """``value`` as a YAML flow scalar / collection (as written inside an override's braces)."""
    return yaml.safe_dump([value], default_flow_style=True, width=10**6).strip()[1:-1]


def _block_example(block: str, name: str, new_block: dict, kept: dict) -> str:
    """The whole-block override for ``name`` that keeps the still valid keys ``kept``, quoted for a shell:
    ``"method={name: adam}" (add adam's keys inside the braces, e.g. ...)`` or
    ``"data={name: npz, seed: 3, options: {path: ..., task: classification}}"``."""
    if block == "method":
        items = "".join(f", {k}: {_flow(v)}" for k, v in kept.items())
        text = f'"method={{name: {name}{items}}}"'
        if not kept:
            fields = [f for f in dataclasses.fields(hparams_cls_of(name)) if f.default is not dataclasses.MISSING]
            if fields:
                ex = _flow(fields[0].default) if fields[0].default not in (0, 0.0, "", None) else "..."
                text += (f" (add {name}'s own keys inside the braces, e.g. "
                         f'"method={{name: {name}, {fields[0].name}: {ex}}}")')
        return text
    from emtdamp.data.registry import loader_options

    opts = {k: v for k, v in kept.items() if k != "path"}
    items = (["path: ..."] if "path" in loader_options(name) else []) + [f"{k}: {_flow(v)}" for k, v in opts.items()]
    seed = f", seed: {_flow(new_block['seed'])}" if "seed" in new_block else ""
    options = f", options: {{{', '.join(items)}}}" if items else ""
    return f'"data={{name: {name}{seed}{options}}}"'


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping with blocks {list(_BLOCKS)}, "
                          f"got {type(raw).__name__}")
    return raw or {}


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read ``path``, apply ``key.path=value`` overrides, validate."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    return from_dict(raw, name=Path(path).stem)


def to_dict(cfg: Config) -> dict:
    """The resolved config as plain YAML-able data (method hparams flattened into ``method``)."""
    def plain(x):
        if dataclasses.is_dataclass(x):
            return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, (tuple, list)):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x

    out = {"data": plain(cfg.data), "model": plain(cfg.model),
           "method": {"name": cfg.method.name, **plain(cfg.method.hparams)},
           "train": plain(cfg.train), "output": plain(cfg.output)}
    if cfg.sweep is not None:
        out["sweep"] = plain(cfg.sweep)
    return out


def _short(v: Any) -> str:
    """Compact label for a swept value: a whole block shows as ``name(key=value,...)``."""
    if isinstance(v, dict):
        rest = ",".join(f"{k}={_short(x)}" for k, x in v.items() if k != "name")
        return f"{v.get('name', '')}({rest})" if "name" in v else "{" + rest + "}"
    if isinstance(v, list):
        return "[" + ",".join(_short(x) for x in v) + "]"
    return str(v)


def expand_sweep(raw: dict, name: str = "config") -> list[tuple[str, Config]]:
    """Expand a raw config's ``sweep:`` block into ``(run_label, Config)`` pairs (grid x seeds).

    Without a sweep block, the single config. Each expanded config has ``sweep`` removed; the label
    names the varied values, e.g. ``method.name=adam,train.seed=1``. ``sweep.vmap`` does not change
    the expansion (``emtdamp sweep`` reads it to group the runs, see :func:`emtdamp.runs.vmap_groups`).
    """
    sweep = raw.get("sweep")
    base = {k: v for k, v in raw.items() if k != "sweep"}
    if sweep is None:
        return [(name, from_dict(base, name))]
    sw = build_dataclass(SweepConfig, sweep, "sweep")
    from_dict({**base, "sweep": sweep}, name)  # validates the sweep block itself
    keys = list(sw.grid)
    combos = list(itertools.product(*(sw.grid[k] for k in keys))) if keys else [()]
    seeds = list(sw.seeds) or [None]
    runs = []
    for combo in combos:
        for seed in seeds:
            r = base
            label = []
            for k, v in zip(keys, combo, strict=True):
                r = set_path(r, k.split("."), v)
                label.append(f"{k}={_short(v)}")
            if seed is not None:
                r = set_path(r, ["train", "seed"], seed)
                label.append(f"train.seed={seed}")
            runs.append((",".join(label) or name, from_dict(r, name)))
    return runs
