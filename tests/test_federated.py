"""Federated runner: vmapped clients vs a Python loop, padding, aggregation invariances, sharding."""

import dataclasses
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emtdamp.data import load
from emtdamp.data.partition import iid
from emtdamp.loops.federated import make_round_fn, python_loop_round
from emtdamp.methods import ModelSpec
from emtdamp.methods.federated import local_batches, weighted_mean
from emtdamp.methods.registry import get_fed_method


def _setup(n_clients=4, name="fedavg", **hp):
    data = load("boston")
    fm = get_fed_method(name)
    hps = fm.hparams_cls(n_clients=n_clients, partition="iid", **hp)
    algo = fm.build(ModelSpec((8,)), data.spec, hps, 16)
    server = algo.init(jax.random.PRNGKey(0))
    cd = iid(data.x_train, data.y_train, n_clients, seed=0)
    return algo, server, cd


def _leaves_close(a, b, rtol=1e-5, atol=1e-6):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


def test_local_batches_put_real_rows_first_independent_of_padding():
    key = jax.random.PRNGKey(1)
    m1 = jnp.r_[jnp.ones(10), jnp.zeros(3)]
    m2 = jnp.r_[jnp.ones(10), jnp.zeros(20)]
    i1, w1 = local_batches(key, m1, 4)
    i2, w2 = local_batches(key, m2, 4)
    assert float(w1.sum()) == 10 == float(w2.sum())
    real = lambda i, w: np.asarray(i)[:3][np.asarray(w)[:3] > 0]
    np.testing.assert_array_equal(real(i1, w1), real(i2, w2))
    assert float(w2[3:].sum()) == 0  # batches of padding only come last


def test_vmapped_round_matches_python_loop_over_clients():
    algo, server, cd = _setup()
    X, Y, M, C = map(jnp.asarray, (cd.x, cd.y, cd.mask, cd.counts))
    key = jax.random.PRNGKey(7)
    new, sel = make_round_fn(algo, 4, devices=jax.devices()[:1])(server, key, X, Y, M, C)
    ref = python_loop_round(algo, server, key, X, Y, M, C, np.asarray(sel))
    _leaves_close(new, ref)


def test_client_sampling_selects_distinct_clients_and_aggregates_only_them():
    algo, server, cd = _setup(n_clients=5)
    X, Y, M, C = map(jnp.asarray, (cd.x, cd.y, cd.mask, cd.counts))
    rf = make_round_fn(algo, 2, devices=jax.devices()[:1])
    seen = set()
    for r in range(6):
        key = jax.random.PRNGKey(100 + r)
        new, sel = rf(server, key, X, Y, M, C)
        sel = np.asarray(sel)
        assert len(sel) == 2 and len(set(sel.tolist())) == 2 and sel.max() < 5
        seen.update(sel.tolist())
        _leaves_close(new, python_loop_round(algo, server, key, X, Y, M, C, sel))
    assert len(seen) > 2  # different rounds draw different clients


def test_padding_rows_change_nothing_in_a_client_update():
    algo, server, cd = _setup()
    x, y, m = cd.x[0], cd.y[0], cd.mask[0]
    pad = 37
    xp = np.concatenate([x, 9 * np.ones((pad, x.shape[1]), x.dtype)])
    yp = np.concatenate([y, 9 * np.ones((pad, 1), y.dtype)])
    mp = np.concatenate([m, np.zeros(pad, m.dtype)])
    key = jax.random.PRNGKey(3)
    a = algo.client_update(server, jnp.asarray(x), jnp.asarray(y), jnp.asarray(m), key)
    b = algo.client_update(server, jnp.asarray(xp), jnp.asarray(yp), jnp.asarray(mp), key)
    _leaves_close(a, b)


def test_aggregation_identical_posteriors_and_order_invariance():
    algo, server, cd = _setup()
    k = 5
    same = jax.tree_util.tree_map(lambda a: jnp.stack([a] * k), server)
    _leaves_close(algo.aggregate(server, same, jnp.arange(1.0, k + 1)), server)
    msgs = jax.tree_util.tree_map(
        lambda a: jnp.stack([a + 0.1 * i for i in range(k)]), server)
    w = jnp.asarray([3.0, 1.0, 4.0, 1.0, 5.0])
    perm = jnp.asarray([4, 2, 0, 3, 1])
    _leaves_close(algo.aggregate(server, msgs, w),
                  algo.aggregate(server, jax.tree_util.tree_map(lambda a: a[perm], msgs), w[perm]))
    wm = weighted_mean({"a": jnp.asarray([[1.0], [3.0]])}, jnp.asarray([1.0, 3.0]))
    np.testing.assert_allclose(wm["a"], [2.5])


def test_sharded_round_equals_single_device_round():
    """Four simulated CPU devices (XLA flag, fresh process): shard_map path == single-device path."""
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from emtdamp.data import load
        from emtdamp.data.partition import iid
        from emtdamp.methods.registry import get_fed_method
        from emtdamp.loops.federated import make_round_fn
        from emtdamp.methods import ModelSpec
        assert len(jax.devices()) == 4, jax.devices()
        data = load("boston")
        for name in ("fedavg", "emtdamp_fed"):
            fm = get_fed_method(name)
            hp = fm.hparams_cls(n_clients=6, partition="iid")
            algo = fm.build(ModelSpec((8,)), data.spec, hp, 16)
            server = algo.init(jax.random.PRNGKey(0))
            cd = iid(data.x_train, data.y_train, 6, seed=0)
            args = [jnp.asarray(a) for a in (cd.x, cd.y, cd.mask, cd.counts)]
            key = jax.random.PRNGKey(2)
            one, _ = make_round_fn(algo, 6, devices=jax.devices()[:1])(server, key, *args)
            four, _ = make_round_fn(algo, 6, devices=jax.devices())(server, key, *args)
            for u, v in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(four)):
                np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-4, atol=1e-6)
        print("SHARDED_OK")
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "SHARDED_OK" in out.stdout, out.stderr[-3000:]


# ---------------------------------------------------------------- EM-TDAMP federated (emtdamp_fed)

def test_emtdamp_fed_one_client_round_equals_a_centralized_tdamp_pass(x64):
    """K = 1 holding all data: the server posterior after one round is the centralized TDAMP pass's
    (same minibatch order, v held fixed during the pass), and the server v is the closed form on the
    pass's summed z_L statistics."""
    from emtdamp import tdamp
    from emtdamp.methods.emtdamp_method import tdamp_hparams
    from emtdamp.tdamp import em

    data = load("boston")
    fm = get_fed_method("emtdamp_fed")
    hp = fm.hparams_cls(n_clients=1, partition="iid", sigma0_sq=0.01)
    algo = fm.build(ModelSpec((16,)), data.spec, hp, 32)
    server = algo.init(jax.random.PRNGKey(0))
    cd = iid(data.x_train.astype(np.float64), data.y_train.astype(np.float64), 1, seed=0)
    X, Y, M, C = map(jnp.asarray, (cd.x, cd.y, cd.mask, cd.counts))
    key = jax.random.PRNGKey(4)
    new, sel = make_round_fn(algo, 1, devices=jax.devices()[:1])(server, key, X, Y, M, C)
    # the same pass, centralized: identical minibatch order (the client's local key)
    k_loc = jax.random.split(jax.random.split(key)[1], 1)[0]
    e_key = jax.random.split(k_loc, 1)[0]
    idx, w = local_batches(e_key, M[0], 32)
    local = dataclasses.replace(tdamp_hparams(hp, "regression", "float64"), v_update="fixed", rho_mode="group")
    one_step = jax.jit(lambda s, xb, yb, wb: em.m_step(tdamp.step(s, xb, yb, local, wb)[0], local))
    st = server
    for i, wb in zip(np.asarray(idx), np.asarray(w), strict=True):
        if wb.sum() > 0:
            st = one_step(st, X[0][i], Y[0][i], jnp.asarray(wb))
    for a, b in zip(new.layers, st.layers, strict=True):
        np.testing.assert_allclose(a.mu0, b.mu0, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(a.s0, b.s0, rtol=1e-10)
        np.testing.assert_allclose(a.b0, b.b0, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(a.vb0, b.vb0, rtol=1e-10)
        np.testing.assert_allclose(a.rho, em.rho_group(b.rho, b.mask, hp.rho_clip), rtol=1e-10)
    np.testing.assert_allclose(new.v, st.v_stat_acc / st.v_count_acc, rtol=1e-10)


def _fed_setup(rule, n=3):
    data = load("boston")
    fm = get_fed_method("emtdamp_fed")
    hp = fm.hparams_cls(n_clients=n, partition="iid", aggregation=rule, sigma0_sq=0.01)
    algo = fm.build(ModelSpec((8,)), data.spec, hp, 32)
    server = algo.init(jax.random.PRNGKey(0))
    cd = iid(data.x_train, data.y_train, n, seed=0)
    return algo, server, cd


def test_emtdamp_fed_aggregation_of_identical_posteriors_and_client_order():
    algo, server, cd = _fed_setup("geometric")
    local = jax.jit(algo.client_update)(server, *map(jnp.asarray, (cd.x[0], cd.y[0], cd.mask[0])),
                                        jax.random.PRNGKey(1))
    same = jax.tree_util.tree_map(lambda a: jnp.stack([a] * 4), local)
    agg = algo.aggregate(server, same, jnp.asarray([10.0, 20.0, 30.0, 40.0]))
    for a, b in zip(agg.layers, local.layers, strict=True):
        np.testing.assert_allclose(a.mu0, b.mu0, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.s0, b.s0, rtol=1e-5)
        np.testing.assert_allclose(a.rho, b.rho, rtol=1e-5)
    for rule in ("geometric", "product", "tempered"):
        algo, server, cd = _fed_setup(rule)
        keys = jax.random.split(jax.random.PRNGKey(2), 3)
        upd = jax.jit(algo.client_update)
        msgs = [upd(server, *map(jnp.asarray, (cd.x[k], cd.y[k], cd.mask[k])), keys[k]) for k in range(3)]
        w = jnp.asarray(cd.counts, jnp.float32)
        a = algo.aggregate(server, jax.tree_util.tree_map(lambda *z: jnp.stack(z), *msgs), w)
        perm = np.array([2, 0, 1])
        b = algo.aggregate(server, jax.tree_util.tree_map(lambda *z: jnp.stack(z), *[msgs[p] for p in perm]), w[perm])
        _leaves_close(a, b, rtol=1e-5, atol=1e-6)


def test_aggregation_rules_against_numpy_natural_parameters():
    from emtdamp.methods.emtdamp_fed import aggregate_gaussian

    rng = np.random.default_rng(0)
    m, v = rng.normal(size=(3, 5)), rng.uniform(0.5, 2.0, size=(3, 5))
    pm, pv = rng.normal(size=5), rng.uniform(3.0, 4.0, size=5)
    w = np.array([1.0, 2.0, 5.0])
    gm, gv = aggregate_gaussian(jnp.asarray(m), jnp.asarray(v), jnp.asarray(pm), jnp.asarray(pv), jnp.asarray(w),
                                "geometric")
    c = w / w.sum()
    lam = (c[:, None] / v).sum(0)
    np.testing.assert_allclose(gv, 1 / lam, rtol=1e-5)
    np.testing.assert_allclose(gm, (c[:, None] * m / v).sum(0) / lam, rtol=1e-5)
    xm, xv = aggregate_gaussian(jnp.asarray(m), jnp.asarray(v), jnp.asarray(pm), jnp.asarray(pv), jnp.asarray(w),
                                "product")
    lam = (1 / v).sum(0) - 2 / pv  # product of 3 likelihood-times-prior terms over the prior counted twice
    np.testing.assert_allclose(xv, 1 / lam, rtol=1e-5)
    np.testing.assert_allclose(xm, ((m / v).sum(0) - 2 * pm / pv) / lam, rtol=1e-5)
    # tempered: prior + step * K * weighted mean of the local natural-parameter updates
    for step, ref in ((1 / 3, "geometric"), (0.3, None)):
        tm, tv = aggregate_gaussian(jnp.asarray(m), jnp.asarray(v), jnp.asarray(pm), jnp.asarray(pv),
                                    jnp.asarray(w), "tempered", step)
        lam = 1 / pv + step * 3 * (c[:, None] * (1 / v - 1 / pv)).sum(0)
        eta = pm / pv + step * 3 * (c[:, None] * (m / v - pm / pv)).sum(0)
        np.testing.assert_allclose(tv, 1 / lam, rtol=1e-5)
        np.testing.assert_allclose(tm, eta / lam, rtol=1e-5)
        if ref == "geometric":  # step = 1/K with the weights: same as the weighted geometric mean
            np.testing.assert_allclose(tv, gv, rtol=1e-5)
            np.testing.assert_allclose(tm, gm, rtol=1e-5)


def test_emtdamp_fed_vmapped_round_matches_loop_and_padding_changes_nothing():
    algo, server, cd = _fed_setup("geometric")
    X, Y, M, C = map(jnp.asarray, (cd.x, cd.y, cd.mask, cd.counts))
    key = jax.random.PRNGKey(9)
    new, sel = make_round_fn(algo, 3, devices=jax.devices()[:1])(server, key, X, Y, M, C)
    _leaves_close(new, python_loop_round(algo, server, key, X, Y, M, C, np.asarray(sel)), rtol=1e-4, atol=1e-6)
    x, y, m = cd.x[1], cd.y[1], cd.mask[1]
    xp = np.concatenate([x, 7 * np.ones((20, x.shape[1]), x.dtype)])
    yp = np.concatenate([y, 7 * np.ones((20, 1), y.dtype)])
    mp = np.concatenate([m, np.zeros(20, m.dtype)])
    upd = jax.jit(algo.client_update)
    a = upd(server, jnp.asarray(x), jnp.asarray(y), jnp.asarray(m), key)
    b = upd(server, jnp.asarray(xp), jnp.asarray(yp), jnp.asarray(mp), key)
    _leaves_close(a, b, rtol=1e-5, atol=1e-6)


def test_emtdamp_fed_refuses_evidence_once():
    """Clients restart from the broadcast posterior each round: "data seen once" across epochs has no meaning."""
    fm = get_fed_method("emtdamp_fed")
    data = load("boston")
    with pytest.raises(ValueError, match="evidence=repeat"):
        fm.build(ModelSpec((8,)), data.spec,
                 fm.hparams_cls(n_clients=2, partition="iid", evidence="once"), 32)
