"""SG-MCMC(-SA) methods on the small CNN (``model.kind: cnn``): energy gradient against an independent
flax.linen + hand-written SSGL reference, layer indexing (conv kernels first, then dense), SA latents,
magnitude pruning, padding rows, the posterior-average prediction, a short real-data run and errors."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from emtdamp.methods import ModelSpec, get_method
from emtdamp.methods.base import Batch, DataSpec
from emtdamp.methods.sgmcmc_methods import SGMCMCHParams, layer_keys

# tiny CNN on 8x8x1 images: Conv_0 3x3x1x3 -> pool 4x4 -> Conv_1 3x3x3x5 -> pool 2x2 -> Dense_0 20x6 -> Dense_1 6x3
# layer indices: 0 = Conv_0, 1 = Conv_1, 2 = Dense_0 (FC1, as in the spec's Model 1), 3 = Dense_1
MODEL = ModelSpec(hidden=(6,), kind="cnn", conv=(3, 5), kernel_size=3)
KSHAPES = [(3, 3, 1, 3), (3, 3, 3, 5), (20, 6), (6, 3)]
N = 48


def _images(task="classification", n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 64)).astype(np.float32)
    if task == "regression":
        y = (x[:, :1] - 0.5 * x[:, 9:10] + 0.1 * rng.normal(size=(n, 1))).astype(np.float32)
        spec = DataSpec("regression", 64, 1, n, image_shape=(8, 8, 1))
    else:
        y = rng.integers(0, 3, n).astype(np.int32)
        spec = DataSpec("classification", 64, 3, n, image_shape=(8, 8, 1))
    return jnp.asarray(x), jnp.asarray(y), spec


def _leaves(tree):
    return [jax.random.key_data(v) if jnp.issubdtype(v.dtype, jax.dtypes.prng_key) else v
            for v in jax.tree_util.tree_leaves(tree)]


_CACHE: dict = {}


def _method(name, tag, model, spec, hp):
    """``(algorithm, jit(step), jit(predict))`` of ``get_method(name).build(model, spec, hp)``, one per (variant,
    tag, configuration). Compiling a step takes seconds on 2 shared cores, so tests that build the same
    configuration reuse it; the built algorithm closes over its static configuration (task, model, N, SSGL /
    pruning layers) and the float type of the dtype context it was built in (the tag names that context)."""
    ck = (name, tag, model, spec, hp)
    if ck not in _CACHE:
        algo = get_method(name).build(model, spec, hp)
        _CACHE[ck] = (algo, jax.jit(algo.step), jax.jit(algo.predict))
    return _CACHE[ck]


def _run(algo, st, x, y, bs, n_epochs, key=0):
    """``n_epochs`` shuffled epochs of batch ``bs`` in one jit (compiled once per algorithm/shape)."""
    ck = ("run", id(algo), x.shape, bs, n_epochs)
    if ck not in _CACHE:
        n = x.shape[0]

        def epoch(s, k, x, y):
            perm = jax.random.permutation(k, n).reshape(n // bs, bs)
            return jax.lax.scan(algo.step, s, Batch(x[perm], y[perm], jnp.ones((n // bs, bs), x.dtype)))

        _CACHE[ck] = (algo, jax.jit(lambda s, k, x, y: jax.lax.scan(lambda s_, k_: epoch(s_, k_, x, y), s,
                                                                   jax.random.split(k, n_epochs))))
    return _CACHE[ck][1](st, jax.random.key(key), x, y)


class RefCNN(nn.Module):
    """Independent reference network: flax's own Conv / max_pool / Dense (not emtdamp.models.cnn)."""

    conv: tuple
    hidden: tuple
    k: int
    n_out: int

    @nn.compact
    def __call__(self, x):
        h = x.reshape((x.shape[0], 8, 8, 1))
        for i, c in enumerate(self.conv):
            h = nn.max_pool(nn.relu(nn.Conv(c, (self.k, self.k), padding="SAME", name=f"Conv_{i}")(h)),
                            (2, 2), strides=(2, 2))
        h = h.reshape((h.shape[0], -1))
        for i, n in enumerate(self.hidden):
            h = nn.relu(nn.Dense(n, name=f"Dense_{i}")(h))
        return nn.Dense(self.n_out, name=f"Dense_{len(self.hidden)}")(h)


def _ref_apply(params, x, n_out):
    return RefCNN(MODEL.conv, MODEL.hidden, MODEL.kernel_size, n_out).apply({"params": params}, x)


_ref_probs = jax.jit(lambda p, x: jax.nn.softmax(_ref_apply(p, x, 3)))


def ref_energy(params, x, y, w, *, task, n_train, wd, sparse, kappa0, kappa1, sigma2):
    """Spec A.3 energy written out: (N/n) Σ w_i nll_i + ½ N wd (non-SSGL kernels² + all biases²)
    + Σ_SSGL [κ1 β² / (2σ²) + κ0 |β| / σ]; ``sparse`` names the SSGL layers, κ's are dicts by name."""
    out = _ref_apply(params, x, 1 if task == "regression" else 3)
    if task == "regression":
        nll = jnp.sum((out - y) ** 2, axis=-1) / (2.0 * sigma2)
    else:
        nll = -jnp.take_along_axis(jax.nn.log_softmax(out), y[:, None], axis=1)[:, 0]
    u = n_train / jnp.sum(w) * jnp.sum(w * nll)
    for name, layer in params.items():
        u = u + 0.5 * n_train * wd * jnp.sum(layer["bias"] ** 2)
        b = layer["kernel"]
        if name in sparse:
            u = u + jnp.sum(kappa1[name] * b ** 2) / (2.0 * sigma2) + jnp.sum(kappa0[name] * jnp.abs(b)) / jnp.sqrt(
                sigma2)
        else:
            u = u + 0.5 * n_train * wd * jnp.sum(b ** 2)
    return u


# --------------------------------------------------------------------------------------------------
# (a) the energy gradient of one CNN step equals jax.grad of the independent reference energy
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task,ssgl_layers,names", [
    ("classification", (0, 2), ("Conv_0", "Dense_0")),           # every layer is SSGL in one case, L2 in
    ("regression", (1, -1), ("Conv_1", "Dense_1")),              # the other
])
def test_step_gradient_matches_reference_energy(x64, task, ssgl_layers, names):
    x, y, spec = _images(task)
    w = jnp.asarray(np.r_[np.ones(13), np.zeros(3)])          # 13 real rows, 3 padding rows
    # learning_rate 1, momentum 1: the SGHMC noise variance 2ε(1−m) − ε² < 0 is clipped to 0, so one step
    # from zero momentum gives v = −ε g = −g exactly: the momentum after the step IS minus the gradient
    # noise="sa": the paper's energy, whose likelihood shares the SSGL σ² (ref_energy's sigma2)
    hp = SGMCMCHParams(learning_rate=1.0, momentum=1.0, ssgl_layers=ssgl_layers, weight_decay=3e-3,
                       kappa0_init=0.7, kappa1_init=2.5, sigma_init=0.8, v0=0.05, v1=2.0, noise="sa")
    algo, step, _ = _method("sghmc_sa", f"x64-{task}", MODEL, spec, hp)
    st = algo.init(jax.random.key(3))
    n_out = 1 if task == "regression" else 3
    assert [tuple(st.params[k]["kernel"].shape) for k in layer_keys(st.params)] == [*KSHAPES[:3], (6, n_out)]
    assert st.params["Conv_0"]["kernel"].dtype == jnp.float64           # cast to the default float
    # padding rows hold garbage, different in two otherwise identical steps: the whole state must agree
    xg = x[:16].at[13:].set(50.0)
    yg = y[:16].at[13:].set(-30.0 if task == "regression" else 2)
    new, met = step(st, Batch(x[:16], y[:16], w))
    new2, met2 = step(st, Batch(xg, yg, w))
    for u, v in zip(_leaves(new), _leaves(new2), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)
    p0 = st.params
    kap0 = {nm: k for nm, k in zip(names, st.latents.kappa0, strict=True)}
    kap1 = {nm: k for nm, k in zip(names, st.latents.kappa1, strict=True)}
    kw = dict(task=task, n_train=N, wd=3e-3, kappa0=kap0, kappa1=kap1, sigma2=0.64)
    u_ref, g_ref = jax.jit(jax.value_and_grad(lambda p: ref_energy(p, x[:13], y[:13], w[:13], sparse=names, **kw)))(p0)
    np.testing.assert_allclose(met["energy"], u_ref, rtol=1e-10)
    for path, g in jax.tree_util.tree_flatten_with_path(g_ref)[0]:
        got = -new.momentum[path[0].key][path[1].key]
        np.testing.assert_allclose(got, g, rtol=1e-9, atol=1e-12 * float(jnp.max(jnp.abs(g))), err_msg=str(path))
        np.testing.assert_allclose(new.params[path[0].key][path[1].key], p0[path[0].key][path[1].key] - g,
                                   rtol=1e-9, atol=1e-12)
    # the SSGL terms matter: the reference without them disagrees on the SSGL kernels
    g_plain = jax.jit(jax.grad(lambda p: ref_energy(p, x[:13], y[:13], w[:13], sparse=(), **kw)))(p0)
    for nm in names:
        assert not np.allclose(g_plain[nm]["kernel"], g_ref[nm]["kernel"], rtol=1e-3)


def test_predict_is_average_of_kept_samples(x64):
    x, y, spec = _images()
    hp = SGMCMCHParams(learning_rate=1e-3, ssgl_layers=(0, 2), burn_in=2, thin=2, n_samples=3)
    algo, step, predict = _method("sghmc_sa", "x64-classification", MODEL, spec, hp)
    st = algo.init(jax.random.key(0))
    pred0 = predict(st, x[:16]).probs                      # no sample kept yet: the current sample
    np.testing.assert_allclose(pred0, _ref_probs(st.params, x[:16]), rtol=1e-10)
    kept = []
    for i in range(10):                                     # kept at k = 4, 6, 8, 10 (ring of 3: 6, 8, 10)
        j = 16 * (i % 3)
        st, _ = step(st, Batch(x[j: j + 16], y[j: j + 16], jnp.ones(16)))
        if i + 1 > 2 and (i + 1 - 2) % 2 == 0:
            kept.append(st.params)
    assert int(st.samples.n_collected) == 4
    want = np.mean([_ref_probs(p, x[:16]) for p in kept[-3:]], axis=0)
    np.testing.assert_allclose(predict(st, x[:16]).probs, want, rtol=1e-10)


# --------------------------------------------------------------------------------------------------
# (b) SSGL latents: shape of exactly the selected kernels; SA moves them, ω = 0 leaves them
# --------------------------------------------------------------------------------------------------
def test_latents_shape_sa_vs_frozen_and_variants_vmap():
    """sghmc_sa / sghmc_em / sghmc states differ only in arrays: one vmapped step runs all three. SA and EM
    move the latents (of exactly the FC1 kernel), sghmc (ω = 0) leaves them bit for bit."""
    x, y, spec = _images()
    names = ["sghmc_sa", "sghmc_em", "sghmc"]
    hp = SGMCMCHParams(learning_rate=1e-3, ssgl_layers=(2,), beta_a=-1.0, beta_b=-1.0, v0=0.01, v1=1.0)
    ms = [_method(n, "A", MODEL, spec, hp) for n in names]
    sts = [mm[0].init(jax.random.key(0)) for mm in ms]
    for st0 in sts:
        assert [r.shape for r in st0.latents.rho] == [(20, 6)]          # Dense_0 = FC1 only
        assert [k.shape for k in st0.latents.kappa0 + st0.latents.kappa1] == [(20, 6)] * 2
        np.testing.assert_array_equal(st0.hyper.a, [120.0])            # a = b = p_l = 20·6
    stacked = jax.tree_util.tree_map(lambda *v: jnp.stack(v), *sts)
    vstep = jax.jit(jax.vmap(ms[0][0].step, in_axes=(0, None)))
    batches = [Batch(x[16 * i: 16 * i + 16], y[16 * i: 16 * i + 16], jnp.ones(16)) for i in range(2)]
    out, met = vstep(stacked, batches[0])
    np.testing.assert_allclose(met["omega"], [100 ** -0.7, 1.0, 0.0], rtol=1e-5)
    ref, _ = ms[0][1](sts[0], batches[0])              # the SA row against its own unbatched step
    got = jax.tree_util.tree_map(lambda v: v[0], out)
    for u, v in zip(_leaves(got), _leaves(ref), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)
    out, met = vstep(out, batches[1])
    for i, name in enumerate(names):
        lat0, lat = sts[i].latents, jax.tree_util.tree_map(lambda v, i=i: v[i], out.latents)
        for a, b in zip(_leaves(lat0), _leaves(lat), strict=True):
            if name == "sghmc":
                np.testing.assert_array_equal(a, b)
            else:
                assert not np.allclose(a, b), name                    # ρ, κ0, κ1, δ, σ² all moved
        assert not np.allclose(sts[i].params["Dense_0"]["kernel"], out.params["Dense_0"]["kernel"][i])


def test_conv_kernel_ssgl_and_model1_fc1_index():
    """A conv layer can carry SSGL (latents of the 4-D kernel); index 2 of the spec's Model 1 is FC1."""
    x, y, spec = _images()
    st = get_method("sghmc_sa").build(MODEL, spec, SGMCMCHParams(ssgl_layers=(1, 0))).init(jax.random.key(0))
    assert [r.shape for r in st.latents.rho] == [(3, 3, 1, 3), (3, 3, 3, 5)]
    model1 = ModelSpec(hidden=(200,), kind="cnn", conv=(32, 64), kernel_size=5)
    mnist = DataSpec("classification", 784, 10, 4000, image_shape=(28, 28, 1))
    hp1 = SGMCMCHParams(ssgl_layers=(2,), beta_a=-1.0, beta_b=-1.0, n_samples=1)
    st = get_method("sghmc_sa").build(model1, mnist, hp1).init(jax.random.key(0))
    assert [r.shape for r in st.latents.rho] == [(7 * 7 * 64, 200)]
    np.testing.assert_array_equal(st.hyper.b, [7 * 7 * 64 * 200])
    assert sum(v.size for v in jax.tree_util.tree_leaves(st.params)) == 681_506


def test_layer_keys_numeric_order():
    fake = {f"{k}_{i}": {} for k, n in (("Dense", 3), ("Conv", 12)) for i in range(n)}
    assert layer_keys(fake) == [f"Conv_{i}" for i in range(12)] + ["Dense_0", "Dense_1", "Dense_2"]
    assert layer_keys([{}, {}, {}]) == [0, 1, 2]
    with pytest.raises(ValueError, match="Conv_i / Dense_j"):
        layer_keys({"BatchNorm_0": {}})


# --------------------------------------------------------------------------------------------------
# (c) magnitude pruning reaches the (inflated) target and pruned weights stay zero
# --------------------------------------------------------------------------------------------------
def test_magnitude_pruning_hits_inflated_target_and_stays_zero():
    x, y, spec = _images()
    target, layers = 0.5, (0, 1, 2)               # Dense_1 (18 weights) is never pruned
    hp = SGMCMCHParams(learning_rate=1e-3, ssgl_layers=(2,), prune_target=target, prune_layers=layers,
                       prune_damping=0.5, prune_gap=1.0)
    algo = _method("sghmc_sa", "prune", MODEL, spec, hp)[0]
    st = algo.init(jax.random.key(0))
    sizes = [math.prod(s) for s in KSHAPES]
    s_eff = target * sum(sizes) / sum(sizes[i] for i in layers)        # S · P_total / P_pruned
    np.testing.assert_allclose(st.prune_scale, s_eff / target, rtol=1e-6)
    st, met = _run(algo, st, x, y, 8, 4)   # 24 steps: s_k = S (1 − 2^−k), within 3e-8 of S
    keys = layer_keys(st.params)
    want = sum(round(s_eff * sizes[i]) for i in layers)
    n_zero = sum(int(np.sum(np.asarray(st.params[keys[i]]["kernel"]) == 0)) for i in range(4))
    assert abs(n_zero - want) <= len(layers)                       # per-layer rounding only
    sp = algo.sparsity(st)
    assert abs(sp["weights_zero_frac"] - target) <= len(layers) / sum(sizes)
    assert np.all(np.asarray(st.params["Dense_1"]["kernel"]) != 0)
    masks = [np.asarray(mk) for mk in st.masks]
    st2, _ = _run(algo, st, x, y, 8, 4, key=1)
    for i, mk in zip(layers, masks, strict=True):
        kern, mom = np.asarray(st2.params[keys[i]]["kernel"]), np.asarray(st2.momentum[keys[i]]["kernel"])
        assert np.all(kern[~mk] == 0) and np.all(mom[~mk] == 0)        # pruned weights (and momenta) stay 0
        assert np.all(kern[mk] != 0)
        assert np.all(np.asarray(st2.masks[layers.index(i)]) <= mk)   # masks never regrow
    assert sp["params_remaining"] == sum(v.size for v in jax.tree_util.tree_leaves(st.params)) - n_zero


def test_sparsity_counts_dense_hidden_units_only():
    x, y, spec = _images()
    algo = _method("sghmc", "A", MODEL, spec, SGMCMCHParams(ssgl_layers=(2,)))[0]
    st = algo.init(jax.random.key(0))
    p = jax.tree_util.tree_map(lambda v: v, st.params)
    p["Dense_1"] = {**p["Dense_1"], "kernel": p["Dense_1"]["kernel"].at[jnp.array([1, 4])].set(0.0)}
    p["Dense_0"] = {**p["Dense_0"], "kernel": p["Dense_0"]["kernel"].at[3].set(0.0)}    # a conv feature, not a unit
    sp = algo.sparsity(st.replace(params=p))
    assert sp["neurons_pruned_frac"] == 2 / 6                          # hidden units of Dense_0: rows of Dense_1
    n_w = sum(math.prod(s) for s in KSHAPES)
    assert sp["weights_zero_frac"] == (2 * 3 + 6) / n_w


# --------------------------------------------------------------------------------------------------
# (d) padding rows change nothing
# --------------------------------------------------------------------------------------------------
def test_padding_rows_change_nothing():
    """float32, FC1-only SSGL (the float64 gradient test also runs both tasks with garbage padding rows)."""
    x, y, spec = _images()
    algo, step, _ = _method("sghmc_sa", "A", MODEL, spec, SGMCMCHParams(learning_rate=1e-3, ssgl_layers=(2,)))
    st = algo.init(jax.random.key(0))
    w = jnp.concatenate([jnp.ones(10), jnp.zeros(6)])
    # same shapes (one compile): the 6 weight-0 rows hold the real rows 10..15 in one batch and garbage
    # in the other, so any leak of padding rows into the step would change the result
    a, ma = step(st, Batch(x[:16], y[:16], w))
    b, mb = step(st, Batch(jnp.concatenate([x[:10], 50 * jnp.ones((6, 64))]),
                           jnp.concatenate([y[:10], jnp.full((6,), 2, y.dtype)]), w))
    np.testing.assert_allclose(ma["energy"], mb["energy"], rtol=1e-6)
    for u, v in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# (e) a few epochs on a real subset beat chance
# --------------------------------------------------------------------------------------------------
def test_sghmc_sa_cnn_learns_mnist_subset():
    from emtdamp.data import load

    ds = load("mnist5k")                       # rows are sorted by class: take random subsets
    n_tr, n_te = 800, 500
    rng = np.random.default_rng(0)
    itr, ite = rng.permutation(len(ds.x_train))[:n_tr], rng.permutation(len(ds.x_test))[:n_te]
    x, y = jnp.asarray(ds.x_train[itr]), jnp.asarray(ds.y_train[itr])
    spec = DataSpec("classification", 784, 10, n_tr, image_shape=(28, 28, 1))
    model = ModelSpec(hidden=(16,), kind="cnn", conv=(4,), kernel_size=3)
    hp = SGMCMCHParams(learning_rate=1e-4, momentum=0.9, inv_temp=1000.0, ssgl_layers=(1,), weight_decay=5e-4,
                       v0=0.01, v1=1.0, beta_a=-1.0, beta_b=-1.0, learn_sigma=False, learn_delta=False,
                       kappa0_init=1e-4, kappa1_init=1e-4, burn_in=40, thin=8, n_samples=10)
    algo, _, predict = _method("sghmc_sa", "mnist", model, spec, hp)
    st = algo.init(jax.random.key(0))
    st, met = _run(algo, st, x, y, 40, 4)              # 4 epochs of 20 steps
    probs = predict(st, jnp.asarray(ds.x_test[ite])).probs
    acc = float(np.mean(np.argmax(np.asarray(probs), 1) == ds.y_test[ite]))
    # chance is ~0.1 (10 roughly balanced classes); a chance-level classifier's accuracy on 500 test images
    # has sd sqrt(0.1·0.9/500) = 0.013, so 0.1 + 5 sd = 0.167 rules chance out. This run reaches 0.65 (sd
    # sqrt(.65·.35/500) = 0.021); the 0.45 bar (~9 sd below) still fails if the CNN path does not learn
    assert acc > 0.1 + 5 * math.sqrt(0.09 / n_te), acc
    assert acc > 0.45, acc
    assert int(st.samples.n_collected) == 5
    assert bool(np.all(np.isfinite(np.asarray(met["loss"]))))


# --------------------------------------------------------------------------------------------------
# (f) errors
# --------------------------------------------------------------------------------------------------
def test_layer_index_out_of_range_and_bad_models():
    x, y, spec = _images()
    m = get_method("sghmc_sa")
    with pytest.raises(ValueError, match=r"ssgl_layers \[4\] out of range .* 4 weight layers "
                                         r"\(0 = Conv_0, 1 = Conv_1, 2 = Dense_0, 3 = Dense_1"):
        m.build(MODEL, spec, SGMCMCHParams(ssgl_layers=(4,)))
    with pytest.raises(ValueError, match=r"prune_layers \[-5\] out of range"):
        m.build(MODEL, spec, SGMCMCHParams(prune_layers=(-5,), prune_target=0.1))
    st = m.build(MODEL, spec, SGMCMCHParams(ssgl_layers=(-2,))).init(jax.random.key(0))   # −2 = Dense_0
    assert [r.shape for r in st.latents.rho] == [(20, 6)]
    with pytest.raises(ValueError, match="needs image data"):
        m.build(MODEL, DataSpec("classification", 64, 3, N), SGMCMCHParams())
    with pytest.raises(ValueError, match="unknown model.kind 'rnn'"):
        m.build(ModelSpec(kind="rnn"), spec, SGMCMCHParams())
    with pytest.raises(ValueError, match="prunable"):       # inflated target > 1 on the small conv layer
        m.build(MODEL, spec, SGMCMCHParams(prune_target=0.5, prune_layers=(0,)))


def test_reference_ce_is_optax():
    """Sanity of the reference's hand-written cross-entropy (the method uses optax)."""
    out = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)))
    y = jnp.asarray([0, 2, 1, 1, 0])
    mine = -jnp.take_along_axis(jax.nn.log_softmax(out), y[:, None], axis=1)[:, 0]
    np.testing.assert_allclose(mine, optax.softmax_cross_entropy_with_integer_labels(out, y), rtol=1e-6)
