"""The receipt writer: one signed, hash-chained receipt per ended intent, appended to the ledger
stream fenced on the chain's head. The rules are in ``domain.py``; this reads and appends."""

from __future__ import annotations

import logging

from nacl.signing import SigningKey
from nats.js.api import PubAck
from nats.js.errors import APIError, NotFoundError

from writ_common import events as ev
from writ_common import subjects, topology
from writ_common.bus import WRONG_LAST_SEQUENCE, last_on_subject
from writ_common.envelope import Envelope, StoredEvent, decode, encode, make_envelope, utcnow
from writ_common.errors import Refusal
from writ_common.fold import IntentView, fold_intent
from writ_common.service import FENCE_RETRIES, Service
from writ_common.signing import key_id, public_key_b64
from writ_ledger import domain
from writ_ledger.domain import ChainHead
from writ_ledger.histories import IntentHistories
from writ_ledger.views.runner import Views

log = logging.getLogger(__name__)

NOTICE_MAX_BYTES = 64 * 1024  # a receipt larger than this (a kept tool output) is read, not sent along


class ReceiptWriter:
    """The chain as this replica last wrote or read it, and the histories the views applied."""

    def __init__(self, svc: Service, key: SigningKey, histories: IntentHistories, views: Views) -> None:
        self.svc = svc
        self.key = key
        self.public_key = public_key_b64(key)
        self.key_id = key_id(self.public_key)
        self.histories = histories
        self.views = views
        self.head: ChainHead | None = None  # None: read it from the stream before the next append

    async def chain_head(self) -> ChainHead:
        """The last receipt's head; the chain's one fence.

        Kept in memory after the first read and each append; the fence tells us when another
        replica moved it, and then it is read again.
        """
        if self.head is None:
            self.head = await self.read_head()
        return self.head

    async def read_head(self) -> ChainHead:
        """The head read afresh: the newest message on the ledger stream that is a receipt signed
        by this ledger's key. Anything else there (a forged or foreign message) is logged and
        passed over, never chained from: it cannot halt the ledger or join the chain."""
        last_seq = (await self.svc.js.stream_info(subjects.LEDGER_STREAM)).state.last_seq
        for seq in range(last_seq, 0, -1):
            try:
                raw = await self.svc.js.get_msg(subjects.LEDGER_STREAM, seq, direct=True)
            except NotFoundError:
                continue  # deleted: look further back
            found = domain.own_receipt(raw.data or b"", self.public_key)
            if not isinstance(found, Refusal):
                return domain.head_of(found, last_seq)
            log.error(
                "ledger: message %d on %s is not one of our receipts (%s); not chaining from it",
                seq,
                subjects.LEDGER_STREAM,
                found,
            )
        return domain.head_of(None, last_seq)

    async def has_own_receipt(self, agent_id: str, intent_id: str) -> bool:
        """A receipt of ours is stored for the intent (a foreign message on its subject is not one)."""
        subject = subjects.receipt_subject(agent_id, intent_id)
        raw = await last_on_subject(self.svc.js, subjects.LEDGER_STREAM, subject)
        stored = None if raw is None else raw.data or b""
        if domain.already_recorded(stored, self.public_key):
            return True
        if stored is not None:
            log.error("ledger: the message on the receipt subject of %s is not one of our receipts", intent_id)
        return False

    async def record(self, trigger: StoredEvent) -> None:
        """Write the receipt of the intent ``trigger`` ended, once, at the chain's head."""
        intent_id, agent_id = trigger.envelope.intent_id or "", trigger.envelope.agent_id or ""
        for _ in range(FENCE_RETRIES):
            head = await self.chain_head()
            # Exactly one receipt per intent. The append below is fenced on ``head``, so where the
            # views show none up to it there is none, and the stream need not be asked.
            if not self.views.no_receipt_until(intent_id, head.seq) and await self.has_own_receipt(agent_id, intent_id):
                return
            view = fold_intent(await self.events_of(trigger))
            how = domain.ended(view)
            if isinstance(how, Refusal):
                log.debug("ledger: no receipt for %s: %s", intent_id, how)
                return
            receipt = domain.next_receipt(view, head, recorded_at=utcnow(), key=self.key, key_id=self.key_id)
            envelope = self.envelope(trigger, view, receipt)
            try:
                ack = await self.svc.js.publish(
                    subjects.receipt_subject(agent_id, intent_id),
                    encode(envelope),
                    headers=domain.receipt_headers(intent_id, head),
                )
            except APIError as exc:
                self.head = None
                if exc.err_code == WRONG_LAST_SEQUENCE:
                    continue  # another ledger replica extended the chain: re-read the head
                raise
            await self.written(trigger, view, receipt, envelope, ack)
            return
        raise RuntimeError(f"{intent_id}: could not extend the receipt chain after {FENCE_RETRIES} tries")

    async def events_of(self, trigger: StoredEvent) -> list[StoredEvent]:
        """The intent's events up to the trigger: as the views applied them, else read from the log
        (which reaches the trigger, or the trigger comes again)."""
        events = self.histories.history(trigger)
        if events is None:
            events = (await self.svc.history(trigger)).events
        return events

    def envelope(self, trigger: StoredEvent, view: IntentView, receipt: ev.Receipt) -> Envelope:
        assert view.terminal is not None
        return make_envelope(
            receipt,
            producer=self.svc.producer,
            intent_id=trigger.envelope.intent_id,
            agent_id=view.agent_id,
            causation_id=view.terminal.envelope.id,
            correlation_id=view.submitted_event.envelope.id if view.submitted_event else None,
        )

    async def written(
        self, trigger: StoredEvent, view: IntentView, receipt: ev.Receipt, envelope: Envelope, ack: PubAck
    ) -> None:
        """After the append: the new head, the notice to whoever waits, and the receipt into the views."""
        self.head = domain.head_after(receipt, ack.seq, duplicate=bool(ack.duplicate))
        self.histories.forget(trigger)
        intent_id = trigger.envelope.intent_id or ""
        data = encode(envelope)
        # The notice carries the receipt just stored, so whoever waits need not read it back; a
        # duplicate's stored receipt is an earlier one, and a large one is read from the stream.
        notice = b"" if ack.duplicate or len(data) > NOTICE_MAX_BYTES else data
        await self.svc.nc.publish(subjects.receipt_notice_subject(view.agent_id or "", intent_id), notice)
        self.svc.fault_point()
        if not ack.duplicate:
            subject = subjects.receipt_subject(trigger.envelope.agent_id or "", intent_id)
            await self.apply_own(decode(data, seq=ack.seq, subject=subject))

    async def apply_own(self, receipt: StoredEvent) -> None:
        """Our receipt, into the views at once: the views do not read back what this ledger wrote
        (another replica's receipts come with the views' poll)."""
        try:
            topology.admit(receipt)
            await self.views.apply_live(subjects.LEDGER_STREAM, receipt)
        except Exception:
            log.exception("ledger: views could not apply receipt %d; they catch up from the log later", receipt.seq)
