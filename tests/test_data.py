"""Loaders: shapes, dtypes, split determinism, standardisation, the clear errors, partitioners."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from emtdamp.data import DataError, dataset_names, load
from emtdamp.data.partition import dirichlet, iid, shards
from emtdamp.data.real import FASHION_MNIST_DIR, read_idx, split_indices


def test_registry_lists_the_issue_datasets():
    for name in ("boston", "mnist5k", "fashion_mnist", "mnist_idx", "npz", "csv", "teacher_student"):
        assert name in dataset_names()
    with pytest.raises(KeyError, match="available datasets"):
        load("no_such_data")
    with pytest.raises(TypeError, match="unknown option"):
        load("boston", test_frac=0.2)


def test_boston_split_standardisation_and_determinism():
    a, b, c = load("boston", seed=0), load("boston", seed=0), load("boston", seed=1)
    assert a.x_train.shape == (455, 13) and a.x_test.shape == (51, 13)
    assert a.y_train.shape == (455, 1) and a.x_train.dtype == np.float32 and a.y_train.dtype == np.float32
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.y_test, c.y_test)
    # train statistics standardise the training part exactly
    np.testing.assert_allclose(a.x_train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(a.x_train.std(0), 1, atol=1e-4)
    np.testing.assert_allclose(a.y_train.mean(), 0, atol=1e-5)
    # original units come back: Boston median values lie in [5, 50] ($1000s)
    y_orig = a.y_test * a.y_std + a.y_mean
    assert 5 - 1e-3 <= y_orig.min() and y_orig.max() <= 50 + 1e-3
    assert load("boston", test_fraction=0.2).x_test.shape == (101, 13)


def test_mnist5k_stratified_split():
    d = load("mnist5k", seed=3)
    assert d.x_train.shape == (4000, 784) and d.x_test.shape == (1000, 784)
    assert d.y_train.dtype == np.int32 and d.spec.n_outputs == 10
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0
    overall = np.bincount(np.concatenate([d.y_train, d.y_test]), minlength=10) / 5000
    test_share = np.bincount(d.y_test, minlength=10) / 1000
    np.testing.assert_allclose(test_share, overall, atol=1.5e-3)  # largest-remainder rounding: < 1 row/class
    d2 = load("mnist5k", seed=3)
    np.testing.assert_array_equal(d.y_test, d2.y_test)


def test_split_indices_partition():
    tr, te = split_indices(100, 0.25, seed=0)
    assert len(te) == 25 and len(np.intersect1d(tr, te)) == 0 and len(np.union1d(tr, te)) == 100


def _write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> None:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def test_idx_reader_and_mnist_idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    xi, yi = rng.integers(0, 256, (7, 28, 28)), rng.integers(0, 10, 7)
    for prefix in ("train", "t10k"):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", xi)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", yi, gz=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "t10k-labels-idx1-ubyte"), yi)
    d = load("mnist_idx", path=str(tmp_path))
    assert d.x_train.shape == (7, 784)
    np.testing.assert_allclose(d.x_train[2], xi[2].reshape(-1) / 255.0, rtol=1e-6)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "bad")


def test_missing_idx_file_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*apt-get install dataset-fashion-mnist"):
        load("fashion_mnist", path=str(tmp_path))
    with pytest.raises(DataError, match="data.options.path"):
        load("mnist_idx")


@pytest.mark.skipif(not (Path(FASHION_MNIST_DIR) / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed (make fashion-data)")
def test_fashion_mnist_real_files():
    d = load("fashion_mnist")
    assert d.x_train.shape == (60000, 784) and d.x_test.shape == (10000, 784)
    assert np.bincount(d.y_test).tolist() == [1000] * 10


def test_npz_and_csv_user_data(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 3)), rng.normal(size=50)
    np.savez(tmp_path / "d.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    d = load("npz", path=str(tmp_path / "d.npz"))
    assert d.x_train.shape == (40, 3) and d.spec.task == "regression"
    np.savez(tmp_path / "bad.npz", x_train=x)
    with pytest.raises(DataError, match=r"lacks array\(s\) \['y_train'"):
        load("npz", path=str(tmp_path / "bad.npz"))
    lines = ["a,b,price"] + [f"{r[0]},{r[1]},{r[2]}" for r in rng.normal(size=(30, 3))]
    (tmp_path / "d.csv").write_text("\n".join(lines))
    d = load("csv", path=str(tmp_path / "d.csv"), target="price", test_fraction=0.2)
    assert d.x_train.shape == (24, 2) and d.x_test.shape == (6, 2)
    with pytest.raises(DataError, match="target column 'cost' not in"):
        load("csv", path=str(tmp_path / "d.csv"), target="cost")


def test_bad_rows_are_reported_with_counts(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 3)), rng.normal(size=50)
    x[[3, 7], 1] = np.nan
    np.savez(tmp_path / "nan.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    with pytest.raises(DataError, match=r"'npz' \(train\): 2 of 40 rows have NaN or inf features"):
        load("npz", path=str(tmp_path / "nan.npz"))
    np.savez(tmp_path / "len.npz", x_train=x[:40], y_train=y[:39], x_test=x[40:], y_test=y[40:])
    with pytest.raises(DataError, match="40 feature rows but 39 targets"):
        load("npz", path=str(tmp_path / "len.npz"))
    xc = rng.normal(size=(50, 3))
    lab = rng.integers(0, 3, 50)
    lab[[5, 9]] = [7, -1]
    np.savez(tmp_path / "lab.npz", x_train=xc[:10], y_train=lab[:10], x_test=xc[10:], y_test=lab[10:])
    with pytest.raises(DataError, match=r"1 of 10 labels are outside \[0, 8\) \(e.g. -1\)"):
        load("npz", path=str(tmp_path / "lab.npz"), task="classification")


def test_teacher_student_ground_truth():
    d = load("teacher_student", seed=0, n_train=500, n_test=200)
    assert d.info["alive"].sum() == 16 and d.x_train.shape == (500, 20)
    assert 0 < d.info["noise_var_std"] < 0.5


@pytest.mark.parametrize("part", ["iid", "dirichlet", "shards"])
def test_partitioners_cover_every_row_once(part):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(503, 4)), rng.integers(0, 10, 503)
    fn = {"iid": lambda: iid(x, y, 10, seed=1), "dirichlet": lambda: dirichlet(x, y, 10, alpha=0.5, seed=1),
          "shards": lambda: shards(x, y, 10, 2, seed=1)}[part]
    cd = fn()
    assert cd.x.shape[0] == 10 and cd.mask.shape == cd.x.shape[:2]
    assert cd.counts.sum() == 503 and (cd.mask.sum(1) == cd.counts).all()
    idx = cd.index[cd.index >= 0]
    assert sorted(idx.tolist()) == list(range(503))
    k, j = np.argwhere(cd.mask > 0)[17]
    np.testing.assert_array_equal(cd.x[k, j], x[cd.index[k, j]])
    assert (cd.x[cd.mask == 0] == 0).all()


def test_dirichlet_skews_labels_more_than_iid():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2000, 2)), rng.integers(0, 10, 2000)

    def skew(cd):  # mean over clients of the top class share
        return np.mean([np.bincount(cd.y[k][cd.mask[k] > 0], minlength=10).max() / cd.counts[k]
                        for k in range(len(cd.counts))])

    assert skew(dirichlet(x, y, 10, alpha=0.1, seed=0)) > 2 * skew(iid(x, y, 10, seed=0))
    with pytest.raises(ValueError, match="integer class labels"):
        dirichlet(x, rng.normal(size=2000), 10)
