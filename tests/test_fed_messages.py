"""Flat named-array messages of the federated methods (MessageCodec): exact round trips without
compression, aggregation on unpacked messages equal to aggregation on the raw ones, byte counts, and the
compressed forms against a NumPy transcription of their rounding."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emtdamp.data import load
from emtdamp.data.partition import iid
from emtdamp.loops.federated import make_round_fn
from emtdamp.methods import ModelSpec
from emtdamp.methods.base import DataSpec
from emtdamp.methods.federated import flat_bytes, named_leaves
from emtdamp.methods.registry import get_fed_method

PRUNING = {"prune": "target", "target_density": 0.5, "warm": 1, "ramp": 1}


@functools.cache
def _states(name, compress="none", rounds=2):
    """Server states of a 4-client Boston federation: init, then after each round (emtdamp_fed prunes from
    round 1, so masked groups appear), with one client message per state."""
    data = load("boston")
    fm = get_fed_method(name)
    extra = PRUNING if name == "emtdamp_fed" else {}
    algo = fm.build(ModelSpec((8,)), data.spec, fm.hparams_cls(n_clients=4, partition="iid", compress=compress,
                                                               **extra), 16)
    cd = iid(data.x_train, data.y_train, 4, seed=0)
    X, Y, M, C = map(jnp.asarray, (cd.x, cd.y, cd.mask, cd.counts))
    rf = make_round_fn(algo, 4, devices=jax.devices()[:1])
    s = algo.init(jax.random.PRNGKey(0))
    upd = jax.jit(algo.client_update)
    out = []
    for r in range(rounds + 1):
        msgs = [upd(s, X[k], Y[k], M[k], jax.random.PRNGKey(100 * r + k)) for k in range(2)]
        out.append((s, msgs))
        s, _ = rf(s, jax.random.PRNGKey(r), X, Y, M, C)
    return algo, out


def _same(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for u, v in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def _stack(msgs):
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *msgs)


@pytest.mark.parametrize("name", ["emtdamp_fed", "fedavg"])
def test_uncompressed_messages_round_trip_exactly_and_aggregate_the_same(name):
    algo, states = _states(name)
    c = algo.codec
    w = jnp.asarray([3.0, 5.0])
    agg = jax.jit(algo.aggregate)
    for s, msgs in states:
        flat = c.pack_broadcast(s)
        assert all(isinstance(k, str) and isinstance(v, np.ndarray) and v.dtype.kind in "fi" for k, v in flat.items())
        _same(c.unpack_broadcast(flat), s)            # derived leaves recomputed bit for bit
        ups = [c.pack_upload(s, m) for m in msgs]
        assert all(v.dtype == np.float32 for u in ups for v in u.values())
        got = [c.unpack_upload(s, u) for u in ups]
        _same(agg(s, _stack(got), w), agg(s, _stack(msgs), w))
        assert algo.upload_bytes(s) == flat_bytes(ups[0])


def test_emtdamp_fed_broadcast_leaves_out_the_derivable_state():
    algo, states = _states("emtdamp_fed")
    s = states[-1][0]
    full = flat_bytes(named_leaves(s))
    down = algo.broadcast_bytes(s)
    weights = sum(lay.W.size for lay in s.layers)
    # mu0 and s0 per weight (W, V_W, slab_m, slab_v are derived): 2 of the 6 weight-sized arrays
    assert down < full / 2.5
    assert down >= 4 * 2 * weights


def test_emtdamp_fed_upload_bytes_784_128_10():
    """The upload of a 784-128-10 network counted by hand: mean + variance per weight, two values per group,
    two per bias, two v statistics, float32 -> 821,464 B; float16 weight deltas halve the weight part."""
    spec = DataSpec(task="classification", n_features=784, n_outputs=10, n_train=4000)
    fm = get_fed_method("emtdamp_fed")
    n_w, n_g, n_b = 784 * 128 + 128 * 10, 784 + 128, 128 + 10
    for compress, expect in (("none", 4 * (2 * n_w + 2 * n_g + 2 * n_b + 2)),
                             ("float16", 2 * 2 * n_w + 4 * (2 * n_g + 2 * n_b + 2)),
                             ("bfloat16", 2 * 2 * n_w + 4 * (2 * n_g + 2 * n_b + 2))):
        algo = fm.build(ModelSpec((128,)), spec, fm.hparams_cls(compress=compress), 20)
        s = algo.init(jax.random.PRNGKey(0))
        assert algo.upload_bytes(s) == expect, compress
    assert 4 * (2 * n_w + 2 * n_g + 2 * n_b + 2) == 821_464
    assert (2 * 2 * n_w + 4 * (2 * n_g + 2 * n_b + 2)) / 821_464 <= 0.6


@pytest.mark.parametrize("compress", ["float16", "bfloat16", "active+float16"])
def test_compressed_upload_matches_numpy_rounding_and_the_simulated_round_trip(compress):
    algo, states = _states("emtdamp_fed", compress=compress)
    c = algo.codec
    half = {"float16": np.float16}.get(compress.split("+")[-1])
    w = jnp.asarray([1.0, 2.0])
    agg = jax.jit(algo.aggregate)
    for s, msgs in states[1:]:
        flat = c.pack_upload(s, msgs[0])
        keep = [np.asarray(g.mask) > 0 for g in s.layers]
        for i, (g, loc) in enumerate(zip(s.layers, msgs[0].layers, strict=True)):
            rows = keep[i] if compress.startswith("active") else np.ones_like(keep[i])
            mu = flat[f"layers/{i}/mu0"]
            assert mu.shape == (int(rows.sum()), g.mu0.shape[1])
            assert mu.dtype == (np.float16 if half else np.uint16)  # bfloat16 travels as its raw bits
            if half is not None:   # NumPy's own float16 rounding of the delta (an independent reference)
                ref = np.asarray(g.mu0)[rows]
                want = (np.asarray(loc.mu0)[rows] - ref).astype(np.float16).astype(np.float32) + ref
                dec = c.unpack_upload(s, flat).layers[i].mu0
                np.testing.assert_array_equal(np.asarray(dec)[rows], want)
        # the host unpack and the jitted round trip the vmapped simulation applies aggregate the same
        host = _stack([c.unpack_upload(s, c.pack_upload(s, m)) for m in msgs])
        sim = _stack([c.roundtrip_upload(s, m) for m in msgs])
        a, b = agg(s, host, w), agg(s, sim, w)
        for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-6, atol=1e-7)
        # and the compression error of the aggregate is small: relative 2^-8 (bfloat16) of the round's change
        exact = agg(s, _stack(msgs), w)
        for g, e, h in zip(s.layers, exact.layers, a.layers, strict=True):
            live = np.asarray(g.mask) > 0
            step = np.abs(np.asarray(e.mu0) - np.asarray(g.mu0))[live].max()
            err = np.abs(np.asarray(e.mu0) - np.asarray(h.mu0))[live].max()
            assert err <= 2.0 ** -7 * step + 1e-7, (compress, err, step)


def test_fedavg_float16_upload_halves_the_kernels():
    algo, states = _states("fedavg", compress="float16")
    s, msgs = states[1]
    flat = algo.codec.pack_upload(s, msgs[0])
    kinds = {k: v.dtype for k, v in flat.items()}
    assert {d for k, d in kinds.items() if k.endswith("kernel")} == {np.dtype(np.float16)}
    assert {d for k, d in kinds.items() if not k.endswith("kernel")} == {np.dtype(np.float32)}
    full = flat_bytes(named_leaves(msgs[0]))
    assert flat_bytes(flat) < 0.6 * full
