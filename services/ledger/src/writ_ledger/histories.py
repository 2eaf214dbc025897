"""Intent histories the ledger already holds: every intent event its views apply, in stream order.

The ledger's views apply the intents stream gap-free and in order, so the events of an intent
whose ``intent.submitted`` was applied here are all known here, and a receipt can be built
without reading the history back from the bus. The rule that keeps this from ever deciding on
less than the log holds:

- the cache is fed every sequence of the stream, in order (an event, or None for a message that
  is not an admitted Writ event); a sequence that is not the next one (a restart, a rebuild's swap,
  a rolled-back batch) forgets everything, since anything between may be missing;
- an intent is known only from its ``intent.submitted`` on (its first admitted event: agents may
  publish nothing else on their subjects, and the stages act only after it);
- a history is handed out only when it holds the trigger (:func:`consistency.covers`), else the
  caller reads the log as before.

Pure: no I/O.
"""

from __future__ import annotations

from collections import OrderedDict

from writ_common.envelope import StoredEvent

SUBMITTED = "intent.submitted"
MAX_INTENTS = 10_000  # open intents kept; the oldest beyond are forgotten (then read from the log)


class IntentHistories:
    """(agent id, intent id) -> its admitted events, for intents first seen (submitted) since the
    last gap. Keyed as the log is: an intent's subjects name its agent and its id."""

    def __init__(self, max_intents: int = MAX_INTENTS) -> None:
        self.max_intents = max_intents
        self._next_seq: int | None = None  # the sequence the next feed must carry (None: any)
        self._events: OrderedDict[tuple[str, str], list[StoredEvent]] = OrderedDict()

    def feed(self, seq: int, event: StoredEvent | None) -> None:
        """Stream sequence ``seq`` was applied: ``event`` (None: not an admitted event)."""
        if self._next_seq is not None and seq != self._next_seq:
            self._events.clear()  # a gap or a step back: nothing here is known complete any more
        self._next_seq = seq + 1
        if event is None or not event.envelope.intent_id:
            return
        key = _key(event)
        if event.type == SUBMITTED:
            if key in self._events:
                self._events.pop(key)  # a second submitted: not a history we vouch for
                return
            self._events[key] = [event]
            while len(self._events) > self.max_intents:
                self._events.popitem(last=False)
            return
        known = self._events.get(key)
        if known is not None:
            known.append(event)

    def history(self, trigger: StoredEvent) -> list[StoredEvent] | None:
        """The intent's events up to at least ``trigger``, or None when they are not all known here."""
        known = self._events.get(_key(trigger))
        if known is None or not any(e.envelope.id == trigger.envelope.id and e.seq == trigger.seq for e in known):
            return None
        return list(known)

    def forget(self, trigger: StoredEvent) -> None:
        """``trigger``'s intent is receipted: its history is not needed again."""
        self._events.pop(_key(trigger), None)

    def __len__(self) -> int:
        return len(self._events)


def _key(event: StoredEvent) -> tuple[str, str]:
    return event.envelope.agent_id or "", event.envelope.intent_id or ""
