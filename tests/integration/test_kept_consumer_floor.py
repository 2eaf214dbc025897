"""A stage's consumer guard against a real nats-server: the ack floor it saw is kept in the
consumer's own metadata (a metadata change is an update: the consumer goes on delivering), and a
service restarted after its consumer lost its progress (the state a consumer placed anew after its
node's removal is in) moves it back to that floor, though it has seen none itself."""

from __future__ import annotations

import json
import uuid

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from waiting import reached
from writ_common.consumers import FLOOR_KEY, ConsumerGuard

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def kept(js: JetStreamContext, stream: str, durable: str, floor: str) -> bool:
    info = await js.consumer_info(stream, durable)
    return (info.config.metadata or {}).get(FLOOR_KEY) == floor


async def test_the_floor_kept_in_the_consumer_survives_the_services_restart(nats_server: str) -> None:
    nc = await nats.connect(nats_server)
    js = nc.jetstream()
    tag = uuid.uuid4().hex[:8]
    stream, durable, subject = f"GUARD_{tag}", f"writ-guard-{tag}", f"guard{tag}"
    config = ConsumerConfig(
        ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL, filter_subject=f"{subject}.>", max_deliver=-1
    )
    guards: list[ConsumerGuard] = []
    try:
        await js.add_stream(StreamConfig(name=stream, subjects=[f"{subject}.>"]))
        await js.add_consumer(stream, config.evolve(durable_name=durable, name=durable))
        for i in range(10):
            await js.publish(f"{subject}.e{i}", b"{}")
        pull = await js.pull_subscribe_bind(durable, stream)
        for msg in await pull.fetch(6, timeout=5):
            await msg.ack_sync()

        # A guard checks at once when it starts: it notes the floor, and keeps it in the consumer.
        first = ConsumerGuard("test", stream, durable, config, interval=3600, keep_floor_every=0)
        guards.append(first)
        await first.start(nc)
        assert await reached(lambda: kept(js, stream, durable, "6"), 5), "the floor was not kept"
        info = await js.consumer_info(stream, durable)
        assert info.ack_floor is not None and info.ack_floor.stream_seq == 6 and info.num_pending == 4
        assert first.restored == 0 and first.recreated == 0  # nothing was lost
        await first.stop()

        # Progress lost (JetStream's fresh placement starts the consumer over), and the service
        # restarted meanwhile: its new guard has seen no floor, the consumer's metadata has.
        reply = await nc.request(f"$JS.API.CONSUMER.RESET.{stream}.{durable}", json.dumps({"seq": 1}).encode())
        assert json.loads(reply.data).get("reset_seq") == 1, reply.data
        second = ConsumerGuard("test", stream, durable, config, interval=3600)
        guards.append(second)
        await second.start(nc)
        assert await reached(lambda: second.restored == 1, 5), "the restarted service did not move it back"
        info = await js.consumer_info(stream, durable)
        assert info.ack_floor is not None and info.ack_floor.stream_seq == 6, info
        pull = await js.pull_subscribe_bind(durable, stream)
        assert [m.metadata.sequence.stream for m in await pull.fetch(10, timeout=5)] == [7, 8, 9, 10]
    finally:
        for guard in guards:
            await guard.stop()
        await js.delete_stream(stream)
        await nc.close()
