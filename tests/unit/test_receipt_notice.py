"""The receipt a ledger's notice carries (``writ.sdk.receipt_in_notice``): the SDK takes it instead
of reading the stream only on the notice subject the bus lets the ledger alone publish, for the
very intent it waits for; anything else sends it to the stream as before."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg

from writ.sdk import receipt_in_notice
from writ.synthetic import intent_log
from writ_common import events as ev
from writ_common import subjects
from writ_common.envelope import decode, encode

pytestmark = pytest.mark.unit


def stored_receipt() -> tuple[ev.Receipt, bytes]:
    for message in intent_log(1, seed=5):
        if message.stream == subjects.LEDGER_STREAM:
            data = encode(message.envelope)
            receipt = decode(data).payload
            assert isinstance(receipt, ev.Receipt)
            return receipt, data
    raise AssertionError("the synthetic log ends each intent with its receipt")


def heard(subject: str, data: bytes) -> Msg:
    return Msg(_client=None, subject=subject, data=data)  # type: ignore[arg-type]


def test_a_notice_carrying_the_intents_receipt_is_the_receipt() -> None:
    receipt, data = stored_receipt()
    notice = heard(subjects.receipt_notice_subject(receipt.agent_id, receipt.intent_id), data)
    assert receipt_in_notice(notice, receipt.intent_id, receipt.agent_id) == receipt


def test_anything_else_heard_is_read_from_the_stream() -> None:
    receipt, data = stored_receipt()
    agent, intent = receipt.agent_id, receipt.intent_id
    notice = subjects.receipt_notice_subject(agent, intent)
    # An empty notice (a duplicate append, a large receipt), or one the SDK cannot decode.
    assert receipt_in_notice(heard(notice, b""), intent, agent) is None
    assert receipt_in_notice(heard(notice, b"{not json"), intent, agent) is None
    # The receipt subject's own core delivery: a publish the stream may have refused.
    assert receipt_in_notice(heard(subjects.receipt_subject(agent, intent), data), intent, agent) is None
    # Another intent's receipt on this notice, or this notice read without naming the agent.
    assert receipt_in_notice(heard(notice, data), "in-other", agent) is None
    other = subjects.receipt_notice_subject(agent, "in-other")
    assert receipt_in_notice(heard(other, data), "in-other", agent) is None
    assert receipt_in_notice(heard(notice, data), intent, None) is None
