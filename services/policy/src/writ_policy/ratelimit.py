"""Rate limit counters in Redis: a sliding window per (permit, agent, tool), one atomic script.

Each window is a sorted set of intent ids scored by Redis's own clock (one clock for every
replica). Counting an intent already in the set is a no-op, so a redelivered ``intent.planned``
never counts twice. Any Redis error fails closed: nothing is authorized without being counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from writ_policy.domain import RateExceeded, RateLimit

# KEYS: one window per limit. ARGV: intent id, then (limit, window ms) per key.
# Returns {1} when counted in every window, else {0, index of the full window, count, ms to wait}.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local member = ARGV[1]
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if not redis.call('ZSCORE', key, member) then
    local count = redis.call('ZCARD', key)
    if count >= limit then
      local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      return {0, i, count, tonumber(oldest[2]) + window - now}
    end
  end
end
for i, key in ipairs(KEYS) do
  if not redis.call('ZSCORE', key, member) then redis.call('ZADD', key, now, member) end
  redis.call('PEXPIRE', key, tonumber(ARGV[2 * i + 1]))
end
return {1}
"""


class RateLimitUnavailable(Exception):
    """Redis could not be asked: fail closed and decide later."""


class RateLimiter:
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    async def admit(
        self, limits: Sequence[RateLimit], *, agent_id: str, tool: str, intent_id: str
    ) -> RateExceeded | None:
        """Count ``intent_id`` in every window, or in none if one is full (then say which).

        Raises:
            RateLimitUnavailable: Redis did not answer.
        """
        if not limits:
            return None
        keys = [limit.key(agent_id, tool) for limit in limits]
        argv: list[str | int] = [intent_id]
        for limit in limits:
            argv += [limit.limit, limit.window_s * 1000]
        try:
            result = await self._redis.eval(_ADMIT, len(keys), *keys, *argv)
        except RedisError as exc:
            raise RateLimitUnavailable(f"rate limit store unavailable: {exc}") from exc
        if int(result[0]) == 1:
            return None
        _, index, count, wait_ms = (int(x) for x in result)
        return RateExceeded(limit=limits[index - 1], count=count, retry_after_s=max(0.0, wait_ms / 1000))
