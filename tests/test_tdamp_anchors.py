"""EM-TDAMP initial means drawn from the initial prior (``init_means="prior"``, the anchored-ensemble start).

References: the spec's initialisation (``init_means="lecun"``: kernels ``N(0, 1/N_in)``, zero biases) for the
kernel draws, and the closed-form moments of ``N(0, s0)`` / ``N(0, sigmab0_sq)`` for the draws, with tolerances
from the number of draws.
"""

import jax
import numpy as np
import pytest

from emtdamp import tdamp
from emtdamp.methods import get_method
from emtdamp.methods.base import DataSpec, ModelSpec
from emtdamp.tdamp.state import TdampHParams, initial_slab_var

SIZES = (6, 3000, 2)


def _check_normal(x: np.ndarray, var: float) -> None:
    """Sample mean / variance of ``x`` match ``N(0, var)`` within 5 standard errors (n = x.size)."""
    x = np.asarray(x, np.float64).ravel()
    n = x.size
    assert abs(x.mean()) < 5 * np.sqrt(var / n), (x.mean(), var, n)
    assert abs(x.var() - var) < 5 * var * np.sqrt(2.0 / (n - 1)), (x.var(), var, n)


@pytest.mark.parametrize("sigma0_sq", [0.0, 0.7])
def test_prior_means_are_draws_from_the_initial_prior(sigma0_sq):
    key = jax.random.PRNGKey(3)
    hp = TdampHParams(sigma0_sq=sigma0_sq, gamma=1.0, sigmab0_sq=2.5, init_means="prior")
    st = tdamp.init(key, SIZES, hp)
    spec = tdamp.init(key, SIZES, TdampHParams(sigma0_sq=sigma0_sq, gamma=1.0, sigmab0_sq=2.5))
    for n_in, lay, ref in zip(SIZES[:-1], st.layers, spec.layers, strict=True):
        s0 = initial_slab_var(hp, n_in)
        # the same standard-normal draws as the spec's kernels, rescaled from sd 1/sqrt(N_in) to sqrt(s0)
        np.testing.assert_allclose(np.asarray(lay.W), np.asarray(ref.W) * np.sqrt(n_in * s0), rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(np.asarray(ref.b), 0.0)      # spec: zero biases
        # the anchor: prior means = initial means, prior variances = the initial prior's
        np.testing.assert_array_equal(np.asarray(lay.mu0), np.asarray(lay.W))
        np.testing.assert_array_equal(np.asarray(lay.slab_m), np.asarray(lay.W))
        np.testing.assert_array_equal(np.asarray(lay.b0), np.asarray(lay.b))
        np.testing.assert_allclose(np.asarray(lay.s0), s0, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(lay.vb0), 2.5, rtol=1e-6)
    _check_normal(st.layers[0].W, initial_slab_var(hp, SIZES[0]))      # 18,000 kernel draws
    _check_normal(st.layers[1].W, initial_slab_var(hp, SIZES[1]))      # 6,000
    _check_normal(st.layers[0].b, 2.5)                                  # 3,000 bias draws
    # biases independent of the kernels they sit beside (correlation within 5 / sqrt(n))
    w_row = np.asarray(st.layers[0].W[0], np.float64)
    b = np.asarray(st.layers[0].b, np.float64)
    assert abs(np.corrcoef(w_row, b)[0, 1]) < 5 / np.sqrt(b.size)


def test_fits_of_a_mixture_get_different_anchors_and_the_method_plumbs_the_option():
    model = ModelSpec(hidden=(16,), activation="relu")
    data = DataSpec(task="regression", n_features=3, n_outputs=1, n_train=50)
    method = get_method("emtdamp")
    algo = method.build(model, data, method.hparams_cls(init_means="prior", sigma0_sq=1.0))
    s1, s2 = algo.init(jax.random.PRNGKey(0)), algo.init(jax.random.PRNGKey(1))
    assert np.all(np.asarray(s1.layers[0].b) != 0.0)
    assert not np.allclose(np.asarray(s1.layers[0].b), np.asarray(s2.layers[0].b))
    default = method.build(model, data, method.hparams_cls()).init(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(default.layers[0].b), 0.0)


def test_unknown_init_means_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="init_means.*lecun.*prior"):
        TdampHParams(init_means="xavier")
