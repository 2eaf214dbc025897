"""The ledger's receipt rules without a broker: which events earn a receipt, how an intent ended,
which stored message is one of ours, where the chain goes next, and the views' query rules."""

from __future__ import annotations

import msgspec
import pytest
from test_rules import PRODUCER, signed, stored, view_of

from writ_common import events as ev
from writ_common.envelope import encode, make_envelope
from writ_common.errors import Refusal
from writ_common.fold import IntentView, fold_intent
from writ_common.receipts import GENESIS, verify_chain
from writ_common.signing import generate_key, key_id, public_key_b64
from writ_ledger import domain
from writ_ledger.domain import ChainHead

pytestmark = pytest.mark.unit

LEDGER_KEY = generate_key()
PUBLIC = public_key_b64(LEDGER_KEY)
KEY_ID = key_id(PUBLIC)
PLANNED = ev.IntentPlanned(
    server="s", tool="t", tool_digest="d", args_digest="a", annotations=ev.ToolAnnotations(idempotent=True)
)
AUTHORIZED = ev.IntentAuthorized(policy_digest="p", policy_ids=["allow-all"])
SUCCEEDED = ev.ExecutionSucceeded(attempt=1, result={"ok": True}, result_digest="sha256:r", duration_ms=1.0)


def succeeded_view() -> IntentView:
    return view_of(signed(), PLANNED, AUTHORIZED, SUCCEEDED)


def receipt_after(head: ChainHead, view: IntentView | None = None) -> ev.Receipt:
    return domain.next_receipt(
        view or succeeded_view(), head, recorded_at="2026-11-29T00:00:00Z", key=LEDGER_KEY, key_id=KEY_ID
    )


def as_stored(payload: ev.Payload) -> bytes:
    return encode(make_envelope(payload, producer=PRODUCER, intent_id="in-1", agent_id="bot"))


class TestWhichEventsEarnAReceipt:
    @pytest.mark.parametrize("event_type", sorted(ev.TERMINAL_TYPES))
    def test_every_terminal_event_does(self, event_type: str) -> None:
        assert domain.earns_receipt(event_type)

    @pytest.mark.parametrize(
        "event_type", ["intent.submitted", "intent.planned", "execution.started", "receipt.recorded"]
    )
    def test_no_other_event_does(self, event_type: str) -> None:
        assert not domain.earns_receipt(event_type)


class TestHowAnIntentEnded:
    def test_a_succeeded_call_ended_ok_in_execute(self) -> None:
        assert domain.ended(succeeded_view()) == domain.Ending(
            status="succeeded", stage="execute", code="ok", reason="the tool ran and returned its result"
        )

    def test_a_denial_ends_in_authorize_with_the_policys_code(self) -> None:
        denied = ev.IntentDenied(policy_digest="p", policy_ids=["no"], code="forbidden", reason="policy says no")
        how = domain.ended(view_of(signed(), PLANNED, denied))
        assert how == domain.Ending(status="denied", stage="authorize", code="forbidden", reason="policy says no")

    def test_an_expiry_is_deadline_exceeded_in_its_stage(self) -> None:
        how = domain.ended(view_of(signed(), PLANNED, ev.IntentExpired(stage="authorize", reason="past it")))
        assert isinstance(how, domain.Ending)
        assert (how.status, how.stage, how.code) == ("expired", "authorize", "deadline_exceeded")

    def test_an_unknown_outcome_is_named_so(self) -> None:
        unknown = ev.ExecutionOutcomeUnknown(attempt=1, reason="the server went away mid-call")
        how = domain.ended(view_of(signed(), PLANNED, AUTHORIZED, unknown))
        assert isinstance(how, domain.Ending)
        assert (how.status, how.code) == ("outcome_unknown", "outcome_unknown")

    def test_an_open_intent_has_not_ended(self) -> None:
        how = domain.ended(view_of(signed(), PLANNED, AUTHORIZED))
        assert isinstance(how, Refusal) and how.code == "not_ended"

    def test_a_terminal_event_without_its_submitted_intent_is_nothing_to_vouch_for(self) -> None:
        intent = signed()
        how = domain.ended(fold_intent([stored(PLANNED, intent, 2), stored(SUCCEEDED, intent, 3)]))
        assert isinstance(how, Refusal) and how.code == "no_intent"


class TestWhichStoredMessageIsOurs:
    def test_our_receipt_is_ours(self) -> None:
        receipt = receipt_after(domain.head_of(None, 0))
        assert domain.own_receipt(as_stored(receipt), PUBLIC) == receipt

    def test_bytes_that_are_no_event_are_not(self) -> None:
        found = domain.own_receipt(b"{not json", PUBLIC)
        assert isinstance(found, Refusal) and found.code == "undecodable"

    def test_another_event_on_the_stream_is_not_a_receipt(self) -> None:
        found = domain.own_receipt(as_stored(AUTHORIZED), PUBLIC)
        assert isinstance(found, Refusal) and found.code == "not_a_receipt"

    def test_a_receipt_signed_by_another_key_is_not_ours(self) -> None:
        other = generate_key()
        foreign = domain.next_receipt(
            succeeded_view(), domain.head_of(None, 0), recorded_at="2026-11-29T00:00:00Z", key=other, key_id="x"
        )
        found = domain.own_receipt(as_stored(foreign), PUBLIC)
        assert isinstance(found, Refusal) and found.code == "not_ours"

    def test_an_altered_receipt_is_not_ours(self) -> None:
        altered = msgspec.structs.replace(receipt_after(domain.head_of(None, 0)), status="failed")
        found = domain.own_receipt(as_stored(altered), PUBLIC)
        assert isinstance(found, Refusal) and found.code == "not_ours"


class TestIsTheReceiptAlreadyWritten:
    def test_nothing_on_the_subject_is_not_written(self) -> None:
        assert not domain.already_recorded(None, PUBLIC)

    def test_our_receipt_on_the_subject_is_written(self) -> None:
        assert domain.already_recorded(as_stored(receipt_after(domain.head_of(None, 0))), PUBLIC)

    def test_a_forgery_on_the_subject_does_not_stand_in_for_the_receipt(self) -> None:
        forged = msgspec.structs.replace(receipt_after(domain.head_of(None, 0)), signature="AAAA")
        assert not domain.already_recorded(as_stored(forged), PUBLIC)
        assert not domain.already_recorded(as_stored(AUTHORIZED), PUBLIC)


class TestTheChain:
    def test_an_empty_stream_starts_the_chain_at_genesis(self) -> None:
        assert domain.head_of(None, 3) == ChainHead(0, GENESIS, 3)

    def test_each_receipt_links_after_the_head_and_the_chain_verifies(self) -> None:
        first = receipt_after(domain.head_of(None, 0))
        head = domain.head_after(first, 1, duplicate=False)
        assert head == ChainHead(1, first.receipt_hash, 1)
        second = receipt_after(head)
        assert (second.position, second.prev_hash) == (2, first.receipt_hash)
        assert verify_chain([first, second], PUBLIC, first_prev_hash=GENESIS) == []

    def test_the_head_read_back_is_the_newest_receipt_at_the_streams_last_sequence(self) -> None:
        receipt = receipt_after(domain.head_of(None, 0))
        assert domain.head_of(receipt, 9) == ChainHead(1, receipt.receipt_hash, 9)

    def test_a_duplicate_ack_leaves_the_head_to_be_read_again(self) -> None:
        assert domain.head_after(receipt_after(domain.head_of(None, 0)), 1, duplicate=True) is None

    def test_the_append_is_fenced_on_the_head_and_deduplicated_per_intent(self) -> None:
        headers = domain.receipt_headers("in-1", ChainHead(4, "sha256:h", 17))
        assert headers == {"Nats-Msg-Id": "receipt:in-1", "Nats-Expected-Last-Sequence": "17"}
        # A retry after a moved head builds a new receipt, but names the same message: stored once.
        assert domain.receipt_headers("in-1", ChainHead(5, "sha256:i", 18))["Nats-Msg-Id"] == headers["Nats-Msg-Id"]


class TestViewsQueries:
    @pytest.mark.parametrize("by", domain.STATS_BY)
    def test_stats_group_by_agent_tool_or_hour(self, by: str) -> None:
        assert domain.stats_by(by) is None

    def test_stats_by_anything_else_is_refused(self) -> None:
        assert domain.stats_by("server") == Refusal(code="invalid_by", reason="by must be one of agent, tool, hour")

    @pytest.mark.parametrize(("asked", "rows"), [(0, 1), (-5, 1), (10, 10), (10_000, 500)])
    def test_sql_returns_at_least_one_row_and_at_most_the_cap(self, asked: int, rows: int) -> None:
        assert domain.sql_rows(asked, 500) == rows

    def test_an_unknown_intent_is_not_found_where_it_was_looked_for(self) -> None:
        assert domain.not_found("in-9", "the views") == Refusal(
            code="not_found", reason="no intent 'in-9' in the views"
        )
