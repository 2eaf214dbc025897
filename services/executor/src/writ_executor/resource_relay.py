"""Resource subscriptions that outlive a session, and what servers say about their resources and
prompts, passed on to the agents (their gateways).

* A ``subscribe_resource`` / ``unsubscribe_resource`` intent runs here: one upstream subscription
  per (server, uri) serves every agent holding it (``subscription_rules``). Once it took effect
  upstream, ``resource.subscribed`` / ``resource.unsubscribed`` is appended to the executor's
  control stream (message id from the intent id: a re-run appends nothing twice), before the
  intent's outcome, so the agent is a holder before its client hears "subscribed".
* The live subscriptions are a view of that stream, rebuilt at start. Every new session to a
  server re-subscribes its live URIs before any call uses it (first open, a replaced or
  re-established session, an executor restart); a keeper opens a session to each server with
  live subscriptions, so none waits for a call.
* ``notifications/resources/updated`` goes to each agent holding that URI, on its own notice
  subject; ``resources/list_changed`` and ``prompts/list_changed`` (from a server, or seen as a
  changed listing when the gateway asks) go to every agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from mcp.types import (
    PromptListChangedNotification,
    ResourceListChangedNotification,
    ResourceUpdatedNotification,
    ServerNotification,
)

from writ_common import events as ev
from writ_common import subjects
from writ_common.envelope import StoredEvent
from writ_common.errors import Refusal
from writ_common.fold import IntentView
from writ_common.service import Service
from writ_executor.known_servers import KnownServers
from writ_executor.redaction import resolve
from writ_executor.secret_commands import Secrets
from writ_executor.sessions import SessionPool, subscribe_all
from writ_executor.subscription_rules import (
    LIST_KIND,
    Subscriptions,
    listing_changed,
    listing_digest,
    recipients,
    reconcile,
    subscribe_upstream,
    subscription_event,
    unsubscribe_upstream,
)

log = logging.getLogger(__name__)

SUBSCRIPTION_OPERATIONS = ("subscribe_resource", "unsubscribe_resource")
KEEP_INTERVAL = 2.0  # seconds between two looks for a server with live subscriptions and no session
PING_EVERY = 10.0  # seconds between two pings of a session that carries live subscriptions
KEEP_BACKOFF_MAX = 60.0  # the longest wait before trying a server that could not be opened again
RESUBSCRIBE_TIMEOUT = 10.0  # seconds one re-subscription (or reconciliation) may take


class ResourceRelay:
    """The executor's side of resource subscriptions and list changes (see the module's text)."""

    def __init__(self, svc: Service, servers: KnownServers, secrets: Secrets, pool: SessionPool) -> None:
        self.svc = svc
        self.servers = servers
        self.secrets = secrets
        self.pool = pool
        self.view = Subscriptions()
        self.follower = svc.follow(subjects.EXECUTOR_STREAM, self.apply)
        self.digests: dict[tuple[str, str], str] = {}  # (server, list method) -> digest of its last answer
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False  # the view changes after start reconcile this replica's sessions
        self._pinged = time.monotonic()
        self._retry_at: dict[str, tuple[float, float]] = {}  # server -> (when, backoff) after a failed open
        pool.on_open = self.resubscribe

    # -- the view -------------------------------------------------------------------------------

    def apply(self, event: StoredEvent) -> None:
        key = self.view.apply(event.payload)
        if key is not None and self._started and self.pool.is_open(key[0]):
            # Perhaps another replica's subscription: this replica's session follows the view too.
            self._spawn(self.reconcile(*key))

    async def reconcile(self, server: str, uri: str) -> None:
        async with self._lock(server, uri):
            action = reconcile(wanted=bool(self.view.of(server, uri)), session_holds=self.pool.holds(server, uri))
            resolved = await self.resolved(server) if action is not None else None
            if resolved is None:
                return
            try:
                await self.pool.subscription(resolved, uri, action == "subscribe", meta={}, timeout=RESUBSCRIBE_TIMEOUT)
            except Exception as exc:
                log.warning("executor: could not %s %s on %s: %s", action, uri, server, exc)

    async def resubscribe(self, server: str, session: Any) -> set[str]:
        """A new session to ``server``: subscribe to its live URIs before any call uses it."""
        uris = self.view.live(server)
        if not uris:
            return set()
        done = await subscribe_all(session, uris, RESUBSCRIBE_TIMEOUT)
        log.info("executor: re-subscribed %d of %d resources on a new session to %s", len(done), len(uris), server)
        for uri in sorted(set(uris) - done):
            log.warning("executor: %s refused the re-subscription to %s", server, uri)
        return done

    # -- the intents ------------------------------------------------------------------------------

    async def execute(
        self,
        view: IntentView,
        server: ev.ServerRegistered,
        *,
        meta: dict[str, Any],
        timeout: float,
        on_session: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Run a subscribe_resource / unsubscribe_resource intent: upstream only when the
        subscription's holders say so, then record who holds it. Raises as the session pool does."""
        assert view.planned is not None and view.submitted is not None
        operation, uri, agent_id = view.submitted.operation, view.planned.tool, view.agent_id or ""
        async with self._lock(server.name, uri):
            if operation == "subscribe_resource" and subscribe_upstream(
                session_holds=self.pool.holds(server.name, uri)
            ):
                await self.pool.subscription(server, uri, True, meta=meta, timeout=timeout, on_session=on_session)
            elif operation == "unsubscribe_resource":
                await self.follower.ensure_fresh()  # another replica's subscriber counts too
                holders = self.view.of(server.name, uri)
                if unsubscribe_upstream(holders, agent_id, session_holds=self.pool.holds(server.name, uri)):
                    await self.pool.subscription(server, uri, False, meta=meta, timeout=timeout, on_session=on_session)
            await self.record(operation, server.name, uri, agent_id, view.intent_id or "")
        return {}

    async def record(self, operation: str, server: str, uri: str, agent_id: str, intent_id: str) -> None:
        event = subscription_event(operation, server, uri, agent_id, intent_id)
        if event is None:
            return
        step = "subscribed" if isinstance(event, ev.ResourceSubscribed) else "unsubscribed"
        await self.svc.append_control(
            subjects.subscription_subject(server, step), event, message_id=f"subscription:{intent_id}"
        )
        await self.follower.catch_up()  # in the view (in stream order) before the intent's outcome

    # -- what servers say -------------------------------------------------------------------------

    def on_notice(self, server: str, notice: ServerNotification) -> None:
        """From a session's receive loop: hand over, never block it."""
        if isinstance(notice, ResourceUpdatedNotification):
            body = json.dumps({"server": server, "uri": str(notice.params.uri)}).encode()
            for agent_id in recipients(self.view, server, str(notice.params.uri)):
                self._spawn(self._publish(subjects.resource_updated_subject(agent_id), body))
        elif isinstance(notice, ResourceListChangedNotification | PromptListChangedNotification):
            kind = "resources" if isinstance(notice, ResourceListChangedNotification) else "prompts"
            self._spawn(self._publish(subjects.list_changed_subject(server, kind), b""))

    def listed(self, server: str, method: str, items: list[dict[str, Any]]) -> None:
        """What ``server`` listed for ``method`` as the gateway asked: a listing that changed since
        the last answer is a list change, said to every agent (whatever the server itself said)."""
        digest = listing_digest(items)
        if listing_changed(self.digests.get((server, method)), digest):
            self._spawn(self._publish(subjects.list_changed_subject(server, LIST_KIND[method]), b""))
        self.digests[(server, method)] = digest

    async def _publish(self, subject: str, body: bytes) -> None:
        try:
            await self.svc.nc.publish(subject, body)
        except Exception as exc:  # a notice is a hint: lost with the bus away, never retried
            log.warning("executor: notice on %s not sent: %s", subject, exc)

    # -- sessions for live subscriptions ----------------------------------------------------------

    async def keep(self) -> None:
        """Every server with live subscriptions has a session (and so its subscriptions upstream);
        a session the server forgot (an HTTP server restarted, with no call to find out) is seen
        by a ping every PING_EVERY seconds and replaced. One step: the service runs it every
        KEEP_INTERVAL seconds."""
        now = time.monotonic()
        servers = sorted(self.view.servers())
        if now - self._pinged >= PING_EVERY:
            self._pinged = now
            open_ = [name for name in servers if self.pool.is_open(name)]
            lost_ones = await asyncio.gather(*(self.pool.forgotten(n, RESUBSCRIBE_TIMEOUT) for n in open_))
            for name, lost in zip(open_, lost_ones, strict=True):
                if lost:
                    log.warning("executor: %s forgot its session; opening a new one for its subscriptions", name)
        due = [
            name for name in servers if not self.pool.is_open(name) and self._retry_at.get(name, (0.0, 0.0))[0] <= now
        ]
        await asyncio.gather(*(self._open(name) for name in due))

    async def _open(self, name: str) -> None:
        resolved = await self.resolved(name)
        if resolved is None:
            return
        try:
            await self.pool.open(resolved)
        except Exception as exc:
            backoff = min(KEEP_BACKOFF_MAX, 2 * self._retry_at.get(name, (0.0, KEEP_INTERVAL / 2))[1])
            self._retry_at[name] = (time.monotonic() + backoff, backoff)
            log.warning(
                "executor: %s has live subscriptions but could not be opened (again in %gs): %s", name, backoff, exc
            )
            return
        self._retry_at.pop(name, None)

    async def resolved(self, name: str) -> ev.ServerRegistered | None:
        server = await self.servers.get(name)
        if server is None:
            return None
        resolved = resolve(server, self.secrets.current_or_none())
        return None if isinstance(resolved, Refusal) else resolved

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    def _lock(self, server: str, uri: str) -> asyncio.Lock:
        return self._locks.setdefault((server, uri), asyncio.Lock())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def wire(self) -> None:
        self.svc.on_startup(self.started)
        self.svc.every("resource subscriptions' sessions", KEEP_INTERVAL, self.keep, at_start=True)
        self.svc.on_shutdown(self.stop)

    async def started(self) -> None:
        self._started = True
