"""Pruning schedule, masks, sparsity report and physical compaction (spec section 4)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emtdamp import tdamp
from emtdamp.models import mlp
from emtdamp.tdamp import TdampHParams, prune


def _trained_state(sizes=(6, 9, 7, 2), dtype="float64", steps=3, seed=0):
    """A state after a few minibatches (one jitted epoch of random data)."""
    hp = TdampHParams(dtype=dtype)
    st = tdamp.init(jax.random.PRNGKey(seed), sizes, hp)
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(steps, 16, sizes[0])).astype(dtype)
    ys = rng.normal(size=(steps, 16, sizes[-1])).astype(dtype)
    return tdamp.epoch(st, jnp.asarray(xs), jnp.asarray(ys), None, hp)[0]


def test_target_density_schedule():
    k, warm, ramp = 0.2, 10, 20
    assert float(prune.target_density(9, k, warm, ramp)) == 1.0
    assert float(prune.target_density(10, k, warm, ramp)) == pytest.approx(1 - 0.8 * 1 / 20)
    assert float(prune.target_density(19, k, warm, ramp)) == pytest.approx(1 - 0.8 * 10 / 20)
    assert float(prune.target_density(29, k, warm, ramp)) == pytest.approx(0.2)
    assert float(prune.target_density(500, k, warm, ramp)) == pytest.approx(0.2)


def test_topk_masks_keep_largest_evidence(x64):
    st = _trained_state()
    rng = np.random.default_rng(1)
    layers = []
    for lay in st.layers:
        n = lay.mask.shape[0]
        lam = rng.normal(size=n)
        lam[:2] = 5.0  # a tie at the top: broken by the slab SNR
        mask = np.ones(n)
        mask[-1] = 0.0  # already pruned: never revived, never counted
        layers.append(lay.replace(lam_acc=jnp.asarray(lam), mask=jnp.asarray(mask)))
    st = st.replace(layers=layers)
    for density in (0.3, 0.5, 0.75):
        masks = prune.topk_masks(st, density)
        for lay, m in zip(st.layers, masks, strict=True):
            n = lay.mask.shape[0]
            k = math.ceil(density * n)
            lam = np.asarray(lay.lam_acc).copy()
            snr = np.sum(np.asarray(lay.slab_m) ** 2 / np.asarray(lay.slab_v), axis=1)
            order = sorted(range(n - 1), key=lambda j: (-lam[j], -snr[j]))  # live groups only
            expect = np.zeros(n)
            expect[order[:k]] = 1
            np.testing.assert_array_equal(np.asarray(m), expect)


def test_end_epoch_target_and_free_modes(x64):
    st = _trained_state()
    out = prune.end_epoch(st, jnp.asarray(3), mode="target", kappa=0.25, warm=5, ramp=2)
    for a, b in zip(out.layers, st.layers, strict=True):  # before warm: nothing pruned, evidence reset
        np.testing.assert_array_equal(a.mask, b.mask)
        assert float(jnp.abs(a.lam_acc).sum()) == 0.0
    out = prune.end_epoch(st, jnp.asarray(6), mode="target", kappa=0.25, warm=5, ramp=2)
    for lay in out.layers:
        n = lay.mask.shape[0]
        assert int(lay.mask.sum()) == math.ceil(0.25 * n)
        dead = np.asarray(lay.mask) == 0
        assert np.all(np.asarray(lay.W)[dead] == 0) and np.all(np.asarray(lay.mu0)[dead] == 0)
        assert np.all(np.asarray(lay.rho)[dead] == 0) and np.all(np.asarray(lay.pi)[dead] == 0)
    out = prune.end_epoch(st, jnp.asarray(6), mode="target", kappa=0.25, warm=5, ramp=2, prune_inputs=False)
    assert int(out.layers[0].mask.sum()) == st.layers[0].mask.shape[0]
    # free mode: groups with pi <= 0.5 go
    pis = [jnp.asarray(np.linspace(0.0, 1.0, lay.mask.shape[0])) for lay in st.layers]
    st2 = st.replace(layers=[lay.replace(pi=p) for lay, p in zip(st.layers, pis, strict=True)])
    out = prune.end_epoch(st2, jnp.asarray(6), mode="free", warm=5)
    for lay, p in zip(out.layers, pis, strict=True):
        np.testing.assert_array_equal(np.asarray(lay.mask), (np.asarray(p) > 0.5).astype(float))


def _random_masks(st, rng):
    masks = []
    for lay in st.layers:
        m = (rng.uniform(size=lay.mask.shape[0]) > 0.4).astype(float)
        m[0] = 1.0
        masks.append(jnp.asarray(m))
    return masks


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_compact_equals_masked_plug_in_network(dtype, x64):
    st = _trained_state(dtype=dtype)
    rng = np.random.default_rng(2)
    st = prune.apply_masks(st, _random_masks(st, rng))
    # some unmasked groups with pi <= 0.5 are inactive as well (free-mode definition)
    lay1 = st.layers[1]
    st = st.replace(layers=[st.layers[0], lay1.replace(pi=lay1.pi.at[1].set(0.3)), *st.layers[2:]])
    params, sizes = prune.compact(st)
    active = [np.asarray(a) for a in prune.active_groups(st)]
    assert sizes == (6, int(active[1].sum()), int(active[2].sum()), 2)
    assert sizes[1] < 9 and sizes[2] < 7
    x = rng.normal(size=(50, 6)).astype(dtype)
    masked = prune.masked_state(st)
    ref, _ = tdamp.forward_moments(masked, jnp.asarray(x), plug_in=True)
    out = mlp.apply([{k: jnp.asarray(v) for k, v in p.items()} for p in params], jnp.asarray(x))
    np.testing.assert_allclose(out, ref, rtol=1e-5 if dtype == "float32" else 1e-12,
                               atol=1e-5 if dtype == "float32" else 1e-12)


def test_sparsity_report_counts(x64):
    st = _trained_state()  # sizes (6, 9, 7, 2)
    masks = [jnp.asarray([1, 0, 1, 1, 1, 1.0]), jnp.asarray([1, 1, 0, 0, 1, 1, 1, 0, 1.0]),
             jnp.asarray([1, 1, 1, 0, 0, 0, 0.0])]
    st = prune.apply_masks(st, masks)
    st = st.replace(layers=[lay.replace(pi=jnp.where(lay.mask > 0, 0.9, 0.0)) for lay in st.layers])
    rep = prune.sparsity(st)
    kept1, kept2 = 6, 3  # hidden units whose outgoing group is alive
    assert rep["neurons_pruned_frac"] == pytest.approx(1 - (kept1 + kept2) / 16)
    assert rep["inputs_pruned_frac"] == pytest.approx(1 / 6)
    # compacted network: 6 x kept1 (one input row zero, not counted) + kept1 x kept2 + kept2 x 2
    kept_w = 5 * kept1 + kept1 * kept2 + kept2 * 2
    dense_w = 6 * 9 + 9 * 7 + 7 * 2
    assert rep["params_remaining"] == kept_w + kept1 + kept2 + 2
    assert rep["params_dense"] == dense_w + 9 + 7 + 2
    assert rep["weights_zero_frac"] == pytest.approx(1 - kept_w / dense_w)
    assert rep["group_density_l1"] == pytest.approx(6 / 9)
    assert rep["group_density"] == pytest.approx((5 + 6 + 3) / 22)
