"""Execution leases against a real Redis: one holder per intent, fenced by the attempt."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from writ_executor.lease import Leases, LeaseUnavailable

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_one_replica_at_a_time_and_only_the_holder_renews_or_releases(redis_server: str) -> None:
    client = aioredis.from_url(redis_server)
    a, b = Leases(client, "replica-a", ttl_ms=5000), Leases(client, "replica-b", ttl_ms=5000)
    try:
        assert await a.acquire("in-lease-1", attempt=1)
        assert not await b.acquire("in-lease-1", attempt=1)  # a slow call is not run twice
        assert not await b.acquire("in-lease-1", attempt=2)
        assert not await b.renew("in-lease-1", attempt=1)  # not the holder
        await b.release("in-lease-1", attempt=1)  # a no-op for a non-holder
        assert not await b.acquire("in-lease-1", attempt=2)
        assert await a.renew("in-lease-1", attempt=1)
        await a.release("in-lease-1", attempt=1)
        assert await b.acquire("in-lease-1", attempt=2)
    finally:
        await client.delete(Leases.key("in-lease-1"))
        await client.aclose()


async def test_an_expired_lease_can_be_taken_over(redis_server: str) -> None:
    client = aioredis.from_url(redis_server)
    a, b = Leases(client, "replica-a", ttl_ms=50), Leases(client, "replica-b", ttl_ms=5000)
    try:
        assert await a.acquire("in-lease-2", attempt=1)
        await asyncio.sleep(0.2)  # the holder died without releasing
        assert await b.acquire("in-lease-2", attempt=2)
        assert not await a.renew("in-lease-2", attempt=1)  # the old holder cannot take it back
    finally:
        await client.delete(Leases.key("in-lease-2"))
        await client.aclose()


async def test_without_redis_there_is_no_lease() -> None:
    client = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    with pytest.raises(LeaseUnavailable):
        await Leases(client, "replica-a").acquire("in-lease-3", attempt=1)
    await client.aclose()
