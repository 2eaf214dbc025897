"""Is a history new enough to decide on, and is the event stored under our message id ours?
Pure rules over what a read returned; :mod:`writ_common.bus` does the reading.

On a replicated stream any replica may answer a Direct Get, one that is behind included, and a
replica's store is a prefix of the leader's. A stage that decides on a history without its own
trigger would take "not there yet" for "nothing to do": so it decides only on a history that
reaches its trigger (:func:`covers`), and reads again, from the leader if need be, otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import Enum

from writ_common.envelope import StoredEvent


def covers(events: Sequence[StoredEvent], last_seq: int, *, min_seq: int = 0, event_id: str | None = None) -> bool:
    """Whether a history read is at least as new as the event that made us read it.

    Args:
        events: the admitted events read, in stream order.
        last_seq: the last stream sequence read on the intent's subjects (admitted or not).
        min_seq: the trigger's stream sequence (0: unknown, e.g. an event heard on core NATS).
        event_id: the trigger's envelope id (None: do not look for it).
    """
    if last_seq < min_seq:
        return False
    return event_id is None or any(e.envelope.id == event_id for e in events)


class Landed(Enum):
    """Where an append whose answer we did not get (or that came back a duplicate) stands."""

    OURS = "ours"  # our very event (same envelope id) is stored under our message id
    FOREIGN = "foreign"  # another event holds our message id: an earlier run's, not ours
    ABSENT = "absent"  # nothing is stored under our message id


def landed(
    msg_ids: Mapping[str, int], events: Sequence[StoredEvent], *, msg_id: str, envelope_id: str
) -> tuple[Landed, int]:
    """Whether the event we tried to append (``msg_id``, ``envelope_id``) is in a history.

    Args:
        msg_ids: ``Nats-Msg-Id`` -> stream sequence of each message read.
        events: the admitted events read.
        msg_id: our ``Nats-Msg-Id`` (deterministic: ``<intent>:<type>:<attempt>``).
        envelope_id: our envelope's id (a ULID: unique to this very append).

    Returns:
        How it landed, and the sequence it is stored at (0 when absent).
    """
    for event in events:
        if event.envelope.id == envelope_id:
            return Landed.OURS, event.seq
    seq = msg_ids.get(msg_id, 0)
    return (Landed.FOREIGN, seq) if seq else (Landed.ABSENT, 0)
