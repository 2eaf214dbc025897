"""How much each agent sends on the bus, and who is over its budget. Pure: counters in, decisions out.

NATS limits a user's message size and subscriptions, but not its publish rate. Identity reads every
node's connections in the Writ account (their ``in_msgs`` / ``in_bytes`` counters, each under the
user nkey that authenticated it) once per check; this module turns those readings into what each
agent sent since the previous check, averages that over a sliding window, and names the agents over
their budget. A counter that goes down (a connection replaced under the same id) or a connection
first seen is never taken for a burst: only what was sent since is counted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from writ_common import events as ev

Counters = tuple[int, int]  # (messages, bytes) received from one connection, or sent by one agent


@dataclass(frozen=True, slots=True)
class Connection:
    """One client connection as a node reports it in CONNZ."""

    cid: int
    user: str  # the user public nkey that authenticated it (CONNZ ``authorized_user`` with ``auth``)
    in_msgs: int
    in_bytes: int
    closed: bool = False  # closed since: its counters are final


@dataclass(frozen=True, slots=True)
class NodeReading:
    """One node's connections in the Writ account at one check, by connection id: its open ones and
    the ones it closed lately (with their final counters)."""

    server_id: str
    connections: Mapping[int, Connection]
    at: float  # when identity read it (monotonic seconds)

    @property
    def top_cid(self) -> int:
        """Connection ids only grow on a node: any cid above this one connected after this reading."""
        return max(self.connections, default=0)


@dataclass(frozen=True, slots=True)
class Budget:
    """What one agent may send, averaged over ``window_seconds``; a zero rate is no limit on it."""

    msgs_per_second: float
    bytes_per_second: float
    window_seconds: float

    @property
    def enabled(self) -> bool:
        return self.msgs_per_second > 0 or self.bytes_per_second > 0


@dataclass(frozen=True, slots=True)
class Rate:
    agent_id: str
    msgs_per_second: float
    bytes_per_second: float


def connz_page(answer: Mapping[str, Any]) -> tuple[str, list[Connection], int]:
    """``(server id, connections, total)`` of one node's ``$SYS.REQ.SERVER.*.CONNZ`` answer (a
    ``ServerAPIResponse``: ``{"server": {...}, "data": {Connz}}``).

    Raises:
        ValueError: an error answer, or not a CONNZ reply.
    """
    if answer.get("error"):
        raise ValueError(f"the node refused CONNZ: {answer['error']}")
    data, server = answer.get("data"), answer.get("server")
    # The envelope names the node even when its Connz is empty (an account it has not loaded).
    server_id = (server.get("id") if isinstance(server, Mapping) else None) or (
        data.get("server_id") if isinstance(data, Mapping) else None
    )
    if not isinstance(data, Mapping) or not isinstance(server_id, str) or not server_id:
        raise ValueError("not a CONNZ answer")
    connections = [
        Connection(
            cid=int(c["cid"]),
            user=str(c.get("authorized_user") or ""),
            in_msgs=int(c.get("in_msgs") or 0),
            in_bytes=int(c.get("in_bytes") or 0),
            closed=bool(c.get("stop")),
        )
        for c in data.get("connections") or []
    ]
    return server_id, connections, int(data.get("total") or 0)


def sent_since(before: NodeReading | None, now: NodeReading) -> dict[str, Counters]:
    """What each user sent through one node between two readings, by user nkey.

    A node seen for the first time (identity just started, or the node restarted under a new id)
    gives the baseline only. A connection first seen counts in full when it connected after
    ``before`` (its cid is higher), whether it is still open or closed since: reconnecting does not
    reset an agent's count, and a connection that lived between two checks is counted. One seen
    closed before adds nothing (its counters are final). One that was there before but missed
    (paging moved under a closing connection) starts its count now.
    """
    sent: dict[str, Counters] = {}
    if before is None:
        return sent
    for cid, conn in now.connections.items():
        old = before.connections.get(cid)
        if old is not None and old.in_msgs <= conn.in_msgs and old.in_bytes <= conn.in_bytes:
            delta = (conn.in_msgs - old.in_msgs, conn.in_bytes - old.in_bytes)
        elif old is not None or cid > before.top_cid:
            delta = (conn.in_msgs, conn.in_bytes)  # reset under the same id, or connected since: all is new
        else:
            continue
        if delta == (0, 0):
            continue
        msgs, size = sent.get(conn.user, (0, 0))
        sent[conn.user] = (msgs + delta[0], size + delta[1])
    return sent


@dataclass
class IngressMeter:
    """What identity remembers between checks: each node's last reading and, per agent, what it
    sent at each check within the window."""

    budget: Budget
    readings: dict[str, NodeReading] = field(default_factory=dict)
    sent: dict[str, deque[tuple[float, int, int]]] = field(default_factory=dict)

    def observe(self, at: float, readings: Iterable[NodeReading], agent_of_key: Mapping[str, str]) -> list[Rate]:
        """Take one check's readings (the nodes that answered) and return each agent's rate now.

        ``agent_of_key`` maps a bus key to the agent it belongs to; connections of any other user (a
        service, an approver, the operator) are not metered. A node that did not answer keeps its
        previous reading for up to a window, so its connections are counted across the gap.
        """
        for reading in readings:
            for key, (msgs, size) in sent_since(self.readings.get(reading.server_id), reading).items():
                agent_id = agent_of_key.get(key)
                if agent_id is not None:
                    self.sent.setdefault(agent_id, deque()).append((at, msgs, size))
            self.readings[reading.server_id] = reading
        horizon = at - self.budget.window_seconds
        self.readings = {k: r for k, r in self.readings.items() if r.at > horizon}
        rates = []
        for agent_id in list(self.sent):
            samples = self.sent[agent_id]
            while samples and samples[0][0] <= horizon:
                samples.popleft()
            if not samples:
                del self.sent[agent_id]
                continue
            msgs = sum(s[1] for s in samples)
            size = sum(s[2] for s in samples)
            window = self.budget.window_seconds
            rates.append(Rate(agent_id, msgs / window, size / window))
        return rates

    def forget(self, agent_id: str) -> None:
        """The agent was suspended: what it sent before does not count against it once reinstated."""
        self.sent.pop(agent_id, None)


def over_budget(rates: Iterable[Rate], budget: Budget) -> list[Rate]:
    """The agents whose rate exceeds the budget on messages or on bytes (a zero budget is no limit)."""
    return [
        r
        for r in rates
        if (budget.msgs_per_second > 0 and r.msgs_per_second > budget.msgs_per_second)
        or (budget.bytes_per_second > 0 and r.bytes_per_second > budget.bytes_per_second)
    ]


def suspension(rate: Rate, budget: Budget, *, suspended_at: str) -> ev.AgentSuspended:
    """The event that suspends an agent over its budget, with the figures an operator acts on."""
    return ev.AgentSuspended(
        agent_id=rate.agent_id,
        suspended_at=suspended_at,
        code=ev.INGRESS_BUDGET_EXCEEDED,
        reason=f"agent {rate.agent_id!r} sent {rate.msgs_per_second:,.0f} msgs/s and"
        f" {rate.bytes_per_second:,.0f} bytes/s over {budget.window_seconds:g}s; its budget is"
        f" {budget.msgs_per_second:,.0f} msgs/s and {budget.bytes_per_second:,.0f} bytes/s",
        msgs_per_second=round(rate.msgs_per_second, 1),
        bytes_per_second=round(rate.bytes_per_second, 1),
        budget_msgs_per_second=budget.msgs_per_second,
        budget_bytes_per_second=budget.bytes_per_second,
        window_seconds=budget.window_seconds,
    )
