"""The service kit's standing pull request against a real nats-server: every event once, in order,
across top-ups; a request the server drops (the consumer deleted and recreated) is asked again."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from writ_common.puller import Puller

pytestmark = pytest.mark.integration


async def take(puller: Puller, count: int, timeout: float = 10.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while len(got) < count and asyncio.get_running_loop().time() < deadline:
        try:
            msgs = await puller.next_batch(0.2)
        except TimeoutError:
            continue
        for msg in msgs:
            got.append(msg.data)
            await msg.ack()
    return got


async def test_a_standing_request_delivers_every_event_once_in_order_then_survives_its_consumer(
    nats_server: str,
) -> None:
    nc = await nats.connect(nats_server)
    js = nc.jetstream()
    stream, subject = f"PULL_{uuid.uuid4().hex[:8]}", f"pull.{uuid.uuid4().hex[:8]}"
    config = ConsumerConfig(durable_name="d", name="d", ack_policy=AckPolicy.EXPLICIT, ack_wait=30)
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{subject}.>"]))
    await js.add_consumer(stream, config)
    puller = Puller(nc, stream, "d", batch=4)
    try:
        await puller.start()
        for i in range(25):  # more than six batches: the request is renewed as events are taken
            await js.publish(f"{subject}.x", str(i).encode())
        assert await take(puller, 25) == [str(i).encode() for i in range(25)]
        with pytest.raises(TimeoutError):
            await puller.next_batch(0.3)  # nothing twice
        # The consumer goes (its waiting request with it) and comes back: the puller asks again.
        await js.delete_consumer(stream, "d")
        await js.add_consumer(stream, config.evolve(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=26))
        await js.publish(f"{subject}.x", b"after")
        assert await take(puller, 1, timeout=15.0) == [b"after"]
    finally:
        await puller.stop()
        await js.delete_stream(stream)
        await nc.close()
