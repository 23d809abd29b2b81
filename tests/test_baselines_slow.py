"""Acceptance of the optax baselines on the shipped configs (slow: full training runs)."""

from pathlib import Path

import pytest

from emtdamp import config as C
from emtdamp.data.real import FASHION_MNIST_DIR
from emtdamp.runs import run_config

FASHION = Path(FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz"


@pytest.mark.slow
@pytest.mark.parametrize("config,metric,bound", [
    ("configs/boston.yaml", "rmse", 3.5),
    ("configs/mnist5k.yaml", "accuracy", 0.93),
    pytest.param("configs/fashion_mnist.yaml", "accuracy", 0.87,
                 marks=pytest.mark.skipif(not FASHION.exists(), reason="make fashion-data")),
])
def test_adam_baseline_reaches_target(config, metric, bound, tmp_path):
    cfg = C.load_config(config, ["method.name=adam", "train.seed=0", "train.progress=false"])
    _, summary, _ = run_config(cfg, tmp_path / "run")
    value = summary["test"][metric]
    assert (value < bound) if metric == "rmse" else (value >= bound), summary["test"]
