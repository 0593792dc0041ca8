"""One chaos run: a fresh stack (bench.stack: its own database, broker names and Mongo database,
on a store it starts unless MONGO_URL is set), two replicas behind TCP proxies to PostgreSQL and
RabbitMQ, steady traffic, the faults in turn, then the tally. Everything is registered on the
stack's exit stack as it is made, so a failure or Ctrl-C at any point removes what exists."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from app.contracts.generations import ReadModel
from app.contracts.readmodel import ORDERS, PRODUCTS
from app.operations.verify import Report, verify
from bench.stack import Stack, stack
from chaos.faults import (
    Cut,
    Fault,
    KillLeader,
    KillStore,
    RestartPostgres,
    RestartRabbitMQ,
    RolledBackBurst,
    SlowCommits,
)
from chaos.proxy import Proxy
from chaos.replicas import Replica, all_ready
from chaos.tally import Document, LoggedEvent, Stream, Tally, Window, impact, tally
from chaos.traffic import Traffic

RESTARTABLE = frozenset({"rabbitmq", "postgres"})


@dataclass(frozen=True)
class Plan:
    quick: bool
    rate: float  # commands a second, over both replicas
    warmup_s: float
    spell_s: float  # how long each fault lasts
    recovery_s: float  # at least this long between faults (and until every replica is ready)
    rolled_back: int  # transactions in the rolled-back burst
    catch_up_s: float  # the longest wait for the read model at the end


QUICK = Plan(True, rate=20, warmup_s=4, spell_s=3, recovery_s=4, rolled_back=300, catch_up_s=60)
FULL = Plan(False, rate=35, warmup_s=10, spell_s=8, recovery_s=12, rolled_back=1500, catch_up_s=120)


def progress(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Findings:
    """What a run found, for the report."""

    plan: Plan
    seed: int
    restart: frozenset[str]
    tally: Tally
    report: Report
    traffic: Traffic
    windows: list[Window]
    unready: list[str]  # faults after which a replica was not ready within the bound

    def impacts(self) -> list[dict[str, Any]]:
        rows = []
        first = min((a.started for a in self.traffic.attempts), default=0.0)
        for window in self.windows:
            row: dict[str, Any] = {
                "fault": window.name,
                "at_s": round(window.started - first, 1),  # from the first request
                "spell_s": round(window.healed - window.started, 1),
            }
            for name, requests in (
                ("commands", self.traffic.attempts),
                ("reads", self.traffic.reads),
            ):
                found = impact(window, requests)
                row[name] = {
                    "requests": found.requests, "failed": found.failed,
                    "failing_s": round(found.failing_s, 1), "failures": found.failures,
                    "p99_ms": None if found.p99_s is None else round(found.p99_s * 1000),
                }  # fmt: skip
            rows.append(row)
        return rows


async def _proxies(st: Stack) -> tuple[Proxy, Proxy, Proxy | None]:
    """The proxies the replicas reach PostgreSQL, RabbitMQ (and an outside Mongo) through."""
    s = st.settings
    made = [
        Proxy.of_url("postgres", s.database_url, 5432),
        Proxy.of_url("rabbitmq", s.amqp_url, 5672),
    ]
    if st.store is None:  # MONGO_URL: a server this run may not kill, so it is cut instead
        made.append(Proxy.of_url("mongo", s.mongo_url, 27017))
    for proxy in made:
        await proxy.restore()
        st.exits.push_async_callback(proxy.cut)
    return made[0], made[1], made[2] if len(made) > 2 else None


async def _replicas(
    st: Stack, logs: Path | None
) -> tuple[list[Replica], Proxy, Proxy, Proxy | None]:
    pg, mq, mongo = await _proxies(st)
    s = st.settings
    env = {
        "DATABASE_URL": pg.url(s.database_url), "AMQP_URL": mq.url(s.amqp_url),
        "MONGO_URL": mongo.url(s.mongo_url) if mongo else s.mongo_url, "LOG_LEVEL": "warning",
    }  # fmt: skip
    replicas = [Replica(f"replica-{i}", lambda port: st.app_env(port, **env)) for i in (1, 2)]
    st.exits.push_async_callback(_stop, replicas, logs)
    for replica in replicas:
        await replica.start()
        progress(f"{replica.name} pid {replica.pid} on {replica.url}")
    return replicas, pg, mq, mongo


async def _stop(replicas: list[Replica], logs: Path | None) -> None:
    """SIGTERM to every replica at once (each drains for up to 10 s); their output kept in
    `logs` (CHAOS_LOGS) when given."""
    await asyncio.gather(*(asyncio.to_thread(r.stop) for r in replicas))
    if logs is not None:
        await asyncio.to_thread(_keep, replicas, logs)
        progress(f"replica output in {logs}")


def _keep(replicas: list[Replica], logs: Path) -> None:
    logs.mkdir(parents=True, exist_ok=True)
    for replica in replicas:
        (logs / f"{replica.name}.log").write_text("\n".join(replica.outputs))


def _faults(
    st: Stack, replicas: list[Replica], proxies: tuple[Proxy, Proxy, Proxy | None],
    plan: Plan, restart: frozenset[str], rng: random.Random,
) -> list[Fault]:  # fmt: skip
    pg, mq, mongo_proxy = proxies
    dsn = st.settings.database_url
    host, port = pg.target
    broker: Fault = RestartRabbitMQ() if "rabbitmq" in restart else Cut("rabbitmq-cut", mq)
    postgres: Fault = (
        RestartPostgres(host, port) if "postgres" in restart else Cut("postgres-cut", pg)
    )
    if st.store is not None:
        mongo: Fault = KillStore(st.store)
    else:
        assert mongo_proxy is not None
        mongo = Cut("mongo-cut", mongo_proxy)
    burst = RolledBackBurst(dsn, plan.rolled_back, plan.spell_s, rng)
    return [broker, KillLeader(replicas), mongo, postgres, SlowCommits(dsn), burst]


async def _inject(
    faults: list[Fault], replicas: list[Replica], plan: Plan
) -> tuple[list[Window], list[str]]:
    windows: list[Window] = []
    unready: list[str] = []
    for fault in faults:
        progress(f"fault: {fault.name} for {plan.spell_s} s")
        started = time.monotonic()
        try:
            await fault.inject()
            await asyncio.sleep(plan.spell_s)
        finally:
            await fault.heal()
        healed = time.monotonic()
        await asyncio.sleep(plan.recovery_s)
        if waiting := await all_ready(replicas, within_s=60):
            unready.append(fault.name)
            progress(f"after {fault.name}, not ready within 60 s: {'; '.join(waiting)}")
        windows.append(Window(fault.name, started, healed, time.monotonic()))
    return windows, unready


async def _log(dsn: str) -> list[LoggedEvent]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT position, xmin::text AS transaction, stream_type, stream_id, stream_version,"
            " metadata->>'correlation_id' AS correlation_id,"
            " metadata->>'idempotency_key' AS idempotency_key"
            " FROM events ORDER BY position"
        )
    finally:
        await conn.close()
    return [
        LoggedEvent(
            position=r["position"], transaction=r["transaction"],
            stream=(r["stream_type"], r["stream_id"]), stream_version=r["stream_version"],
            correlation_id=r["correlation_id"], idempotency_key=r["idempotency_key"],
        )
        for r in rows
    ]  # fmt: skip


async def _documents(st: Stack) -> dict[Stream, Document]:
    client = st.mongo_client()
    try:
        model = ReadModel(client[st.settings.mongo_db])
        await model.refresh()  # the generation in use, as verify reads it
        db = model.db
        found: dict[Stream, Document] = {}
        async for doc in db[ORDERS].find({}, {"version": 1, "status_history.position": 1}):
            history = tuple(h["position"] for h in doc.get("status_history", []))
            found[("order", str(doc["_id"]))] = Document(doc["version"], history)
        async for doc in db[PRODUCTS].find({}, {"version": 1}):
            found[("product", str(doc["_id"]))] = Document(doc["version"])
    finally:
        await client.close()
    return found


async def run(plan: Plan, restart: frozenset[str], seed: int, logs: Path | None = None) -> Findings:
    rng = random.Random(seed)  # noqa: S311 - a load shape, not a secret
    async with stack("chaos") as st:
        progress(
            f"database {st.settings.database_url.rsplit('/', 1)[1]}, Mongo {st.settings.mongo_url}"
        )
        replicas, pg, mq, mongo = await _replicas(st, logs)
        faults = _faults(st, replicas, (pg, mq, mongo), plan, restart, rng)
        budget_s = plan.warmup_s + len(faults) * (plan.spell_s + plan.recovery_s + 90)
        async with Traffic(
            [r.url for r in replicas], plan.rate, rng, uuid.uuid4().hex[:8]
        ) as traffic:
            await traffic.seed(products=8)
            stop = asyncio.Event()
            load = asyncio.create_task(traffic.run(budget_s, stop))
            try:
                await asyncio.sleep(plan.warmup_s)
                windows, unready = await _inject(faults, replicas, plan)
            finally:
                stop.set()
                progress("traffic stopping; waiting for the requests in flight")
                await load
        progress(f"{len(traffic.attempts)} commands sent; waiting for the read model, then verify")
        report = await verify(st.settings, wait_s=plan.catch_up_s)
        held = frozenset(_stream(h.stream) for h in report.held)
        progress(f"verify: {len(report.differences)} differences; the tally")
        counted = tally(
            traffic.attempts, await _log(st.settings.database_url), await _documents(st), held
        )
        progress("removing the replicas, proxies, databases and broker names it made")
    progress("removed")
    return Findings(plan, seed, restart, counted, report, traffic, windows, unready)


def _stream(name: str) -> Stream:
    stream_type, _, stream_id = name.partition(":")
    return (stream_type, stream_id)
