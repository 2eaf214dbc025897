"""The ingress guard: every agent's publish rate at the bus, measured by identity, enforced by the
cluster. NATS limits a user's message size but not its rate (nats-io/nats-server#4891, #5092), so
once per ``WRIT_INGRESS_CHECK_SECONDS`` identity asks every node, as the system user over one kept
connection, for its connections in the Writ account (``$SYS.REQ.SERVER.PING.CONNZ``, paged), meters
each agent over the window (:mod:`writ_identity.ingress_rules`) and suspends one over its budget:
an ``agent.suspended`` event, then the account pushed with its bus key revoked as of then."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import nats.errors

from writ_common.busauth import Issuer, system_connection
from writ_common.settings import WritSettings
from writ_identity.domain import Agent, metered_agents
from writ_identity.ingress_rules import Budget, IngressMeter, NodeReading, Rate, connz_page, over_budget

log = logging.getLogger(__name__)

PING_CONNZ = "$SYS.REQ.SERVER.PING.CONNZ"  # every node answers, each with its own connections
PAGE = 256  # connections per answer (each carries its user JWT: a page stays far below max_payload)
LISTEN = 0.25  # how long one check gathers the nodes' answers (loopback or one LAN: milliseconds)
TIMEOUT = 2.0


def node_connz_subject(server_id: str) -> str:
    """One node's own CONNZ (the next page of a node with more connections than one answer holds)."""
    return f"$SYS.REQ.SERVER.{server_id}.CONNZ"


def connz_request(account: str, offset: int, page: int = PAGE) -> bytes:
    # auth: each connection's authorized_user (for a JWT user, its public nkey); acc: the Writ
    # account's connections only; sorted by cid (the default), so offset pages are stable.
    return json.dumps({"acc": account, "auth": True, "limit": page, "offset": offset}).encode()


async def read_nodes(nc: Any, account: str, *, page: int = PAGE) -> list[NodeReading]:
    """Every answering node's connections in ``account``, all pages of each."""
    answers: asyncio.Queue[bytes] = asyncio.Queue()

    async def answered(msg: Any) -> None:
        answers.put_nowait(msg.data)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=answered)
    try:
        await nc.publish(PING_CONNZ, connz_request(account, 0, page), reply=inbox)
        await nc.flush(timeout=TIMEOUT)
        await asyncio.sleep(LISTEN)
    finally:
        await sub.unsubscribe()
    at, readings = time.monotonic(), []
    while not answers.empty():
        try:
            server_id, connections, total = connz_page(json.loads(answers.get_nowait()))
            while len(connections) < total:  # more than one page: ask that node for the next
                reply = await nc.request(
                    node_connz_subject(server_id), connz_request(account, len(connections), page), timeout=TIMEOUT
                )
                _id, more, total = connz_page(json.loads(reply.data))
                if not more:
                    break
                connections += more
        except (TimeoutError, ValueError, TypeError, KeyError, nats.errors.Error) as exc:
            log.warning("identity: a bus node's CONNZ answer was not usable (%s); it is read again next check", exc)
            continue
        readings.append(NodeReading(server_id, {c.cid: c for c in connections}, at))
    return readings


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
                    readings = await read_nodes(nc, issuer.account)
                    rates = meter.observe(time.monotonic(), readings, metered_agents(self.agents))
                    for rate in over_budget(rates, self.budget):
                        meter.forget(rate.agent_id)
                        await self.suspend(rate, self.budget)
                except Exception:
                    log.exception("identity: the ingress check failed; the next period tries again")
                await asyncio.sleep(max(0.0, period - (time.monotonic() - began)))
        finally:
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()
