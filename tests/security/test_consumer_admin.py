"""A compromised service (here the registry's own bus credential) tries to stall another stage by
administering its durable consumer: deleting it, resetting it, or pulling (and so stealing) its
messages. The bus must refuse; a consumer deleted anyway (by an operator's slip) must come back at
once, and one that lost its progress (moved back to the stream's start) must be moved forward again
by its own service, to the progress that service had seen.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import nats
import pytest
from nats.js.errors import NotFoundError

from cli_runner import INTENT_ID, Writ
from plane_metrics import lost_progress_noticed
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
            "reset": (f"{api}.RESET.{stream}.{EXECUTOR_CONSUMER}", json.dumps({"seq": 1}).encode()),
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


async def test_a_consumer_that_lost_its_progress_is_moved_back_to_it(
    plane: Plane, writ: Writ, time_server: str
) -> None:
    """What a consumer kept on one node finds when that node is lost for good and removed: JetStream
    places it anew with no progress. Here the operator moves it back to where it starts (the same
    state, without losing a node); the executor's guard resets it to the ack floor it had seen."""
    agent = f"lost-progress-{uuid.uuid4().hex[:8]}"
    for args in (("agent", "register", agent, "--owner", "tests"), ("policy", "load", "--default")):
        result = await asyncio.to_thread(writ, *args)
        assert result.exit_code == 0, result.output
    call = ("intent", "submit", f"{time_server}/get_current_time", "--args", '{"timezone": "UTC"}', "--as", agent)
    submitted = await asyncio.to_thread(writ, *call, "--wait")
    assert submitted.exit_code == 0 and "succeeded" in submitted.stdout, submitted.output

    operator = await nats.connect(plane.nats_url, **plane.settings.bus_options())
    js = operator.jetstream()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15.0
        seen = await js.consumer_info(subjects.INTENTS_STREAM, EXECUTOR_CONSUMER)
        while seen.num_ack_pending or seen.num_pending:  # every event so far handled: the floor is the guard's too
            assert loop.time() < deadline, f"the executor's consumer did not catch up: {seen}"
            await asyncio.sleep(0.2)
            seen = await js.consumer_info(subjects.INTENTS_STREAM, EXECUTOR_CONSUMER)
        floor = seen.ack_floor.stream_seq if seen.ack_floor else 0
        # Where the consumer starts: the stream's start, or past the floor a recreation began at
        # (an earlier test deletes it); JetStream refuses a reset below it.
        start = seen.config.opt_start_seq or 1
        assert floor >= start  # the call above was handled since: something to deliver again
        await asyncio.sleep(6.0)  # the guard's periodic check sees this floor
        before = await lost_progress_noticed(plane, "executor")
        reply = await operator.request(
            f"$JS.API.CONSUMER.RESET.{subjects.INTENTS_STREAM}.{EXECUTOR_CONSUMER}", json.dumps({"seq": start}).encode()
        )
        assert json.loads(reply.data).get("reset_seq") == start, reply.data

        deadline = loop.time() + 15.0
        while await lost_progress_noticed(plane, "executor") <= before:
            assert loop.time() < deadline, "the executor did not move its consumer back to the progress it had seen"
            await asyncio.sleep(0.2)
        info = await js.consumer_info(subjects.INTENTS_STREAM, EXECUTOR_CONSUMER)
        assert info.ack_floor is not None and info.ack_floor.stream_seq >= floor
    finally:
        await operator.close()
    # And execution goes on through it.
    again = await asyncio.to_thread(writ, *call, "--wait")
    assert again.exit_code == 0 and "succeeded" in again.stdout, again.output
