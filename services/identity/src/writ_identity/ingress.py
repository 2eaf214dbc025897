"""The ingress guard: every agent's publish rate at the bus, measured by identity, enforced by the
cluster. NATS limits a user's message size but not its rate (nats-io/nats-server#4891, #5092), so
once per ``WRIT_INGRESS_CHECK_SECONDS`` identity asks every node, as the system user over one kept
connection, for its connections in the Writ account (``$SYS.REQ.SERVER.PING.CONNZ``, paged), meters
each agent over the window (:mod:`writ_identity.ingress_rules`) and suspends one over its budget:
an ``agent.suspended`` event, then the account pushed with its bus key revoked as of then."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import nats.errors

from writ_common import metrics
from writ_common.busauth import BusUpdateFailed, Issuer, system_connection
from writ_common.settings import WritSettings
from writ_identity.domain import Agent, metered_agents
from writ_identity.ingress_rules import (
    Budget,
    Connection,
    IngressMeter,
    NodeReading,
    Rate,
    connz_page,
    over_budget,
)

log = logging.getLogger(__name__)

PING_CONNZ = "$SYS.REQ.SERVER.PING.CONNZ"  # every node answers, each with its own connections
PAGE = 256  # connections per answer (each carries its user JWT: a page stays far below max_payload)
LISTEN = 0.25  # how long one check gathers the nodes' answers (loopback or one LAN: milliseconds)
TIMEOUT = 2.0


def node_connz_subject(server_id: str) -> str:
    """One node's own CONNZ (the next page of a node with more connections than one answer holds)."""
    return f"$SYS.REQ.SERVER.{server_id}.CONNZ"


def connz_request(account: str, offset: int, page: int = PAGE, *, closed: bool = False) -> bytes:
    """A CONNZ query for ``account``'s connections with their user (``auth``): the open ones by cid
    (the default order, so offset pages are stable), or the closed ones (each node keeps its last
    10,000), most recently closed first (``state`` 1, ``sort`` stop)."""
    query: dict[str, Any] = {"acc": account, "auth": True, "limit": page, "offset": offset}
    if closed:
        query |= {"state": 1, "sort": "stop"}
    return json.dumps(query).encode()


async def ping(nc: Any, *bodies: bytes) -> list[list[bytes]]:
    """Every node's answers to each of ``bodies`` sent to PING.CONNZ, gathered for ``LISTEN``."""
    answers: list[list[bytes]] = [[] for _ in bodies]
    subs = []
    try:
        for body, into in zip(bodies, answers, strict=True):
            inbox = nc.new_inbox()
            subs.append(await nc.subscribe(inbox, cb=functools.partial(keep, into)))
            await nc.publish(PING_CONNZ, body, reply=inbox)
        await nc.flush(timeout=TIMEOUT)
        await asyncio.sleep(LISTEN)
    finally:
        for sub in subs:
            await sub.unsubscribe()
    return answers


async def keep(into: list[bytes], msg: Any) -> None:
    into.append(msg.data)


async def read_nodes(
    nc: Any, account: str, previous: Mapping[str, NodeReading] | None = None, *, page: int = PAGE
) -> list[NodeReading]:
    """Every answering node's connections in ``account``: all its open ones, and those closed
    since ``previous`` (a connection that lived between two checks is counted too: no agent gets
    around the meter by sending from short connections)."""
    before = previous or {}

    def more_open(_server_id: str, conns: list[Connection], total: int) -> bool:
        return len(conns) < total

    def more_closed(server_id: str, conns: list[Connection], _total: int) -> bool:
        # Most recently closed first: page on while a whole page is news (closed since the last check).
        last = before.get(server_id)
        return last is not None and len(conns) % page == 0 and not any(seen_closed(c, last) for c in conns[-page:])

    opened, closed = await ping(nc, connz_request(account, 0, page), connz_request(account, 0, page, closed=True))
    at = time.monotonic()
    found = await read_pages(nc, opened, functools.partial(connz_request, account, page=page), more_open)
    ended = await read_pages(nc, closed, functools.partial(connz_request, account, page=page, closed=True), more_closed)
    # A node's connections closed since its open ones were read: the final counters win.
    return [NodeReading(server_id, conns | ended.get(server_id, {}), at) for server_id, conns in found.items()]


def seen_closed(conn: Connection, before: NodeReading) -> bool:
    known = before.connections.get(conn.cid)
    return known is not None and known.closed


async def read_pages(
    nc: Any,
    answers: list[bytes],
    query: Callable[[int], bytes],
    more: Callable[[str, list[Connection], int], bool],
) -> dict[str, dict[int, Connection]]:
    """Each node's connections from its first answer, and from further pages (asked of that node
    directly, from the offset reached) while ``more`` says so."""
    found = {}
    for answer in answers:
        try:
            server_id, conns, total = connz_page(json.loads(answer))
            while conns and more(server_id, conns, total):
                reply = await nc.request(node_connz_subject(server_id), query(len(conns)), timeout=TIMEOUT)
                if not (next_page := connz_page(json.loads(reply.data))[1]):
                    break
                conns += next_page
        except (TimeoutError, ValueError, TypeError, KeyError, nats.errors.Error) as exc:
            log.warning("identity: a bus node's CONNZ answer was not usable (%s); it is read again next check", exc)
            continue
        found[server_id] = {c.cid: c for c in conns}
    return found


class IngressGuard:
    """The metering loop; ``suspend`` records and enforces one agent's suspension."""

    def __init__(
        self,
        settings: WritSettings,
        issuer: Issuer | None,
        agents: Mapping[str, Agent],
        suspend: Callable[[Rate, Budget], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.issuer = issuer
        self.agents = agents  # identity's folded agents, read here
        self.suspend = suspend
        self.budget = Budget(
            msgs_per_second=settings.agent_ingress_msgs_per_second,
            bytes_per_second=settings.agent_ingress_bytes_per_second,
            window_seconds=settings.ingress_window_seconds,
        )
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.issuer is None:
            log.info("identity: ingress guard off: an open bus (no WRIT_NATS_ISSUER_FILE) has no agent users to meter")
            return
        if not self.budget.enabled:
            log.info("identity: ingress guard off: WRIT_AGENT_INGRESS_MSGS_PER_SECOND and _BYTES_PER_SECOND are 0")
            return
        log.info(
            "identity: ingress guard on: %s msgs/s and %s bytes/s per agent over %gs, checked every %gs",
            f"{self.budget.msgs_per_second:,.0f}",
            f"{self.budget.bytes_per_second:,.0f}",
            self.budget.window_seconds,
            self.settings.ingress_check_seconds,
        )
        self.task = asyncio.create_task(self.run(self.issuer), name="identity-ingress-guard")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def run(self, issuer: Issuer) -> None:
        meter, nc = IngressMeter(self.budget), None
        period = self.settings.ingress_check_seconds
        try:
            while True:
                began = time.monotonic()
                try:
                    if nc is None or nc.is_closed:
                        nc = await system_connection(
                            self.settings.nats_servers(), issuer, TIMEOUT, name="writ-identity-ingress", reconnect=True
                        )
                    readings = await read_nodes(nc, issuer.account, meter.readings)
                    rates = meter.observe(time.monotonic(), readings, metered_agents(self.agents))
                    for rate in over_budget(rates, self.budget):
                        meter.forget(rate.agent_id)
                        await self.suspend(rate, self.budget)
                except BusUpdateFailed as exc:  # the bus is down or restarting: one line, not a traceback a second
                    metrics.INGRESS_CHECK_FAILURES.inc()
                    log.warning("identity: the ingress check could not reach the bus (%s)", exc.message)
                except Exception:
                    metrics.INGRESS_CHECK_FAILURES.inc()
                    log.exception("identity: the ingress check failed; the next period tries again")
                await asyncio.sleep(max(0.0, period - (time.monotonic() - began)))
        finally:
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()
