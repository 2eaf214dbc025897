"""The agent SDK: sign an intent, submit it, await its receipt.

agent = await WritAgent.local("billing-bot")  # or WritAgent.connect(url, "billing-bot", key, creds_file=creds_path)
receipt = await agent.call("time/get_current_time", {"timezone": "Europe/Paris"})
print(receipt.status, receipt.result)
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import msgspec
import nats
from nacl.signing import SigningKey
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from writ_common import local, subjects
from writ_common.bus import StaleAppend, append, last_on_subject, msg_id, read_history, split_servers
from writ_common.digest import canonical_json
from writ_common.envelope import (
    MAX_CONTENT_DEPTH,
    Producer,
    UndecodableEvent,
    decode,
    encode,
    make_envelope,
    nesting_depth_exceeds,
)
from writ_common.events import STAGE_STATUS, ApprovalRequested, IntentCancelRequested, IntentSubmitted, Receipt
from writ_common.fold import fold_intent
from writ_common.ids import derive_intent_id
from writ_common.operations import CALL_TOOL
from writ_common.signing import sign
from writ_common.tracing import inject_headers, tracer

SDK_PRODUCER = Producer(service="agent-sdk", instance="sdk", version="0.1.0")


# A read of the ledger stream nobody answered: its servers restarting, its leader being elected.
_NOT_ANSWERED = (nats.errors.NoRespondersError, nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError)


class ReceiptTimeout(Exception):
    """No receipt arrived in time; the intent may still be in flight (query it again later)."""

    def __init__(self, message: str, *, intent_id: str = "", status: str | None = None) -> None:
        super().__init__(message)
        self.intent_id = intent_id
        self.status = status  # where the intent stood when the wait ended (None: not known)


class AwaitingApproval(ReceiptTimeout):
    """No receipt in time because the intent waits for people: ``quorum`` approvers of ``group``
    must grant it before ``expires_at`` (else it ends ``denied``/``expired``). Wait again with
    :meth:`WritAgent.receipt` once they have decided."""

    def __init__(self, message: str, *, intent_id: str, group: str, quorum: int, expires_at: str) -> None:
        super().__init__(message, intent_id=intent_id, status="awaiting_approval")
        self.group = group
        self.quorum = quorum
        self.expires_at = expires_at


@dataclass(frozen=True, slots=True)
class Submission:
    intent_id: str
    duplicate: bool  # True: this idempotency key was already used; the original intent stands


def sign_intent(intent: IntentSubmitted, key: SigningKey) -> IntentSubmitted:
    """Return ``intent`` with its Ed25519 signature over its canonical fields.

    Raises:
        ValueError: the arguments are outside canonical JSON (integers beyond ±2**53 - 1, NaN):
            send such numbers as strings; or they nest deeper than the plane reads.
    """
    canonical = canonical_json(intent.signed_fields())
    if nesting_depth_exceeds(canonical, MAX_CONTENT_DEPTH):
        raise ValueError(f"the arguments nest more than {MAX_CONTENT_DEPTH} levels deep; the plane would not read them")
    return msgspec.structs.replace(intent, signature=sign(key, canonical))


def new_intent(
    agent_id: str,
    tool: str,
    arguments: dict[str, Any],
    *,
    idempotency_key: str | None = None,
    on_behalf_of: str | None = None,
    deadline_seconds: float = 300.0,
    operation: str = CALL_TOOL,
    via: str | None = None,
) -> IntentSubmitted:
    """An unsigned intent with a fresh nonce, issue time and deadline; ``operation`` other than
    ``call_tool`` asks for another governed MCP operation on ``tool`` = ``SERVER/TARGET``; ``via``
    says who signs for the caller (the gateway, for an MCP client holding no key)."""
    now = datetime.now(UTC)
    return IntentSubmitted(
        agent_id=agent_id,
        idempotency_key=idempotency_key or str(uuid.uuid4()),
        tool=tool,
        arguments=arguments,
        on_behalf_of=on_behalf_of,
        deadline=(now + timedelta(seconds=deadline_seconds)).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        issued_at=now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        nonce=secrets.token_urlsafe(16),
        operation=operation,
        via=via,
    )


async def publish_intent(nc: Client, intent: IntentSubmitted, *, causation_id: str | None = None) -> Submission:
    """Publish a signed intent as the first event of its intent.

    The append expects the intent's subject to be empty: a resubmission with the same
    idempotency key (same derived intent id) is refused by the server and reported as a
    duplicate, whenever it comes.
    """
    intent_id = derive_intent_id(intent.agent_id, intent.idempotency_key)
    envelope = make_envelope(
        intent, producer=SDK_PRODUCER, intent_id=intent_id, agent_id=intent.agent_id, causation_id=causation_id
    )
    with tracer().start_as_current_span("agent.submit", attributes={"writ.intent_id": intent_id}):
        try:
            ack = await append(nc.jetstream(), envelope, expected_last_seq=0, settle=None)
        except StaleAppend:
            return Submission(intent_id=intent_id, duplicate=True)
    return Submission(intent_id=intent_id, duplicate=bool(ack.duplicate))


def _receipt_subject(intent_id: str, agent_id: str | None) -> str:
    # An agent's bus user may read only its own receipts, so an agent names itself.
    return subjects.receipt_subject(agent_id, intent_id) if agent_id else subjects.any_receipt_subject(intent_id)


async def fetch_receipt(nc: Client, intent_id: str, *, agent_id: str | None = None) -> Receipt | None:
    """The stored receipt of ``intent_id``, or None if it has none yet (``agent_id``: whose intent
    it is, which an agent must say; the operator may leave it out)."""
    raw = await last_on_subject(nc.jetstream(), subjects.LEDGER_STREAM, _receipt_subject(intent_id, agent_id))
    if raw is None:
        return None
    return _as_receipt(raw.data or b"")


async def wait_receipt(
    nc: Client,
    intent_id: str,
    timeout: float = 30.0,
    *,
    agent_id: str | None = None,
    wake_subject: str | None = None,
    listening: Subscription | None = None,
) -> Receipt:
    """Wait for the receipt of ``intent_id`` (returns at once if it already exists).

    ``agent_id``: as for :func:`fetch_receipt`. ``wake_subject``: what to listen on for "something
    happened" (default: the receipt subject); an agent's bus user may only listen to its own,
    ``writ.notice.<agent>.<intent>.receipt``. ``listening``: a subscription to it made before the
    intent was submitted (so its notice cannot have gone by): the receipt is then first read when
    the notice says it is stored, not at once; the caller keeps and ends the subscription.

    Raises:
        AwaitingApproval: none within ``timeout`` seconds because the intent waits for approvers
            (which group, how many grants, until when); only when ``agent_id`` is given.
        ReceiptTimeout: none within ``timeout`` seconds, for any other reason (its message says
            where the intent stands when ``agent_id`` is given).
    """
    # The core subscription is only a wake-up: a publish the stream refused (a ledger replica
    # losing the chain fence) still reaches core subscribers, so the receipt is always read back
    # from the stream, where only the stored one lives.
    sub = listening or await nc.subscribe(wake_subject or _receipt_subject(intent_id, agent_id))  # first: no gap
    deadline = time.monotonic() + timeout
    silence: str | None = None  # why the bus did not answer the last read (nodes restarting), if so

    async def look() -> Receipt | None:
        nonlocal silence
        try:
            found = await fetch_receipt(nc, intent_id, agent_id=agent_id)
        except _NOT_ANSWERED as exc:  # the ledger stream not (yet) serving: not yet, not an error
            silence = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
            return None
        silence = None
        return found

    async def timed_out() -> ReceiptTimeout:
        nonlocal silence
        try:
            said = await _timed_out(nc, intent_id, timeout, agent_id)
        except _NOT_ANSWERED as exc:
            silence = f"{type(exc).__name__}: {exc}"
            said = ReceiptTimeout(f"no receipt for {intent_id} within {timeout:g}s", intent_id=intent_id)
        if silence is not None:
            said.args = (f"{said}; the bus did not answer the last read ({silence})",)
        return said

    # Heard from before its submission, a new intent's receipt is not stored before its notice.
    look_now = listening is None
    try:
        while True:
            if look_now and (stored := await look()) is not None:
                return stored
            look_now = True
            left = deadline - time.monotonic()
            if left <= 0:
                raise await timed_out()
            try:
                heard = await sub.next_msg(timeout=min(left, 1.0))
            except nats.errors.TimeoutError:
                continue
            if (told := receipt_in_notice(heard, intent_id, agent_id)) is not None:
                return told
            # Core delivery can run a moment ahead of the stream's write: look again shortly.
            for pause in (0.001, 0.002, 0.005, 0.01, 0.02, 0.05):
                if (stored := await look()) is not None:
                    return stored
                await asyncio.sleep(pause)
    finally:
        if listening is None:
            await sub.unsubscribe()


# What an agent may read of its own intent (its bus user may get the last message of each of its
# intent's subjects, not the whole history): the furthest stage reached, latest first.
_STAGES = tuple(reversed(STAGE_STATUS.items()))


async def _timed_out(nc: Client, intent_id: str, timeout: float, agent_id: str | None) -> ReceiptTimeout:
    """Why there is no receipt yet, as far as the intent's own subjects tell."""
    plain = f"no receipt for {intent_id} within {timeout:g}s"
    if agent_id is None:
        return ReceiptTimeout(plain, intent_id=intent_id)
    js = nc.jetstream()
    try:
        reached = None
        for event_type, stage in _STAGES:
            subject = subjects.intent_subject(agent_id, intent_id, event_type)
            if (raw := await last_on_subject(js, subjects.INTENTS_STREAM, subject)) is not None:
                reached = stage, raw
                break
        if reached is None:
            return ReceiptTimeout(f"{plain}: the plane has not recorded it (is it running?)", intent_id=intent_id)
        status, raw = reached
        request = decode(raw.data or b"").payload if status == "awaiting_approval" else None
    except (nats.errors.Error, UndecodableEvent, OSError):
        return ReceiptTimeout(plain, intent_id=intent_id)
    if isinstance(request, ApprovalRequested):
        return AwaitingApproval(
            f"{plain}: it awaits approval by group {request.group!r} ({request.quorum} grant"
            f"{'' if request.quorum == 1 else 's'} needed) until {request.expires_at}; an approver of that group"
            f" decides with `writ approvals approve {intent_id} --as NAME` (or deny), then the receipt follows",
            intent_id=intent_id,
            group=request.group,
            quorum=request.quorum,
            expires_at=request.expires_at,
        )
    return ReceiptTimeout(f"{plain}: it is {status}", intent_id=intent_id, status=status)


async def retry_intent(nc: Client, key: SigningKey, agent_id: str, intent_id: str) -> Submission:
    """A new intent that retries ``intent_id``'s call after an unknown outcome: same tool, arguments
    and on-behalf-of, a derived idempotency key, signed by the agent and caused by the unknown
    outcome. It goes through authentication, policy (and approval) like any new call.
    """
    view = fold_intent((await read_history(nc, agent_id, intent_id)).events)
    if view.submitted is None or view.terminal is None or view.terminal.type != "execution.outcome_unknown":
        raise ValueError(f"{intent_id} did not end with an unknown outcome; there is nothing to retry")
    original = view.submitted
    retry = new_intent(
        agent_id,
        original.tool,
        original.arguments,
        idempotency_key=f"{original.idempotency_key}#retry",
        on_behalf_of=original.on_behalf_of,
    )
    return await publish_intent(nc, sign_intent(retry, key), causation_id=view.terminal.envelope.id)


@dataclass(frozen=True, slots=True)
class Cancellation:
    """What came of asking to cancel an intent.

    ``outcome``: ``cancelled`` (it ended cancelled: its receipt says at which stage, and whether
    a running call was stopped); ``finished`` (it had already ended, or its call ended before the
    request reached it: ``status`` is how, and nothing was changed); ``unknown_intent`` (this agent
    has no such intent: nothing was sent); ``requested`` (the request is recorded, no receipt
    within the wait: look again with :meth:`WritAgent.receipt`)."""

    intent_id: str
    outcome: Literal["cancelled", "finished", "unknown_intent", "requested"]
    status: str | None = None  # the receipt's status, or where the intent stood when the wait ended
    receipt: Receipt | None = None

    def __str__(self) -> str:
        match self.outcome:
            case "cancelled":
                return f"{self.intent_id} cancelled: {self.receipt.reason if self.receipt else ''}"
            case "finished":
                return f"{self.intent_id} had already ended {self.status}: the cancel request changed nothing"
            case "unknown_intent":
                return f"no intent {self.intent_id} of this agent: nothing to cancel"
            case _:
                where = f" (it is {self.status})" if self.status else ""
                return f"cancel of {self.intent_id} requested; no receipt yet{where}"


async def request_cancel(nc: Client, agent_id: str, intent_id: str, *, reason: str = "") -> bool:
    """Record ``agent_id``'s request to cancel its intent ``intent_id`` (``intent.cancel_requested``
    on the intent's own subject, which only that agent's bus user may publish on). Returns False,
    sending nothing, when the agent has no such intent.

    Not fenced: a request means the same wherever it lands in the history (the stage that next
    acts on the intent reads it); ``Nats-Msg-Id`` makes a second request a duplicate.
    """
    js = nc.jetstream()
    submitted = subjects.intent_subject(agent_id, intent_id, "intent.submitted")
    if await last_on_subject(js, subjects.INTENTS_STREAM, submitted) is None:
        return False  # sent before its submission it would refuse that submission (its fence expects nothing)
    event = "intent.cancel_requested"
    envelope = make_envelope(
        IntentCancelRequested(reason=reason), producer=SDK_PRODUCER, intent_id=intent_id, agent_id=agent_id
    )
    headers = inject_headers({"Nats-Msg-Id": msg_id(intent_id, event)})
    await js.publish(subjects.intent_subject(agent_id, intent_id, event), encode(envelope), headers=headers)
    return True


async def cancel_intent(
    nc: Client, agent_id: str, intent_id: str, *, reason: str = "", timeout: float = 10.0
) -> Cancellation:
    """:meth:`WritAgent.cancel` on a connection of ``agent_id``'s bus user (no key needed: the bus
    lets only that user ask, on its own intent's subject)."""
    stored = await fetch_receipt(nc, intent_id, agent_id=agent_id)
    if stored is None and not await request_cancel(nc, agent_id, intent_id, reason=reason):
        return Cancellation(intent_id, "unknown_intent")
    try:
        wake = subjects.receipt_notice_subject(agent_id, intent_id)
        receipt = stored or await wait_receipt(nc, intent_id, timeout, agent_id=agent_id, wake_subject=wake)
    except ReceiptTimeout as exc:
        return Cancellation(intent_id, "requested", status=exc.status)
    outcome: Literal["cancelled", "finished"] = "cancelled" if receipt.status == "cancelled" else "finished"
    return Cancellation(intent_id, outcome, status=receipt.status, receipt=receipt)


def receipt_in_notice(msg: Msg, intent_id: str, agent_id: str | None) -> Receipt | None:
    """The receipt a ledger's notice carries, or None (then it is read from the stream).

    Believed only on ``writ.notice.<agent>.<intent>.receipt``, which the bus lets only the ledger
    publish, and which it publishes after the receipt was stored, never for a publish the stream
    refused (unlike a core delivery of the receipt's own subject); and only for this intent."""
    if not msg.data or agent_id is None or msg.subject != subjects.receipt_notice_subject(agent_id, intent_id):
        return None
    try:
        receipt = _as_receipt(msg.data)
    except UndecodableEvent:
        return None
    return receipt if (receipt.intent_id, receipt.agent_id) == (intent_id, agent_id) else None


def _as_receipt(data: bytes) -> Receipt:
    payload = decode(data).payload
    if not isinstance(payload, Receipt):
        raise UndecodableEvent("not_a_receipt", f"expected receipt.recorded, got {type(payload).__name__}")
    return payload


class WritAgent:
    """An agent's handle on Writ: one NATS connection and the agent's signing key."""

    def __init__(self, nc: Client, agent_id: str, key: SigningKey) -> None:
        self.nc = nc
        self.agent_id = agent_id
        self._key = key

    @classmethod
    async def connect(
        cls,
        nats_url: str | Sequence[str],
        agent_id: str,
        key: SigningKey,
        *,
        creds_file: Path | None = None,
        **options: Any,
    ) -> WritAgent:
        """Connect as the agent; ``nats_url`` is one seed URL, several separated by commas, or a
        list (it connects through whichever is up); ``creds_file`` is its bus credential, the NATS
        user JWT identity issued at registration with its seed (``<data>/keys/agents/NAME.creds``)."""
        options = {**local.bus_credentials(creds_file, f"agent-{agent_id}"), **options}
        servers = split_servers(nats_url) if isinstance(nats_url, str) else list(nats_url)
        return cls(await nats.connect(servers, name=f"writ-agent-{agent_id}", **options), agent_id, key)

    @classmethod
    async def local(cls, agent_id: str, data_dir: str | Path | None = None, **options: Any) -> WritAgent:
        """Connect as ``agent_id`` with what ``writ agent register`` wrote on this machine: the key
        and bus credential under ``<data>/keys/agents/``, and the plane's NATS URL from
        ``<data>/runtime.json``. ``data_dir`` defaults to ``$WRIT_DATA_DIR``, else ``.writ``.

        Raises:
            FileNotFoundError: the agent has no key there (register it first).
        """
        from writ.keys import agent_bus_creds_path, agent_key_path
        from writ_common.signing import load_key

        data = local.data_dir(data_dir)
        key_file, creds_file = agent_key_path(data, agent_id), agent_bus_creds_path(data, agent_id)
        if not key_file.is_file():
            raise FileNotFoundError(
                f"no key for agent {agent_id!r} at {key_file}: `writ agent register {agent_id}` writes it"
            )
        creds = creds_file if creds_file.is_file() else None
        return await cls.connect(local.nats_url(data), agent_id, load_key(key_file), creds_file=creds, **options)

    async def close(self) -> None:
        await self.nc.drain()

    async def submit(
        self,
        tool: str,
        arguments: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        on_behalf_of: str | None = None,
        deadline_seconds: float = 300.0,
        caused_by: str | None = None,
        operation: str = CALL_TOOL,
        via: str | None = None,
    ) -> Submission:
        """Sign and submit an intent; returns its id (the same id for the same idempotency key).

        ``caused_by`` names the event that led to this call (e.g. the last event of the receipt whose
        tool output suggested it), so the ledger can show why an agent asked.
        """
        intent = new_intent(
            self.agent_id,
            tool,
            arguments,
            idempotency_key=idempotency_key,
            on_behalf_of=on_behalf_of,
            deadline_seconds=deadline_seconds,
            operation=operation,
            via=via,
        )
        return await publish_intent(self.nc, sign_intent(intent, self._key), causation_id=caused_by)

    async def receipt(self, intent_id: str, timeout: float = 30.0, *, listening: Subscription | None = None) -> Receipt:
        """Wait for the receipt of one of this agent's intents. ``listening``: from
        :meth:`receipt_notices`, entered before the intent was submitted (pass None for a
        resubmitted key, whose receipt may be stored already).

        Raises:
            AwaitingApproval: the intent waits for approvers (``group``, ``quorum``, ``expires_at``).
            ReceiptTimeout: none within ``timeout`` seconds for another reason.
        """
        wake = subjects.receipt_notice_subject(self.agent_id, intent_id)
        return await wait_receipt(
            self.nc, intent_id, timeout, agent_id=self.agent_id, wake_subject=wake, listening=listening
        )

    @contextlib.asynccontextmanager
    async def receipt_notices(self, intent_id: str) -> AsyncIterator[Subscription]:
        """Listen for an intent's receipt notice; entered before submitting it, no notice goes by
        unheard, so a new intent's receipt is read once, when the notice says it is stored."""
        listening = await self.nc.subscribe(subjects.receipt_notice_subject(self.agent_id, intent_id))
        try:
            yield listening
        finally:
            with contextlib.suppress(nats.errors.Error):  # a connection gone takes its subscriptions along
                await listening.unsubscribe()

    async def cancel(self, intent_id: str, *, reason: str = "", timeout: float = 10.0) -> Cancellation:
        """Ask Writ to cancel one of this agent's intents and wait up to ``timeout`` seconds for
        how it ended. Not yet executing: it ends ``cancelled`` without a call. Its call running:
        the executor cancels the request to the tool's server (MCP ``notifications/cancelled``)
        and it ends ``cancelled``. Already ended: nothing changes (``finished``, with its status).
        An interrupted call of a non-idempotent tool still ends ``outcome_unknown`` (it may have
        run). The same idempotency key names the same, ended, intent: to run the call again,
        submit it with a new key.
        """
        return await cancel_intent(self.nc, self.agent_id, intent_id, reason=reason, timeout=timeout)

    async def call(
        self,
        tool: str,
        arguments: dict[str, Any],
        *,
        timeout: float = 30.0,
        idempotency_key: str | None = None,
        caused_by: str | None = None,
        overloaded_retries: int = 0,
        **kwargs: Any,
    ) -> Receipt:
        """Submit and wait for the receipt (raises as :meth:`receipt`).

        It listens for the receipt's notice before it submits, so a new intent's receipt is read
        once, when the notice says it is stored (a repeated idempotency key reads it at once).

        ``overloaded_retries``: how many times an ``overloaded`` answer (the call did not run) is
        followed, after its retry-after, by the same call as a new intent, within ``timeout`` in all.
        Each retry's idempotency key is derived from the first (``KEY#overloaded-N``), so calling
        again with the same key finds the same intents; the receipt returned is the last one."""
        key = idempotency_key or str(uuid.uuid4())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        retries = 0
        while True:
            attempt_key = f"{key}#overloaded-{retries}" if retries else key
            async with self.receipt_notices(derive_intent_id(self.agent_id, attempt_key)) as listening:
                submission = await self.submit(
                    tool, arguments, idempotency_key=attempt_key, caused_by=caused_by, **kwargs
                )
                receipt = await self.receipt(
                    submission.intent_id,
                    max(0.1, deadline - loop.time()),
                    listening=None if submission.duplicate else listening,
                )
            wait = retry_after(receipt)
            if wait is None or retries >= overloaded_retries or loop.time() + wait >= deadline:
                return receipt
            if not submission.duplicate:  # an answer from an earlier call with this key: waited then
                await asyncio.sleep(wait)
            retries += 1


def retry_after(receipt: Receipt) -> float | None:
    """Seconds to wait before submitting again when the plane answered ``overloaded`` (the call did
    not run; submit it anew, with a new idempotency key: the same key is the same, ended, intent);
    None for any other receipt."""
    if receipt.code != "overloaded":
        return None
    millis = (receipt.result or {}).get("retry_after_ms")
    return float(millis) / 1000 if isinstance(millis, int | float) else None


__all__ = [
    "AwaitingApproval",
    "Cancellation",
    "ReceiptTimeout",
    "Submission",
    "WritAgent",
    "cancel_intent",
    "fetch_receipt",
    "new_intent",
    "publish_intent",
    "request_cancel",
    "retry_after",
    "retry_intent",
    "sign_intent",
    "wait_receipt",
]
