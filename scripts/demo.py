"""`make demo`: train on the embedded default data (Boston housing, shipped by mlxtend) and print
the final table. Runs EM-TDAMP beside adam when the EM-TDAMP config exists."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from compare import main  # noqa: E402

configs = [c for c in ("configs/emtdamp_boston.yaml", "configs/boston.yaml") if Path(c).exists()]
sys.exit(main([*configs, "--out", "runs/demo"]))
