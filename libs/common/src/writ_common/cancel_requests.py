"""A cancel request heard on core NATS, believed only once the intent's history holds it.

Policy (a request waiting for people) and every executor replica (a call running there) hear
``writ.intent.<agent>.<intent>.cancel_requested`` on core NATS. A core message may be one the
stream refused, or a forgery; so what they act on is the intent's history, read at least as new
as the request.
"""

from __future__ import annotations

import logging

from nats.aio.client import Client
from nats.aio.msg import Msg

from writ_common import subjects
from writ_common.bus import HistoryBehind, read_history
from writ_common.envelope import UndecodableEvent, decode
from writ_common.fold import IntentView, fold_intent

log = logging.getLogger(__name__)

SUBJECT = subjects.intents_of_type("intent.cancel_requested")


def named(subject: str) -> tuple[str, str] | None:
    """(agent id, intent id) of a cancel request's subject (the bus lets only that agent publish it)."""
    parts = subject.split(".")
    return (parts[2], parts[3]) if len(parts) == 5 else None


async def confirmed(nc: Client, msg: Msg) -> IntentView | None:
    """The intent ``msg`` asks to cancel, folded from a history that holds this very request; None
    when the history does not hold it (refused by the stream, forged, or not yet readable)."""
    names = named(msg.subject)
    if names is None:
        return None
    try:
        heard = decode(msg.data, subject=msg.subject)
        history = await read_history(nc, *names, event_id=heard.envelope.id)
    except (UndecodableEvent, HistoryBehind) as exc:
        log.warning("%s: a cancel request not found in its intent's history is ignored: %s", msg.subject, exc)
        return None
    view = fold_intent(history.events)
    return view if view.cancel_requested is not None else None
