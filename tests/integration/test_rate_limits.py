"""Rate limits: counted in Redis per permit, agent and tool; a spent window denies with when to
retry; a redelivered intent is not counted twice; without Redis nothing is authorized."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from inprocess import DEFAULT_POLICY, Spine, open_spine

from waiting import wait_until
from writ.runtime.processes import ManagedProcess, start_redis
from writ_common import commands
from writ_common.bus import read_history
from writ_policy.domain import parse_rate_limit
from writ_policy.ratelimit import RateLimiter, RateLimitUnavailable

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LIMITED = DEFAULT_POLICY + (
    '\n@id("two-clock-reads-a-minute") @rate_limit("2/1m")\n'
    'permit(principal, action == Action::"call_tool", resource) when { resource.name == "get_current_time" };\n'
    '@id("conversions") @rate_limit("5/1m")\n'
    'permit(principal, action == Action::"call_tool", resource) when { resource.name == "convert_time" };\n'
)
CONVERT = {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Europe/Paris"}


@dataclass
class PolicyRedis:
    """Policy's own Redis, so a test can take it away while identity's nonce store stays up."""

    data_dir: Path
    proc: ManagedProcess

    @property
    def url(self) -> str:
        return self.proc.url

    def stop(self) -> None:
        self.proc.stop()

    def restart(self) -> None:
        self.proc = start_redis(self.data_dir, self.proc.port)


@pytest.fixture(scope="module")
def policy_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyRedis]:
    data_dir = tmp_path_factory.mktemp("policy-redis") / "data"
    redis = PolicyRedis(data_dir, start_redis(data_dir))
    yield redis
    redis.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def limited(
    nats_server: str, redis_server: str, policy_redis: PolicyRedis, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Spine]:
    data_dir = tmp_path_factory.getbasetemp() / "inprocess-plane"  # the shared ledger key
    async with open_spine(nats_server, redis_server, data_dir, policy_redis=policy_redis.url) as spine:
        await commands.call(spine.nc, "policy", "load", {"cedar": LIMITED})
        yield spine


async def test_a_spent_window_denies_the_next_call_and_says_when_to_retry(limited: Spine) -> None:
    first = await limited.agent.call("time/get_current_time", {"timezone": "UTC"})
    second = await limited.agent.call("time/get_current_time", {"timezone": "UTC"})
    third = await limited.agent.call("time/get_current_time", {"timezone": "UTC"})
    assert (first.status, second.status) == ("succeeded", "succeeded")
    assert (third.status, third.code) == ("denied", "rate_limited"), third.reason
    assert third.policy_ids == ["two-clock-reads-a-minute"]
    assert "already made 2 calls to time/get_current_time in the last 1m" in third.reason
    assert "allows 2 per 1m; try again in" in third.reason
    # Another tool under another permit has its own window.
    converted = await limited.agent.call("time/convert_time", CONVERT)
    assert converted.status == "succeeded", converted.reason


@pytest_asyncio.fixture(loop_scope="session")
async def redis(policy_redis: PolicyRedis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(policy_redis.url)
    yield client
    await client.aclose()


def fresh_agent() -> dict[str, str]:
    """Counter keys of an agent no other test touched (and one tool)."""
    return {"agent_id": f"a-{uuid.uuid4().hex[:6]}", "tool": "s/t"}


async def test_counting_the_same_intent_again_is_a_no_op(redis: aioredis.Redis) -> None:
    limiter, limit, who = RateLimiter(redis), [parse_rate_limit("p", "2/1m")], fresh_agent()
    for _ in range(5):  # one intent redelivered five times takes one place
        assert await limiter.admit(limit, intent_id="i1", **who) is None
    assert await limiter.admit(limit, intent_id="i2", **who) is None
    refused = await limiter.admit(limit, intent_id="i3", **who)
    assert refused is not None and refused.count == 2 and 0 < refused.retry_after_s <= 60
    assert await limiter.admit(limit, intent_id="i1", **who) is None  # already counted: still in


async def test_the_window_slides(redis: aioredis.Redis) -> None:
    limiter, limit, who = RateLimiter(redis), [parse_rate_limit("p", "1/1s")], fresh_agent()
    assert await limiter.admit(limit, intent_id="i1", **who) is None
    assert await limiter.admit(limit, intent_id="i2", **who) is not None
    await asyncio.sleep(1.1)
    assert await limiter.admit(limit, intent_id="i2", **who) is None


async def test_a_full_window_in_one_limit_counts_in_none(redis: aioredis.Redis) -> None:
    """Two permits allow the call; one is spent: the other's window must not lose a place."""
    limiter, who = RateLimiter(redis), fresh_agent()
    tight, loose = parse_rate_limit("tight", "1/1m"), parse_rate_limit("loose", "3/1m")
    assert await limiter.admit([tight, loose], intent_id="i1", **who) is None
    refused = await limiter.admit([loose, tight], intent_id="i2", **who)
    assert refused is not None and refused.limit.policy_id == "tight"
    assert await redis.zcard(loose.key(who["agent_id"], "s/t")) == 1


async def test_without_redis_nothing_is_authorized_and_the_intent_goes_on_when_it_returns(
    limited: Spine, policy_redis: PolicyRedis, caplog: pytest.LogCaptureFixture
) -> None:
    policy_redis.stop()
    try:
        submission = await limited.agent.submit("time/convert_time", CONVERT)
        refusal = f"not deciding {submission.intent_id} yet"

        def policy_tried(times: int) -> bool:
            return sum(refusal in record.getMessage() for record in caplog.records) >= times

        # Planned (identity and registry need no policy Redis), then policy looked twice and would
        # not decide without counting: proof by its own log, not by waiting and hoping.
        await wait_until(lambda: policy_tried(2), 20, "policy refusing to decide twice without Redis")
        history = await read_history(limited.nc, limited.agent.agent_id, submission.intent_id)
        # Identity (its own Redis) authenticated it and the registry planned it; policy fails closed.
        assert [e.type for e in history.events][-1] == "intent.planned"
    finally:
        policy_redis.restart()
    receipt = await limited.agent.receipt(submission.intent_id, 30)
    assert receipt.status == "succeeded", receipt.reason


async def test_without_redis_the_limiter_says_so() -> None:
    client = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    with pytest.raises(RateLimitUnavailable, match="rate limit store unavailable"):
        await RateLimiter(client).admit([parse_rate_limit("p", "1/1m")], agent_id="a", tool="s/t", intent_id="i")
    await client.aclose()
