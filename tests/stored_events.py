"""A payload as a stored event of a given time, for unit tests of folds over control streams."""

from __future__ import annotations

from datetime import datetime

import msgspec

from writ_common import events as ev
from writ_common.envelope import Producer, StoredEvent, make_envelope


def stored_at(payload: ev.Payload, seq: int, when: datetime, *, service: str) -> StoredEvent:
    """``payload`` in an envelope from ``service`` that says it occurred ``when``, at ``seq``."""
    envelope = msgspec.structs.replace(
        make_envelope(payload, producer=Producer(service=service, instance="test", version="0")),
        occurred_at=when.isoformat(),
    )
    return StoredEvent(seq=seq, subject=f"writ.{service}.test", envelope=envelope, payload=payload)
