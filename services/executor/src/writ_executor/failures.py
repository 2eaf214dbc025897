"""Which failures of a call are which: the exceptions a session raises, named as the executor's
rules know them (:class:`domain.CallError`). Pure: no call is made here, only exceptions read."""

from __future__ import annotations

from typing import Any

from mcp.shared.exceptions import MCPError

from writ_common.digest import within_canonical_domain
from writ_executor.domain import CallError, returned_error
from writ_executor.redaction import Redactor
from writ_executor.sessions import CallInterrupted, ServerUnavailable

# What a call to a tool server may raise that is the server's doing, not the executor's.
CALL_FAILURES = (ServerUnavailable, CallInterrupted, MCPError)


def classify(
    exc: ServerUnavailable | CallInterrupted | MCPError, server: str, redactor: Redactor, *, max_output_bytes: int
) -> CallError:
    """``not_sent``: the server could not be reached (surely not run; retryable). ``interrupted``:
    sent, no answer (it may have run). ``refused``: the server answered with a protocol error (it
    did not run; retrying will not help), kept with its JSON-RPC error. Every text is scrubbed of
    secret values."""
    if isinstance(exc, ServerUnavailable):
        return CallError("not_sent", "server_unavailable", redactor.text(str(exc)))
    if isinstance(exc, CallInterrupted):
        return CallError("interrupted", "call_interrupted", redactor.text(str(exc)))
    error: dict[str, Any] = within_canonical_domain(
        redactor.value(exc.error.model_dump(mode="json", exclude_none=True))
    )
    return CallError(
        "refused",
        "mcp_error",
        redactor.text(f"{server!r} refused the call: {exc.message}"),
        returned_error(error, max_output_bytes),
    )
