"""A consumer in another language (examples/node-consumer, Node.js with amqplib and ajv) reads
the events of a running `python -m app`: every event of the log exactly once, in position
order, valid against the contract the app serves at /asyncapi.json, live and after catching
up on what its durable queue kept while it was stopped."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.contracts.eventlog import LoggedEvent
from app.contracts.events import routing_key
from app.contracts.topology import declare_topology
from app.plumbing.resources import connect_broker
from app.plumbing.settings import Settings
from app.relay.publisher import message_body, message_properties
from tests.support.eventcontract import ROOT, log_every_event_type, log_positions, sample_event
from tests.support.servers import AppProcess, http_client
from tests.support.waiting import eventually

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("node") is None or shutil.which("npm") is None,
        reason="Node.js and npm are needed to run examples/node-consumer",
    ),
]

EXAMPLE = ROOT / "examples" / "node-consumer"


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """The example's dependencies, installed from its package-lock.json when absent."""
    if not (EXAMPLE / "node_modules").is_dir():
        npm = shutil.which("npm")
        assert npm is not None
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=EXAMPLE, check=True, timeout=600)
    return EXAMPLE / "node_modules"


class NodeConsumer:
    """One run of consumer.js: its stdout events and stderr reports, collected as they come."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.events: list[dict[str, Any]] = []
        self.reports: list[dict[str, Any]] = []

    async def start(self) -> None:
        node = shutil.which("node")
        assert node is not None
        self.process = await asyncio.create_subprocess_exec(
            node,
            str(EXAMPLE / "consumer.js"),
            cwd=EXAMPLE,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self._readers = [
            asyncio.create_task(self._read(self.process.stdout, self.events)),
            asyncio.create_task(self._read(self.process.stderr, self.reports)),
        ]
        await eventually(
            lambda: self.kinds() or self.process.returncode is not None,
            within_s=20,
            what="the consumer to be ready",
        )
        assert self.kinds() == ["ready"], self.reports

    @staticmethod
    async def _read(stream: asyncio.StreamReader | None, into: list[dict[str, Any]]) -> None:
        assert stream is not None
        async for line in stream:
            into.append(json.loads(line))

    def kinds(self) -> list[str]:
        return [kind for report in self.reports for kind in report]

    def positions(self) -> list[int]:
        return [event["position"] for event in self.events]

    async def wait(self, timeout_s: float = 60) -> int:
        code = await asyncio.wait_for(self.process.wait(), timeout_s)
        await asyncio.gather(*self._readers)
        return code

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await self.wait()


@pytest.fixture
async def app(stack: Settings) -> AsyncIterator[AppProcess]:
    replica = AppProcess(stack)
    await replica.start()
    yield replica
    replica.stop(signal.SIGKILL)
    replica.log.close()


@pytest.fixture
async def queue(stack: Settings) -> AsyncIterator[str]:
    """The consumer's durable queue; deleted afterwards (the stack's teardown does not know
    it)."""
    name = f"{stack.exchange}.node-consumer"
    yield name
    connection = await connect_broker(stack)
    try:
        await (await connection.channel()).queue_delete(name)
    finally:
        await connection.close()


def _env(stack: Settings, queue: str, **extra: str) -> dict[str, str]:
    return {
        "PATH": str(Path(shutil.which("node") or "node").parent),
        "AMQP_URL": stack.amqp_url,
        "EXCHANGE": stack.exchange,
        "QUEUE": queue,
        "TIMEOUT_S": "60",
        **extra,
    }


async def test_the_node_consumer_sees_every_event_once_in_order_live_and_catching_up(
    stack: Settings, app: AppProcess, queue: str, node_modules: Path
) -> None:
    contract = f"{app.url}/asyncapi.json"
    live = NodeConsumer(_env(stack, queue, ASYNCAPI=contract, AFTER="0"))
    await live.start()
    async with http_client(app.url, timeout=30) as http:
        await log_every_event_type(http)
        logged = await log_positions(stack)
        await eventually(lambda: live.positions() == logged, within_s=30, what="every event")
        assert await live.stop() == 0, live.reports
        assert live.kinds() == ["ready"]

        # stopped: its durable queue keeps what is published meanwhile
        await log_every_event_type(http)
    later = [p for p in await log_positions(stack) if p > logged[-1]]
    env = _env(stack, queue, ASYNCAPI=contract, AFTER=str(logged[-1]), MAX_EVENTS=str(len(later)))
    catching_up = NodeConsumer(env)
    await catching_up.start()
    assert await catching_up.wait() == 0, catching_up.reports
    assert catching_up.positions() == later
    assert catching_up.events[0]["prev_position"] == logged[-1]
    assert catching_up.kinds() == ["ready"]


async def _publish(stack: Settings, bodies: list[tuple[LoggedEvent, bytes]]) -> None:
    connection = await connect_broker(stack)
    try:
        channel = await connection.channel()
        await declare_topology(channel, stack)
        for event, body in bodies:
            await channel.basic_publish(
                body,
                exchange=stack.exchange,
                routing_key=routing_key(event.type),
                properties=message_properties(event),
            )
    finally:
        await connection.close()


async def test_the_node_consumer_refuses_a_broken_message_drops_a_duplicate_reports_a_gap(
    stack: Settings, queue: str, node_modules: Path
) -> None:
    # the consumer reads the checked-in docs/asyncapi.yaml (its default)
    consumer = NodeConsumer(_env(stack, queue, AFTER="0", MAX_EVENTS="2"))
    await consumer.start()
    broken, first, second = (
        sample_event("OrderPaid", 3),
        sample_event("StockReserved", 10),
        sample_event("OrderPlaced", 12),
    )
    without_data = {k: v for k, v in json.loads(message_body(broken, 2)).items() if k != "data"}
    await _publish(
        stack,
        [
            (broken, json.dumps(without_data).encode()),
            (first, message_body(first, prev_position=7)),  # 4..7 never arrived
            (first, message_body(first, prev_position=7)),  # published again
            (second, message_body(second, prev_position=10)),
        ],
    )
    assert await consumer.wait() == 1, consumer.reports
    assert consumer.positions() == [10, 12]
    assert consumer.kinds() == ["ready", "invalid", "gap", "duplicate"]
    assert consumer.reports[2]["gap"] == {"after": 0, "prev_position": 7, "at": 10}
