"""`make demo`: train on the embedded default data (Boston housing, shipped by mlxtend) and print
EM-TDAMP beside adam on the same split (404/102, seed 0) and network (13-64-1): test RMSE, NLL,
neurons pruned, seconds."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from compare import main  # noqa: E402

sys.exit(main(["configs/emtdamp_boston.yaml", "configs/boston.yaml:data.options.test_fraction=0.2",
               "--out", "runs/demo"]))
