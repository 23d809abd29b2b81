"""The CNN model option (``model.kind: cnn``): network, data image shapes, configs, methods."""

import gzip
import struct

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emtdamp import config as C
from emtdamp.data import load
from emtdamp.loops.centralised import train
from emtdamp.methods import Batch, ModelSpec, get_method
from emtdamp.methods.base import DataSpec
from emtdamp.methods.registry import get_fed_method
from emtdamp.models import cnn, mlp, network
from emtdamp.runs import run_config

IMG = DataSpec("classification", 6 * 5 * 2, 3, 10, image_shape=(6, 5, 2))


# ----------------------------------------------------------------------------- NumPy reference
def np_conv_same(h, k, b):
    """Direct-loop stride-1 "SAME" cross-correlation (XLA / flax convention), NHWC x HWIO."""
    n, hh, ww, _ = h.shape
    kh, kw, _, co = k.shape
    lo_h, lo_w = (kh - 1) // 2, (kw - 1) // 2
    hp = np.pad(h, [(0, 0), (lo_h, kh - 1 - lo_h), (lo_w, kw - 1 - lo_w), (0, 0)])
    out = np.zeros((n, hh, ww, co))
    for i in range(hh):
        for j in range(ww):
            out[:, i, j, :] = np.einsum("nabc,abco->no", hp[:, i: i + kh, j: j + kw, :], k)
    return out + b


def np_pool(h):
    n, hh, ww, c = h.shape
    out = np.zeros((n, hh // 2, ww // 2, c))
    for i in range(hh // 2):
        for j in range(ww // 2):
            out[:, i, j] = h[:, 2 * i: 2 * i + 2, 2 * j: 2 * j + 2].max(axis=(1, 2))
    return out


def np_cnn(params, x, model, data):
    relu = lambda z: np.maximum(z, 0.0)
    p = jax.tree_util.tree_map(np.asarray, params)
    h = np.asarray(x, np.float64).reshape(len(x), *data.image_shape)
    for i in range(len(model.conv)):
        h = np_pool(relu(np_conv_same(h, p[f"Conv_{i}"]["kernel"], p[f"Conv_{i}"]["bias"])))
    h = h.reshape(len(h), -1)
    for i in range(len(model.hidden)):
        h = relu(h @ p[f"Dense_{i}"]["kernel"] + p[f"Dense_{i}"]["bias"])
    last = p[f"Dense_{len(model.hidden)}"]
    return h @ last["kernel"] + last["bias"]


# ----------------------------------------------------------------------------- the network
def test_cnn_shapes_and_param_layout():
    model = ModelSpec(hidden=(7,), kind="cnn", conv=(4, 3), kernel_size=3)
    init_fn, apply_fn = network.build_network(model, IMG)
    p = init_fn(jax.random.PRNGKey(0))
    shapes = jax.tree_util.tree_map(lambda a: a.shape, p)
    # 6x5 -> pool -> 3x2 -> pool -> 1x1, 3 channels -> 3 flat features
    assert shapes == {"Conv_0": {"kernel": (3, 3, 2, 4), "bias": (4,)},
                      "Conv_1": {"kernel": (3, 3, 4, 3), "bias": (3,)},
                      "Dense_0": {"kernel": (3, 7), "bias": (7,)},
                      "Dense_1": {"kernel": (7, 3), "bias": (3,)}}
    out = apply_fn(p, jnp.ones((11, IMG.n_features)))
    assert out.shape == (11, 3) and out.dtype == jnp.float32
    assert len(network.kernels(p)) == 4 and network.kernels(p)[0].shape == (3, 3, 2, 4)
    # the module-level init/apply are the same network
    np.testing.assert_array_equal(cnn.init(jax.random.PRNGKey(0), model, IMG)["Conv_1"]["kernel"],
                                  p["Conv_1"]["kernel"])
    x = jax.random.normal(jax.random.PRNGKey(1), (5, IMG.n_features))
    np.testing.assert_array_equal(cnn.apply(p, x, model, IMG), apply_fn(p, x))


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_conv2d_same_matches_numpy_lax_and_flax(x64, k):
    """im2col conv == direct loops == lax.conv 'SAME' == flax nn.Conv (odd and even kernels)."""
    rng = np.random.default_rng(k)
    h = rng.normal(size=(2, 7, 6, 3))
    kern, b = rng.normal(size=(k, k, 3, 4)), rng.normal(size=4)
    got = np.asarray(cnn.conv2d_same(jnp.asarray(h), jnp.asarray(kern), jnp.asarray(b)))
    np.testing.assert_allclose(got, np_conv_same(h, kern, b), rtol=1e-12, atol=1e-12)
    ref = jax.lax.conv_general_dilated(h, kern, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    fl = nn.Conv(4, (k, k), padding="SAME").apply({"params": {"kernel": kern, "bias": b}}, h)
    np.testing.assert_allclose(got, fl, rtol=1e-12, atol=1e-12)


def test_max_pool2_matches_flax_and_numpy_with_odd_sizes(x64):
    h = np.random.default_rng(0).normal(size=(2, 7, 5, 3))
    got = np.asarray(cnn.max_pool2(jnp.asarray(h)))
    assert got.shape == (2, 3, 2, 3)
    np.testing.assert_array_equal(got, np_pool(h))
    np.testing.assert_array_equal(got, nn.max_pool(h, (2, 2), strides=(2, 2)))


def test_cnn_apply_matches_numpy_transcription_and_a_plain_flax_cnn(x64):
    model = ModelSpec(hidden=(5,), kind="cnn", conv=(3, 4), kernel_size=3)
    init_fn, apply_fn = network.build_network(model, IMG)
    p = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), init_fn(jax.random.PRNGKey(2)))
    p = jax.tree_util.tree_map(lambda a: a + 0.1, p)  # non-zero biases
    x = jax.random.normal(jax.random.PRNGKey(3), (4, IMG.n_features), jnp.float64)
    out = np.asarray(apply_fn(p, x))
    np.testing.assert_allclose(out, np_cnn(p, x, model, IMG), rtol=1e-10, atol=1e-12)

    class FlaxCNN(nn.Module):  # the textbook flax CNN (nn.Conv, nn.max_pool) with the same names
        @nn.compact
        def __call__(self, x):
            h = x.reshape((x.shape[0], 6, 5, 2))
            for i, c in enumerate(model.conv):
                h = nn.max_pool(nn.relu(nn.Conv(c, (3, 3), padding="SAME", name=f"Conv_{i}")(h)), (2, 2), (2, 2))
            h = nn.relu(nn.Dense(5, name="Dense_0")(h.reshape((h.shape[0], -1))))
            return nn.Dense(3, name="Dense_1")(h)

    np.testing.assert_allclose(out, FlaxCNN().apply({"params": p}, x), rtol=1e-10, atol=1e-12)
    # same initialisers and RNG paths as nn.Conv / nn.Dense: identical params from the same key
    ref_p = FlaxCNN().init(jax.random.PRNGKey(2), jnp.zeros((1, IMG.n_features)))["params"]
    for u, v in zip(jax.tree_util.tree_leaves(ref_p), jax.tree_util.tree_leaves(init_fn(jax.random.PRNGKey(2))),
                    strict=True):
        np.testing.assert_array_equal(u, v)


def test_build_network_mlp_is_the_plain_mlp():
    model = ModelSpec(hidden=(6, 4), activation="tanh")
    data = DataSpec("regression", 5, 2, 20)
    init_fn, apply_fn = network.build_network(model, data)
    p = init_fn(jax.random.PRNGKey(0))
    ref = mlp.init_mlp(jax.random.PRNGKey(0), (5, 6, 4, 2))
    for u, v in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(ref), strict=True):
        np.testing.assert_array_equal(u, v)
    x = jnp.ones((3, 5))
    np.testing.assert_array_equal(apply_fn(p, x), mlp.apply(ref, x, "tanh"))


def test_cnn_on_bad_data_raises_naming_the_fix():
    model = ModelSpec(kind="cnn")
    with pytest.raises(ValueError, match="no image_shape.*model.kind=mlp"):
        network.build_network(model, DataSpec("classification", 784, 10, 100))
    with pytest.raises(ValueError, match="holds 784 values but the data have 700"):
        network.build_network(model, DataSpec("classification", 700, 10, 100, image_shape=(28, 28, 1)))
    with pytest.raises(ValueError, match="use at most 2 conv layers"):
        network.build_network(ModelSpec(kind="cnn", conv=(2, 2, 2)), DataSpec("classification", 50, 2, 9, (5, 5, 2)))
    with pytest.raises(ValueError, match="unknown model.kind 'rnn'"):
        network.build_network(ModelSpec(kind="rnn"), IMG)
    # through a method's build too (the error a user sees from `emtdamp train`)
    m = get_method("adam")
    with pytest.raises(ValueError, match="no image_shape"):
        m.build(model, DataSpec("regression", 13, 1, 400), m.hparams_cls())


# ----------------------------------------------------------------------------- data image shapes
def test_loaders_record_image_shape(tmp_path):
    assert load("mnist5k").spec.image_shape == (28, 28, 1)
    assert load("boston").spec.image_shape is None
    rng = np.random.default_rng(0)
    # npz: (n, H, W) -> (H, W, 1); (n, H, W, C) channels last; (n, d) -> None
    for x_shape, want in [((12, 4, 3), (4, 3, 1)), ((12, 4, 3, 2), (4, 3, 2)), ((12, 7), None)]:
        f = tmp_path / f"d{len(x_shape)}.npz"
        np.savez(f, x_train=rng.random(x_shape), y_train=rng.integers(0, 2, 12),
                 x_test=rng.random((5, *x_shape[1:])), y_test=rng.integers(0, 2, 5))
        ds = load("npz", path=str(f), task="classification")
        assert ds.spec.image_shape == want and ds.x_train.shape == (12, int(np.prod(x_shape[1:])))
    # IDX folders (mnist_idx / fashion_mnist): tiny hand-written IDX files
    for prefix, n in (("train", 6), ("t10k", 3)):
        imgs = rng.integers(0, 256, (n, 4, 5)).astype(np.uint8)
        with gzip.open(tmp_path / f"{prefix}-images-idx3-ubyte.gz", "wb") as fh:
            fh.write(struct.pack(">HBB3I", 0, 0x08, 3, n, 4, 5) + imgs.tobytes())
        with gzip.open(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", "wb") as fh:
            fh.write(struct.pack(">HBBI", 0, 0x08, 1, n) + (np.arange(n) % 10).astype(np.uint8).tobytes())
    ds = load("mnist_idx", path=str(tmp_path))
    assert ds.spec.image_shape == (4, 5, 1) and ds.x_train.shape == (6, 20)


# ----------------------------------------------------------------------------- training end to end
@pytest.fixture(scope="module")
def mnist400(tmp_path_factory):
    """Every 10th / 5th mnist5k train / test image (400 / 200, all classes: the rows are sorted by
    label) as an npz of (n, 28, 28) arrays."""
    ds = load("mnist5k")
    f = tmp_path_factory.mktemp("mnist400") / "mnist400.npz"
    np.savez(f, x_train=ds.x_train[::10].reshape(-1, 28, 28), y_train=ds.y_train[::10],
             x_test=ds.x_test[::5].reshape(-1, 28, 28), y_test=ds.y_test[::5])
    return str(f)


SMALL_CNN = ModelSpec(hidden=(32,), kind="cnn", conv=(8, 16))


def _check_run(res, n_params):
    assert len(res.history) == 2 and all(np.isfinite(r["train_loss"]) for r in res.history)
    assert all(np.isfinite(v) for v in res.test.values())
    assert 0.0 <= res.test["accuracy"] <= 1.0 and res.test["nll"] > 0
    assert res.sparsity["params_remaining"] <= n_params


def test_adam_trains_a_cnn(mnist400):
    data = load("npz", path=mnist400, task="classification")
    assert data.spec.image_shape == (28, 28, 1) and data.spec.n_train == 400 and data.spec.n_outputs == 10
    m = get_method("adam")
    res = train(m, m.hparams_cls(learning_rate=1e-2), SMALL_CNN, data, epochs=2, batch_size=100, progress=False)
    n = mlp.count_params(res.state.params)
    assert n == (9 * 8 + 8) + (9 * 8 * 16 + 16) + (7 * 7 * 16 * 32 + 32) + (32 * 10 + 10)
    _check_run(res, n)
    assert res.sparsity["params_remaining"] == n
    # 8 adam steps reach ~0.68 here; chance is 0.1 with sd sqrt(0.1 * 0.9 / 200) = 0.02 on 200 test
    # images, so 0.4 is > 14 sd above chance and far below what a working CNN gets
    assert res.test["accuracy"] > 0.4
    assert res.history[1]["train_loss"] < res.history[0]["train_loss"]


def test_em_mcmc_trains_and_prunes_a_cnn(mnist400):
    data = load("npz", path=mnist400, task="classification")
    m = get_method("em_mcmc")
    # EM (and the one-shot 50% target) runs at the first step of epoch index 1 > warm_up = 0
    hp = m.hparams_cls(c2_peak=1.0, temperature_power=1.0, soft_threshold=1e-4, warm_up=0, prune_target=0.5,
                       hard_threshold=0.0, store_noise=True)
    res = train(m, hp, SMALL_CNN, data, epochs=2, batch_size=100, progress=False)
    n = mlp.count_params(res.state.params)
    _check_run(res, n)
    sp = res.sparsity
    # primary families: input channels of Conv_0 (1, floor(0.5) = 0 pruned), Conv_1 (8 -> 4),
    # input units of Dense_0 (784 -> 392) and Dense_1 (32 -> 16)
    assert sp["neurons_pruned_frac"] == pytest.approx((4 + 392 + 16) / (1 + 8 + 784 + 32))
    # params_remaining counts the masks; pruned weights are exactly zero, so it equals the number of
    # non-zero kernel entries plus all biases
    nonzero = sum(int(jnp.sum(k != 0)) for k in network.kernels(res.state.params))
    biases = n - sum(int(k.size) for k in network.kernels(res.state.params))
    assert sp["params_remaining"] == nonzero + biases < n
    assert sp["weights_zero_frac"] == pytest.approx(1 - nonzero / (n - biases))


def test_cnn_config_runs_through_run_config(mnist400, tmp_path):
    raw = {"data": {"name": "npz", "options": {"path": mnist400, "task": "classification"}},
           "model": {"kind": "cnn", "conv": [4], "hidden": [16]},
           "method": {"name": "sgd", "learning_rate": 0.05},
           "train": {"epochs": 1, "batch_size": 200, "progress": False}, "output": {"plots": False}}
    cfg = C.from_dict(raw, "cnn")
    assert cfg.model.spec() == ModelSpec(hidden=(16,), kind="cnn", conv=(4,), kernel_size=3)
    _, summary, res = run_config(cfg, tmp_path / "run")
    assert np.isfinite(res.test["accuracy"]) and (tmp_path / "run" / "summary.json").exists()


# ----------------------------------------------------------------------------- configs and guards
@pytest.mark.parametrize("model, msg", [
    ({"kind": "rnn"}, r"model.kind: 'rnn' is not allowed; choose one of \['mlp', 'cnn', 'flax'\]"),
    ({"kind": "cnn", "conv": [8, 0]}, r"model.conv: channel counts must be >= 1"),
    ({"kind": "cnn", "conv": []}, r"model.kind=cnn needs at least one conv layer"),
    ({"kind": "cnn", "kernel_size": 0}, r"model.kernel_size: 0 is out of range"),
    ({"kind": "cnn", "conv": 32}, r"model.conv: expected a list of int"),
])
def test_model_config_validation(model, msg):
    raw = {"data": {"name": "mnist5k"}, "model": model, "method": {"name": "adam"}}
    with pytest.raises(C.ConfigError, match=msg):
        C.from_dict(raw)


def test_model_config_defaults_and_round_trip():
    cfg = C.from_dict({"data": {"name": "mnist5k"}, "model": {"kind": "cnn", "kernel_size": 5},
                       "method": {"name": "adam"}})
    assert cfg.model.spec() == ModelSpec(hidden=(64,), kind="cnn", conv=(32, 64), kernel_size=5)
    assert C.from_dict(C.to_dict(cfg)).model == cfg.model
    assert C.from_dict({"data": {"name": "boston"}, "method": {"name": "adam"}}).model.kind == "mlp"


CNN_METHODS = {"adam", "sgd", "em_mcmc", "sgld", "sghmc", "sgld_sa", "sghmc_sa", "sgld_em", "sghmc_em",
               "a_sghmc", "a_sghmc_em", "a_sghmc_sa", "fedavg", "group_lasso", "group_snip", "adam_prune"}


def test_methods_without_cnn_support_raise_at_init():
    names = sorted(set(C.all_method_names()) - CNN_METHODS)
    assert {"emtdamp", "emtdamp_fed", "nuts"} <= set(names)
    model = ModelSpec(hidden=(8,), kind="cnn", conv=(4,))
    for name in names:
        hp = C.hparams_cls_of(name)()
        fm = get_fed_method(name)
        with pytest.raises(ValueError, match=f"method {name} supports model.kind=mlp only"):
            if fm is not None:
                fm.build(model, IMG, hp, 10)
            else:
                get_method(name).build(model, IMG, hp)


def test_group_snip_prunes_conv_input_channels():
    """The compression baselines group a conv kernel (kh, kw, C_in, C_out) by input channel: κ = 0.5 keeps
    ceil(0.5 C_in) channels of every prunable kernel (the first, on the 2 image channels, is exempt here)."""
    m = get_method("group_snip")
    algo = m.build(ModelSpec(hidden=(8,), kind="cnn", conv=(4, 6)), IMG,
                   m.hparams_cls(target_density=0.5, prune_inputs=False))
    st = algo.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    batch = Batch(jnp.asarray(rng.normal(size=(10, 60)), jnp.float32), jnp.asarray(rng.integers(0, 3, 10)),
                  jnp.ones(10))
    st, _ = jax.jit(algo.step)(st, batch)
    assert [int(jnp.sum(mk)) for mk in st.masks] == [2, 2, 3, 4]   # of 2 (exempt), 4, 6, 8 groups
    conv1 = np.asarray(st.params["Conv_1"]["kernel"])               # (k, k, 4, 6): input channels 0..3
    assert np.all(conv1[:, :, ~np.asarray(st.masks[1]), :] == 0)


def test_fedavg_trains_the_cnn(mnist400, tmp_path):
    """fedavg builds its network with build_network, so the CNN trains federated too (4 clients, 4 rounds)."""
    from emtdamp.runs import run_config

    cfg = C.from_dict({"data": {"name": "npz", "options": {"path": mnist400, "task": "classification"}},
                       "model": {"kind": "cnn", "conv": [8, 16], "hidden": [32]},
                       "method": {"name": "fedavg", "n_clients": 4, "learning_rate": 1e-2, "local_epochs": 2},
                       "train": {"epochs": 4, "batch_size": 50, "progress": False}, "output": {"plots": False}})
    _, summary, res = run_config(cfg, tmp_path / "fed")
    assert summary["model_kind"] == "cnn" and len(res.history) == 4
    # chance is 0.1 with sd 0.02 on 200 test images: 0.3 is 10 sd above it
    assert summary["test"]["accuracy"] > 0.3, summary["test"]
