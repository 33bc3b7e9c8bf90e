"""The README's eventsourcing example runs as written and prints what its closing comments say."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

import logstore

ROOT = Path(__file__).resolve().parents[2]


def _example() -> str:
    """The python block of the README's section on the eventsourcing library."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## With the `eventsourcing` library", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "the section has one python example"
    return blocks[0]


def test_the_example_saves_reloads_and_follows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _example()
    promised = [line.removeprefix("# ") for line in code.splitlines() if re.fullmatch(r"# \d+ \w+ \d+", line)]
    assert len(promised) == 4
    monkeypatch.chdir(tmp_path)  # the example's store is "shop-events/", relative to the working directory
    # As a module of its own, as a script would be: the library names the aggregate's events by module.
    module = types.ModuleType("readme_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, "README.md", "exec"), module.__dict__)
    assert capsys.readouterr().out.splitlines() == promised
    with logstore.open(tmp_path / "shop-events") as store:
        assert store.head("shop_notifications") == 4  # the subscription's save landed: notification 4
        assert [name for name in store.stream_names() if name.startswith("shop_events-")] != []
