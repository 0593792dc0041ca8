"""The local SecantusDB launcher: the Rust server by default, the Python one as the fallback,
either serving real reads and writes; and its `-- CMD` wrapper."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from app.plumbing.localstore import LocalStore, free_port, rust_server
from app.plumbing.resources import mongo_client
from app.plumbing.settings import Settings


async def _round_trip(url: str) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url)
    try:
        collection = client["localstore_test"]["things"]
        key = uuid.uuid4().hex
        await collection.insert_one({"_id": key, "n": 1})
        assert await collection.find_one({"_id": key}) == {"_id": key, "n": 1}
    finally:
        await client.close()


@pytest.mark.slow
async def test_the_python_fallback_starts_and_serves() -> None:
    with LocalStore(prefer="python") as store:
        assert store.kind == "python"
        await _round_trip(store.url)


@pytest.mark.skipif(rust_server() is None, reason="secantusd-rs is not installed")
async def test_the_rust_server_is_the_default_when_installed(mongo_url: str) -> None:
    """Chosen, not started here: the run's own store (`mongo_url`) is such a default one."""
    store = LocalStore()
    store.close()
    assert store.kind == "rust"
    await _round_trip(mongo_url)


@pytest.mark.skipif(rust_server() is None, reason="secantusd-rs is not installed")
async def test_the_store_keeps_no_oplog() -> None:
    """Nothing reads it (no change streams), and pruning it past its cap halved the store's
    write rate (docs/benchmarks.md). With the server's default, these writes leave 2 entries."""
    with LocalStore() as store:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(store.url)
        try:
            things = client["localstore_test"]["things"]
            await things.insert_one({"_id": 1})
            await things.update_one({"_id": 1}, {"$set": {"n": 2}})
            assert await client["local"]["oplog.rs"].count_documents({}) == 0
        finally:
            await client.close()


@pytest.mark.slow
async def test_a_store_restarts_on_its_port_and_storage() -> None:
    """Stopped, it keeps its data; killed (a crash), it comes back on the same port."""
    with LocalStore() as store:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(store.url)
        try:
            await client["localstore_test"]["kept"].insert_one({"_id": 1})
            store.stop()
            store.start()
            assert await client["localstore_test"]["kept"].find_one() == {"_id": 1}
            store.stop(kill=True)
            store.start()
            await _round_trip(store.url)
        finally:
            await client.close()


@pytest.mark.slow
async def test_a_killed_store_keeps_every_write_it_acknowledged(settings: Settings) -> None:
    """The app's client (journaled writes) on the embedded store (synced on commit): what was
    acknowledged is there after a SIGKILL. Without both, the store came back some writes
    behind in each round, and a projector writing on top of such documents would have its
    fences refuse the lost events for good (docs/architecture.md §6)."""
    with LocalStore() as store:
        client = mongo_client(replace(settings, mongo_url=store.url))
        counter = client["localstore_test"]["counter"]
        kept = 0  # the count found after the last restart
        try:
            for round_ in range(3):
                acknowledged = 0

                async def write() -> None:
                    nonlocal acknowledged
                    while True:
                        await counter.update_one({"_id": 1}, {"$inc": {"n": 1}}, upsert=True)
                        acknowledged += 1

                writer = asyncio.create_task(write())
                await asyncio.sleep(0.3)
                store.stop(kill=True)  # a crash mid-write: the write in flight may be kept
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, PyMongoError):
                    await writer
                store.start()
                found = (await counter.find_one({"_id": 1}) or {}).get("n", 0)
                assert acknowledged > 0
                assert found >= kept + acknowledged, (round_, kept, acknowledged, found)
                kept = found
        finally:
            await client.close()


def test_a_store_that_cannot_start_says_why(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with pytest.raises(RuntimeError, match=r"exited with 1; its output:\n.*File exists"):
        LocalStore(storage=str(not_a_directory)).start()


def test_a_port_in_use_is_refused_not_mistaken_for_the_store() -> None:
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        store = LocalStore(port=stranger.getsockname()[1])
        with pytest.raises(RuntimeError, match="already in use"):
            store.start()
        store.close()


@pytest.mark.slow
def test_the_wrapper_runs_the_command_with_mongo_url_and_returns_its_code(tmp_path: Path) -> None:
    port = free_port()
    child = "import os, sys; print(os.environ['MONGO_URL']); sys.exit(3)"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "app.plumbing.localstore", "--port", str(port)),
            *("--storage-path", str(tmp_path / "data"), "--", sys.executable, "-c", child),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout.strip() == f"mongodb://127.0.0.1:{port}"
    assert f"server on mongodb://127.0.0.1:{port}" in result.stderr
