"""The pipeline dashboard (app/operations/dashboard.py): `/ops/stream` over real HTTP, its
access rules, and the page in a real browser (the system Chromium driven by playwright-core
from tests/browser), which leaves a screenshot in the test's tmp dir (and in docs/dashboard.png,
the README's, with UPDATE_SCREENSHOT=1)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.plumbing.access import mint_token
from app.plumbing.settings import Settings
from tests.support.servers import Server, http_client
from tests.support.sse import EventReader, event_stream

ROOT = Path(__file__).resolve().parents[2]
BROWSER = ROOT / "tests" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SECRET = "dashboard-test-secret-long-enough-for-hs256"


@pytest.fixture
async def shop(stack: Settings) -> AsyncIterator[tuple[Server, httpx.AsyncClient]]:
    """The whole service on the test's stack, sending a state every 0.2 s."""
    server = Server(replace(stack, dashboard_interval_s=0.2))
    await server.start()
    try:
        async with http_client(server.url, timeout=30) as http:
            yield server, http
    finally:
        await server.stop()


async def send_commands(http: httpx.AsyncClient, orders: int = 3) -> None:
    body = {"sku": f"SKU-{uuid.uuid4().hex[:10]}", "name": "Lamp", "price_cents": 990, "stock": 99}
    created = await http.post("/products", json=body)
    assert created.status_code == 201, created.text
    line = {"product_id": created.json()["product_id"], "quantity": 1}
    for _ in range(orders):
        placed = await http.post("/orders", json={"customer_id": "dash", "lines": [line]})
        assert placed.status_code == 201, placed.text


async def state(reader: EventReader) -> dict[str, Any]:
    message = await reader.next_event()
    assert message.event == "state", message
    body: dict[str, Any] = message.json()
    return body


async def test_the_ops_stream_follows_the_pipeline(
    shop: tuple[Server, httpx.AsyncClient],
) -> None:
    _, http = shop
    async with event_stream(http, "/ops/stream") as reader:
        assert reader.response.headers["content-type"].startswith("text/event-stream")
        first = await state(reader)
        assert first["postgres"] == "ok"
        assert first["open_streams"] == 1
        await send_commands(http)
        rates: list[float] = []
        for _ in range(100):
            now = await state(reader)
            rates.append(now["commands_per_second"])
            if now["lag_events"] == 0 and now["log_head"] >= first["log_head"] + 5:
                break
        else:
            raise AssertionError(f"the pipeline never caught up: {now}")
    assert now["commands_total"] == first["commands_total"] + 4
    assert now["applied_position"] == now["log_head"] == now["relay_position"]
    assert now["lag_seconds"] == 0
    assert (now["held_streams"], now["parked_events"]) == (0, 0)
    recent = now["recent_events"]
    assert recent[0]["position"] == now["log_head"]
    assert [e["position"] for e in recent] == sorted((e["position"] for e in recent), reverse=True)
    assert "OrderPlaced" in {e["type"] for e in recent}
    assert max(rates) > 0


async def test_the_page_is_open_and_the_stream_is_for_administrators(stack: Settings) -> None:
    secured = Server(replace(stack, auth_mode="jwt", auth_jwt_secret=SECRET))
    await secured.start()
    try:
        async with http_client(secured.url, timeout=30) as http:
            page = await http.get("/dashboard")
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            assert "default-src 'self'" in page.headers["content-security-policy"]
            assert '<script src="/dashboard/dashboard.js">' in page.text
            assert "http" not in page.text  # nothing loaded from elsewhere
            script = await http.get("/dashboard/dashboard.js")
            assert script.status_code == 200
            assert "/ops/stream" in script.text
            assert (await http.get("/ops/stream")).status_code == 401
            customer = {"Authorization": f"Bearer {mint_token(SECRET, 'alice', 'customer', 60)}"}
            refused = await http.get("/ops/stream", headers=customer)
            assert refused.status_code == 403
            assert refused.headers["content-type"] == "application/problem+json"
            admin = {"Authorization": f"Bearer {mint_token(SECRET, 'ops', 'admin', 60)}"}
            async with event_stream(http, "/ops/stream", admin) as reader:
                assert (await state(reader))["postgres"] == "ok"
    finally:
        await secured.stop()


def _browser_missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it)"
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "Node.js and npm are needed to drive the browser (tests/browser)"
    return None


@pytest.fixture(scope="module")
def browser_driver() -> Path:
    """tests/browser with its node_modules (npm ci when they are missing)."""
    reason = _browser_missing()
    if reason is not None:
        pytest.skip(reason)
    if not (BROWSER / "node_modules" / "playwright-core").exists():
        npm = shutil.which("npm")
        assert npm is not None
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=BROWSER, check=True, timeout=600)
    return BROWSER / "dashboard.mjs"


async def _line(process: asyncio.subprocess.Process, within_s: float) -> dict[str, Any]:
    assert process.stdout is not None
    raw = await asyncio.wait_for(process.stdout.readline(), within_s)
    assert raw, "the browser driver ended without a word"
    line: dict[str, Any] = json.loads(raw)
    return line


@pytest.mark.slow
async def test_the_dashboard_shows_the_pipeline_live_in_a_browser(
    shop: tuple[Server, httpx.AsyncClient], browser_driver: Path, tmp_path: Path
) -> None:
    server, http = shop
    screenshot = tmp_path / "dashboard.png"
    node = shutil.which("node")
    assert node is not None
    process = await asyncio.create_subprocess_exec(
        node,
        str(browser_driver),
        server.url,
        str(screenshot),
        cwd=BROWSER,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "CHROMIUM": CHROMIUM, "TIMEOUT_MS": "30000", "MIN_NEW_EVENTS": "7"},
    )
    try:
        loaded = await _line(process, 60)
        assert loaded["step"] == "loaded", loaded
        await send_commands(http, orders=5)
        changed = await _line(process, 60)
        assert changed["step"] == "changed", changed
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    before, after = loaded["values"], changed["values"]
    assert int(after["log-head"]) >= int(before["log-head"]) + 7
    assert after["applied-position"] == after["log-head"] == after["relay-position"]
    assert after["lag-events"] == "0"
    assert (after["held-streams"], after["parked-events"]) == ("0", "0")
    assert "OrderPlaced" in after["events"]
    assert after["status"] == "live"
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("UPDATE_SCREENSHOT"):  # the README's picture: a tracked file, on request
        shutil.copyfile(screenshot, ROOT / "docs" / "dashboard.png")
