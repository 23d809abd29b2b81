"""The docs tutorials run as written, on a few epochs: their ```python blocks in order, in one namespace, from a
temporary folder holding a copy of configs/ (a block starting with ``# file: NAME`` is saved as that file)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("*.md"))
# the tutorials' budget lines and the few-epoch values the test runs them with
SHORTER = {"EPOCHS = 10": "EPOCHS = 1", "EPOCHS, WARM, RAMP = 60, 10, 20": "EPOCHS, WARM, RAMP = 4, 1, 2"}


def _blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_there_are_two_tutorials_with_code():
    assert len(TUTORIALS) == 2 and all(_blocks(t) for t in TUTORIALS)


@pytest.mark.parametrize("tutorial", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs(tutorial, tmp_path, monkeypatch, capsys):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    code, replaced = [], 0
    for block in _blocks(tutorial):
        first = block.splitlines()[0]
        if first.startswith("# file: "):
            (tmp_path / first.removeprefix("# file: ").strip()).write_text(block)
            continue
        for long, short in SHORTER.items():
            if long in block:
                block, replaced = block.replace(long, short), replaced + 1
        code.append(block)
    assert replaced == 1, "the tutorial's budget line changed: update SHORTER"
    exec(compile("\n".join(code), str(tutorial.name), "exec"), {"__name__": "__tutorial__"})
    out = capsys.readouterr().out
    assert out.strip() and "nan" not in out.lower()
