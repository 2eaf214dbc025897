"""Control commands over NATS request/reply: operator -> owning service -> control event.

Replies are JSON ``{"ok": true, "data": ...}`` or ``{"ok": false, "code": ..., "message": ...}``
so every failure reaches the operator as one sentence with a stable code.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from writ_common.errors import CodedError, Refusal
from writ_common.ids import check_token
from writ_common.subjects import approver_command_subject, command_subject


class CommandError(CodedError):
    """A command was refused or could not be delivered; ``code`` is stable, ``message`` is for people."""


def require_token(value: str, *, code: str, what: str) -> None:
    """Ids that become subject tokens must be one; else refuse with ``code`` (e.g. invalid_agent_id).

    Raises:
        CommandError: ``code``, saying what the id must look like.
    """
    try:
        check_token(value, what)
    except ValueError as exc:
        raise CommandError(code, str(exc)) from exc


T = TypeVar("T")


def refuse_if(refusal: Refusal | None) -> None:
    """A rule's "no" becomes the command's error; None (no objection) goes on.

    Raises:
        CommandError: the refusal's code and reason.
    """
    if refusal is not None:
        raise CommandError.of(refusal)


def granted(value: T | Refusal) -> T:
    """What a rule found, or its refusal raised as the command's error.

    Raises:
        CommandError: the refusal's code and reason.
    """
    if isinstance(value, Refusal):
        raise CommandError.of(value)
    return value


def ok(data: Any = None) -> bytes:
    return json.dumps({"ok": True, "data": data}).encode()


def refuse(code: str, message: str) -> bytes:
    return json.dumps({"ok": False, "code": code, "message": message}).encode()


async def call(nc: Client, service: str, command: str, body: dict[str, Any], timeout: float = 30.0) -> Any:
    """Send a command to ``service`` and return its ``data``.

    Raises:
        CommandError: the service refused it, or is not running, or did not answer in time.
    """
    return await call_on(nc, command_subject(service, command), body, timeout, service=service, command=command)


async def call_as_approver(
    nc: Client, approver_id: str, command: str, body: dict[str, Any], timeout: float = 30.0
) -> Any:
    """Send an approver's command to policy on that approver's own subject (policy takes the
    approver's id from the subject, and the bus lets only that approver's user publish there).

    Raises:
        CommandError: as :func:`call`.
    """
    subject = approver_command_subject(approver_id, command)
    return await call_on(nc, subject, body, timeout, service="policy", command=command)


async def call_on(nc: Client, subject: str, body: dict[str, Any], timeout: float, *, service: str, command: str) -> Any:
    """Request/reply on ``subject``; ``service`` and ``command`` name it in errors."""
    try:
        reply = await nc.request(subject, json.dumps(body).encode(), timeout=timeout)
    except NoRespondersError as exc:
        raise CommandError("service_down", f"the {service} service is not running (no responder on {subject})") from exc
    except NatsTimeout as exc:
        raise CommandError("timeout", f"the {service} service did not answer {command} within {timeout:g}s") from exc
    data = json.loads(reply.data)
    if not data.get("ok"):
        raise CommandError(data.get("code", "error"), data.get("message", "refused"))
    return data.get("data")
