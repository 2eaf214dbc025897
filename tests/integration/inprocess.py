"""In-process plane for integration tests: the five real services run in the test's event loop
against the session's real nats-server and Redis (so spans land in an in-memory exporter).

The ``spine`` fixture gives each module the session's one set of services (started once, see
:class:`SharedSpine`) with an agent of the module's own: modules are isolated by data (their own
agent, servers and policy), not by restarting five services and rediscovering the time server.
A module that needs services of its own (other limits, another Redis) opens them with
:func:`open_spine`, which first stops the shared ones: two sets would split the same durable
consumers between them."""

from __future__ import annotations

import asyncio
import io
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio
from nacl.signing import SigningKey
from nats.aio.client import Client
from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from writ.runtime.processes import free_port
from writ.sdk import WritAgent
from writ_common import commands
from writ_common.service import Service
from writ_common.settings import WritSettings
from writ_common.signing import generate_key, public_key_b64
from writ_executor.app import build as build_executor
from writ_identity.app import build as build_identity
from writ_ledger.app import build as build_ledger
from writ_policy.app import build as build_policy
from writ_registry.app import build as build_registry

SPANS = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(SPANS))
trace.set_tracer_provider(_provider)

DEFAULT_POLICY = (Path(__file__).parents[2] / "deploy" / "policies" / "default.cedar").read_text()
TIME_SERVER = str(Path(sys.executable).parent / "mcp-server-time")
SERVERS = Path(__file__).parents[1] / "servers"


@dataclass
class Spine:
    nc: Client
    services: list[Service]
    agent: WritAgent
    key: SigningKey
    views_url: str  # the ledger's views HTTP API

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream()


async def add_described_server(spine: Spine, name: str, script: str, description: Path) -> dict[str, Any]:
    """Register ``tests/servers/<script>`` (stdio), whose ``lookup`` tool reads its description from
    ``description`` (written here as "Look an item up."), so a test can change it later."""
    await asyncio.to_thread(description.write_text, "Look an item up.")
    body = {
        "name": name,
        "command": sys.executable,
        "args": [str(SERVERS / script)],
        "env": {"DESCRIPTION_FILE": str(description)},
    }
    return dict(await commands.call(spine.nc, "registry", "add_server", body))


async def add_faulty_server(spine: Spine, name: str, command: tuple[list[str], dict[str, str]], cedar: str) -> None:
    """Register ``tests/servers/faulty_stdio.py`` (``command``: the ``faulty_mcp`` fixture's argv
    and env) as ``name``, and load the policy bundle ``cedar``."""
    argv, env = command
    body = {"name": name, "command": argv[0], "args": argv[1:], "env": env}
    await commands.call(spine.nc, "registry", "add_server", body)
    await commands.call(spine.nc, "policy", "load", {"cedar": cedar})


@asynccontextmanager
async def open_spine(
    nats_server: str, redis_server: str, data_dir: Path, *, policy_redis: str | None = None, **overrides: Any
) -> AsyncIterator[Spine]:
    """The five services, an agent and the time server; ``policy_redis`` gives policy its own Redis
    (so a test can take policy's rate-limit store away while identity's nonces keep working);
    ``overrides``: other settings (e.g. the executor's limits). The shared services stop first
    (the next ``spine`` starts them again)."""
    await SHARED.stop()
    async with _spine(nats_server, redis_server, data_dir, policy_redis=policy_redis, **overrides) as spine:
        yield spine


@asynccontextmanager
async def _spine(
    nats_server: str, redis_server: str, data_dir: Path, *, policy_redis: str | None = None, **overrides: Any
) -> AsyncIterator[Spine]:
    settings = WritSettings(
        data_dir=data_dir,
        nats_url=nats_server,
        redis_url=redis_server,
        instance="test",
        views_port=free_port(),
        **overrides,
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    policy_settings = settings.model_copy(update={"redis_url": policy_redis or redis_server})
    services = [
        build_identity(settings),
        build_registry(settings),
        build_policy(policy_settings),
        build_executor(settings),
        build_ledger(settings),
    ]
    for svc in services:
        await svc.start()
    nc = await nats.connect(nats_server)
    key = generate_key()
    agent_id = f"spine-{uuid.uuid4().hex[:8]}"
    await commands.call(nc, "identity", "register_agent", {"agent_id": agent_id, "public_key": public_key_b64(key)})
    await commands.call(nc, "registry", "add_server", {"name": "time", "command": TIME_SERVER})
    try:
        views_url = f"http://127.0.0.1:{settings.views_port}"
        yield Spine(nc=nc, services=services, agent=WritAgent(nc, agent_id, key), key=key, views_url=views_url)
    finally:
        await nc.close()
        for svc in reversed(services):
            await stopped(svc)


async def stopped(svc: Service, timeout: float = 45.0) -> None:
    """Stop ``svc``; a stop that hangs fails here naming the service and every task still waiting
    (not a module's teardown silently hitting the suite's 300 s timeout)."""
    stopping = asyncio.ensure_future(svc.stop())
    done, _ = await asyncio.wait([stopping], timeout=timeout)
    if not done:
        stacks = io.StringIO()
        for task in asyncio.all_tasks():
            task.print_stack(limit=12, file=stacks)
        stopping.cancel()
        raise AssertionError(f"{svc.name} did not stop within {timeout:g}s; tasks:\n{stacks.getvalue()}")
    stopping.result()


async def own_agent(spine: Spine, prefix: str = "spine") -> Spine:
    """``spine`` with a freshly registered agent of its own (same services, connection and views)."""
    key = generate_key()
    agent_id = f"{prefix}-{uuid.uuid4().hex[:8]}"
    await commands.call(
        spine.nc, "identity", "register_agent", {"agent_id": agent_id, "public_key": public_key_b64(key)}
    )
    return replace(spine, agent=WritAgent(spine.nc, agent_id, key), key=key)


class SharedSpine:
    """The session's one set of in-process services, started by the first module that asks and
    kept for the next ones, until :func:`open_spine` or the session's end stops it. One object for
    the session whichever tier's conftest asks (both import this module)."""

    def __init__(self) -> None:
        self._running: Spine | None = None
        self._stack: AsyncExitStack | None = None
        self._where: tuple[str, str, Path] | None = None

    def configure(self, nats_server: str, redis_server: str, data_dir: Path) -> None:
        self._where = (nats_server, redis_server, data_dir)

    async def get(self) -> Spine:
        if self._running is None:
            assert self._where is not None, "the shared_spine fixture configures it first"
            stack = AsyncExitStack()
            self._running = await stack.enter_async_context(_spine(*self._where))
            self._stack = stack
        return self._running

    async def stop(self) -> None:
        stack, self._running, self._stack = self._stack, None, None
        if stack is not None:
            await stack.aclose()


SHARED = SharedSpine()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def shared_spine(
    nats_server: str, redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[SharedSpine]:
    """Where the shared services run (the session's servers: set up before it, so torn down after
    it), stopped at the session's end whichever conftest's copy of this fixture runs that."""
    # One data dir for every module: one ledger key signs the whole chain on the shared server.
    SHARED.configure(nats_server, redis_server, tmp_path_factory.getbasetemp() / "inprocess-plane")
    try:
        yield SHARED
    finally:
        await SHARED.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def spine(shared_spine: SharedSpine) -> Spine:
    """The shared services with this module's own agent."""
    return await own_agent(await shared_spine.get())
