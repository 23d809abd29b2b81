"""M-step closed forms (spec section 3) against brute-force references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, optimize, stats

from emtdamp import tdamp
from emtdamp.tdamp import TdampHParams, em
from emtdamp.tdamp.module_a import probit_output


def test_rho_modes():
    pi = jnp.asarray([0.0, 0.2, 0.9999999, 1.0, 0.5])
    mask = jnp.asarray([1.0, 1.0, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(em.rho_group(pi, mask, 1e-3), [1e-3, 0.2, 1 - 1e-3, 0.0, 0.5], rtol=1e-6)
    mean_live = (0.0 + 0.2 + 0.9999999 + 0.5) / 4
    np.testing.assert_allclose(em.rho_layer(pi, mask, 1e-3), [mean_live] * 3 + [0.0, mean_live], rtol=1e-6)


def test_v_regression_closed_form(x64):
    rng = np.random.default_rng(0)
    P, VP, y = rng.normal(size=(7, 3)), rng.uniform(0.1, 1, (7, 3)), rng.normal(size=(7, 3))
    w = np.array([1, 1, 1, 0, 1, 1, 0.0])
    v = 0.4
    _, _, stat, count = tdamp.module_a.gaussian_output(jnp.asarray(P), jnp.asarray(VP), jnp.asarray(y), v,
                                                       jnp.asarray(w))
    zh, tz = (P * v + y * VP) / (VP + v), VP * v / (VP + v)  # posterior of z given N(P, VP) and N(y; z, v)
    ref = np.sum(w[:, None] * ((y - zh) ** 2 + tz)) / (w.sum() * 3)
    np.testing.assert_allclose(float(em.v_regression(stat, count, jnp.asarray(v))), ref, rtol=1e-12)
    assert float(em.v_regression(jnp.asarray(0.0), jnp.asarray(0.0), jnp.asarray(0.3))) == pytest.approx(0.3)


def _e2_quad(mu, s, v):
    """E[e^2 | d + e > 0], d ~ N(mu, s), e ~ N(0, v), by 1-D quadrature over e (P(d > -e) = Phi((mu+e)/sqrt s))."""
    f = lambda e, k: e ** k * stats.norm.pdf(e, 0, np.sqrt(v)) * stats.norm.cdf((mu + e) / np.sqrt(s))
    lim = 12 * np.sqrt(v)
    return integrate.quad(f, -lim, lim, args=(2,), epsrel=1e-12)[0] / integrate.quad(f, -lim, lim, args=(0,),
                                                                                        epsrel=1e-12)[0]


@pytest.mark.parametrize("mu,s,v", [(1.0, 0.5, 0.8), (-2.0, 1.0, 0.3), (0.0, 2.0, 4.0), (3.0, 0.1, 10.0)])
def test_augmented_e2_vs_quadrature(mu, s, v, x64):
    ours = float(em._augmented_e2(jnp.asarray(mu), jnp.asarray(s), jnp.asarray(v)))
    assert ours == pytest.approx(_e2_quad(mu, s, v), rel=1e-8)


def test_classification_closed_form_fixed_point(x64):
    rng = np.random.default_rng(1)
    P, VP = rng.normal(size=(30, 4)) * 2, rng.uniform(0.05, 0.5, (30, 4))
    c = np.argmax(P + rng.normal(size=(30, 4)), axis=1)  # mostly right labels: finite fixed point
    w = np.ones(30)
    mu, s, mask = tdamp.module_a.probit_pairs(jnp.asarray(P), jnp.asarray(VP), jnp.asarray(c), 1.0)
    wt = mask * w[:, None]
    # one pass equals the E-step statistic the output function computes
    _, _, stat, count = probit_output(jnp.asarray(P), jnp.asarray(VP), jnp.asarray(c), jnp.asarray(1.0),
                                      jnp.asarray(w))
    v1 = em.v_classification_closed_form(mu, s, wt, jnp.asarray(1.0), passes=1)
    assert float(v1) == pytest.approx(float(stat / count), rel=1e-12)
    # many passes reach a fixed point of v = mean E[e^2](v) (brute-force check with the quadrature)
    vinf = float(em.v_classification_closed_form(mu, s, wt, jnp.asarray(1.0), passes=200))
    mask_np = np.asarray(mask) > 0
    ref = np.mean([_e2_quad(a, b, vinf) for a, b in zip(np.asarray(mu)[mask_np], np.asarray(s)[mask_np],
                                                         strict=True)])
    assert vinf == pytest.approx(ref, rel=1e-6)


def test_probit_objective_and_numerical_v(x64):
    rng = np.random.default_rng(2)
    mu = jnp.asarray(rng.normal(1.0, 1.5, size=(40, 3)))
    s = jnp.asarray(rng.uniform(0.05, 0.6, size=(40, 3)))
    wt = jnp.ones((40, 3))

    def j_quad(logv):
        tot = 0.0
        for a, b in zip(np.asarray(mu).ravel(), np.asarray(s).ravel(), strict=True):
            f = lambda d, a=a, b=b: stats.norm.pdf(d, a, np.sqrt(b)) * stats.norm.logcdf(d / np.exp(0.5 * logv))
            tot += integrate.quad(f, a - 12 * np.sqrt(b), a + 12 * np.sqrt(b), epsrel=1e-11)[0]
        return tot

    for lv in (-1.0, 0.5):
        assert float(em.probit_objective(jnp.asarray(lv), mu, s, wt)) == pytest.approx(j_quad(lv), rel=1e-6)
    v_num = float(em.v_classification_numerical(mu, s, wt, jnp.asarray(1.0)))
    best = optimize.minimize_scalar(lambda lv: -float(em.probit_objective(jnp.asarray(lv), mu, s, wt)),
                                    bounds=(-8, 8), method="bounded", options={"xatol": 1e-8})
    assert np.log(v_num) == pytest.approx(best.x, abs=1e-4)


def test_m_step_schedules_and_ema(x64):
    hp = TdampHParams(v_ema=0.9, dtype="float64")
    st = tdamp.init(jax.random.PRNGKey(0), (3, 4, 1), hp)
    st = st.replace(v_stat=jnp.asarray(10.0), v_count=jnp.asarray(20.0), v_stat_acc=jnp.asarray(30.0),
                    v_count_acc=jnp.asarray(40.0))
    out = em.m_step(st, hp)
    assert float(out.v) == pytest.approx(0.9 * 1.0 + 0.1 * 0.5)
    np.testing.assert_allclose(out.layers[0].rho, np.clip(np.asarray(st.layers[0].pi), 1e-5, 1 - 1e-5))
    # epoch schedule: the minibatch M-step leaves v alone; end_epoch_v uses the epoch sums and resets them
    hp_e = TdampHParams(v_schedule="epoch", dtype="float64")
    out = em.m_step(st, hp_e)
    assert float(out.v) == 1.0
    out = em.end_epoch_v(out, hp_e)
    assert float(out.v) == pytest.approx(0.75)
    assert float(out.v_stat_acc) == 0.0 and float(out.v_count_acc) == 0.0
    # fixed
    assert float(em.m_step(st, TdampHParams(v_update="fixed", dtype="float64")).v) == 1.0


def test_v_warm_moves_v_per_minibatch_then_per_epoch(x64):
    """``v_schedule="epoch", v_warm=1``: during the first epoch v follows the per-minibatch M-step exactly (the
    minibatch schedule's trajectory), the end of that epoch leaves v alone, then v holds still within an epoch and
    its end sets v to the closed form of the epoch's summed statistics. ``v_warm=0`` is the plain epoch schedule."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3))
    y = np.tanh(x[:, :1] - x[:, 1:2]) + 0.1 * rng.normal(size=(64, 1))
    hp_m = TdampHParams(dtype="float64")
    hp_w = TdampHParams(v_schedule="epoch", v_warm=1, dtype="float64")
    hp_e = TdampHParams(v_schedule="epoch", dtype="float64")

    def run_epoch(st, hp):
        vs = []
        for i in range(0, 64, 16):
            st, info = tdamp.step(st, jnp.asarray(x[i:i + 16]), jnp.asarray(y[i:i + 16]), hp)
            st = em.m_step(st, hp, info["zstats"])
            vs.append(float(st.v))
        return st, vs

    st0 = tdamp.init(jax.random.PRNGKey(0), (3, 8, 1), hp_m)
    st_m, v_m = run_epoch(st0, hp_m)
    st_w, v_w = run_epoch(st0, hp_w)
    assert v_w == v_m and len(set(v_m)) == 4        # epoch 1: per minibatch, as the minibatch schedule
    st_w = em.end_epoch_v(st_w, hp_w)
    assert float(st_w.v) == v_w[-1] and int(st_w.epochs) == 1 and float(st_w.v_stat_acc) == 0.0
    st_w, v_w2 = run_epoch(st_w, hp_w)
    assert v_w2 == [v_w[-1]] * 4                     # epoch 2: v holds still
    expect = float(st_w.v_stat_acc) / float(st_w.v_count_acc)
    st_w = em.end_epoch_v(st_w, hp_w)
    assert float(st_w.v) == pytest.approx(expect, rel=1e-12) and int(st_w.epochs) == 2
    _, v_e = run_epoch(st0, hp_e)                     # v_warm = 0: v0 through the first epoch
    assert v_e == [hp_e.v0] * 4
    with pytest.raises(ValueError, match="v_warm"):
        TdampHParams(v_schedule="epoch", v_warm=-1)
