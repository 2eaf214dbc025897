"""The fault tests' rig: a running plane with the side-effecting MCP servers registered, an agent,
and the checks every scenario ends with (one receipt each, rows written once, a valid chain)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.aio.client import Client

from waiting import reached
from writ.runtime.supervisor import Plane
from writ.sdk import WritAgent, wait_receipt
from writ_common import commands, subjects
from writ_common import events as ev
from writ_common.bus import direct_get_batch
from writ_common.envelope import decode
from writ_common.receipts import verify_receipt
from writ_common.signing import generate_key, public_key_b64

PERMIT_ALL = '@id("fault-tests-permit-all")\npermit(principal, action == Action::"call_tool", resource);\n'


@dataclass
class Rig:
    plane: Plane
    nc: Client
    agent: WritAgent
    sqlite_db: Path
    faulty_db: Path


@asynccontextmanager
async def open_rig(
    plane: Plane,
    work: Path,
    sqlite_mcp: Callable[[Path], list[str]],
    faulty_mcp: Callable[[Path], tuple[list[str], dict[str, str]]],
) -> AsyncIterator[Rig]:
    """Register mcp-server-sqlite (``sqlite``) and our faulty server (``faulty``), permit all."""
    sqlite_db, faulty_db = work / "rows.sqlite3", work / "faulty.sqlite3"
    with sqlite3.connect(sqlite_db) as db:
        db.execute("CREATE TABLE rows (token TEXT NOT NULL)")
    nc = await nats.connect(
        plane.settings.nats_servers(),
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        **plane.settings.bus_options(),
    )
    key = generate_key()
    await commands.call(
        nc, "identity", "register_agent", {"agent_id": "fault-agent", "public_key": public_key_b64(key)}
    )
    sqlite_argv = sqlite_mcp(sqlite_db)
    await commands.call(
        nc, "registry", "add_server", {"name": "sqlite", "command": sqlite_argv[0], "args": sqlite_argv[1:]}
    )
    # mcp-server-sqlite declares no annotations: the operator says what write_query is.
    await commands.call(
        nc,
        "registry",
        "set_override",
        {"server": "sqlite", "tool": "write_query", "read_only": False, "destructive": False, "idempotent": False},
    )
    faulty_argv, faulty_env = faulty_mcp(faulty_db)
    await commands.call(
        nc,
        "registry",
        "add_server",
        {"name": "faulty", "command": faulty_argv[0], "args": faulty_argv[1:], "env": faulty_env},
    )
    await commands.call(nc, "policy", "load", {"cedar": PERMIT_ALL})
    try:
        yield Rig(plane, nc, WritAgent(nc, "fault-agent", key), sqlite_db, faulty_db)
    finally:
        await nc.close()


async def submit_rows(rig: Rig, n: int, run: str) -> dict[str, str]:
    """Submit ``n`` row-writing intents concurrently; returns intent id -> row token."""
    tokens: dict[str, str] = {}

    async def one(i: int) -> None:
        token = f"{run}-{i}"
        query = f"INSERT INTO rows (token) VALUES ('{token}')"
        submission = await rig.agent.submit("sqlite/write_query", {"query": query}, idempotency_key=token)
        tokens[submission.intent_id] = token

    for start in range(0, n, 25):
        await asyncio.gather(*(one(i) for i in range(start, min(n, start + 25))))
    return tokens


async def receipts_of(rig: Rig, intent_ids: list[str], timeout: float = 120) -> dict[str, ev.Receipt]:
    found = await asyncio.gather(*(wait_receipt(rig.nc, i, timeout=timeout) for i in intent_ids))
    return dict(zip(intent_ids, found, strict=True))


async def all_receipts(nc: Client) -> list[ev.Receipt]:
    msgs = await direct_get_batch(nc, subjects.LEDGER_STREAM, subjects.RECEIPTS_FILTER, batch=1024)
    out = []
    for msg in msgs:
        payload = decode(msg.data).payload
        assert isinstance(payload, ev.Receipt)
        out.append(payload)
    return out


def row_counts(db: Path) -> Counter[str]:
    with sqlite3.connect(db) as conn:
        return Counter(token for (token,) in conn.execute("SELECT token FROM rows"))


async def submit_until(rig: Rig, done: Callable[[], bool], run: str, timeout: float = 60) -> dict[str, str]:
    """Submit row-writing intents, one at a time, until ``done()``: the test makes the traffic its
    fault needs rather than hoping the background traffic lasts. Returns intent id -> row token."""
    tokens: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not done after {len(tokens)} intents in {timeout:g}s"
        tokens |= await submit_rows(rig, 1, f"{run}-{len(tokens)}")
        await reached(done, 0.5)
    return tokens


async def assert_chain_verifies(rig: Rig) -> None:
    public_key = (await commands.call(rig.nc, "ledger", "public_key", {}))["public_key"]
    previous: ev.Receipt | None = None
    for receipt in await all_receipts(rig.nc):
        verify_receipt(receipt, public_key, prev_hash=previous.receipt_hash if previous else None)
        previous = receipt
