"""The samplers' noise generators (:mod:`emtdamp.sgmcmc.kernels`): the Gaussian :func:`normal` and the
three-point :func:`three_point` (the default): distribution, moments, independence of streams, vmap behaviour,
the fused Threefry against jax's own, and the stationary law of SGLD / SGHMC with either noise on a Gaussian
target against its closed form. Tolerances from the sample size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.extend.random import threefry_2x32
from scipy import stats

from emtdamp.sgmcmc.kernels import (
    THREE_POINT_A,
    THREE_POINT_P,
    flat_index,
    grad_estimator,
    noise,
    noise_like,
    normal,
    normal_like,
    polynomial_schedule,
    sghmc,
    sghmc_noise_std,
    sgld,
    three_point,
    threefry2x32,
)

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


# --------------------------------------------------------------------------------------------------
# three-point noise (the samplers' default): ξ ∈ {−a, 0, +a}, P(±a) = p ≈ 1/6, from fused Threefry bits
# --------------------------------------------------------------------------------------------------
P3, A3 = THREE_POINT_P, THREE_POINT_A


def test_threefry_matches_jax_bit_for_bit():
    """The fused, unrolled Threefry-2x32 against jax's own implementation on the same keys and counters."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        key = rng.integers(0, 2 ** 32, 2, dtype=np.uint32)
        c = rng.integers(0, 2 ** 32, 2 * 5000, dtype=np.uint32)
        # jax.extend.random.threefry_2x32 hashes the counter pairs (c[i], c[n + i]) and returns y0 ++ y1
        want = np.asarray(threefry_2x32(jnp.asarray(key), jnp.asarray(c)))
        y0, y1 = jax.jit(threefry2x32)(key[0], key[1], jnp.asarray(c[:5000]), jnp.asarray(c[5000:]))
        np.testing.assert_array_equal(np.concatenate([np.asarray(y0), np.asarray(y1)]), want)
    # the Salmon et al. (2011) known-answer vector (also in jax's own tests)
    y = threefry2x32(np.uint32(0x13198A2E), np.uint32(0x03707344), np.uint32(0x243F6A88), np.uint32(0x85A308D3))
    assert [int(v) for v in y] == [0xC4923A9C, 0x483DF7A0]


def test_flat_index():
    np.testing.assert_array_equal(np.asarray(flat_index((3, 4, 5))), np.arange(60, dtype=np.uint32).reshape(3, 4, 5))
    assert np.asarray(flat_index(())).shape == () and int(flat_index(())) == 0


def test_three_point_constants():
    """p = ceil(2^32/6)/2^32, a = 1/sqrt(2p): variance exactly 1, fourth moment 1/(2p) = 3 − 2.9e-9."""
    assert P3 == 715827883 / 2 ** 32 and abs(P3 - 1 / 6) < 2e-10
    assert abs(2 * P3 * A3 ** 2 - 1.0) < 1e-15
    assert abs(2 * P3 * A3 ** 4 - 3.0) < 3e-9


@pytest.mark.parametrize("seed", [0, 1])
def test_three_point_exact_probabilities_and_moments(seed):
    """10^6 draws: the three values only; each count within 5 binomial sd of n·P (and a chi-square test at
    level 1e-4); sample moments 1..6 within 5 sd of the closed form Σ_v P(v) v^k (sd from the same closed
    form: Var(ξ^k) = E ξ^{2k} − (E ξ^k)²)."""
    z = np.asarray(three_point(jax.random.key(seed), (1000, 1000), jnp.float32)).ravel()
    a = np.float32(A3)
    assert z.dtype == np.float32 and set(np.unique(z).tolist()) == {-a, 0.0, a}
    probs = np.array([P3, 1 - 2 * P3, P3])
    counts = np.array([(z == -a).sum(), (z == 0).sum(), (z == a).sum()])
    np.testing.assert_array_less(np.abs(counts - N * probs), Z * np.sqrt(N * probs * (1 - probs)))
    assert stats.chisquare(counts, N * probs).pvalue > 1e-4
    z = z.astype(np.float64)
    vals = np.array([-A3, 0.0, A3])
    mom = lambda k: float(np.sum(probs * vals ** k))
    for k in range(1, 7):
        sd = np.sqrt((mom(2 * k) - mom(k) ** 2) / N)
        assert abs(np.mean(z ** k) - mom(k)) < Z * sd, k
    assert abs(mom(2) - 1) < 1e-12 and abs(mom(4) - 3) < 3e-9 and mom(1) == mom(3) == mom(5) == 0.0
    assert abs(mom(6) - 9) < 1e-8                                # the first moment that is not the normal's (15)


def _pair_independence(u: np.ndarray, v: np.ndarray) -> None:
    """(u_i, v_i) pairs of three-point values: their 3×3 table against the product of the marginals (chi-square,
    4 degrees of freedom, level 1e-4) and the correlation within 5/sqrt(n)."""
    table = np.array([[np.sum((u == s) & (v == t)) for t in (-1, 0, 1)] for s in (-1, 0, 1)])
    _, pval, _, _ = stats.chi2_contingency(table)
    assert pval > 1e-4, table
    assert abs(np.corrcoef(u, v)[0, 1]) < Z / np.sqrt(u.size)


def test_three_point_independent_across_parameters_steps_leaves_and_chains():
    sign = lambda x: np.sign(np.asarray(x)).astype(np.int8).ravel()
    key = jax.random.key(5)
    # parameters: neighbours in a row, in a column, and the same position of the two halves of a leaf
    z = np.sign(np.asarray(three_point(key, (1000, 1000)))).astype(np.int8)
    _pair_independence(z[:, :-1].ravel(), z[:, 1:].ravel())
    _pair_independence(z[:-1].ravel(), z[1:].ravel())
    _pair_independence(z[:500].ravel(), z[500:].ravel())
    # steps: the samplers split the chain key every step
    k1, k2 = jax.random.split(key)
    _pair_independence(sign(three_point(k1, (N,))), sign(three_point(k2, (N,))))
    # leaves: noise_like splits one key per leaf; equal shapes must still get different streams
    leaves = noise_like(key, [jnp.zeros((1000, 500)), jnp.zeros((1000, 500))])
    _pair_independence(sign(leaves[0]), sign(leaves[1]))
    # chains: vmapped keys
    rows = jax.jit(jax.vmap(lambda k: three_point(k, (N // 2,))))(jax.random.split(key, 2))
    _pair_independence(sign(rows[0]), sign(rows[1]))


def test_three_point_vmapped_rows_equal_unbatched_calls_and_dtypes():
    keys = jax.random.split(jax.random.key(0), 6).reshape(2, 3)
    f = lambda k: three_point(k, (50, 7), jnp.float32)
    got = np.asarray(jax.jit(jax.vmap(jax.vmap(f)))(keys))
    want = np.stack([np.stack([np.asarray(f(keys[i, j])) for j in range(3)]) for i in range(2)])
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got[0, 0], got[0, 1])
    # a raw uint32 key and the typed key: the same stream; jitted or not: the same numbers
    np.testing.assert_array_equal(np.asarray(f(jax.random.key_data(keys[0, 0]))), want[0, 0])
    np.testing.assert_array_equal(np.asarray(jax.jit(f)(keys[0, 0])), want[0, 0])
    # the same bits whatever the dtype; atoms ±a rounded to the dtype
    for dt in (jnp.bfloat16, jnp.float16):
        z = np.asarray(three_point(keys[0, 0], (50, 7), dt))
        assert z.dtype == dt
        np.testing.assert_array_equal(np.sign(z.astype(np.float32)), np.sign(want[0, 0]))
    with jax.enable_x64(True):
        z = np.asarray(three_point(keys[0, 0], (50, 7), jnp.float64))
        assert z.dtype == np.float64 and np.max(z) == A3
        np.testing.assert_array_equal(np.sign(z), np.sign(want[0, 0]))


def test_noise_dispatch_and_validation():
    k = jax.random.key(2)
    np.testing.assert_array_equal(np.asarray(noise(k, (9,), jnp.float32, "gaussian")), np.asarray(normal(k, (9,))))
    np.testing.assert_array_equal(np.asarray(noise(k, (9,), jnp.float32, "three_point")),
                                  np.asarray(three_point(k, (9,))))
    with pytest.raises(ValueError, match="noise_dist"):
        noise(k, (9,), jnp.float32, "uniform")
    # trees: three-point leaf i is stream i of the one key; gaussian leaf i uses the i-th split key
    tree = {"a": jnp.zeros((3, 4)), "b": jnp.zeros((5,), jnp.bfloat16)}
    got = noise_like(k, tree, "three_point")
    np.testing.assert_array_equal(np.asarray(got["a"]), np.asarray(three_point(k, (3, 4))))
    np.testing.assert_array_equal(np.asarray(got["b"]), np.asarray(three_point(k, (5,), jnp.bfloat16, stream=1)))
    got = noise_like(k, tree, "gaussian")
    ks = jax.random.split(k, 2)
    np.testing.assert_array_equal(np.asarray(got["a"]), np.asarray(normal(ks[0], (3, 4))))
    np.testing.assert_array_equal(np.asarray(got["b"]), np.asarray(normal(ks[1], (5,), jnp.bfloat16)))
    with pytest.raises(ValueError, match="noise_dist"):
        noise_like(k, tree, "uniform")


# --------------------------------------------------------------------------------------------------
# the sampler with either noise: a Gaussian target whose discretised chain is linear, so the stationary law
# of θ is known: variance from the discrete Lyapunov equation, fourth cumulant 0 for both noises (E ξ⁴ = 3),
# sixth cumulant 0 (gaussian) or κ6(ξ) Σ_i c_i⁶ (three-point, κ6(ξ) = E ξ⁶ − 15 = −6)
# --------------------------------------------------------------------------------------------------
def _linear_chain_law(a_mat: np.ndarray, b: np.ndarray, kappa6: float) -> tuple[float, float]:
    """θ = component 0 of s' = A s + b ξ at stationarity: (Var θ, standardised sixth cumulant κ6(θ)/Var³).

    θ = Σ_i c_i ξ_{−i} with c_i = (A^i b)_0, so Var θ = Σ c_i² and κ6(θ) = κ6(ξ) Σ c_i⁶ (cumulants add)."""
    c, v = [], b.astype(np.float64)
    for _ in range(20_000):
        c.append(v[0])
        v = a_mat @ v
    c = np.asarray(c)
    var = float(np.sum(c ** 2))
    assert abs(var - scipy.linalg.solve_discrete_lyapunov(a_mat, np.outer(b, b))[0, 0]) < 1e-9 * var
    return var, kappa6 * float(np.sum(c ** 6)) / var ** 3


@pytest.mark.parametrize("dist", ["gaussian", "three_point"])
@pytest.mark.parametrize("kind", ["sgld", "sghmc"])
def test_sampler_stationary_law_with_three_point_equals_gaussian(kind, dist):
    """2·10^5 independent coordinates of one chain on U(θ) = Σ θ²/(2 s²) (the noise is independent across
    parameters, so every coordinate is its own chain), after enough steps that the start is forgotten
    (contraction ≤ 1e-12). For both noises: mean 0, the exact variance of the discretised chain, E θ⁴ = 3 Var²,
    and E θ⁶ = (15 + κ6) Var³ with the noise's own κ6 (tolerances: 5 sd of each sample mean, the sd estimated
    from the draws). The SGLD discretisation is coarse on purpose (ε = s²/2: AR(1) with coefficient 1/2), so
    the three-point sixth cumulant (−2.57 Var³ there) is large enough to be detected; SGHMC with momentum 0.9
    sums the noise of many steps, and its θ has κ6 = −0.04 Var³, Gaussian within the Monte-Carlo error."""
    d, s2 = 200_000, 1.0
    if kind == "sgld":
        eps, m = 0.5 * s2, None
        a_mat, b = np.array([[1 - eps / s2]]), np.array([np.sqrt(2 * eps)])
        n_steps = 60
    else:
        eps, m = 0.05 * s2, 0.9
        std = float(sghmc_noise_std(eps, m, 1.0))
        a_mat, b = np.array([[1 - eps / s2, m], [-eps / s2, m]]), np.array([std, std])
        n_steps = 700
    assert np.max(np.abs(np.linalg.eigvals(a_mat))) ** n_steps < 1e-12
    grad_fn = grad_estimator(lambda p, batch: -0.5 * jnp.sum(p ** 2) / s2 * jnp.ones(1), None, 1)
    algo = (sgld if kind == "sgld" else sghmc)(grad_fn, noise_dist=dist)
    sched = polynomial_schedule(eps)
    st = algo.init(jnp.zeros(d), sched) if kind == "sgld" else algo.init(jnp.zeros(d), sched, momentum_decay=m)
    run = jax.jit(lambda s, keys: jax.lax.scan(lambda c, k: (algo.step(k, c, None)[0], None), s, keys)[0])
    theta = np.asarray(run(st, jax.random.split(jax.random.key(11), n_steps)).position, np.float64)
    var, k6 = _linear_chain_law(a_mat, b, 0.0 if dist == "gaussian" else float(2 * P3 * A3 ** 6 - 15.0))
    want = {1: 0.0, 2: var, 4: 3 * var ** 2, 6: (15 + k6) * var ** 3}
    for k, w in want.items():
        sd = np.std(theta ** k) / np.sqrt(d)
        assert abs(np.mean(theta ** k) - w) < Z * sd, (k, np.mean(theta ** k), w, sd)
    if dist == "three_point" and kind == "sgld":   # coarse SGLD: the test tells the laws apart by E θ⁶
        assert abs(k6) * var ** 3 > 2 * Z * np.std(theta ** 6) / np.sqrt(d)
    if dist == "three_point" and kind == "sghmc":  # momentum 0.9 averages many steps' noise: κ6 ≈ −0.04 Var³
        assert abs(k6) < 0.05
