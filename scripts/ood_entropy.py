"""Out-of-distribution check: predictive entropy of a model trained on MNIST, on MNIST test images
(in distribution) vs Fashion-MNIST test images (out of distribution).

    python scripts/ood_entropy.py RUN_DIR [RUN_DIR ...]

RUN_DIR is a run folder of a classification run on `mnist5k` (or `mnist_idx`). Fashion-MNIST test
images are put through the same pixel transform as the run's data (options.standardize). Prints per
run: mean entropy (nats) in / out of distribution, and the AUROC of entropy as an OOD detector
(probability that a random OOD image has higher entropy than a random in-distribution one).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
import yaml

from emtdamp import config as cfgmod
from emtdamp.data import load
from emtdamp.loops.centralised import predict_in_chunks
from emtdamp.methods.registry import get_fed_method
from emtdamp.runs import load_checkpoint, method_of


def entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1.0)
    return -(p * np.log(p)).sum(1)


def auroc(neg: np.ndarray, pos: np.ndarray) -> float:
    """P(pos > neg) + 0.5 P(tie), by ranks."""
    allv = np.concatenate([neg, pos])
    ranks = np.argsort(np.argsort(allv, kind="stable"), kind="stable") + 1.0
    r_pos = ranks[len(neg):].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def main(argv=None) -> int:
    runs = argv if argv is not None else sys.argv[1:]
    if not runs:
        print(__doc__)
        return 2
    print(f"{'run':<40}{'method':<12}{'H in':>8}{'H out':>8}{'AUROC':>8}")
    for run in runs:
        run_dir = Path(run)
        cfg = cfgmod.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()), run_dir.name)
        data = load(cfg.data.name, seed=cfg.data.seed, **cfg.data.options)
        x_ood = load("fashion_mnist").x_test  # pixels in [0, 1]
        if cfg.data.options.get("standardize"):  # the in-distribution training transform, not Fashion's own
            raw = load(cfg.data.name, seed=cfg.data.seed, **{**cfg.data.options, "standardize": False})
            mu, sd = raw.x_train.mean(0), raw.x_train.std(0) + 0.1
            x_ood = ((x_ood - mu) / sd).astype(np.float32)
        fm = get_fed_method(cfg.method.name)
        key = jax.random.PRNGKey(cfg.train.seed)
        algo = (fm.build(cfg.model.spec(), data.spec, cfg.method.hparams, cfg.train.batch_size) if fm
                else method_of(cfg).build(cfg.model.spec(), data.spec, cfg.method.hparams))
        state = load_checkpoint(run_dir / "checkpoint.npz", jax.eval_shape(algo.init, key))
        h_in = entropy(predict_in_chunks(algo, state, data.x_test).probs)
        h_out = entropy(predict_in_chunks(algo, state, x_ood).probs)
        print(f"{str(run_dir)[-39:]:<40}{cfg.method.name:<12}{h_in.mean():>8.3f}{h_out.mean():>8.3f}"
              f"{auroc(h_in, h_out):>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
