"""Which intents are still open, and until when: the sweeper's index, followed from the log.

The intents stream is read forward by batched Direct Get, one filter per followed event type
(``submitted`` and each terminal type), each from its own next sequence: the index receives
about two events per intent instead of every one (each sweeping service used to read and decode
the whole intent stream). No consumer: a service's bus user may administer only its own durable
consumer (an ephemeral one is refused), and a Direct Get needs none. A replica that is behind
answers with a shorter prefix of the same ordered log, never with a gap, and each filter's
position advances only past what it was given, so it misses nothing. The process keeps nothing
the log cannot give back.

The filters are read one after the other, so a terminal event may be read before its intent's
``submitted`` (which was stored after the submitted filter's last read): it is remembered in
``ended`` until the submitted filter passes its sequence, and the intent never opens.

A terminal type that has not occurred for a while (expired, denied, outcome unknown...) would be
asked for from its last occurrence on every tick, and the server looks through everything stored
since for it: a cost per tick that grows with the log (on a plane with 26,000 intents, most of the
nats-server's CPU). So once a terminal filter is read to its end, it moves on to the stream's
head as it was before the read. A replica behind that head may not have shown a terminal event
below it: that intent then stays open here until it is past due, when the sweep reads its history,
finds it ended and drops it (the sweep's append is fenced, so it never ends an intent twice).
The submitted filter moves only past what it was given: an intent it missed would never be swept.

A restart begins at the service's :class:`Checkpoint` (below it every intent had ended), not at
the stream's first message: reading two events of every intent ever stored at each start grew
with the log. An intent that stays open long (a request waiting days for a person) would hold
that point back to it, and every restart would read everything stored since: so the checkpoint
names the few oldest open intents (their ``submitted`` sequences, at most ``HELD_MAX``) and
begins above them; a restart reads those one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from writ_common import events as ev
from writ_common import subjects
from writ_common.bus import direct_get_batch, pages_after, stored
from writ_common.envelope import StoredEvent, UndecodableEvent

log = logging.getLogger(__name__)

FETCH = 512
# Open intents a checkpoint names below where it begins: about 3 KB of consumer metadata, and one
# read each at a restart. Past as many intents open for long, the point waits for the oldest.
HELD_MAX = 256


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a restarted index begins: every intent with an event below ``start`` had ended, but
    those whose ``submitted`` sequence is in ``held``, still open then."""

    start: int
    held: tuple[int, ...] = ()


Resume = Callable[[], Awaitable[ResumePoint | None]]
SUBMITTED = "intent.submitted"
FOLLOWED_TYPES = (SUBMITTED, *sorted(ev.TERMINAL_TYPES))


async def stream_head(nc: Client) -> int | None:
    """The intents stream's last sequence as its leader has it (None: not known now; the filters
    then keep their positions)."""
    try:
        info = await nc.jetstream().stream_info(subjects.INTENTS_STREAM)
    except nats.errors.Error as exc:
        log.debug("sweeper: the intents stream's head is not known now: %s", exc)
        return None
    return int(info.state.last_seq)


def type_filter(event_type: str) -> str:
    """Every intent's events of one type."""
    return f"{subjects.INTENT_PREFIX}.*.*.{subjects.event_token(event_type)}"


class OpenIntents:
    """intent id -> its ``submitted`` event, for every intent with no terminal event yet.

    :meth:`resume_with` says, once, before the first read, from where (a :class:`ResumePoint`,
    kept by :class:`Checkpoint`); without it, or when it knows none, from the stream's first
    message.
    """

    def __init__(self) -> None:
        self.open: dict[str, StoredEvent] = {}
        # intent id -> sequence of a terminal event read before the intent's ``submitted``
        self.ended: dict[str, int] = {}
        self._next_seq = dict.fromkeys(FOLLOWED_TYPES, 1)
        self._reading = asyncio.Lock()  # the sweep and a start-up reader may both catch up
        self._resume: Resume | None = None

    def resume_with(self, resume: Resume) -> None:
        """Before the first read: begin where ``resume`` says."""
        self._resume = resume

    def oldest_open(self) -> int:
        """A stream sequence no event of an intent still open here lies before: the oldest open
        intent's ``submitted`` (an intent's events follow it), else where the index reads next."""
        return min((e.seq for e in self.open.values()), default=self.position())

    def resume_point(self, hold: int = HELD_MAX) -> ResumePoint:
        """Where a restart may begin: above the ``hold`` oldest open intents, which it names.

        Safe as :meth:`oldest_open` is: a terminal event not read yet was stored after what the
        submitted filter has read, so at or past ``start``, where a restart reads again."""
        held, start = self.oldest(hold)
        return ResumePoint(start, tuple(e.seq for e in held))

    def oldest(self, hold: int = HELD_MAX) -> tuple[list[StoredEvent], int]:
        """The ``submitted`` events of the ``hold`` oldest open intents, oldest first, and a
        sequence no event of any other open intent lies before."""
        oldest = heapq.nsmallest(hold + 1, self.open.values(), key=lambda e: e.seq)  # once a sweep
        if len(oldest) <= hold:
            return oldest, self.position()
        return oldest[:hold], oldest[hold].seq

    def may_be_open(self, event: StoredEvent) -> bool:
        """Whether ``event``'s intent may still be open: it is open here, or newer than what the
        index has read (its ``submitted`` may not be read yet). Below that, an intent not open
        here has ended: its ``submitted`` came before ``event`` and was read."""
        return (event.envelope.intent_id or "") in self.open or event.seq >= self.position()

    def position(self, event_type: str = SUBMITTED) -> int:
        """The next stream sequence the index will read on ``event_type``'s filter."""
        return self._next_seq[event_type]

    async def catch_up(self, nc: Client) -> None:
        """Apply every submitted and terminal event stored since the last call.

        Raises:
            nats.errors.TimeoutError: the stream stopped answering; the next call resumes here.
        """
        async with self._reading:
            if self._resume is not None:
                point = await self._resume()
                if point is not None:
                    await self._take_up(nc, point)
                self._resume = None
            head = await stream_head(nc)  # before the reads: everything up to it was stored
            for event_type in FOLLOWED_TYPES:  # submitted first: fewer terminals meet no open intent
                await self._follow(nc, event_type)
                if event_type != SUBMITTED and head is not None:
                    self._next_seq[event_type] = max(self._next_seq[event_type], head + 1)
            self.forget_ended_before(self._next_seq[SUBMITTED])

    async def _take_up(self, nc: Client, point: ResumePoint) -> None:
        """Begin at ``point``: its held intents opened from their ``submitted`` events (one read
        each; one no longer stored, or not a submission, is left out), every filter at its start
        (every event of an intent open there, but the held ones' submissions, is at or past it)."""
        for seq in point.held:
            found = await direct_get_batch(
                nc, subjects.INTENTS_STREAM, type_filter(SUBMITTED), start_seq=seq, batch=1, limit=1
            )
            with contextlib.suppress(UndecodableEvent):
                if found and (event := stored(found[0])).seq == seq:
                    self.note(event)
        for event_type in FOLLOWED_TYPES:
            self._next_seq[event_type] = max(self._next_seq[event_type], point.start)

    def forget_ended_before(self, submitted_read: int) -> None:
        """A terminal event comes after its submitted one: once the submitted filter is past it,
        that submitted event was read (or was not valid and never will be)."""
        self.ended = {i: seq for i, seq in self.ended.items() if seq >= submitted_read}

    async def _follow(self, nc: Client, event_type: str) -> None:
        after = self._next_seq[event_type] - 1
        async for msgs in pages_after(nc, subjects.INTENTS_STREAM, type_filter(event_type), after, page=FETCH):
            for msg in msgs:
                with contextlib.suppress(UndecodableEvent):  # forged or malformed: opens, closes nothing
                    self.note(stored(msg))
                seq = int((msg.headers or {}).get("Nats-Sequence", "0"))
                self._next_seq[event_type] = max(self._next_seq[event_type], seq + 1)

    def note(self, event: StoredEvent) -> None:
        """One followed event, read in its filter's order (any order across filters)."""
        intent_id = event.envelope.intent_id or ""
        if event.type == SUBMITTED:
            if self.ended.pop(intent_id, None) is None:
                self.open.setdefault(intent_id, event)
        elif self.open.pop(intent_id, None) is None:
            self.ended[intent_id] = event.seq


# In the sweeping service's durable consumer's metadata. ``writ.open_from`` keeps its first meaning
# (below it every intent had ended, none named), so a Writ that knows only it stays right.
CHECKPOINT_KEY = "writ.open_from"  # the oldest open intent's submitted sequence
RESUME_KEY = "writ.resume_at"  # the point's start
HELD_KEY = "writ.open_below"  # the named intents' submitted sequences, comma-separated
CHECKPOINT_EVERY = 60.0  # seconds between two checkpoints at most


class Checkpoint:
    """Where a restarted sweeper may begin: a sequence of the intents stream below which every
    intent had ended when it was written, but the few it names (:meth:`OpenIntents.resume_point`).
    Ended is for good, so any such point stays true (a named intent that ended since is read,
    found ended at its deadline and dropped); a lower one only costs reading more.

    Kept in the metadata of the service's own durable consumer on the intents stream: a service's
    bus user may update its own consumer, and the consumer lives and dies with the stream whose
    sequences it names (a stream deleted and made again takes the checkpoint with it). Without it
    (a first start, a consumer recreated) the index reads from the stream's first message, as it
    always could: this is where to start, never what is true.
    """

    def __init__(self, connection: Callable[[], Client], durable: str) -> None:
        self._connection = connection  # the service's, once it is connected
        self._durable = durable
        self.written = 0  # the start of the last point written (or read at start)
        self._written_at = 0.0

    async def read(self) -> ResumePoint | None:
        try:
            info = await self._connection().jetstream().consumer_info(subjects.INTENTS_STREAM, self._durable)
        except NotFoundError:
            return None
        metadata = info.config.metadata or {}
        # Without RESUME_KEY (written before points named intents), the oldest open intent. A
        # point left there by a later Writ is only lower than that one: still true.
        value = metadata.get(RESUME_KEY) or metadata.get(CHECKPOINT_KEY, "")
        self.written = int(value) if value.isdigit() else 0
        if not self.written:
            return None
        held = tuple(int(seq) for seq in metadata.get(HELD_KEY, "").split(",") if seq.isdigit())
        return ResumePoint(self.written, tuple(seq for seq in held if seq < self.written)[:HELD_MAX])

    def due(self, start: int, now: float) -> bool:
        """Worth writing a point that begins at ``start``: it moved on, and the last one is
        ``CHECKPOINT_EVERY`` old."""
        return start > self.written and now - self._written_at >= CHECKPOINT_EVERY

    async def write(self, point: ResumePoint) -> None:
        """Store ``point`` in the consumer's metadata, the rest of its configuration as the server
        has it (an update, not a new consumer: its deliveries go on)."""
        js = self._connection().jetstream()
        try:
            info = await js.consumer_info(subjects.INTENTS_STREAM, self._durable)
        except NotFoundError:
            return  # not made yet (or deleted, and about to be made again): the next time
        metadata = {k: v for k, v in (info.config.metadata or {}).items() if not k.startswith("_nats.")}
        metadata[CHECKPOINT_KEY] = str(min(point.held, default=point.start))
        metadata[RESUME_KEY] = str(point.start)
        metadata[HELD_KEY] = ",".join(str(seq) for seq in point.held)
        await js.add_consumer(subjects.INTENTS_STREAM, info.config.evolve(metadata=metadata))
        self.written, self._written_at = point.start, time.monotonic()
