"""The Locust load test runs clean against `python -m app` on an empty database.

Its shoppers fail a request whenever read-your-writes is violated, so zero failures over a
short headless run means every command answered as expected and every read with
`after=<position>` reflected the shopper's own writes.
"""

from __future__ import annotations

import asyncio
import csv
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.plumbing.settings import Settings
from tests.support.servers import AppProcess

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def app_url(stack: Settings) -> AsyncIterator[str]:
    """One `python -m app serve` with relay and projector on, on a fresh stack."""
    app = AppProcess(stack)
    try:
        await app.start()
        yield app.url
    finally:
        if app.process is not None:
            app.stop(signal.SIGKILL)
        app.log.close()


async def test_locust_mix_runs_without_failures(app_url: str, tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"),
        "--headless", "-u", "10", "-r", "5", "-t", "10s", "--host", app_url,
        "--exit-code-on-error", "1", "--only-summary", "--loglevel", "WARNING",
        "--csv", str(tmp_path / "run"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    text = output.decode(errors="replace")
    with (tmp_path / "run_stats.csv").open(newline="") as stats:
        total = next(row for row in csv.DictReader(stats) if row["Name"] == "Aggregated")
    assert process.returncode == 0, text
    assert int(total["Failure Count"]) == 0, text
    assert int(total["Request Count"]) >= 50, text
