"""The samplers' Gaussian noise generator (:func:`emtdamp.sgmcmc.kernels.normal`): moments, independence of
streams and the jax.random.normal conversion, with tolerances from the sample size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from emtdamp.sgmcmc.kernels import normal, normal_like

N = 1_000_000
Z = 5.0   # two-sided normal quantile: false-failure rate ≈ 6e-7 per check (≈ 1e-5 over the checks below)


def _moments_ok(z: np.ndarray) -> None:
    z = z.astype(np.float64)
    n = z.size
    m = z.mean()
    v = z.var()
    assert abs(m) < Z * np.sqrt(1.0 / n)                                  # Var(mean) = 1/n
    assert abs(v - 1.0) < Z * np.sqrt(2.0 / n)                            # Var(s²) ≈ 2/n
    assert abs(np.mean(z ** 3)) < Z * np.sqrt(15.0 / n)                   # Var(z³) = E z⁶ = 15
    assert abs(np.mean(z ** 4) - 3.0) < Z * np.sqrt(96.0 / n)             # Var(z⁴) = 105 − 9 = 96


@pytest.mark.parametrize("seed", [0, 1])
def test_normal_moments(seed):
    z = np.asarray(normal(jax.random.key(seed), (N,), jnp.float32))
    assert z.dtype == np.float32 and np.all(np.isfinite(z))
    _moments_ok(z)
    # whole distribution: Kolmogorov-Smirnov at level 1e-4 (false-failure rate 1e-4)
    assert stats.kstest(z, "norm").pvalue > 1e-4


def test_streams_independent_and_keys_interchangeable():
    a = np.asarray(normal(jax.random.key(3), (N,)), np.float64)
    b = np.asarray(normal(jax.random.fold_in(jax.random.key(3), 1), (N,)), np.float64)
    assert abs(np.corrcoef(a, b)[0, 1]) < Z / np.sqrt(N)                   # sd of a null correlation: 1/sqrt(n)
    # a raw uint32 key (what the SG-MCMC state stores) and the typed key give the same stream
    raw = np.asarray(normal(jax.random.key_data(jax.random.key(3)), (N,)))
    np.testing.assert_array_equal(raw, a.astype(np.float32))
    # consecutive entries of one stream are uncorrelated (lag-1 autocorrelation)
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < Z / np.sqrt(N)


def test_normal_like_tree_and_dtypes():
    tree = [{"kernel": jnp.zeros((300, 200)), "bias": jnp.zeros((200,))}, jnp.zeros((5,), jnp.bfloat16)]
    out = normal_like(jax.random.key(0), tree)
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(tree)
    assert out[0]["kernel"].shape == (300, 200) and out[1].dtype == jnp.bfloat16
    k, b = np.asarray(out[0]["kernel"]).ravel(), np.asarray(out[0]["bias"])
    assert abs(np.corrcoef(k[:200], b)[0, 1]) < Z / np.sqrt(200)         # leaves get different keys
    # jitted and not: same numbers
    np.testing.assert_array_equal(np.asarray(jax.jit(normal, static_argnums=(1, 2))(jax.random.key(0), (64,),
                                                                                     jnp.float32)),
                                  np.asarray(normal(jax.random.key(0), (64,), jnp.float32)))


def test_normal_float64_moments():
    with jax.enable_x64(True):
        z = np.asarray(normal(jax.random.key(7), (N,), jnp.float64))
    assert z.dtype == np.float64
    _moments_ok(z)


def test_vmapped_rows_equal_unbatched_calls():
    """Several chains / vmapped seeds: every row gets exactly what its own call gets (also vmap of vmap)."""
    keys = jax.random.split(jax.random.key(0), 6).reshape(2, 3)
    f = lambda k: normal(k, (50, 7), jnp.float32)
    got = np.asarray(jax.jit(jax.vmap(jax.vmap(f)))(keys))
    want = np.stack([np.stack([np.asarray(f(keys[i, j])) for j in range(3)]) for i in range(2)])
    np.testing.assert_array_equal(got, want)
    assert len({float(v) for v in got[:, :, 0, 0].ravel()}) == 6          # rows differ
