"""The security tier drives the session plane like the e2e tier: the same `writ` CLI runner, and a
fresh `scene` (server, agent, operator connection) per test."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nats
import pytest_asyncio
from scene import Scene

from cli_runner import Writ, writ
from writ.keys import agent_bus_creds_path, agent_key_path, read_key
from writ.runtime.supervisor import Plane
from writ.sdk import WritAgent

# Tests that need only the services (not the supervisor) use the integration tier's in-process
# spine: the five real services against the session's real nats-server and Redis.
sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))
from inprocess import shared_spine, spine

__all__ = ["scene", "shared_spine", "spine", "writ"]


@pytest_asyncio.fixture(loop_scope="session")
async def scene(
    plane: Plane, writ: Writ, tmp_path: Path, faulty_mcp: Callable[[Path], tuple[list[str], dict[str, str]]]
) -> AsyncIterator[Scene]:
    suffix = uuid.uuid4().hex[:8]
    db = tmp_path / "faulty.sqlite3"
    argv, env = faulty_mcp(db)
    server = f"faulty-{suffix}"
    added = await asyncio.to_thread(
        writ, "server", "add", server, *(f"--env={k}={v}" for k, v in env.items()), "--", *argv
    )
    assert added.exit_code == 0, added.output
    name = f"forger-{suffix}"
    registered = await asyncio.to_thread(writ, "agent", "register", name, "--owner", f"owner-{suffix}")
    assert registered.exit_code == 0, registered.output
    agent = await WritAgent.connect(
        plane.nats_url,
        name,
        read_key(agent_key_path(plane.data_dir, name)),
        creds_file=agent_bus_creds_path(plane.data_dir, name),
    )
    operator = await nats.connect(plane.nats_url, **plane.settings.bus_options())
    try:
        yield Scene(plane, writ, suffix, server, db, agent, operator)
    finally:
        await agent.close()
        await operator.close()
