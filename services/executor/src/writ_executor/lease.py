"""Execution leases in Redis: one replica at a time may run an intent's call.

The lease value names the holder and the attempt, so renew and release only ever touch the
holder's own lease (compare-and-set by Lua script). Any Redis error fails closed: no lease, no call.
"""

from __future__ import annotations

import contextlib

import redis.asyncio as aioredis
from redis.exceptions import RedisError

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaseUnavailable(Exception):
    """Redis could not be asked: fail closed and try later."""


class Leases:
    def __init__(self, client: aioredis.Redis, instance: str, ttl_ms: int = 30_000) -> None:
        self._redis = client
        self._instance = instance
        self.ttl_ms = ttl_ms

    @staticmethod
    def key(intent_id: str) -> str:
        return f"writ:lease:{intent_id}"

    def holder(self, attempt: int) -> str:
        return f"{self._instance}#{attempt}"

    async def acquire(self, intent_id: str, attempt: int) -> bool:
        """Take the lease for ``attempt``; False if another holder has it."""
        try:
            return bool(await self._redis.set(self.key(intent_id), self.holder(attempt), nx=True, px=self.ttl_ms))
        except RedisError as exc:
            raise LeaseUnavailable(f"lease store unavailable: {exc}") from exc

    async def held(self, intent_id: str) -> bool:
        """Whether anyone (this process included) holds the intent's lease: an attempt is running.

        Raises:
            LeaseUnavailable: Redis could not be asked (fail closed: the caller waits).
        """
        try:
            return bool(await self._redis.exists(self.key(intent_id)))
        except RedisError as exc:
            raise LeaseUnavailable(f"lease store unavailable: {exc}") from exc

    async def renew(self, intent_id: str, attempt: int) -> bool:
        try:
            return bool(await self._redis.eval(_RENEW, 1, self.key(intent_id), self.holder(attempt), self.ttl_ms))
        except RedisError:
            return False

    async def release(self, intent_id: str, attempt: int) -> None:
        with contextlib.suppress(RedisError):  # if Redis is away, the lease expires by itself
            await self._redis.eval(_RELEASE, 1, self.key(intent_id), self.holder(attempt))
