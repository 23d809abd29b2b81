"""Federated runner: vmapped clients vs a Python loop, padding, aggregation invariances, sharding."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

from emtdamp.data import load
from emtdamp.data.partition import iid
from emtdamp.federated import get_fed_method, local_batches, make_round_fn, python_loop_round, weighted_mean
from emtdamp.methods import ModelSpec


def _setup(n_clients=4, name="fedavg", **hp):
    data = load("boston")
    fm = get_fed_method(name)
    hps = fm.hparams_cls(n_clients=n_clients, partition="iid", **hp)
    server = fm.init(jax.random.PRNGKey(0), ModelSpec((8,)), data.spec, hps, 16)
    cd = iid(data.x_train, data.y_train, n_clients, seed=0)
    return fm, server, cd


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
    fm, server, cd = _setup()
    X, Y, M, C = map(jnp.asarray, (cd.x, cd.y, cd.mask, cd.counts))
    key = jax.random.PRNGKey(7)
    new, sel = make_round_fn(fm, 4, devices=jax.devices()[:1])(server, key, X, Y, M, C)
    ref = python_loop_round(fm, server, key, X, Y, M, C, np.asarray(sel))
    _leaves_close(new, ref)


def test_padding_rows_change_nothing_in_a_client_update():
    fm, server, cd = _setup()
    x, y, m = cd.x[0], cd.y[0], cd.mask[0]
    pad = 37
    xp = np.concatenate([x, 9 * np.ones((pad, x.shape[1]), x.dtype)])
    yp = np.concatenate([y, 9 * np.ones((pad, 1), y.dtype)])
    mp = np.concatenate([m, np.zeros(pad, m.dtype)])
    key = jax.random.PRNGKey(3)
    a = fm.client_update(server, jnp.asarray(x), jnp.asarray(y), jnp.asarray(m), key)
    b = fm.client_update(server, jnp.asarray(xp), jnp.asarray(yp), jnp.asarray(mp), key)
    _leaves_close(a, b)


def test_aggregation_identical_posteriors_and_order_invariance():
    fm, server, cd = _setup()
    k = 5
    same = jax.tree_util.tree_map(lambda a: jnp.stack([a] * k), server)
    _leaves_close(fm.aggregate(server, same, jnp.arange(1.0, k + 1)), server)
    msgs = jax.tree_util.tree_map(
        lambda a: jnp.stack([a + 0.1 * i for i in range(k)]), server)
    w = jnp.asarray([3.0, 1.0, 4.0, 1.0, 5.0])
    perm = jnp.asarray([4, 2, 0, 3, 1])
    _leaves_close(fm.aggregate(server, msgs, w),
                  fm.aggregate(server, jax.tree_util.tree_map(lambda a: a[perm], msgs), w[perm]))
    wm = weighted_mean({"a": jnp.asarray([[1.0], [3.0]])}, jnp.asarray([1.0, 3.0]))
    np.testing.assert_allclose(wm["a"], [2.5])


def test_sharded_round_equals_single_device_round():
    """Four simulated CPU devices (XLA flag, fresh process): shard_map path == single-device path."""
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from emtdamp.data import load
        from emtdamp.data.partition import iid
        from emtdamp.federated import get_fed_method, make_round_fn
        from emtdamp.methods import ModelSpec
        assert len(jax.devices()) == 4, jax.devices()
        data = load("boston")
        fm = get_fed_method("fedavg")
        hp = fm.hparams_cls(n_clients=6, partition="iid")
        server = fm.init(jax.random.PRNGKey(0), ModelSpec((8,)), data.spec, hp, 16)
        cd = iid(data.x_train, data.y_train, 6, seed=0)
        args = [jnp.asarray(a) for a in (cd.x, cd.y, cd.mask, cd.counts)]
        key = jax.random.PRNGKey(2)
        one, _ = make_round_fn(fm, 6, devices=jax.devices()[:1])(server, key, *args)
        four, _ = make_round_fn(fm, 6, devices=jax.devices())(server, key, *args)
        for u, v in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(four)):
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-6)
        print("SHARDED_OK")
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "SHARDED_OK" in out.stdout, out.stderr[-3000:]
