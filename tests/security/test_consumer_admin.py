"""A compromised service (here the registry's own bus credential) tries to stall another stage by
administering its durable consumer: deleting it, or pulling (and so stealing) its messages. The bus
must refuse, and a consumer deleted anyway (by an operator's slip) must come back at once.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import nats
import pytest
from nats.js.errors import NotFoundError

from cli_runner import INTENT_ID, Writ
from writ.runtime.supervisor import Plane
from writ_common import subjects

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="session")]

EXECUTOR_CONSUMER = "writ-executor"


async def test_a_service_credential_cannot_delete_or_drain_another_services_consumer(plane: Plane) -> None:
    registry = await nats.connect(
        plane.nats_url,
        **plane.settings.model_copy(update={"nats_creds_file": plane.bus.creds_file("registry")}).bus_options(
            "registry"
        ),
    )
    operator = await nats.connect(plane.nats_url, **plane.settings.bus_options())
    try:
        api = "$JS.API.CONSUMER"
        stream = subjects.INTENTS_STREAM
        attempts = {
            "delete": (f"{api}.DELETE.{stream}.{EXECUTOR_CONSUMER}", b""),
            "pull": (
                f"{api}.MSG.NEXT.{stream}.{EXECUTOR_CONSUMER}",
                json.dumps({"batch": 1, "no_wait": True}).encode(),
            ),
        }

        async def refused(label: str, subject: str, body: bytes) -> None:
            with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
                reply = await registry.request(subject, body, timeout=2.0)
                raise AssertionError(f"{label}: the bus let the registry ask {subject}: {reply.data[:200]!r}")

        # Both at once: each refused one waits out its timeout.
        await asyncio.gather(*(refused(label, subject, body) for label, (subject, body) in attempts.items()))
        info = await operator.jetstream().consumer_info(stream, EXECUTOR_CONSUMER)
        assert info.name == EXECUTOR_CONSUMER
    finally:
        await registry.close()
        await operator.close()


async def test_a_deleted_consumer_is_recreated_at_once(plane: Plane, writ: Writ, time_server: str) -> None:
    operator = await nats.connect(plane.nats_url, **plane.settings.bus_options())
    js = operator.jetstream()
    try:
        assert await js.delete_consumer(subjects.INTENTS_STREAM, EXECUTOR_CONSUMER)
        deadline = asyncio.get_running_loop().time() + 5.0
        while True:
            try:
                await js.consumer_info(subjects.INTENTS_STREAM, EXECUTOR_CONSUMER)
                break
            except NotFoundError:
                assert asyncio.get_running_loop().time() < deadline, "the executor's consumer was not recreated"
                await asyncio.sleep(0.1)
    finally:
        await operator.close()
    # And execution goes on through it.
    agent, server = f"after-delete-{uuid.uuid4().hex[:8]}", time_server
    for args in (
        ("agent", "register", agent, "--owner", "tests"),
        ("policy", "load", "--default"),
    ):
        result = await asyncio.to_thread(writ, *args)
        assert result.exit_code == 0, result.output
    submitted = await asyncio.to_thread(
        writ, "intent", "submit", f"{server}/get_current_time", "--args", '{"timezone": "UTC"}', "--as", agent, "--wait"
    )
    assert INTENT_ID.search(submitted.stdout), submitted.output
    assert submitted.exit_code == 0 and "succeeded" in submitted.stdout, submitted.output
