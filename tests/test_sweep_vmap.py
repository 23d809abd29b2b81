"""Data splits x train seeds of a sweep as one vmapped program (emtdamp.loops.centralised.train_group,
emtdamp.runs.run_group, ``sweep.vmap`` in ``emtdamp sweep``).

The reference for every vmapped run is the sequential ``train`` of that run on its own dataset:
same init key, same per-epoch keys, same padded minibatches, so the two agree up to float32
reassociation (vmap batches the matmuls differently). Observed differences are ~2e-7 on parameters
of order 1 after tens of SG-MCMC steps; the tolerances below (atol 2e-5 on parameters, rel 2e-5 on
test metrics) leave two orders of margin and are far below the differences between runs (O(0.1)).
"""

import csv
import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from emtdamp import cli
from emtdamp import config as C
from emtdamp.data import load
from emtdamp.data import registry as data_registry
from emtdamp.data.base import make_regression
from emtdamp.loops.centralised import NotVmappable, train, train_group
from emtdamp.methods import ModelSpec, get_method
from emtdamp.methods import registry as method_registry
from emtdamp.runs import SUMMARY_KEYS, load_checkpoint, run_group, vmap_groups

_ROOT = Path(__file__).resolve().parents[1]
PARAM_ATOL = 2e-5
METRIC_RTOL = 2e-5


def _boston_sa_hparams():
    """The Boston UCI settings of configs/sghmc_sa_boston_uci.yaml for sghmc_sa (burn-in shortened so
    that the short test runs collect posterior samples too)."""
    raw = C.read_yaml(_ROOT / "configs" / "sghmc_sa_boston_uci.yaml")
    cfg = C.from_dict({k: v for k, v in raw.items() if k != "sweep"}, "b")
    return dataclasses.replace(cfg.method.hparams, burn_in=50, thin=5, n_samples=10)


def _assert_same_run(group_run, one, what):
    for u, v in zip(jax.tree_util.tree_leaves(group_run.state), jax.tree_util.tree_leaves(one.state), strict=True):
        np.testing.assert_allclose(np.asarray(u, np.float64), np.asarray(v, np.float64), rtol=0, atol=PARAM_ATOL,
                                   err_msg=what)
    assert set(group_run.test) == set(one.test)
    for k in one.test:
        assert group_run.test[k] == pytest.approx(one.test[k], rel=METRIC_RTOL, abs=1e-9), (what, k)
    assert [h["epoch"] for h in group_run.history] == [h["epoch"] for h in one.history]
    assert [("test" in h) for h in group_run.history] == [("test" in h) for h in one.history]
    np.testing.assert_allclose([h["train_loss"] for h in group_run.history], [h["train_loss"] for h in one.history],
                               rtol=METRIC_RTOL, err_msg=what)
    assert group_run.sparsity == one.sparsity


def test_group_of_splits_and_seeds_equals_sequential_regression():
    """(a) 2 Boston 90/10 splits x 2 train seeds of SGHMC-SA in one program == train() per run."""
    m = get_method("sghmc_sa")
    hp = _boston_sa_hparams()
    model = ModelSpec((16,))
    combos = [(d, s) for d in (0, 1) for s in (0, 7)]
    data = {d: load("boston", seed=d, test_fraction=0.1) for d in (0, 1)}
    g = train_group(m, hp, model, [data[d] for d, _ in combos], seeds=[s for _, s in combos], epochs=12,
                    batch_size=50, eval_every=5)
    assert jax.tree_util.tree_leaves(g.states)[0].shape[0] == 4 and len(g.runs) == 4
    for (d, s), run in zip(combos, g.runs, strict=True):
        one = train(m, hp, model, data[d], epochs=12, batch_size=50, seed=s, eval_every=5, progress=False)
        _assert_same_run(run, one, f"data.seed={d} train.seed={s}")
    rmse = [r.test["rmse"] for r in g.runs]
    assert len(set(np.round(rmse, 6))) == 4  # every run is its own (split, seed): no run is another's copy


def test_group_classification_equals_sequential():
    """(b) classification (generated em_mcmc_ex3, int labels) with 2 splits x 1 seed, adam."""
    m = get_method("adam")
    hp = m.hparams_cls(learning_rate=0.01)
    model = ModelSpec((8,))
    data = [load("em_mcmc_ex3", seed=d, n_train=150, n_test=60, p=10) for d in (0, 1)]
    g = train_group(m, hp, model, data, seeds=[3, 3], epochs=4, batch_size=32, eval_every=2)
    for d, run in zip(data, g.runs, strict=True):
        one = train(m, hp, model, d, epochs=4, batch_size=32, seed=3, eval_every=2, progress=False)
        _assert_same_run(run, one, "classification")
        assert set(run.test) == {"accuracy", "nll", "ece"}
    assert g.runs[0].test != g.runs[1].test


SWEEP_YAML = """\
data: {name: boston, options: {test_fraction: 0.1}}
model: {hidden: [8]}
method: {name: adam, learning_rate: 0.01}
train: {epochs: 3, batch_size: 64, eval_every: 2, progress: false}
output: {checkpoint: true, checkpoint_every: 2, plots: true}
sweep: {grid: {data.seed: [0, 1]}, seeds: [0, 4], vmap: true}
"""


def test_cli_sweep_vmap_writes_complete_run_folders_equal_to_sequential(tmp_path, capsys):
    """(c) `emtdamp sweep` with sweep.vmap=true: 2 splits x 2 seeds = 4 runs in one vmapped group, one complete
    folder and one sweep.csv row per run, numbers equal to the same sweep with sweep.vmap=false."""
    cfg = tmp_path / "sw.yaml"
    cfg.write_text(SWEEP_YAML)
    assert cli.main(["sweep", str(cfg), "--out", str(tmp_path / "v")]) == 0
    assert capsys.readouterr().err.count("4 runs as one vmapped program") == 1
    assert cli.main(["sweep", str(cfg), "sweep.vmap=false", "output.plots=false", "--out", str(tmp_path / "s")]) == 0
    assert "vmapped" not in capsys.readouterr().err
    v = list(csv.DictReader(open(tmp_path / "v" / "sweep.csv")))
    s = list(csv.DictReader(open(tmp_path / "s" / "sweep.csv")))
    assert len(v) == len(s) == 4 and list(v[0]) == list(s[0])
    for a, b in zip(v, s, strict=True):
        assert a["run"] == b["run"] and a["method"] == b["method"] and a["seed"] == b["seed"]
        for k in a:
            if k.startswith("test_"):
                assert float(a[k]) == pytest.approx(float(b[k]), rel=METRIC_RTOL), (a["run"], k)
    # folders named after what the sweep varies (both keys end in "seed", so they keep their block)
    assert [r["folder"] for r in v] == [r["folder"] for r in s] == [
        "data.seed=0,train.seed=0", "data.seed=0,train.seed=4", "data.seed=1,train.seed=0", "data.seed=1,train.seed=4"]
    for i in range(4):
        rv, rs = tmp_path / "v" / v[i]["folder"], tmp_path / "s" / s[i]["folder"]
        for f in ("config.yaml", "data.json", "metrics.jsonl", "summary.json", "checkpoint.npz", "progress.json",
                  "curves.png"):
            assert (rv / f).exists(), (i, f)
        assert (rv / "config.yaml").read_text() == (rs / "config.yaml").read_text().replace("plots: false",
                                                                                         "plots: true")
        sv, ss = json.loads((rv / "summary.json").read_text()), json.loads((rs / "summary.json").read_text())
        assert set(SUMMARY_KEYS) <= set(sv) and set(ss) | {"vmapped_group", "group_time"} == set(sv)
        assert sv["vmapped_group"] == 4 and "vmapped_group" not in ss
        assert set(sv["time"]) == set(ss["time"]) and sv["data_seed"] == ss["data_seed"]
        assert sv["sparsity"] == ss["sparsity"] and sv["layer_sizes"] == ss["layer_sizes"]
        mv = [json.loads(x) for x in (rv / "metrics.jsonl").read_text().splitlines()]
        ms = [json.loads(x) for x in (rs / "metrics.jsonl").read_text().splitlines()]
        assert [x["epoch"] for x in mv] == [1, 2, 3] and [("test" in x) for x in mv] == [("test" in x) for x in ms]
        assert mv[-1]["test"]["rmse"] == pytest.approx(ms[-1]["test"]["rmse"], rel=METRIC_RTOL)
        assert json.loads((rv / "progress.json").read_text()) == {"epoch": 3}
        cfg_i = C.from_dict(C.read_yaml(rv / "config.yaml"))
        like = get_method(cfg_i.method.name).build(cfg_i.model.spec(), load("boston", seed=cfg_i.data.seed).spec,
                                                   cfg_i.method.hparams).init(jax.random.PRNGKey(0))
        for a, b in zip(jax.tree_util.tree_leaves(load_checkpoint(rv / "checkpoint.npz", like)),
                        jax.tree_util.tree_leaves(load_checkpoint(rs / "checkpoint.npz", like)), strict=True):
            np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), atol=PARAM_ATOL)


def test_vmap_groups_split_on_everything_but_the_seeds():
    """Runs are grouped iff they differ only in data.seed / train.seed; groups keep first-appearance order."""
    raw = C.read_yaml(_ROOT / "configs" / "sghmc_sa_boston.yaml")
    raw["sweep"] = {"grid": {"method.name": ["sghmc", "sgld"], "data.seed": [0, 1, 2],
                             "method.learning_rate": [1.0e-6, 2.0e-6]}, "seeds": [0, 1], "vmap": True}
    cfgs = [c for _, c in C.expand_sweep(raw, "g")]
    groups = vmap_groups(cfgs)
    assert len(cfgs) == 24 and len(groups) == 4 and all(len(g) == 6 for g in groups)
    assert sorted(i for g in groups for i in g) == list(range(24)) and [g[0] for g in groups] == [0, 2, 12, 14]
    for g in groups:
        assert len({(cfgs[i].method.name, cfgs[i].method.hparams) for i in g}) == 1
        assert len({(cfgs[i].data.seed, cfgs[i].train.seed) for i in g}) == 6


@pytest.fixture
def ragged_dataset(monkeypatch):
    """A registered regression dataset whose size depends on its seed (n_train = 40 + 10 * seed)."""

    def ragged(seed: int = 0):
        rng = np.random.default_rng(seed)
        n = 50 + 10 * seed
        x = rng.normal(size=(n, 3))
        y = x @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=n)
        return make_regression("_ragged", x[:-10], y[:-10], x[-10:], y[-10:])

    monkeypatch.setitem(data_registry._LOADERS, "_ragged", ragged)
    return "_ragged"


def test_fallback_when_datasets_differ_in_shape(tmp_path, capsys, ragged_dataset):
    """(d) a group whose splits have different n_train cannot be stacked: sequential runs, one note."""
    cfg = tmp_path / "r.yaml"
    cfg.write_text(f"data: {{name: {ragged_dataset}}}\nmodel: {{hidden: [4]}}\nmethod: {{name: adam}}\n"
                   "train: {epochs: 2, batch_size: 16, progress: false}\noutput: {plots: false}\n"
                   "sweep: {grid: {data.seed: [0, 1]}, vmap: true}\n")
    with pytest.raises(NotVmappable, match="differ in shape"):
        train_group(get_method("adam"), get_method("adam").hparams_cls(), ModelSpec((4,)),
                    [load(ragged_dataset, seed=0), load(ragged_dataset, seed=1)], seeds=[0, 0], epochs=1,
                    batch_size=16)
    assert cli.main(["sweep", str(cfg), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    notes = [ln for ln in err.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and "not vmapped" in notes[0] and "differ in shape" in notes[0], err
    for folder, n_train in (("seed=0", 40), ("seed=1", 50)):   # sweeps name folders after what they vary
        s = json.loads((tmp_path / "out" / folder / "summary.json").read_text())
        assert s["n_train"] == n_train and "vmapped_group" not in s and np.isfinite(s["test"]["rmse"])
    assert len(list(csv.DictReader(open(tmp_path / "out" / "sweep.csv")))) == 2


def test_fallback_when_the_method_does_not_vmap(tmp_path, capsys, monkeypatch):
    """(d') a method whose init needs concrete values (float() of a key) raises NotVmappable before any
    epoch; run_group then trains run by run with a note."""
    adam = get_method("adam")

    def concrete_build(model, spec, hp):
        algo = adam.build(model, spec, hp)

        def concrete_init(key):
            float(jax.random.uniform(key))  # a Python float from a traced value: fails under vmap
            return algo.init(key)

        return dataclasses.replace(algo, init=concrete_init)

    monkeypatch.setitem(method_registry._CENTRAL, "_novmap",
                        lambda: dataclasses.replace(adam, name="_novmap", build=concrete_build))
    cfgs = [C.from_dict({"data": {"name": "boston", "seed": d}, "model": {"hidden": [4]},
                         "method": {"name": "_novmap"}, "output": {"plots": False, "checkpoint": False},
                         "train": {"epochs": 2, "batch_size": 64, "progress": False}}, "nv") for d in (0, 1)]
    out = run_group(cfgs, [tmp_path / "a", tmp_path / "b"])
    note = capsys.readouterr().err
    assert "not vmapped: _novmap does not vmap" in note and "running them one by one" in note
    assert [o[1]["data_seed"] for o in out] == [0, 1] and all("vmapped_group" not in o[1] for o in out)
    assert (tmp_path / "b" / "summary.json").exists()


@pytest.mark.parametrize("value, message", [
    ("maybe", "sweep.vmap: expected true/false, got 'maybe'"),
    ("1", "sweep.vmap: expected true/false, got 1"),
])
def test_invalid_sweep_vmap_is_rejected(tmp_path, capsys, value, message):
    """(e) sweep.vmap takes true/false only (from YAML and from overrides); typos of the key are unknown keys."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(SWEEP_YAML.replace("vmap: true", f"vmap: {value}"))
    assert cli.main(["sweep", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    ok = tmp_path / "ok.yaml"
    ok.write_text(SWEEP_YAML)
    assert cli.main(["sweep", str(ok), f"sweep.vmap={value}", "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "run000").exists()
    with pytest.raises(C.ConfigError, match=r"sweep: unknown key\(s\) \['vmapp'\]; allowed keys: .*'vmap'"):
        C.expand_sweep(C.apply_overrides(C.read_yaml(ok), ["sweep.vmapp=true"]))
    assert C.from_dict(C.read_yaml(ok)).sweep.vmap is True
    assert C.from_dict(C.apply_overrides(C.read_yaml(ok), ["sweep.vmap=false"])).sweep.vmap is False


@pytest.mark.slow
def test_boston_uci_protocol_vmapped(tmp_path):
    """configs/sghmc_sa_boston_uci.yaml through `emtdamp sweep` (sweep.vmap: true), 6 methods x 10 random 90/10
    splits (~1-2 min on 2 cores): every RMSE is finite and below 4, and the mean RMSE of A-SGHMC-SA over the
    10 splits is below 3.0 $1000 (spec A.5: 2.692 ± 0.120; the sd over splits here is ~0.5, so the mean of 10
    has a standard error ~0.16 and 3.0 is ~2 standard errors above our ~2.42)."""
    assert cli.main(["sweep", str(_ROOT / "configs" / "sghmc_sa_boston_uci.yaml"), "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    rmse: dict[str, list[float]] = {}
    for r in rows:
        rmse.setdefault(r["method"], []).append(float(r["test_rmse"]))
    assert set(rmse) == {"sghmc", "a_sghmc", "sghmc_em", "a_sghmc_em", "sghmc_sa", "a_sghmc_sa"}
    for name, v in rmse.items():
        assert len(v) == 10 and np.all(np.isfinite(v)) and max(v) < 4.0, (name, v)
    assert np.mean(rmse["a_sghmc_sa"]) < 3.0
    s = json.loads((tmp_path / "method=a_sghmc_sa,seed=0" / "summary.json").read_text())
    assert s["vmapped_group"] == 10 and s["method"] == "a_sghmc_sa" and s["n_train"] == 455 and s["n_test"] == 51
