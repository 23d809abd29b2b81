"""Property-based bad-input tests: public entry points answer malformed input with our own clear
errors (ConfigError / DataError / exit code 2), never a traceback from deep inside JAX or YAML."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emtdamp import cli
from emtdamp import config as C
from emtdamp.data import DataError, make_classification, make_regression

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=8))
values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                   st.dictionaries(st.text(max_size=6), c, max_size=3)),
                      max_leaves=6)
KEYS = ["data", "model", "method", "train", "output", "sweep", "name", "epochs", "hidden", "seed",
        "learning_rate", "batch_size", "options", "grid", "seeds", "activation", "dtype"]
blocks = st.dictionaries(st.sampled_from(KEYS), values, max_size=4)
configs = st.dictionaries(st.sampled_from(KEYS), st.one_of(values, blocks), max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_malformed_configs_raise_config_error_only(raw):
    try:
        C.from_dict(raw)
    except C.ConfigError as e:
        assert str(e)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_override_strings_parse_or_raise_config_error(text):
    try:
        path, _ = C.parse_override(text)
        assert all(path)
    except C.ConfigError:
        pass


arrays = st.integers(1, 30).flatmap(lambda n: st.tuples(
    st.lists(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=3, max_size=3),
             min_size=n, max_size=n),
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=31)))


@settings(max_examples=200, deadline=None)
@given(arrays)
def test_regression_data_with_nan_inf_or_bad_lengths_is_rejected_clearly(xy):
    x, y = np.asarray(xy[0], np.float64), np.asarray(xy[1], np.float64)
    try:
        d = make_regression("fuzz", x, y, x, y[: len(x)] if len(y) >= len(x) else y)
    except DataError as e:
        assert "fuzz" in str(e)
        return
    assert np.isfinite(d.x_train).all() and np.isfinite(d.y_train).all()


@pytest.mark.parametrize("big", [1e160, -1e200, 1e300])  # squares overflow float64 (~1.8e308)
def test_huge_values_are_reported_not_trained_on(big):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)), rng.normal(size=20)
    x[4, 1] = big
    with pytest.raises(DataError, match=r"overflow \(values too large to standardise"):
        make_regression("fuzz", x, y, x, y)
    with pytest.raises(DataError, match=r"overflow \(values too large to standardise"):
        make_regression("fuzz", x[:, :1] * 0 + rng.normal(size=(20, 1)), y * big, x[:, :1], y)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-5, 15), min_size=1, max_size=20))
def test_labels_out_of_range_are_rejected(labels):
    y = np.asarray(labels)
    x = np.zeros((len(y), 2))
    bad = int(((y < 0) | (y >= 10)).sum())
    if bad:
        with pytest.raises(DataError, match=f"{bad} of {len(y)} labels are outside"):
            make_classification("fuzz", x, y, x, y, n_classes=10)
    else:
        make_classification("fuzz", x, y, x, y, n_classes=10)


@pytest.mark.parametrize("text", ["data: [unclosed", "42", "data: {name: boston}\nmethod: {name: adam}\ntrain: 5",
                                  "data: {name: boston}\nmethod: {name: adam, learning_rate: .nan}",
                                  "data: {name: boston}\nmethod: {name: adam}\nmodel: {hidden: -3}"])
def test_cli_rejects_malformed_config_files_with_exit_2(tmp_path, capsys, text):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    assert cli.main(["train", str(p), f"output.dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("emtdamp train: error:") and "Traceback" not in err
