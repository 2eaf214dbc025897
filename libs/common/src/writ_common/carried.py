"""A stage's trigger carries the intent's history before it, so the next stage need not read it.

Each stage used to fold the intent from a Direct Get of its whole history: four reads per call,
about a third of the messages a governed call costs. But the stage that appended the trigger had
just read (or been handed) that very history, and appended fenced on it: the nats-server stored
the trigger only because nothing else was on the intent's subjects after the history's last
sequence (``Nats-Expected-Last-Subject-Sequence``, kept with the message). So the records it read,
sent along in the ``Writ-History`` header, plus the trigger itself are the intent's whole history
as of the trigger, and the next stage's own append, fenced on the trigger's sequence, proves it
still is (a stale one is refused, and the stage then reads, as before).

Believed only where nobody but the plane could have written it: on an event type only services
publish (the bus refuses anyone else that subject), whose fence is on this intent's subjects and
ends exactly where the records end. An event an agent may publish (``submitted``) carries nothing
believed; but when its own fence says it was the intent's first message (the SDK's submission),
it is the whole history by itself. Anything else, or anything that does not decode, is ignored and
the history is read. The records decode and are admitted exactly as read ones are.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import logging

import msgspec
from nats.aio.msg import Msg

from writ_common import subjects, topology
from writ_common.bus import FENCE_HEADER as FENCE
from writ_common.bus import FENCE_SUBJECT_HEADER as FENCE_SUBJECT
from writ_common.bus import History, Record, history_of
from writ_common.envelope import StoredEvent

log = logging.getLogger(__name__)

HEADER = "Writ-History"
# Above this the next stage reads instead (large arguments would otherwise be stored once more per
# stage); most histories are a few kilobytes.
MAX_HEADER_BYTES = 64 * 1024
# The events some stage is triggered by, past the first (identity's ``submitted``): registry on
# ``authenticated``, policy on ``planned``, the executor on ``authorized``. Other events carry nothing.
CARRIED_ON = frozenset({"intent.authenticated", "intent.planned", "intent.authorized"})


class _Wire(msgspec.Struct, array_like=True, frozen=True):
    seq: int
    subject: str
    msg_id: str
    data: bytes


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(list[_Wire])


def header_for(event_type: str, records: tuple[Record, ...]) -> dict[str, str]:
    """The header an appended ``event_type`` carries for ``records`` (the history it was appended
    after), or none: not a trigger of a later stage, or too large to be worth it."""
    if event_type not in CARRIED_ON or not records:
        return {}
    wire = [_Wire(r.seq, r.subject, r.msg_id, r.data) for r in records]
    value = base64.b64encode(_encoder.encode(wire)).decode("ascii")
    return {HEADER: value} if len(value) <= MAX_HEADER_BYTES else {}


def carried_history(msg: Msg, trigger: StoredEvent) -> History | None:
    """The intent's history as of ``trigger`` from what its message carries, or None when it
    carries nothing that can be believed (then the history is read)."""
    headers = msg.headers or {}
    agent_id, intent_id = trigger.envelope.agent_id or "", trigger.envelope.intent_id or ""
    fence_subject = subjects.intent_filter(agent_id, intent_id)
    if headers.get(FENCE_SUBJECT) != fence_subject:
        return None
    try:
        fence = int(headers.get(FENCE, ""))
    except ValueError:
        return None
    own = Record(trigger.seq, trigger.subject, headers.get("Nats-Msg-Id", ""), msg.data)
    if fence == 0:
        return history_of([own])  # stored only because nothing came before it
    if topology.AGENT in topology.ROUTE[trigger.type].publishers or HEADER not in headers:
        return None
    try:
        wire = _decoder.decode(base64.b64decode(headers[HEADER], validate=True))
    except (binascii.Error, ValueError, msgspec.DecodeError):
        log.warning("%s: %s carries a history that does not decode; reading it", intent_id, trigger.subject)
        return None
    prefix = fence_subject[:-1]  # "writ.intent.<agent>.<intent>."
    seqs = [w.seq for w in wire]
    if (
        not wire
        or seqs[-1] != fence
        or any(b <= a for a, b in itertools.pairwise(seqs))
        or any(not w.subject.startswith(prefix) for w in wire)
    ):
        log.warning(
            "%s: %s carries a history that is not the one it was fenced on; reading it", intent_id, trigger.subject
        )
        return None
    return history_of([*(Record(w.seq, w.subject, w.msg_id, w.data) for w in wire), own])
