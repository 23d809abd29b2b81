"""`make docs`' build: MkDocs in strict mode (every warning an error: broken links, bad references, docstrings
mkdocstrings cannot render) over docs/ and the API reference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_site_builds_without_warnings(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("emtdamp.runs.fit", "emtdamp.runs.Run.predict", "emtdamp.methods.registry.get_method",
                 "emtdamp.models.flax_adapter.build_flax_network"):
        assert f'id="{name}"' in api, name
    assert (tmp_path / "site" / "tutorials" / "emtdamp_pruning_boston" / "index.html").exists()
