"""The executor's admission per route: what a call that finds its route full gets. A route that
cannot hold a queue within its bound, or is congested, answers ``overloaded`` at once; a healthy
route lets it wait briefly in place, then in the stream; a freed place goes to a waiter; a
server's declared capacity is never exceeded."""

from __future__ import annotations

import asyncio
import time

import pytest

from writ_common import events as ev
from writ_common.settings import WritSettings
from writ_executor.admission import Admission, Ticket

pytestmark = [pytest.mark.unit, pytest.mark.asyncio]


def admission(**kwargs: object) -> Admission:
    return Admission(WritSettings(**kwargs))  # type: ignore[arg-type]


async def fill(admission: Admission, server: str, tool: str, agent: str = "") -> list[Ticket]:
    """Take every place the route has now."""
    limiter, held = admission.limits.of(f"{server}/{tool}"), []
    while limiter.in_flight < limiter.limit:
        ticket = await admission.admit(server, tool, agent=agent)
        assert isinstance(ticket, Ticket), ticket
        held.append(ticket)
    return held


def served(admission: Admission, ticket: Ticket | ev.ExecutionFailed | None, ms: float) -> None:
    """The call went out and came back after ``ms``."""
    assert isinstance(ticket, Ticket), ticket
    ticket.sent()
    ticket.rtt_ms = ms
    admission.release(ticket)


async def test_a_route_whose_calls_take_longer_than_the_slack_refuses_at_once_when_full() -> None:
    gate = admission(admission_initial_limit=2)
    served(gate, await gate.admit("serial", "work"), 500.0)  # bound 750 ms: one behind another takes 1000
    await fill(gate, "serial", "work")
    began = time.monotonic()
    answer = await gate.admit("serial", "work")
    assert isinstance(answer, ev.ExecutionFailed) and answer.code == "overloaded", answer
    assert time.monotonic() - began < 0.05, "prompt: it did not wait for a place it could not use in time"
    assert answer.result is not None and answer.result["retry_after_ms"] == 500
    assert "did not run" in answer.reason and "retry after 500 ms" in answer.reason


async def test_a_healthy_route_full_in_a_burst_sends_the_call_back_to_the_stream() -> None:
    gate = admission(admission_initial_limit=2, admission_max_limit=3)
    served(gate, await gate.admit("fast", "ping"), 2.0)  # 2 -> 3: at its maximum
    await fill(gate, "fast", "ping")
    began = time.monotonic()
    assert await gate.admit("fast", "ping") is None, "not congested: it waits its turn in the stream"
    assert 0.04 <= time.monotonic() - began < 0.5, "after waiting in place about half a retry-after"


async def test_a_freed_place_goes_to_the_call_waiting_for_it() -> None:
    gate = admission(admission_initial_limit=2, admission_max_limit=3)
    served(gate, await gate.admit("fast", "ping"), 2.0)  # 2 -> 3: at its maximum
    held = await fill(gate, "fast", "ping")
    waiting = asyncio.ensure_future(gate.admit("fast", "ping"))
    await asyncio.sleep(0.01)
    served(gate, held[0], 2.0)
    assert isinstance(await waiting, Ticket)


async def test_a_congested_route_refuses_at_once() -> None:
    gate = admission(admission_initial_limit=4, admission_streak=1, admission_slack_ms=0.0)
    tickets = [await gate.admit("slow", "op") for _ in range(4)]
    served(gate, tickets[0], 10.0)
    served(gate, tickets[1], 100.0)  # 10x the baseline: a cut
    limiter = gate.limits.of("slow/op")
    assert limiter.congested(time.monotonic()) and limiter.limit < 4
    while limiter.in_flight < limiter.limit:
        assert isinstance(await gate.admit("slow", "op"), Ticket)
    began = time.monotonic()
    answer = await gate.admit("slow", "op")
    assert isinstance(answer, ev.ExecutionFailed) and answer.code == "overloaded"
    assert time.monotonic() - began < 0.05


async def test_a_server_declared_to_take_one_call_at_a_time_gets_one() -> None:
    gate = admission()
    first = await gate.admit("serial", "work", capacity=1)
    assert isinstance(first, Ticket)
    assert await gate.admit("serial", "work", capacity=1) is None, "before any latency: waits in the stream"
    served(gate, first, 500.0)
    second = await gate.admit("serial", "work", capacity=1)
    assert isinstance(second, Ticket)
    answer = await gate.admit("serial", "work", capacity=1)
    assert isinstance(answer, ev.ExecutionFailed) and answer.code == "overloaded", "no room: refused at once"
    assert gate.limits.of("serial/work").limit == 1


async def test_admission_off_counts_the_call_but_never_refuses_it() -> None:
    gate = admission(admission=False, admission_initial_limit=1)
    tickets = [await gate.admit("serial", "work") for _ in range(5)]
    assert all(isinstance(t, Ticket) for t in tickets)
    assert gate.limits.of("serial/work").in_flight == 5


async def test_a_freed_place_goes_to_the_agent_holding_none_before_the_flooders_older_waiters() -> None:
    gate = admission(admission_initial_limit=2, admission_max_limit=3, admission_max_wait_ms=500)
    served(gate, await gate.admit("fast", "ping", agent="mallory"), 20.0)  # 2 -> 3: at its maximum
    held = [await gate.admit("fast", "ping", agent="mallory") for _ in range(3)]
    flood = [asyncio.ensure_future(gate.admit("fast", "ping", agent="mallory")) for _ in range(3)]
    await asyncio.sleep(0.01)
    alice = asyncio.ensure_future(gate.admit("fast", "ping", agent="alice"))
    await asyncio.sleep(0.01)
    served(gate, held[0], 20.0)
    ticket = await asyncio.wait_for(alice, 1)
    assert isinstance(ticket, Ticket) and ticket.agent == "alice", "mallory's calls waited longer; alice holds none"
    assert not any(f.done() for f in flood), "mallory's waiting calls got nothing"
    served(gate, held[1], 20.0)
    await asyncio.sleep(0.01)
    assert [f.done() for f in flood] == [True, False, False], "with alice served, mallory's oldest is next"
    for f in flood:
        answer = await f
        if isinstance(answer, Ticket):
            gate.release(answer)


async def test_an_agent_at_its_share_is_refused_a_place_an_agent_refused_lately_is_due() -> None:
    gate = admission(admission_initial_limit=2, admission_max_limit=3, admission_slack_ms=50.0)
    served(gate, await gate.admit("serial", "work", agent="mallory"), 100.0)  # no room for a queue; 2 -> 3
    held = await fill(gate, "serial", "work", "mallory")
    for _ in range(2):  # alice asks, and again after her retry-after (100 ms): she comes back as told
        refused = await gate.admit("serial", "work", agent="alice")
        assert isinstance(refused, ev.ExecutionFailed) and refused.code == "overloaded"
        await asyncio.sleep(0.09)
    served(gate, held[0], 100.0)  # one place free
    again = await gate.admit("serial", "work", agent="mallory")
    assert isinstance(again, ev.ExecutionFailed) and again.code == "overloaded", "the freed place is alice's"
    assert again.result is not None and (again.result["held"], again.result["share"]) == (2, 1), again.result
    assert "this agent has 2 in flight (its share: 1)" in again.reason, again.reason
    assert isinstance(await gate.admit("serial", "work", agent="alice"), Ticket), "alice, back after her retry-after"


async def test_one_agent_alone_still_gets_every_place() -> None:
    gate = admission(admission_initial_limit=4)
    assert len(await fill(gate, "solo", "op")) == 4


async def test_a_place_handed_to_a_call_cancelled_meanwhile_goes_to_the_next_waiting_call() -> None:
    # The executor stopping (or a cancel) may cancel a waiting call in the instant a place is
    # handed to it: the place must not be lost, or the route would run one call short for good.
    gate = admission(admission_initial_limit=1, admission_max_limit=1, admission_slack_ms=1000.0)
    served(gate, await gate.admit("fast", "ping", agent="a"), 400.0)  # room for a queue: calls wait 200 ms
    (held,) = await fill(gate, "fast", "ping", "a")
    first = asyncio.ensure_future(gate.admit("fast", "ping", agent="b"))
    second = asyncio.ensure_future(gate.admit("fast", "ping", agent="c"))
    await asyncio.sleep(0.01)
    served(gate, held, 400.0)  # handed to b's call...
    first.cancel()  # ...which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await first
    ticket = await asyncio.wait_for(second, 1)
    assert isinstance(ticket, Ticket) and ticket.agent == "c", "b's place went on to c"
    assert gate.limits.of("fast/ping").in_flight == 1
    gate.release(ticket)
    assert gate.limits.of("fast/ping").in_flight == 0
