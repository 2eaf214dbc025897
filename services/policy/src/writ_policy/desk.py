"""The approvals desk: the requests waiting for people, the signed decisions on them, their expiry,
and re-deciding them when a new bundle is loaded. Thin adapters: the rules are in
:mod:`writ_policy.approvals` and :mod:`writ_policy.domain`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from writ_common import cancel_requests, subjects
from writ_common import events as ev
from writ_common.approvals import Approver, apply_approver_event
from writ_common.bus import (
    HistoryBehind,
    StaleAppend,
    direct_get_batch,
    direct_get_last_of,
    read_history,
    stored,
)
from writ_common.commands import CommandError, granted, refuse_if
from writ_common.envelope import StoredEvent, UndecodableEvent, decode
from writ_common.fold import IntentView, fold_intent
from writ_common.service import FENCE_RETRIES, Decide, Service
from writ_common.sweeper import OpenIntents
from writ_policy import approvals, domain
from writ_policy.approvals import SignedDecision
from writ_policy.state import PolicyState

log = logging.getLogger(__name__)

EXPIRY_TICK = 1.0
TAKE_UP_RETRY = 1.0  # seconds between tries to read the open requests at start


class ApprovalQuery(msgspec.Struct, kw_only=True):
    approver_id: str | None = None
    intent_id: str | None = None


async def requests_maybe_open(nc: Client, index: OpenIntents) -> list[StoredEvent]:
    """The ``approval.requested`` events of intents that may still be open (``index`` caught up
    first): every request ever made would cost two history reads each at every start of policy.

    The oldest open intents are often requests waiting days for a person, and reading the type
    from the oldest on would read every request made since: so for those (the ones a sweeper's
    checkpoint names) each one's latest request is read, all in one request (``multi_last``), and
    the type from above them."""
    await index.catch_up(nc)
    held, start = index.oldest()
    latest = [
        subjects.intent_subject(s.envelope.agent_id or "", s.envelope.intent_id or "", "approval.requested")
        for s in held
    ]
    found: list[Msg] = await direct_get_last_of(nc, subjects.INTENTS_STREAM, latest)
    requested = subjects.intents_of_type("approval.requested")
    found += await direct_get_batch(nc, subjects.INTENTS_STREAM, requested, start_seq=start)
    out: dict[int, StoredEvent] = {}  # by sequence: a held intent's later request is read twice
    for msg in found:
        with contextlib.suppress(UndecodableEvent):  # not ours to handle here: nothing to remember
            event = stored(msg)
            if index.may_be_open(event):
                out[event.seq] = event
    return [out[seq] for seq in sorted(out)]  # in stream order: an intent's latest request last


class ApprovalDesk:
    """Owns the open requests (intent id -> its approval.requested) and the approver directory."""

    def __init__(self, svc: Service, state: PolicyState) -> None:
        self.svc = svc
        self.state = state
        self.approvers: dict[str, Approver] = {}
        self.pending: dict[str, StoredEvent] = {}  # while the request may be open
        self.directory = svc.follow(subjects.IDENTITY_STREAM, self.apply_directory)
        self.tasks: list[asyncio.Task[None]] = []
        self.taken_up = False  # the requests open at start are in ``pending``

    def apply_directory(self, event: StoredEvent) -> None:
        apply_approver_event(self.approvers, event)

    # -- the open requests ----------------------------------------------------------------------

    async def start(self) -> None:
        # Heard live first, so a request stored while the log is read below is not missed.
        await self.svc.nc.subscribe(subjects.intents_of_type("approval.requested"), cb=self.on_requested)
        # A request waiting for people ends when its agent cancels the intent: heard live, and
        # looked for once at start (a cancel sent while policy was down).
        await self.svc.nc.subscribe(cancel_requests.SUBJECT, cb=self.on_cancel_requested)
        self.tasks.append(asyncio.create_task(self.take_up_open_requests(), name="approval-take-up"))
        self.tasks.append(asyncio.create_task(self.expire_loop(), name="approval-expiry"))

    async def take_up_open_requests(self) -> None:
        """Open approvals are found in the log, so expiry fires even if we were down at the time;
        those whose agent cancelled meanwhile end now. In the background: on a long log the
        open-intents index takes a while to read, and policy decides new intents meanwhile."""
        while True:
            try:
                found = await requests_maybe_open(self.svc.nc, self.svc.open_intents)
                break
            except nats.errors.Error as exc:
                log.warning("policy: could not read the open approval requests yet (%s); trying again", exc)
                await asyncio.sleep(TAKE_UP_RETRY)
        for requested in found:
            self.remember(requested)
        self.taken_up = True
        await self.end_cancelled([e.envelope.intent_id or "" for e in found])
        await self.redecide_pending()  # a bundle loaded while we were down decides them afresh

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()

    def remember(self, event: StoredEvent) -> None:
        if isinstance(event.payload, ev.ApprovalRequested) and event.envelope.intent_id:
            self.pending[event.envelope.intent_id] = event

    async def on_requested(self, msg: Msg) -> None:
        with contextlib.suppress(UndecodableEvent):
            self.remember(decode(msg.data, subject=msg.subject))

    async def on_cancel_requested(self, msg: Msg) -> None:
        """A request waiting for people whose agent asked to cancel the intent ends now (read from
        the history: its approval request may not be in ``pending`` yet, the two notices are
        handled apart)."""
        view = await cancel_requests.confirmed(self.svc.nc, msg)
        requested = next((e for e in view.events if e.type == "approval.requested"), None) if view else None
        if view is not None and view.approval_pending and requested is not None and view.intent_id:
            self.remember(requested)
            await self.end_cancelled([view.intent_id])

    async def end_cancelled(self, intent_ids: list[str]) -> None:
        """End, ``cancelled``, the waiting requests whose agent asked to cancel the intent (the
        stage's own rule: :func:`writ_common.cancellation.cancellation`)."""
        await self.settle_pending(intent_ids, self.decide_nothing, "end the cancelled")

    async def settle_pending(self, intent_ids: list[str], decide: Decide, what: str) -> None:
        """Run policy's stage on each of these waiting requests; one it ended is no longer pending."""
        for intent_id in intent_ids:
            requested = self.pending.get(intent_id)
            if requested is None:
                continue
            try:
                if await self.svc.run_stage(requested, "authorize", decide):
                    self.pending.pop(intent_id, None)
            except Exception:
                log.exception("policy: could not %s approval request of %s", what, intent_id)

    async def decide_nothing(self, _view: IntentView) -> list[ev.Payload]:
        return []  # run_stage ends a cancelled (or expired) intent; nothing else to decide here

    async def expire_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_TICK)
            await self.expire_due(datetime.now(UTC))

    async def expire_due(self, now: datetime) -> None:
        for intent_id, requested in list(self.pending.items()):
            assert isinstance(requested.payload, ev.ApprovalRequested)
            if not approvals.ran_out(requested.payload, now):
                continue
            try:
                await self.svc.run_stage(requested, "authorize", self.decide_expiry)
                self.pending.pop(intent_id, None)
            except Exception:
                log.exception("policy: could not expire approval of %s; will retry", intent_id)

    async def decide_expiry(self, view: IntentView) -> list[ev.Payload]:
        return approvals.expiry(view, datetime.now(UTC))

    async def redecide_pending(self) -> None:
        """Under a new bundle, a request still waiting for people is decided again
        (:func:`writ_policy.domain.redecision`)."""
        if self.state.current is None or not self.taken_up:
            return  # not yet: the requests open at start are re-decided once taken up
        await self.settle_pending(list(self.pending), self.decide_again, "re-decide under the new bundle the")

    async def decide_again(self, view: IntentView) -> list[ev.Payload]:
        return domain.redecision(view, self.state.enforced_for(view.agent_id), now=datetime.now(UTC))

    async def open_view(self, intent_id: str, agent_id: str | None = None) -> tuple[IntentView, int, StoredEvent]:
        requested = self.pending.get(intent_id)
        agent = agent_id or (requested.envelope.agent_id if requested else None)
        if not agent:
            raise CommandError("not_found", f"no approval request for intent {intent_id!r}")
        # At least as new as the request we know of: a replica behind it would say "no request".
        known = requested if requested and requested.envelope.agent_id == agent else None
        try:
            history = await read_history(
                self.svc.nc,
                agent,
                intent_id,
                min_seq=known.seq if known else 0,
                event_id=known.envelope.id if known else None,
            )
        except HistoryBehind as exc:
            raise CommandError("busy", f"the log is catching up on intent {intent_id!r}; try again") from exc
        view = fold_intent(history.events)
        trigger = next((e for e in view.events if e.type == "approval.requested"), None)
        if view.approval is None or trigger is None:
            raise CommandError("not_found", f"intent {intent_id!r} has no approval request")
        return view, history.last_seq, trigger

    # -- commands: operators (the approvals API, tests) -------------------------------------------

    async def decide_approval(self, body: dict[str, Any]) -> Any:
        """An operator forwards a decision: the approver's signature is the authority."""
        return await self.decide_signed(msgspec.convert(body, SignedDecision))

    async def list_approvals(self, body: dict[str, Any]) -> Any:
        """Operators: everything open, or what one named approver may decide."""
        query = msgspec.convert(body, ApprovalQuery)
        return await self.pending_for(await self.groups_of(query.approver_id), query.intent_id)

    async def show_approval(self, body: dict[str, Any]) -> Any:
        query = msgspec.convert(body, ApprovalQuery)
        return await self.one_for(query.approver_id, await self.groups_of(query.approver_id), query.intent_id)

    async def approver_groups(self, body: dict[str, Any]) -> Any:
        query = msgspec.convert(body, ApprovalQuery)
        if not query.approver_id:
            raise CommandError("invalid_request", "approver_groups needs an approver_id")
        return list(await self.groups_of(query.approver_id) or ())

    # -- commands: an approver on its own subject (the subject names the caller) ------------------

    async def decide_as(self, approver_id: str, body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, SignedDecision)
        refuse_if(approvals.speaks_for(approver_id, cmd.approver_id))
        return await self.decide_signed(cmd)

    async def list_mine(self, approver_id: str, body: dict[str, Any]) -> Any:
        """Only what the approver's groups may decide."""
        query = own_query(approver_id, body)
        return await self.pending_for(await self.groups_of(approver_id), query.intent_id)

    async def show_mine(self, approver_id: str, body: dict[str, Any]) -> Any:
        query = own_query(approver_id, body)
        return await self.one_for(approver_id, await self.groups_of(approver_id), query.intent_id)

    async def groups_mine(self, approver_id: str, body: dict[str, Any]) -> Any:
        own_query(approver_id, body)
        return list(await self.groups_of(approver_id) or ())

    # -- shared by both ---------------------------------------------------------------------------

    async def decide_signed(self, cmd: SignedDecision) -> Any:
        if cmd.approver_id not in self.approvers:
            await self.directory.ensure_fresh()
        for _ in range(FENCE_RETRIES):
            view, last_seq, trigger = await self.open_view(cmd.intent_id, cmd.agent_id)
            refuse_if(approvals.not_open(view, cmd.intent_id))
            payloads = approvals.judge(view, cmd, self.approvers.get(cmd.approver_id), now=datetime.now(UTC))
            try:
                # Many decisions land on one intent: the approver and the position keep their ids apart.
                await self.svc.append_all(view, trigger, payloads, last_seq, occurrence=f"{cmd.approver_id}@{last_seq}")
            except StaleAppend:
                continue
            return approvals.decision_reply(view, payloads)
        raise CommandError("busy", "the intent kept changing while deciding; try again")

    async def pending_for(self, groups: tuple[str, ...] | None, intent_id: str | None) -> list[dict[str, Any]]:
        rows = []
        for pending_id in sorted(self.pending):
            if intent_id and pending_id != intent_id:
                continue
            view, _, _ = await self.open_view(pending_id)
            if approvals.visible(view, groups):
                rows.append(approvals.approval_picture(view))
        return rows

    async def one_for(self, approver_id: str | None, groups: tuple[str, ...] | None, intent_id: str | None) -> Any:
        if not intent_id:
            raise CommandError("invalid_request", "show needs an intent_id")
        view, _, _ = await self.open_view(intent_id)
        refuse_if(approvals.hidden_from(view, approver_id, groups))
        return approvals.approval_picture(view)

    async def groups_of(self, approver_id: str | None) -> tuple[str, ...] | None:
        """None: no approver named, everything is visible (an operator's view)."""
        if approver_id is not None and approver_id not in self.approvers:
            await self.directory.ensure_fresh()
        return granted(approvals.groups_of(self.approvers, approver_id))


def own_query(approver_id: str, body: dict[str, Any]) -> ApprovalQuery:
    """An approver's query; naming anyone else in it is refused, not quietly ignored."""
    query = msgspec.convert(body, ApprovalQuery)
    refuse_if(approvals.speaks_for(approver_id, query.approver_id))
    return query
