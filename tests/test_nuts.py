"""The ``nuts`` gold-standard method: the sampler on an exact posterior, R-hat/ESS against references,
the Bayesian MLP's log density and predictive, and a run folder with diagnostics."""

import json
import math

import blackjax.diagnostics as bjd
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from emtdamp import config as C
from emtdamp.data import load
from emtdamp.loops.centralised import train
from emtdamp.methods import Batch, ModelSpec, get_method
from emtdamp.nuts import bnn
from emtdamp.nuts import diagnostics as diag
from emtdamp.nuts.kernel import sample
from emtdamp.runs import run_config

# --------------------------------------------------------------------------------------------------
# the sampler on the exact posterior of Bayesian linear regression

def test_nuts_matches_the_exact_bayesian_linear_regression_posterior():
    """y = Xw + b + ε, ε ~ N(0, s²) with s known, prior w, b ~ N(0, τ²): the posterior is Gaussian
    with Σ = (AᵀA/s² + I/τ²)⁻¹, μ = Σ Aᵀy/s² (A = [X, 1]). Means are checked to 4 Monte-Carlo
    standard errors sd/sqrt(ESS) (ESS = bulk ESS of that coordinate; false-failure rate ≈ 6e-5 per
    coordinate for a correct sampler), sds to 5 standard errors of a Gaussian sd, sd/sqrt(2 ESS)."""
    rng = np.random.default_rng(0)
    n, d, s, tau = 40, 3, 0.5, 1.0
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ np.array([1.0, -0.5, 0.25]) + 0.3 + s * rng.normal(size=n)).astype(np.float32)
    a = np.c_[x, np.ones(n)].astype(np.float64)
    cov = np.linalg.inv(a.T @ a / s**2 + np.eye(d + 1) / tau**2)
    mu = cov @ a.T @ y / s**2

    def logdensity(p):
        r = y - (x @ p["w"] + p["b"])
        return -0.5 * jnp.sum(r**2) / s**2 - 0.5 * (jnp.sum(p["w"] ** 2) + p["b"] ** 2) / tau**2

    chains = 4
    init = {"w": jnp.asarray(rng.normal(size=(chains, d)), jnp.float32), "b": jnp.zeros((chains,), jnp.float32)}
    draws, info, final = sample(jax.random.PRNGKey(1), logdensity, init, num_warmup=200, num_draws=300)
    assert draws["w"].shape == (chains, 300, d) and draws["b"].shape == (chains, 300)
    z = np.concatenate([np.asarray(draws["w"]), np.asarray(draws["b"])[..., None]], axis=-1)   # (C, N, d+1)
    ess = diag.ess_bulk(z)
    assert np.all(ess > 200), ess
    assert np.all(diag.split_rhat(z) < 1.02)
    sd = np.sqrt(np.diag(cov))
    est_mean = z.reshape(-1, d + 1).mean(0)
    est_sd = z.reshape(-1, d + 1).std(0, ddof=1)
    assert np.all(np.abs(est_mean - mu) < 4 * sd / np.sqrt(ess)), (est_mean, mu, sd / np.sqrt(ess))
    assert np.all(np.abs(est_sd / sd - 1) < 5 / np.sqrt(2 * ess)), (est_sd, sd)
    # the adaptation ran: each chain's diagonal inverse mass matrix is Stan's regularised Welford variance of
    # the last slow window, m = 50 draws for 200 warm-up steps (75 fast, slow windows of 25 and 50, 50 fast):
    # m/(m+5) S² + 1e-3 · 5/(m+5). S²/σ² ~ χ²_ν/ν with ν the window's effective size, m times the ESS per
    # draw of the squared deviations (read off the post-warm-up draws, ~0.6 here). The band is that law's
    # 1e-4 and 1 - 1e-4 quantiles (16 entries: false-failure rate ≈ 3e-3); without adaptation the ratio
    # would be 1 / σ² ≈ 160. (A fixed "factor 2" band failed on 9 of 16 PRNG keys.)
    var = np.diag(cov)[[3, 0, 1, 2]]                                               # ravel order: b, then w
    m = 50
    nu = m * diag.ess_bulk((z - z.mean((0, 1))) ** 2)[[3, 0, 1, 2]] / z[..., 0].size
    lo = m / (m + 5) * stats.chi2.ppf(1e-4, nu) / nu + 1e-3 * 5 / (m + 5) / var
    hi = m / (m + 5) * stats.chi2.ppf(1 - 1e-4, nu) / nu + 1e-3 * 5 / (m + 5) / var
    ratio = np.asarray(final.inverse_mass_matrix) / var
    assert np.all((ratio > lo) & (ratio < hi)), (ratio, lo, hi)
    assert not np.any(np.asarray(info.is_divergent)[:, 200:])


# --------------------------------------------------------------------------------------------------
# R-hat and ESS

def _ar1(rng, chains, n, k, phi, shift=None):
    e = rng.normal(size=(chains, n, k))
    out = np.zeros_like(e)
    out[:, 0] = e[:, 0] / math.sqrt(1 - phi**2)
    for t in range(1, n):
        out[:, t] = phi * out[:, t - 1] + e[:, t]
    if shift is not None:
        out += np.asarray(shift)[:, None, None]
    return out


def _classic_split_rhat(x):
    """Gelman et al. BDA3 split R-hat written out loop by loop (no rank normalisation)."""
    m, n = x.shape
    half = n // 2
    parts = [x[c, :half] for c in range(m)] + [x[c, n - half:] for c in range(m)]
    means = [float(np.mean(p)) for p in parts]
    grand = sum(means) / len(parts)
    b = half * sum((mm - grand) ** 2 for mm in means) / (len(parts) - 1)
    w = sum(sum((v - mm) ** 2 for v in p) / (half - 1) for p, mm in zip(parts, means, strict=True)) / len(parts)
    return math.sqrt(((half - 1) / half * w + b / half) / w)


def test_rhat_and_ess_match_blackjax_and_the_textbook_formulas():
    rng = np.random.default_rng(3)
    x = np.concatenate([_ar1(rng, 4, 400, 3, 0.6), _ar1(rng, 4, 400, 2, 0.0, shift=[0, 0, 0, 1.0])], axis=-1)
    if not hasattr(bjd, "rhat"):   # rank-normalised R-hat / bulk ESS arrived in later BlackJAX releases
        pytest.skip("this BlackJAX has no rank-normalised rhat / ess_bulk")
    with jax.enable_x64(True):
        ref_r = np.asarray(bjd.rhat(jnp.asarray(x)))
        ref_e = np.asarray(bjd.ess_bulk(jnp.asarray(x)))
    np.testing.assert_allclose(diag.split_rhat(x), ref_r, rtol=1e-10)
    # bulk ESS: identical on mixed chains; on the unmixed ones (3, 4) BlackJAX truncates Geyer's
    # sequence at a slightly different lag than Stan / ArviZ (this module), a ~1 % difference
    np.testing.assert_allclose(diag.ess_bulk(x)[:3], ref_e[:3], rtol=1e-8)
    np.testing.assert_allclose(diag.ess_bulk(x)[3:], ref_e[3:], rtol=0.03)
    # without rank normalisation the R-hat part is the classical split R-hat: check it by hand
    s = diag.split_chains(x)
    for j in range(x.shape[-1]):
        np.testing.assert_allclose(diag._rhat(s[..., j]), _classic_split_rhat(x[..., j]), rtol=1e-12)
    # odd chain length: the middle draw is dropped (Stan / ArviZ), both halves keep the chain ends
    odd = diag.split_chains(np.arange(7.0)[None])
    np.testing.assert_array_equal(odd, [[0.0, 1.0, 2.0], [4.0, 5.0, 6.0]])


def test_ess_of_ar1_chains_and_rhat_flags_unmixed_chains():
    """AR(1) with coefficient φ has integrated autocorrelation time (1+φ)/(1−φ), so ESS ≈ MN(1−φ)/(1+φ).
    With 4 × 2000 draws the estimator's relative sd is ≈ 0.1 at φ = 0.5 (Geyer truncation, 8 chains of
    1000 after splitting): a 35 % band is > 3 sd. Chains with shifted means (0.5 sd) or different
    scales (folded R-hat) must give R-hat > 1.05."""
    rng = np.random.default_rng(4)
    phi = 0.5
    x = _ar1(rng, 4, 2000, 4, phi)
    expect = 4 * 2000 * (1 - phi) / (1 + phi)
    e = diag.ess_bulk(x)
    assert np.all(np.abs(e / expect - 1) < 0.35), (e, expect)
    assert np.all(diag.split_rhat(x) < 1.01)
    shifted = _ar1(rng, 4, 500, 1, 0.0, shift=[0.0, 0.0, 0.0, 0.5 * 2.0])
    assert diag.split_rhat(shifted)[0] > 1.05
    scaled = rng.normal(size=(4, 500, 1)) * np.array([1.0, 1.0, 1.0, 4.0])[:, None, None]
    assert diag.split_rhat(scaled)[0] > 1.05
    summ = diag.summarise(x)
    assert set(summ) == {"rhat_median", "rhat_max", "ess_bulk_median", "ess_bulk_min"}
    assert diag.summarise(x[:, :3])["rhat_max"] is None


# --------------------------------------------------------------------------------------------------
# the Bayesian MLP

def test_log_density_matches_scipy_and_ignores_padding_rows():
    rng = np.random.default_rng(5)
    pos = bnn.init_position(jax.random.PRNGKey(0), (3, 4, 2), "regression")
    pos["log_sigma"] = jnp.asarray([-0.3, 0.2])
    x, y = rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=(6, 2)).astype(np.float32)
    pv, ns = 0.7, 1.3
    lj = float(bnn.log_joint(pos, Batch(jnp.asarray(x), jnp.asarray(y), jnp.ones(6)), "relu", "regression", pv, ns))
    theta = np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(pos["params"])])
    sig = np.exp(np.asarray(pos["log_sigma"], np.float64))
    f = np.asarray(bnn.mlp.apply(pos["params"], jnp.asarray(x)), np.float64)
    ref = (stats.norm.logpdf(y, f, sig).sum() + stats.norm.logpdf(theta, 0, math.sqrt(pv)).sum()
           + stats.halfnorm.logpdf(sig, scale=ns).sum() + np.log(sig).sum())
    assert lj == pytest.approx(ref, rel=1e-5)
    xp = jnp.concatenate([jnp.asarray(x), 1e3 * jnp.ones((3, 3))])
    yp = jnp.concatenate([jnp.asarray(y), jnp.full((3, 2), jnp.nan)])
    lp = float(bnn.log_joint(pos, Batch(xp, yp, jnp.r_[jnp.ones(6), jnp.zeros(3)]), "relu", "regression", pv, ns))
    assert lp == pytest.approx(lj, rel=1e-6)
    # classification: the likelihood is the softmax log-probability of the labels
    cpos = bnn.init_position(jax.random.PRNGKey(1), (3, 4, 5), "classification")
    lab = np.array([0, 4, 2, 1, 3, 3])
    ll = float(bnn.log_likelihood(cpos, Batch(jnp.asarray(x), jnp.asarray(lab), jnp.ones(6)), "relu",
                                  "classification"))
    logits = np.asarray(bnn.mlp.apply(cpos["params"], jnp.asarray(x)), np.float64)
    ref = (logits[np.arange(6), lab] - np.log(np.exp(logits).sum(1))).sum()
    assert ll == pytest.approx(ref, rel=1e-5)


def test_predictive_moments_are_the_mixture_moments():
    """Mean and variance of the equal-weight mixture of N(f_s(x), σ_s²) over the valid draws, by hand."""
    rng = np.random.default_rng(6)
    c, s = 2, 5
    keys = jax.random.split(jax.random.PRNGKey(2), c * s)
    pos = [bnn.init_position(k, (3, 4, 1), "regression") for k in keys]
    for p in pos:
        p["log_sigma"] = jnp.asarray(rng.normal(size=1) * 0.3, jnp.float32)
    draws = jax.tree_util.tree_map(lambda *a: jnp.stack(a).reshape(c, s, *a[0].shape), *pos)
    valid = np.zeros((c, s), bool)
    valid[:, :3] = True
    x = jnp.asarray(rng.normal(size=(7, 3)), jnp.float32)
    mean, var = bnn.predictive_moments(draws, jnp.asarray(valid), x, "relu", "regression")
    kept = [p for i, p in enumerate(pos) if valid.reshape(-1)[i]]
    f = np.stack([np.asarray(bnn.mlp.apply(p["params"], x)) for p in kept])          # (6, 7, 1)
    s2 = np.stack([np.exp(2 * np.asarray(p["log_sigma"])) for p in kept])           # (6, 1)
    np.testing.assert_allclose(mean, f.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, f.var(0) + s2.mean(0), rtol=1e-4, atol=1e-6)


def test_nuts_refuses_minibatches_and_cnns():
    data = load("boston")
    m = get_method("nuts")
    hp = m.hparams_cls(chains=1, warmup=2, draws=2)
    with pytest.raises(ValueError, match=f"train.batch_size={data.spec.n_train}"):
        train(m, hp, ModelSpec((4,)), data, epochs=1, batch_size=32, progress=False)
    with pytest.raises(ValueError, match="model.kind=mlp"):
        m.build(ModelSpec((4,), kind="cnn"), data.spec, hp)


# --------------------------------------------------------------------------------------------------
# end to end: a run folder with diagnostics

def test_nuts_run_folder_has_rhat_and_ess(tmp_path, capsys):
    cfg = C.from_dict({"data": {"name": "boston", "options": {"test_fraction": 0.1}}, "model": {"hidden": [4]},
                       "method": {"name": "nuts", "chains": 2, "warmup": 6, "draws": 4, "max_num_doublings": 4},
                       "train": {"epochs": 10, "batch_size": 1000, "progress": False, "eval_every": 10},
                       "output": {"plots": False}}, "nuts-tiny")
    run_dir, summary, res = run_config(cfg, tmp_path / "run")
    s = json.loads((run_dir / "summary.json").read_text())
    d = s["diagnostics"]
    assert set(d["rhat"]) == {"function_median", "function_max", "noise_sd"}
    assert set(d["rhat_params"]) == {"median", "max"} and set(d["ess_bulk"]) >= {"function_median", "function_min"}
    assert d["chains"] == 2 and d["draws_per_chain"] == 4 and d["transitions"] == 10
    assert all(np.isfinite(v) for v in s["test"].values())
    assert s["sparsity"]["params_remaining"] == 13 * 4 + 4 + 4 + 1
    # 4 draws of a barely-adapted sampler have not converged: the run says so on stderr
    if max(d["rhat"].values()) > 1.05:
        assert "R-hat > 1.05" in capsys.readouterr().err


@pytest.mark.slow
def test_nuts_vmapped_group_equals_single_runs():
    """Two data splits as one vmapped program (sweep.vmap) give each split's single-run result."""
    from emtdamp.loops.centralised import train_group

    m = get_method("nuts")
    hp = m.hparams_cls(chains=2, warmup=6, draws=4, max_num_doublings=3)
    ds = [load("boston", seed=s, test_fraction=0.1) for s in (0, 1)]
    g = train_group(m, hp, ModelSpec((4,)), ds, seeds=[0, 0], epochs=10, batch_size=1000)
    r = train(m, hp, ModelSpec((4,)), ds[1], epochs=10, batch_size=1000, seed=0, progress=False)
    for k, v in r.test.items():
        assert g.runs[1].test[k] == pytest.approx(v, rel=1e-4), k
