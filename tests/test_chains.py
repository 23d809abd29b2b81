"""train.chains: K independent chains of a method in one vmapped program, predictive mixed
(emtdamp/methods/chains.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emtdamp import cli
from emtdamp import config as C
from emtdamp.data import load
from emtdamp.methods import Batch, ModelSpec, Predictive, get_method
from emtdamp.methods.chains import chain_mixture, chain_slice, scalar_sample_draws, with_chains
from emtdamp.nuts.diagnostics import split_rhat
from emtdamp.runs import run_config
from emtdamp.sgmcmc import samples as sg


def test_chain_mixture_is_the_law_of_total_variance():
    rng = np.random.default_rng(0)
    m, v = rng.normal(size=(3, 5, 2)), rng.uniform(0.1, 2.0, size=(3, 5, 2))
    out = chain_mixture(Predictive(mean=jnp.asarray(m), var=jnp.asarray(v)))
    # reference: moments of the equal-weight Gaussian mixture, element by element
    ref_mean = m.sum(0) / 3
    ref_var = (v + m**2).sum(0) / 3 - ref_mean**2
    np.testing.assert_allclose(out.mean, ref_mean, rtol=1e-5, atol=1e-6)  # float32
    np.testing.assert_allclose(out.var, ref_var, rtol=1e-5, atol=1e-6)
    p = rng.dirichlet(np.ones(4), size=(3, 5))
    np.testing.assert_allclose(chain_mixture(Predictive(probs=jnp.asarray(p))).probs, p.mean(0), rtol=1e-6)


@pytest.mark.parametrize("name", ["adam", "sghmc"])
def test_each_chain_equals_its_own_run(name):
    """Chain k of the vmapped ensemble is the method run alone from the k-th split key on the same batches."""
    data = load("boston")
    m = get_method(name)
    hp = m.hparams_cls()
    spec = ModelSpec((8,))
    k = 3
    wrapped = with_chains(m, k).build(spec, data.spec, hp)
    algo = m.build(spec, data.spec, hp)
    key = jax.random.PRNGKey(7)
    states = wrapped.init(key)
    singles = [algo.init(kk) for kk in jax.random.split(key, k)]
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    for b in range(4):
        batch = Batch(x[b * 32:(b + 1) * 32], y[b * 32:(b + 1) * 32], jnp.ones(32))
        states, metrics = wrapped.step(states, batch)
        outs = [algo.step(s, batch) for s in singles]
        singles = [o[0] for o in outs]
        np.testing.assert_allclose(metrics["loss"], np.mean([o[1]["loss"] for o in outs]), rtol=1e-5)
    for i, s in enumerate(singles):
        for u, v in zip(jax.tree_util.tree_leaves(chain_slice(states, i)), jax.tree_util.tree_leaves(s), strict=True):
            np.testing.assert_allclose(np.asarray(u, np.float64), np.asarray(v, np.float64), rtol=2e-5, atol=1e-6)
    xt = jnp.asarray(data.x_test)
    pred = wrapped.predict(states, xt)
    per = [algo.predict(s, xt) for s in singles]
    mu = np.stack([p.mean for p in per])
    np.testing.assert_allclose(pred.mean, mu.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred.var, np.stack([p.var for p in per]).mean(0) + mu.var(0), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("batch", [32, 512])
def test_training_epoch_gives_each_chain_its_own_minibatch_order(batch):
    """The loop's epoch of K chains: chain k is one chain's epoch on the order drawn from split(key, K)[k]
    (its rows in an order of its own), for EM-TDAMP (a fit per chain) on Boston's 455 rows in batches of 32.
    With one full batch (512 >= 455) every chain steps on the same batch, as the chain step does."""
    from emtdamp.loops.centralised import epoch_batches, make_epoch_fn

    data = load("boston")
    m = get_method("emtdamp")
    spec, k = ModelSpec((8,)), 3
    wrapped = with_chains(m, k).build(spec, data.spec, m.hparams_cls())
    algo = m.build(spec, data.spec, m.hparams_cls())
    key, ekey = jax.random.PRNGKey(7), jax.random.PRNGKey(11)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    states, loss = make_epoch_fn(wrapped, batch, jit=False)(wrapped.init(key), ekey, x, y)
    keys = jax.random.split(ekey, k) if batch < len(x) else [ekey] * k
    losses = []
    for i, (init_key, order_key) in enumerate(zip(jax.random.split(key, k), keys, strict=True)):
        st, n_seen, total = algo.init(init_key), 0, 0.0
        idx, w = epoch_batches(order_key, x.shape[0], batch)
        for ib, wb in zip(np.asarray(idx), np.asarray(w), strict=True):
            st, met = algo.step(st, Batch(x[ib], y[ib], jnp.asarray(wb, x.dtype)))
            total, n_seen = total + float(met["loss"]) * wb.sum(), n_seen + wb.sum()
        losses.append(total / n_seen)
        for u, v in zip(jax.tree_util.tree_leaves(chain_slice(states, i)), jax.tree_util.tree_leaves(st),
                        strict=True):
            np.testing.assert_allclose(np.asarray(u, np.float64), np.asarray(v, np.float64), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(loss), np.mean(losses), rtol=1e-4)
    if batch < len(x):   # the chains' first minibatches differ
        firsts = [np.asarray(epoch_batches(kk, x.shape[0], batch)[0][0]) for kk in keys]
        assert not np.array_equal(firsts[0], firsts[1])


def test_one_chain_is_the_method_itself():
    m = get_method("adam")
    assert with_chains(m, 1) is m
    with pytest.raises(ValueError, match="runs its own chains"):
        with_chains(get_method("nuts"), 2)


def _scalar_buffer(values, size):
    buf = sg.buffer_init(jnp.asarray(0.0), size)
    for i, v in enumerate(values, 1):
        buf = sg.buffer_update(buf, jnp.asarray(v), i)
    return buf


def test_scalar_draws_come_back_in_collection_order():
    """A ring buffer of 4 slots that collected 1..6 holds 3, 4, 5, 6, oldest first, for every chain."""
    bufs = [_scalar_buffer([1, 2, 3, 4, 5, 6], 4), _scalar_buffer([10, 20, 30, 40, 50, 60], 4)]
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *bufs)
    draws = scalar_sample_draws({"noise": stacked})
    np.testing.assert_array_equal(draws["['noise']"], [[3, 4, 5, 6], [30, 40, 50, 60]])


def test_diagnostics_rhat_flags_disagreeing_chains():
    """iid N(0, 1) draws in 4 chains give R-hat near 1; shifting one chain by 5 sd pushes it far above 1.05.

    Tolerance: for 4 x 200 iid draws the split R-hat's sd is about 0.005, so 1.05 is ~10 sd away."""
    rng = np.random.default_rng(1)
    good = rng.normal(size=(4, 200))
    bad = good + np.array([5.0, 0, 0, 0])[:, None]

    def state(draws):
        bufs = [_scalar_buffer(list(d), 200) for d in draws]
        return {"s2": jax.tree_util.tree_map(lambda *a: jnp.stack(a), *bufs)}

    m = get_method("sghmc")
    wrapped = with_chains(m, 4).build(ModelSpec((8,)), load("boston").spec, m.hparams_cls())
    ok, off = wrapped.diagnostics(state(good)), wrapped.diagnostics(state(bad))
    assert ok["chains"] == 4 and ok["samples_per_chain"] == 200
    np.testing.assert_allclose(ok["rhat"]["['s2']"], float(split_rhat(good[:, :, None]).max()), rtol=1e-9)
    assert ok["rhat"]["['s2']"] < 1.05 < off["rhat"]["['s2']"]


def test_config_refuses_chains_where_there_is_no_chain_axis():
    base = {"data": {"name": "boston"}, "model": {"hidden": [8]}}
    with pytest.raises(C.ConfigError, match="nuts runs its own chains; set method.chains=3"):
        C.from_dict({**base, "method": {"name": "nuts"}, "train": {"chains": 3, "batch_size": 512}})
    with pytest.raises(C.ConfigError, match="federated method emtdamp_fed has no chain axis"):
        C.from_dict({**base, "method": {"name": "emtdamp_fed"}, "train": {"chains": 2}})
    with pytest.raises(C.ConfigError, match="train.chains"):
        C.from_dict({**base, "method": {"name": "adam"}, "train": {"chains": 0}})


def test_run_folder_with_chains_predicts_what_it_reports(tmp_path, capsys):
    """A 2-chain SGHMC run (10 epochs x 8 batches: 30 kept draws, ring of 10): summary has the chain
    diagnostics, and `emtdamp predict` on the test split reproduces the run's own test RMSE from the
    checkpoint (the chain axis survives the round trip)."""
    cfg = C.from_dict({"data": {"name": "boston"}, "model": {"hidden": [8]},
                       "method": {"name": "sghmc", "burn_in": 20, "thin": 2, "n_samples": 10},
                       "train": {"epochs": 10, "batch_size": 64, "progress": False, "chains": 2},
                       "output": {"plots": False}}, "chains")
    run_dir, summary, res = run_config(cfg, tmp_path / "run")
    diag = summary["diagnostics"]
    assert diag["chains"] == 2 and diag["samples_per_chain"] == 10 and set(diag["rhat"]) == {"noise_samples"}
    assert cli.main(["predict", str(run_dir), "boston", "--out", str(tmp_path / "p.npz")]) == 0
    p = np.load(tmp_path / "p.npz")
    data = load("boston")
    rmse = float(np.sqrt(np.mean((p["mean"] - data.y_test * data.y_std - data.y_mean) ** 2)))
    np.testing.assert_allclose(rmse, summary["test"]["rmse"], rtol=1e-4)


def test_vmapped_sweep_group_of_chained_runs_equals_separate_runs(tmp_path):
    """Two splits x 2 chains as one vmapped group (vmap over runs of vmap over chains) give the same test
    metrics as the two runs trained one by one."""
    from emtdamp.runs import run_group

    def cfg(seed):
        return C.from_dict({"data": {"name": "boston", "seed": seed}, "model": {"hidden": [8]},
                            "method": {"name": "sghmc", "burn_in": 8, "thin": 2, "n_samples": 5},
                            "train": {"epochs": 3, "batch_size": 128, "progress": False, "chains": 2},
                            "output": {"plots": False, "checkpoint": False}}, f"s{seed}")

    group = run_group([cfg(0), cfg(1)], [tmp_path / "g0", tmp_path / "g1"])
    assert all(s.get("vmapped_group") == 2 for _, s, _ in group)
    for seed, (_, s, _) in zip([0, 1], group, strict=True):
        _, alone, _ = run_config(cfg(seed), tmp_path / f"a{seed}")
        assert s["diagnostics"]["chains"] == 2
        np.testing.assert_allclose(s["test"]["rmse"], alone["test"]["rmse"], rtol=1e-4)
