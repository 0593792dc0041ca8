"""The long-running processes set the garbage collector as app/plumbing/collector.py says:
start-up's objects frozen out of later collections, the youngest generation collected less
often, collection still on; `python -m app rebuild` does it before it rebuilds. `paused` turns
automatic collection off for a block and back as it was."""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys

import pytest

import app.__main__ as cli
from app.operations import rebuild as rebuild_command
from app.plumbing import collector, logs
from app.plumbing.settings import Settings

_SETTLED = """
import gc, json
from app.plumbing import collector
before = gc.get_freeze_count()
collector.settle(12_345)
after = gc.get_freeze_count(), len(gc.get_objects())
print(json.dumps([gc.get_threshold(), before, *after, gc.isenabled()]))
"""


def test_settle_freezes_what_is_there_and_collects_the_young_generation_less_often() -> None:
    run = subprocess.run([sys.executable, "-c", _SETTLED], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    threshold, frozen_before, frozen_after, collectable_after, enabled = json.loads(run.stdout)
    assert threshold == [12_345, 10, 10]
    assert frozen_before == 0
    assert frozen_after > 1_000  # what start-up built: the modules imported, ...
    assert collectable_after < 100  # ... is no longer scanned by a collection
    assert enabled


def test_the_rebuild_command_settles_the_collector_before_it_rebuilds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[object] = []
    monkeypatch.setattr(cli.collector, "settle", lambda young: calls.append(("settle", young)))
    monkeypatch.setattr(logs, "configure", lambda *_: None)

    def rebuild_main(settings: Settings, args: argparse.Namespace) -> int:
        calls.append("rebuild")
        return 0

    monkeypatch.setattr(rebuild_command, "main", rebuild_main)
    assert cli.main(["rebuild"]) == 0
    assert calls == [("settle", rebuild_command.YOUNG_EVERY), "rebuild"]
    assert rebuild_command.YOUNG_EVERY > 700  # less often than CPython's default


def test_paused_turns_automatic_collection_off_and_back_as_it_was() -> None:
    assert gc.isenabled()
    with collector.paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector.paused():
        raise RuntimeError("the block failed")
    assert gc.isenabled(), "back on after a failure too"
    gc.disable()
    try:
        with collector.paused():
            pass
        assert not gc.isenabled(), "it was off before: it stays off"
    finally:
        gc.enable()
