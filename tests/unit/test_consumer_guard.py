"""What a stage's consumer guard takes as proof that its consumer lost its progress: a first
delivery at or below the ack floor it saw (such a consumer delivers the stream again). Such a
delivery is acked unhandled, and one reset is asked for, not one per delivery."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.js.api import ConsumerConfig

from writ_common.consumers import ConsumerGuard


def guard_at(floor: int, resets: list[str]) -> ConsumerGuard:
    guard = ConsumerGuard("policy", "WRIT_INTENTS", "writ-policy", ConsumerConfig())
    guard._floor = floor  # as its last check read it

    async def restore(why: str) -> None:
        resets.append(why)

    guard._restore = restore  # type: ignore[method-assign]
    return guard


@pytest.mark.asyncio
async def test_a_first_delivery_at_or_below_the_seen_floor_was_handled_already() -> None:
    resets: list[str] = []
    guard = guard_at(100, resets)
    assert guard.handled_before(1, 1) and guard.handled_before(100, 1)
    await asyncio.sleep(0)
    assert len(resets) == 1 and "sequence 1 anew" in resets[0]  # one reset for the whole replay


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("stream_seq", "num_delivered", "floor"),
    [(101, 1, 100), (50, 2, 100), (1, 1, 0)],
    ids=["past the floor", "a redelivery (nacked or timed out)", "no floor seen yet"],
)
async def test_anything_else_is_handled(stream_seq: int, num_delivered: int, floor: int) -> None:
    resets: list[str] = []
    guard = guard_at(floor, resets)
    assert not guard.handled_before(stream_seq, num_delivered)
    await asyncio.sleep(0)
    assert resets == []


@pytest.mark.asyncio
async def test_deliveries_sent_before_a_reset_are_skipped_without_another_reset() -> None:
    resets: list[str] = []
    guard = guard_at(100, resets)
    guard._reset_at = time.monotonic()  # a check just reset it; these were on their way already
    assert guard.handled_before(3, 1)
    await asyncio.sleep(0)
    assert resets == []
