"""Session fixtures: real servers on free ports with temporary stores; nothing is mocked.

``nats_server`` and ``redis_server`` need only the binaries; ``plane`` also runs the five
services and waits until each answers ``ping``; ``time_server`` is one mcp-server-time on it.
Everything is stopped by pid at teardown.

Shared, not restarted: starting a plane, five services or an MCP server costs seconds of a
2-core machine, so tests share the session's (``plane``, ``time_server``, the integration tier's
in-process ``spine``) and isolate by data instead: an agent, approvers, server names and a policy
of their own. A test that needs other settings, or changes what it shares (a tool's hints, a
service's limits), makes its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from writ.runtime.processes import ManagedProcess, free_port, start_nats, start_redis
from writ.runtime.supervisor import Plane

pytest_plugins = ["mcp_fixtures"]

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "integration", "e2e", "fault", "security", "browser")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test carries its tier's marker by where it lives (`pytest -m unit` selects tests/unit/
    whole), so a module that forgets its pytestmark is still selected."""
    for item in items:
        tier = item.path.resolve().relative_to(TESTS).parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def nats_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """A nats-server with JetStream (fsync always) on a free port and a temporary store."""
    proc = start_nats(tmp_path_factory.mktemp("nats") / "store")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def nats_server(nats_process: ManagedProcess) -> str:
    """URL of the session's nats-server."""
    return nats_process.url


@pytest.fixture(scope="session")
def redis_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """A redis-server (append-only file) on a free port and a temporary directory."""
    proc = start_redis(tmp_path_factory.mktemp("redis") / "data")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def redis_server(redis_process: ManagedProcess) -> str:
    """URL of the session's redis-server."""
    return redis_process.url


@pytest.fixture(scope="session")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    """The whole embedded plane on a temporary data dir, started once per session.

    Has ``.data_dir``, ``.nats_url``, ``.redis_url`` and ``.settings`` (a ``WritSettings``
    pointing at it), plus ``kill_service`` / ``restart_service`` for fault tests.
    """
    # Free ports, not 4222/6379: never collide with a developer's own `writ up`.
    with Plane(tmp_path_factory.mktemp("plane") / "data", nats_port=free_port(), redis_port=free_port()) as running:
        running.wait_ready(timeout=60.0)
        yield running


@pytest.fixture(scope="session")
def time_server(plane: Plane) -> str:
    """One mcp-server-time on the session plane, added once, for every test that only calls it
    (discovery and the executor's warm session are paid once, not per module): tests isolate by
    their own agents and policies, and a test that changes a server's tools adds a server of its own."""
    import uuid

    from cli_runner import TIME_SERVER, cli

    server = f"time-{uuid.uuid4().hex[:8]}"
    added = cli(plane)("server", "add", server, "--", TIME_SERVER)
    assert added.exit_code == 0 and "get_current_time" in added.stdout, added.output
    return server
