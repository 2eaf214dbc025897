"""Which intents are still open, and until when: the sweeper's index, followed from the log.

The intents stream is read forward by batched Direct Get from the next sequence, keeping only
``submitted`` and terminal events. No consumer: a service's bus user may administer only its own
durable consumer (an ephemeral one is refused), and a Direct Get needs none. A replica that is
behind answers with a shorter prefix of the same ordered log, never with a gap, and the index
advances only past what it was given, so it misses nothing. The process keeps nothing the log
cannot give back.
"""

from __future__ import annotations

import logging

from nats.aio.client import Client
from nats.aio.msg import Msg

from writ_common import events as ev
from writ_common import subjects, topology
from writ_common.bus import direct_get_batch, stored
from writ_common.envelope import StoredEvent, UndecodableEvent

log = logging.getLogger(__name__)

FETCH = 512
FOLLOWED_TYPES = ("intent.submitted", *sorted(ev.TERMINAL_TYPES))
FOLLOWED_TOKENS = frozenset(token for token, kind in topology.TYPE_OF_TOKEN.items() if kind in FOLLOWED_TYPES)


class OpenIntents:
    """intent id -> its ``submitted`` event, for every intent with no terminal event yet."""

    def __init__(self) -> None:
        self.open: dict[str, StoredEvent] = {}
        self._next_seq = 1

    @property
    def position(self) -> int:
        """The next stream sequence the index will read."""
        return self._next_seq

    async def catch_up(self, nc: Client) -> None:
        """Apply every submitted and terminal event stored since the last call.

        Raises:
            nats.errors.TimeoutError: the stream stopped answering; the next call resumes here.
        """
        while True:
            msgs = await direct_get_batch(
                nc,
                subjects.INTENTS_STREAM,
                f"{subjects.INTENT_PREFIX}.>",
                start_seq=self._next_seq,
                batch=FETCH,
                limit=FETCH,
            )
            for msg in msgs:
                headers = msg.headers or {}
                seq = int(headers.get("Nats-Sequence", "0"))
                if headers.get("Nats-Subject", msg.subject).rpartition(".")[2] in FOLLOWED_TOKENS:
                    self._apply(msg)
                self._next_seq = max(self._next_seq, seq + 1)
            if len(msgs) < FETCH:
                return

    def _apply(self, msg: Msg) -> None:
        try:
            event = stored(msg)
        except UndecodableEvent:
            return  # forged or malformed: it opens and closes nothing
        intent_id = event.envelope.intent_id or ""
        if event.type == "intent.submitted":
            self.open.setdefault(intent_id, event)
        else:
            self.open.pop(intent_id, None)
