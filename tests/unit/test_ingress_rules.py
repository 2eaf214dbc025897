"""The ingress budget without a broker: CONNZ readings -> what each agent sent -> its rate over the
window -> who is over budget; and the suspension as identity folds it (bus revocations, reinstating
strictly after the suspension's second, status)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import nkeys
import pytest

from writ_common import events as ev
from writ_common.busauth import Issuer, public_nkey, union_of_revocations
from writ_common.busjwt import new_seed
from writ_common.envelope import Producer, decode, encode, make_envelope
from writ_common.settings import WritSettings
from writ_identity import domain
from writ_identity.domain import Agent
from writ_identity.ingress import IngressGuard
from writ_identity.ingress_rules import (
    Budget,
    Connection,
    IngressMeter,
    NodeReading,
    Rate,
    connz_page,
    over_budget,
    sent_since,
    suspension,
)

pytestmark = pytest.mark.unit

BUDGET = Budget(msgs_per_second=1000, bytes_per_second=16 * 1024 * 1024, window_seconds=5)
A, B, SERVICE = "UAGENTA", "UAGENTB", "USERVICE"
AGENTS = {A: "agent-a", B: "agent-b"}  # bus key -> agent; SERVICE is no agent


def node(at: float, *conns: tuple[int, str, int, int], server: str = "N1") -> NodeReading:
    return NodeReading(server, {cid: Connection(cid, user, msgs, size) for cid, user, msgs, size in conns}, at)


def run(meter: IngressMeter, *checks: list[NodeReading]) -> dict[str, Rate]:
    """Feed one check per second; the rates after the last one, by agent."""
    rates: list[Rate] = []
    for second, readings in enumerate(checks):
        rates = meter.observe(float(second), readings, AGENTS)
    return {r.agent_id: r for r in rates}


def test_an_agent_under_its_budget_is_not_named() -> None:
    meter = IngressMeter(BUDGET)
    # 500 msgs of 100 bytes a second, for 8 seconds.
    rates = run(meter, *([node(float(s), (1, A, 500 * s, 50_000 * s))] for s in range(8)))
    assert rates["agent-a"].msgs_per_second == pytest.approx(500)
    assert over_budget(rates.values(), BUDGET) == []


def test_an_agent_over_on_messages_is_named_with_its_figures() -> None:
    meter = IngressMeter(BUDGET)
    rates = run(meter, [node(0, (1, A, 0, 0))], [node(1, (1, A, 6_000, 60_000))])
    over = over_budget(rates.values(), BUDGET)
    assert [r.agent_id for r in over] == ["agent-a"]
    assert over[0].msgs_per_second == pytest.approx(1_200)  # 6,000 in the 5 s window
    event = suspension(over[0], BUDGET, suspended_at="2026-01-02T03:04:05Z")
    assert event.code == ev.INGRESS_BUDGET_EXCEEDED and event.msgs_per_second == 1_200
    assert event.budget_msgs_per_second == 1000 and "1,200 msgs/s" in event.reason


def test_an_agent_over_on_bytes_is_named() -> None:
    meter = IngressMeter(BUDGET)
    rates = run(meter, [node(0, (1, A, 0, 0))], [node(1, (1, A, 100, 100 * 1024 * 1024))])  # 100 MiB in a second
    over = over_budget(rates.values(), BUDGET)
    assert [r.agent_id for r in over] == ["agent-a"] and over[0].msgs_per_second < 1000


def test_a_burst_within_budget_times_window_passes_and_the_window_slides() -> None:
    meter = IngressMeter(BUDGET)
    checks = [[node(0, (1, A, 0, 0))], [node(1, (1, A, 4_900, 0))]]
    checks += [[node(float(s), (1, A, 4_900, 0))] for s in range(2, 9)]
    assert over_budget(run(meter, checks[0], checks[1]).values(), BUDGET) == []
    assert "agent-a" not in run(IngressMeter(BUDGET), *checks)  # 6 s later nothing is left in the window


def test_a_reconnect_is_not_a_burst_nor_a_reset() -> None:
    meter = IngressMeter(BUDGET)
    # A long-lived connection with a big lifetime count is only the baseline at the first check.
    first = node(0, (7, A, 10_000_000, 10**9))
    # It reconnects: cid 7 is gone, cid 9 (connected since) counts in full, from zero.
    rates = run(meter, [first], [node(1, (9, A, 300, 3_000))])
    assert rates["agent-a"].msgs_per_second == pytest.approx(60)
    # Counters that go down under the same id count what they show, never a negative or a leap.
    assert sent_since(node(0, (3, A, 900, 9_000)), node(1, (3, A, 40, 400))) == {A: (40, 400)}
    # A connection missed by one page (an older cid) starts its count without its lifetime.
    assert sent_since(node(0, (3, A, 1, 1), (5, B, 1, 1)), node(1, (4, A, 10**6, 10**9), (5, B, 2, 2))) == {B: (1, 1)}


def test_reconnecting_every_second_does_not_escape_the_budget() -> None:
    meter = IngressMeter(BUDGET)
    checks = [[node(float(s), (100 + s, A, 2_000, 20_000))] for s in range(4)]  # a fresh connection each second
    assert [r.agent_id for r in over_budget(run(meter, *checks).values(), BUDGET)] == ["agent-a"]


def test_connections_that_lived_between_two_checks_are_counted_once() -> None:
    def closed(cid: int, msgs: int) -> Connection:
        return Connection(cid, A, msgs, 0, closed=True)

    before = node(0, (5, A, 100, 0))
    # cid 5 closed since (final count 700); cid 6 opened, sent 9,000 and closed between the checks.
    now = NodeReading("N1", {5: closed(5, 700), 6: closed(6, 9_000)}, 1)
    assert sent_since(before, now) == {A: (9_600, 0)}
    later = NodeReading("N1", {5: closed(5, 700), 6: closed(6, 9_000)}, 2)
    assert sent_since(now, later) == {}  # seen closed already: its counters are final
    meter = IngressMeter(BUDGET)
    assert [r.agent_id for r in over_budget(run(meter, [before], [now], [later]).values(), BUDGET)] == ["agent-a"]


def test_several_connections_of_one_agent_and_several_nodes_add_up() -> None:
    meter = IngressMeter(BUDGET)
    base = [node(0, (1, A, 0, 0), (2, A, 0, 0)), node(0, (1, A, 0, 0), server="N2")]
    later = [node(1, (1, A, 1_100, 0), (2, A, 1_100, 0)), node(1, (1, A, 3_000, 0), server="N2")]
    rates = run(meter, base, later)
    assert rates["agent-a"].msgs_per_second == pytest.approx(1_040)  # 5,200 over 5 s: none alone is over
    assert [r.agent_id for r in over_budget(rates.values(), BUDGET)] == ["agent-a"]


def test_unknown_keys_are_not_metered_and_a_silent_node_keeps_its_baseline() -> None:
    meter = IngressMeter(BUDGET)
    rates = run(meter, [node(0, (1, SERVICE, 0, 0))], [node(1, (1, SERVICE, 10**6, 10**9))])
    assert rates == {}
    meter = IngressMeter(BUDGET)
    # N1 does not answer at 1 s; at 2 s its count is taken against the reading of 0 s.
    rates = run(meter, [node(0, (1, A, 0, 0))], [], [node(2, (1, A, 5_500, 0))])
    assert rates["agent-a"].msgs_per_second == pytest.approx(1_100)


def test_a_zero_budget_is_no_limit() -> None:
    bytes_only = Budget(msgs_per_second=0, bytes_per_second=1000, window_seconds=5)
    assert over_budget([Rate("a", 10**6, 10)], bytes_only) == []
    assert not Budget(0, 0, 5).enabled


def test_a_connz_answer_is_read_and_an_error_is_refused() -> None:
    answer = {
        "server": {"id": "NSERVER", "name": "n1"},
        "data": {
            "server_id": "NSERVER",
            "total": 3,
            "offset": 0,
            "limit": 256,
            "connections": [
                {"cid": 5, "authorized_user": A, "in_msgs": 12, "in_bytes": 340, "name": "whatever"},
                {"cid": 6, "authorized_user": B, "in_msgs": 1, "in_bytes": 2, "stop": "2026-01-02T03:04:05Z"},
            ],
        },
    }
    assert connz_page(answer) == ("NSERVER", [Connection(5, A, 12, 340), Connection(6, B, 1, 2, closed=True)], 3)
    with pytest.raises(ValueError, match="refused"):
        connz_page({"server": {}, "error": {"code": 500, "description": "x"}})
    with pytest.raises(ValueError):
        connz_page({"data": {"connections": []}})
    # A node that has not loaded the account answers an empty Connz; the envelope still names it.
    assert connz_page({"server": {"id": "N2"}, "data": {"server_id": "", "connections": None}}) == ("N2", [], 0)


# -- the suspension as identity folds it -----------------------------------------------------------

PRODUCER = Producer(service="identity", instance="t", version="0")
BUS_KEY = public_nkey(new_seed(nkeys.PREFIX_BYTE_USER))
AT = "2026-01-02T03:04:05.900000Z"


def fold(*payloads: ev.Payload) -> Agent:
    agents: dict[str, Agent] = {}
    for seq, payload in enumerate(payloads, 1):
        domain.apply_identity_event(agents, decode(encode(make_envelope(payload, producer=PRODUCER)), seq=seq))
    return agents["bot"]


REGISTERED = ev.AgentRegistered(agent_id="bot", public_key="k" * 43 + "=", owner="o", bus_key=BUS_KEY)
SUSPENDED = suspension(Rate("bot", 5_000, 1e6), BUDGET, suspended_at=AT)


def test_a_suspended_agent_is_refused_at_the_bus_until_strictly_after_its_suspension() -> None:
    agent = fold(REGISTERED, SUSPENDED)
    assert agent.status == "suspended" and domain.metered_agents({"bot": agent}) == {}
    second = int(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp())
    assert domain.bus_revocations({"bot": agent}) == {BUS_KEY: second}
    assert domain.bus_jwt_not_before(agent) == second + 1  # nats-server refuses iat <= the revocation
    assert domain.suspension_message_id(agent) == "suspend:bot:2"
    reinstated = domain.reinstatement(agent, reinstated_at="2026-01-02T03:04:07Z")
    assert reinstated is not None and reinstated.suspended_at == AT
    back = fold(REGISTERED, SUSPENDED, reinstated)
    assert back.status == "active" and domain.metered_agents({"bot": back}) == {BUS_KEY: "bot"}
    assert domain.bus_revocations({"bot": back}) == {BUS_KEY: second}  # the old JWT stays refused
    assert domain.reinstatement(back, reinstated_at="2026-01-02T03:04:08Z") is None


def test_a_revocation_after_a_suspension_wins_and_the_union_keeps_the_latest_time() -> None:
    revoked = ev.AgentRevoked(agent_id="bot", revoked_at="2026-01-02T04:00:00Z")
    agent = fold(REGISTERED, SUSPENDED, revoked)
    assert agent.status == "revoked"
    assert domain.bus_revocations({"bot": agent}) == {BUS_KEY: int(datetime(2026, 1, 2, 4, tzinfo=UTC).timestamp())}
    assert union_of_revocations({"U1": 10, "U2": 5}, {"U1": 7, "U3": 1}) == {"U1": 10, "U2": 5, "U3": 1}


async def test_the_guard_is_off_on_an_open_bus_and_with_no_budget_and_says_so(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    async def never(_rate: Rate, _budget: Budget) -> None:
        raise AssertionError("nothing is metered")

    caplog.set_level(logging.INFO, logger="writ_identity.ingress")
    open_bus = IngressGuard(WritSettings(data_dir=tmp_path), None, {}, never)
    await open_bus.start()
    issuer = Issuer(account="A", account_signing_seed="", operator_signing_seed="", system_creds="")
    no_budget = WritSettings(data_dir=tmp_path, agent_ingress_msgs_per_second=0, agent_ingress_bytes_per_second=0)
    unlimited = IngressGuard(no_budget, issuer, {}, never)
    await unlimited.start()
    assert open_bus.task is None and unlimited.task is None
    assert "ingress guard off: an open bus" in caplog.text and "are 0" in caplog.text
