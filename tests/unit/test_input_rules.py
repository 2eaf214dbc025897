"""Whose call a server's request for input is, and what is recorded of it and its answer: pure rules."""

from __future__ import annotations

import msgspec
import pytest

from writ_executor.input_rules import (
    INTERNAL_ERROR,
    Answer,
    Failed,
    input_answered,
    input_requested,
    no_time,
    outcome_of,
    read_answer,
    whose,
)

pytestmark = pytest.mark.unit

SAMPLED = {"role": "assistant", "content": {"type": "text", "text": "hi"}, "model": "m"}


def test_a_request_is_the_one_call_in_flights_and_otherwise_nobodys() -> None:
    assert whose(["call-a"], 1) == "call-a"
    several = whose(["call-a", "call-b"], 2)
    assert isinstance(several, str) and "cannot tell which of 2 calls" in several
    # a resources/read in flight beside the call: still two requests, so not attributed
    assert isinstance(whose(["call-a"], 2), str)
    assert isinstance(whose([], 1), str) and isinstance(whose([], 0), str)


def test_the_clients_answer_is_read_as_a_result_or_as_why_there_is_none() -> None:
    answer, result = read_answer("sampling", msgspec.json.encode({"result": SAMPLED, "via": "writ-gateway/stdio"}))
    assert result == SAMPLED and answer is not None and answer.via == "writ-gateway/stdio"
    _, refused = read_answer("sampling", b'{"error": {"code": -32600, "message": "no sampling here"}}')
    assert refused == Failed(code="client_error", message="no sampling here", rpc_code=-32600)
    _, odd = read_answer("elicitation", b'{"result": {"action": "maybe"}}')
    assert isinstance(odd, Failed) and odd.code == "bad_answer" and odd.rpc_code == INTERNAL_ERROR
    none, garbled = read_answer("sampling", b"not json")
    assert none is None and isinstance(garbled, Failed) and garbled.code == "bad_answer"
    _, bool_code = read_answer("sampling", b'{"error": {"code": true, "message": "x"}}')
    assert isinstance(bool_code, Failed) and bool_code.rpc_code == INTERNAL_ERROR


def test_an_elicitation_says_whether_the_user_answered_declined_or_dismissed_it() -> None:
    assert outcome_of("elicitation", {"action": "accept", "content": {"a": 1}}) == "answered"
    assert outcome_of("elicitation", {"action": "decline"}) == "declined"
    assert outcome_of("elicitation", {"action": "cancel"}) == "cancelled"
    assert outcome_of("sampling", SAMPLED) == "answered"


def test_what_is_recorded_keeps_small_values_and_only_the_digest_of_large_ones() -> None:
    small = input_requested(2, "sampling", 1, {"messages": []}, max_bytes=100)
    assert small.request == {"messages": []} and small.request_digest.startswith("sha256:")
    large = input_requested(2, "sampling", 1, {"messages": ["x" * 200]}, max_bytes=100)
    assert large.request is None and large.request_digest != small.request_digest
    answered = input_answered(
        2, "sampling", 1, by="bot", answer=Answer(result=SAMPLED, via="gw"), result=SAMPLED, max_bytes=1000
    )
    assert (answered.outcome, answered.by, answered.via, answered.answer) == ("answered", "bot", "gw", SAMPLED)
    failed = input_answered(
        2, "elicitation", 1, by="bot", answer=None, result=Failed(code="no_client", message="nobody"), max_bytes=1000
    )
    assert (failed.outcome, failed.code, failed.by, failed.answer_digest) == ("failed", "no_client", "", None)


def test_no_time_left_means_the_client_is_not_asked() -> None:
    assert no_time(0.5) is None
    late = no_time(-0.1)
    assert late is not None and late.code == "no_time"
