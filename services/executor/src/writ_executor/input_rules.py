"""A tool's server asks the calling client for input during a call (``sampling/createMessage``,
``elicitation/create``): whose call asked, what of the request and its answer is recorded, and
what the server is told when no answer comes. Pure: no I/O.

MCP ties such a request to no request of the client's (the SDK's callback gets no id of the tool
call that caused it), so a request is the call's only while that call is the one request in
flight on the server's session; with several in flight Writ cannot tell whose it is, and the
server gets an error rather than another caller's answer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

import msgspec

from writ_common import events as ev
from writ_common.digest import sha256_digest

Kind = Literal["sampling", "elicitation"]
KINDS: tuple[Kind, ...] = ("sampling", "elicitation")
Outcome = Literal["answered", "declined", "cancelled", "failed"]
# JSON-RPC codes the server gets when Writ itself cannot give it an answer.
INVALID_REQUEST = -32600
INTERNAL_ERROR = -32603
ASK_MARGIN = 1.0  # seconds of the call's time left to the server after the client's answer
T = TypeVar("T")


def whose(askers: Sequence[T], in_flight: int) -> T | str:
    """The call a request for input belongs to: the one call in flight on the session, if it is
    one that can ask its client; else why it cannot be told (the server is answered an error)."""
    if in_flight == 1 and len(askers) == 1:
        return askers[0]
    if in_flight <= 1:
        return "writ: no call in flight on this session can ask its client (only a tools/call can)"
    return (
        f"writ: cannot tell which of {in_flight} calls on this session asked; Writ relays sampling and"
        " elicitation only while one call at a time runs on a server's session"
    )


class Answer(msgspec.Struct, kw_only=True, frozen=True):
    """The agent's reply to a request for input (its gateway's), as it travels on the bus:
    the client's ``result``, or its ``error``; ``via`` is what answered (``writ-gateway/...``)."""

    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    via: str = ""


class Failed(msgspec.Struct, kw_only=True, frozen=True):
    """No answer for the server: ``code`` is recorded, ``rpc_code`` and ``message`` go to the server."""

    code: str
    message: str
    rpc_code: int = INVALID_REQUEST


def read_answer(kind: Kind, body: bytes) -> tuple[Answer, dict[str, Any]] | tuple[Answer | None, Failed]:
    """The client's result, or why there is none (its own error, or a reply that is not an answer)."""
    try:
        answer = msgspec.json.decode(body, type=Answer)
    except msgspec.DecodeError as exc:
        return None, Failed(code="bad_answer", message=f"writ: the client's answer could not be read: {exc}")
    if answer.error is not None:
        code, message = answer.error.get("code"), answer.error.get("message")
        rpc = code if isinstance(code, int) and not isinstance(code, bool) else INTERNAL_ERROR
        return answer, Failed(code="client_error", message=str(message or "the client refused"), rpc_code=rpc)
    result = answer.result
    if result is None or not _shaped_as(kind, result):
        return answer, Failed(
            code="bad_answer", message=f"writ: the client's answer is not a {kind} result", rpc_code=INTERNAL_ERROR
        )
    return answer, result


def _shaped_as(kind: Kind, result: dict[str, Any]) -> bool:
    if kind == "sampling":
        return (
            isinstance(result.get("model"), str) and result.get("role") in ("user", "assistant") and "content" in result
        )
    return result.get("action") in ("accept", "decline", "cancel")


def outcome_of(kind: Kind, result: dict[str, Any]) -> Outcome:
    """An elicitation the user declined or dismissed says so; any other result is an answer."""
    if kind == "elicitation" and result.get("action") == "decline":
        return "declined"
    if kind == "elicitation" and result.get("action") == "cancel":
        return "cancelled"
    return "answered"


def no_time(seconds_left: float) -> Failed | None:
    """Too little of the call's time is left to wait for a client."""
    if seconds_left > 0:
        return None
    return Failed(
        code="no_time",
        message="writ: the call's deadline leaves no time to ask the client",
        rpc_code=INTERNAL_ERROR,
    )


def no_client(intent_id: str) -> Failed:
    return Failed(
        code="no_client",
        message=(
            f"writ: no client is listening for intent {intent_id}'s requests for input"
            " (calls made through `writ gateway` relay them to its MCP client)"
        ),
    )


def no_answer(seconds: float) -> Failed:
    return Failed(
        code="no_answer_in_time",
        message=f"writ: the client did not answer within {seconds:.1f}s",
        rpc_code=INTERNAL_ERROR,
    )


def too_large(size: int, limit: int) -> Failed:
    return Failed(
        code="request_too_large",
        message=f"writ: the request is {size} bytes of JSON, over the {limit}-byte limit of what is relayed",
        rpc_code=INTERNAL_ERROR,
    )


def _kept(value: dict[str, Any], max_bytes: int) -> dict[str, Any] | None:
    """What is recorded of a request or an answer: itself, unless it is over the output limit."""
    return value if len(json.dumps(value).encode()) <= max_bytes else None


def input_requested(
    attempt: int, kind: Kind, ask: int, request: dict[str, Any], *, max_bytes: int
) -> ev.ExecutionInputRequested:
    """``request`` already scrubbed of secret values (it is recorded, and shown to the client)."""
    return ev.ExecutionInputRequested(
        attempt=attempt,
        kind=kind,
        ask=ask,
        request_digest=sha256_digest(request),
        request=_kept(request, max_bytes),
    )


def input_answered(
    attempt: int,
    kind: Kind,
    ask: int,
    *,
    by: str,
    answer: Answer | None,
    result: dict[str, Any] | Failed,
    max_bytes: int,
) -> ev.ExecutionInputAnswered:
    """What became of the request: ``result`` the client's (scrubbed), or why there is none."""
    via = answer.via if answer is not None else ""
    if isinstance(result, Failed):
        return ev.ExecutionInputAnswered(
            attempt=attempt,
            kind=kind,
            ask=ask,
            outcome="failed",
            by=by if answer is not None else "",
            via=via,
            code=result.code,
            reason=result.message,
        )
    return ev.ExecutionInputAnswered(
        attempt=attempt,
        kind=kind,
        ask=ask,
        outcome=outcome_of(kind, result),
        by=by,
        via=via,
        answer_digest=sha256_digest(result),
        answer=_kept(result, max_bytes),
    )
