"""The approvals HTTP API, for approver services and UIs: list, read and decide approval requests.

Every request is signed by an approver's own Ed25519 key (the key never leaves the client)::

    Authorization: Writ-Ed25519 <approver_id>:<unix_ts>:<base64 signature over "<METHOD>\\n<path>\\n<unix_ts>">

The API checks the signature against the approver's registered public key (followed from the
identity stream) within a ±300 s clock window. A decision's body is itself signed (see
:func:`writ.approver.signed_decision`), so the API only forwards it: the policy service judges it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Literal

import nats
import nats.errors
from nacl.signing import SigningKey
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from writ_common import commands, sse, subjects
from writ_common.approvals import Approver, apply_approver_event
from writ_common.bus import split_servers
from writ_common.commands import CommandError
from writ_common.control import ControlFollower
from writ_common.envelope import UndecodableEvent, check_bounds
from writ_common.httpapi import (
    INTENT_ID_PARAMETER,
    ApiError,
    ErrorBody,
    component_schemas,
    error_doc,
    error_response,
    intent_id_param,
    invalid_request,
    json_content,
)
from writ_common.signing import SignatureInvalid, sign, verify
from writ_common.subjects import intent_subject
from writ_common.topology import INTENT_ROUTES

AUTH_SCHEME = "Writ-Ed25519"
CLOCK_WINDOW_SECONDS = 300
REFRESH_INTERVAL_SECONDS = 1.0  # an unknown approver re-reads the identity stream at most this often
COMMAND_TIMEOUT_SECONDS = 30.0
# The intent events that change an inbox (a request, a decision, an end); a stream also reads
# again every INBOX_REFRESH_SECONDS whatever it heard.
INBOX_TOKENS = tuple(r.token for r in INTENT_ROUTES if r.type.startswith("approval.") or r.type == "intent.expired")
INBOX_REFRESH_SECONDS = 5.0
MAX_BODY_BYTES = 64 * 1024  # a decision: a digest, a signature, a comment

# What a refused decision (policy's code) means in HTTP.
REFUSAL_STATUS = {
    "not_in_group": 403,
    "owner_not_allowed": 403,
    "unknown_approver": 403,
    "approver_inactive": 403,
    "bad_signature": 400,
    "digest_mismatch": 409,
    "duplicate_approver": 409,
    "approval_expired": 409,
}
COMMAND_STATUS = {"not_found": 404, "forbidden": 403, "not_pending": 409, "busy": 409, "invalid_request": 400}


# -- models -----------------------------------------------------------------------------------------


class DecisionBody(BaseModel):
    """``POST /approvals/{intent_id}/decision``: a decision signed by the approver's key.

    The signature covers :func:`writ_common.approvals.decision_statement` of these fields plus the
    intent id and the approver id; ``signed_decision`` in ``writ.approver`` builds it.
    """

    model_config = ConfigDict(extra="forbid")

    decision: Literal["grant", "deny"]
    approval_digest: str
    signed_at: str
    signature: str
    comment: str = ""


class ApprovalRequest(BaseModel):
    """An open request: the call to judge, the policy that asked, the quorum, and the digest to sign."""

    intent_id: str
    agent_id: str
    on_behalf_of: str | None = None
    owner: str | None = None
    tool: str
    tool_digest: str
    annotations: dict[str, Any] = {}
    arguments: dict[str, Any] = {}
    args_digest: str
    policy_digest: str
    policy_ids: list[str] = []
    approvers: str
    quorum: int
    granted_by: list[str] = []
    deadline: str | None = None
    expires_at: str
    approval_digest: str
    status: str


class ApprovalList(BaseModel):
    approvals: list[ApprovalRequest]


class DecisionOutcome(BaseModel):
    """What the decision did: ``granted`` (toward the quorum), ``authorized`` (quorum reached) or ``denied``."""

    outcome: str
    code: str
    reason: str
    granted_by: list[str]
    quorum: int


# -- authentication ---------------------------------------------------------------------------------


def auth_statement(method: str, path: str, timestamp: int) -> bytes:
    """The bytes an approver signs to authenticate one HTTP request."""
    return f"{method.upper()}\n{path}\n{timestamp}".encode()


def auth_header(key: SigningKey, approver_id: str, method: str, path: str, *, now: float | None = None) -> str:
    """The ``Authorization`` value for one request (a client-side helper)."""
    timestamp = int(time.time() if now is None else now)
    return f"{AUTH_SCHEME} {approver_id}:{timestamp}:{sign(key, auth_statement(method, path, timestamp))}"


class ApproverDirectory:
    """Approvers' public keys and groups, followed from the identity stream (the registered truth)."""

    def __init__(self, nc: Client) -> None:
        self._approvers: dict[str, Approver] = {}
        self._nc = nc
        self._follower = ControlFollower(
            subjects.IDENTITY_STREAM, lambda event: apply_approver_event(self._approvers, event)
        )
        self._refreshed = 0.0

    async def start(self) -> None:
        await self._follower.start(self._nc)
        self._refreshed = time.monotonic()

    async def stop(self) -> None:
        await self._follower.stop()

    async def get(self, approver_id: str) -> Approver | None:
        if approver_id not in self._approvers and time.monotonic() - self._refreshed > REFRESH_INTERVAL_SECONDS:
            # Registered a moment ago? Read on; rate-limited so unknown ids cannot make us re-read constantly.
            self._refreshed = time.monotonic()
            await self._follower.ensure_fresh()
        return self._approvers.get(approver_id)


async def authenticate(request: Request, directory: ApproverDirectory) -> Approver:
    """The approver who signed this request.

    Raises:
        ApiError: 401 ``unauthenticated``, ``bad_authorization``, ``clock_skew``, ``unknown_approver``,
            ``approver_inactive`` or ``bad_signature``.
    """
    header = request.headers.get("authorization")
    if not header:
        raise ApiError(401, "unauthenticated", f"send Authorization: {AUTH_SCHEME} <approver_id>:<unix_ts>:<signature>")
    scheme, _, credentials = header.partition(" ")
    approver_id, _, rest = credentials.strip().partition(":")
    stamp, _, signature = rest.partition(":")
    if scheme != AUTH_SCHEME or not approver_id or not signature or not stamp.isdigit():
        raise ApiError(
            401,
            "bad_authorization",
            f"the Authorization header must read {AUTH_SCHEME} <approver_id>:<unix_ts>:<signature>",
        )
    timestamp = int(stamp)
    skew = int(time.time()) - timestamp
    if abs(skew) > CLOCK_WINDOW_SECONDS:
        raise ApiError(
            401,
            "clock_skew",
            f"the request's timestamp is {abs(skew)}s {'old' if skew > 0 else 'in the future'};"
            f" it must be within ±{CLOCK_WINDOW_SECONDS}s of the server's clock",
        )
    approver = await directory.get(approver_id)
    if approver is None:
        raise ApiError(401, "unknown_approver", f"no approver {approver_id!r} is registered")
    if not approver.active:
        raise ApiError(401, "approver_inactive", f"approver {approver_id!r} is not active")
    try:
        verify(approver.public_key, auth_statement(request.method, request.url.path, timestamp), signature)
    except SignatureInvalid as exc:
        raise ApiError(
            401, "bad_signature", f"the request is not signed by the registered key of approver {approver_id!r}"
        ) from exc
    return approver


# -- the app ----------------------------------------------------------------------------------------


async def bounded_body(request: Request, max_bytes: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused before parsing when it is too large or nested too deep.

    Raises:
        ApiError: 413 ``too_large`` or 400 ``invalid_request``.
    """
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:
            raise ApiError(413, "too_large", f"the body is over {max_bytes} bytes")
    try:
        check_bounds(raw, max_bytes=max_bytes)
    except UndecodableEvent as exc:
        raise ApiError(400, "invalid_request", f"the body is not usable: {exc}") from exc
    return raw


class ApprovalsPlane:
    """What the API needs of the plane: a bus connection allowed to speak on approvers' command
    subjects (an operator's, or the ledger's) and the approver directory followed over it."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.directory = ApproverDirectory(nc)
        # Beats when an approval event is appended: the inbox streams (``/approvals/stream``) read again.
        self.pulse = sse.Pulse()
        self._nudges: list[Subscription] = []

    async def start(self) -> None:
        await self.directory.start()
        for token in INBOX_TOKENS:
            self._nudges.append(await self.nc.subscribe(intent_subject("*", "*", token), cb=self._nudged))

    async def stop(self) -> None:
        for sub in self._nudges:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        await self.directory.stop()

    async def _nudged(self, _msg: Msg) -> None:
        self.pulse.beat()


def approval_routes(
    plane: Callable[[], ApprovalsPlane], prefix: str = "", *, closing: asyncio.Event | None = None
) -> list[Route]:
    """The API's routes (``/approvals...`` under ``prefix``) over the plane ``plane()`` returns;
    ``closing`` ends the inbox streams when the server stops."""

    async def command(approver: Approver, name: str, body: dict[str, Any]) -> Any:
        """``name`` for the approver the request's signature proved, on that approver's own subject
        (this API's connection may speak for any approver: it checked who is asking)."""
        try:
            return await commands.call_as_approver(
                plane().nc, approver.approver_id, name, body, timeout=COMMAND_TIMEOUT_SECONDS
            )
        except CommandError as exc:
            if exc.code in ("service_down", "timeout"):
                raise ApiError(503, exc.code, exc.message) from exc
            if exc.code == "forbidden":
                raise ApiError(403, "not_in_group", exc.message) from exc
            raise ApiError(COMMAND_STATUS.get(exc.code, 400), exc.code, exc.message) from exc
        except nats.errors.Error as exc:
            raise ApiError(503, "plane_unreachable", f"the plane's NATS server did not answer: {exc}") from exc

    def endpoint(
        handler: Callable[[Request, Approver], Awaitable[Any]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                approver = await authenticate(request, plane().directory)
                return JSONResponse(await handler(request, approver), headers={"Cache-Control": "no-store"})
            except ApiError as exc:
                return error_response(exc, challenge=AUTH_SCHEME)

        return run

    async def show(intent_id: str, approver: Approver) -> dict[str, Any]:
        return dict(await command(approver, "show_approval", {"intent_id": intent_id}))

    async def list_approvals(_request: Request, approver: Approver) -> Any:
        rows = await command(approver, "list_approvals", {})
        return ApprovalList(approvals=[ApprovalRequest.model_validate(r) for r in rows]).model_dump(mode="json")

    async def stream(request: Request) -> Response:
        """The inbox as Server-Sent Events: ``approvals`` (the body of ``GET /approvals``) at once
        and at every change; authenticated once, like any request, and ended after a while."""
        try:
            approver = await authenticate(request, plane().directory)
        except ApiError as exc:
            return error_response(exc, challenge=AUTH_SCHEME)
        frames = sse.snapshots(
            lambda: list_approvals(request, approver),
            event="approvals",
            pulse=plane().pulse,
            every=INBOX_REFRESH_SECONDS,
            closing=closing,
            request=request,
        )
        return sse.response(frames)

    async def get_approval(request: Request, approver: Approver) -> Any:
        return ApprovalRequest.model_validate(await show(intent_id_param(request), approver)).model_dump(mode="json")

    async def post_decision(request: Request, approver: Approver) -> Any:
        intent_id = intent_id_param(request)
        raw = await bounded_body(request)
        try:
            body = DecisionBody.model_validate_json(raw)
        except ValidationError as exc:
            raise invalid_request(exc, "body") from exc
        pending = await show(intent_id, approver)  # 403 before anything is recorded, 404 if gone
        signed = {
            **body.model_dump(),
            "intent_id": intent_id,
            "agent_id": pending["agent_id"],
            "approver_id": approver.approver_id,
        }
        outcome = DecisionOutcome.model_validate(await command(approver, "decide_approval", signed))
        if outcome.outcome == "refused":
            raise ApiError(REFUSAL_STATUS.get(outcome.code, 409), outcome.code, outcome.reason)
        return outcome.model_dump(mode="json")

    return [
        Route(f"{prefix}/approvals", endpoint(list_approvals), methods=["GET"]),
        Route(f"{prefix}/approvals/stream", stream, methods=["GET"]),  # before {intent_id}: not an id
        Route(f"{prefix}/approvals/{{intent_id}}", endpoint(get_approval), methods=["GET"]),
        Route(f"{prefix}/approvals/{{intent_id}}/decision", endpoint(post_decision), methods=["POST"]),
    ]


def build_app(nats_url: str, bus_options: Mapping[str, Any] | None = None) -> Starlette:
    """The API over the plane at ``nats_url``; connects on start-up, closes on shutdown.
    ``bus_options``: NATS connect options (the bus credential), see ``WritSettings.bus_options``."""
    bus_options = dict(bus_options or {})
    state: dict[str, ApprovalsPlane] = {}

    async def openapi(_request: Request) -> Response:
        return JSONResponse(OPENAPI)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        nc = await nats.connect(
            split_servers(nats_url), name="writ-approvals-api", max_reconnect_attempts=-1, **bus_options
        )
        plane = ApprovalsPlane(nc)
        try:
            await plane.start()
            state["plane"] = plane
            yield
        finally:
            await plane.stop()
            await nc.close()

    routes = [Route("/openapi.json", openapi, methods=["GET"]), *approval_routes(lambda: state["plane"])]
    return Starlette(routes=routes, lifespan=lifespan)


# -- OpenAPI ----------------------------------------------------------------------------------------


def _openapi() -> dict[str, Any]:
    schemas = component_schemas((ApprovalRequest, ApprovalList, DecisionBody, DecisionOutcome, ErrorBody))
    ref, error, intent_param = json_content, error_doc, INTENT_ID_PARAMETER
    unauthorized = error("missing, malformed, stale (±300 s) or badly signed Authorization")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Writ approvals API",
            "version": "1",
            "description": "Approval requests for destructive tool calls, decided by approvers who sign with "
            "their own Ed25519 keys. Authorization: `Writ-Ed25519 <approver_id>:<unix_ts>:<sig>` where sig "
            'is the base64 Ed25519 signature of "<METHOD>\\n<path>\\n<unix_ts>".',
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "writEd25519": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "Writ-Ed25519 <approver_id>:<unix_ts>:<base64 signature>",
                }
            },
        },
        "security": [{"writEd25519": []}],
        "paths": {
            "/approvals": {
                "get": {
                    "summary": "Open requests the caller's groups may decide",
                    "responses": {
                        "200": {"description": "pending requests", **ref("ApprovalList")},
                        "401": unauthorized,
                    },
                }
            },
            "/approvals/stream": {
                "get": {
                    "summary": "GET /approvals as Server-Sent Events: an `approvals` event with the list at "
                    "once and whenever it changes (signed like any request, once; the stream ends after two "
                    "minutes and the client reconnects with a fresh signature)",
                    "responses": {"200": {"description": "text/event-stream"}, "401": unauthorized},
                }
            },
            "/approvals/{intent_id}": {
                "get": {
                    "summary": "One request in full",
                    "parameters": [intent_param],
                    "responses": {
                        "200": {"description": "the request", **ref("ApprovalRequest")},
                        "401": unauthorized,
                        "403": error("not_in_group: the caller's groups may not decide it"),
                        "404": error("not_found: no such request"),
                    },
                }
            },
            "/approvals/{intent_id}/decision": {
                "post": {
                    "summary": "Grant or deny, signed with the approver's key",
                    "parameters": [intent_param],
                    "requestBody": {"required": True, **ref("DecisionBody")},
                    "responses": {
                        "200": {"description": "granted, authorized or denied", **ref("DecisionOutcome")},
                        "400": error("invalid_request or bad_signature"),
                        "401": unauthorized,
                        "403": error("not_in_group or owner_not_allowed"),
                        "404": error("not_found"),
                        "409": error("not_pending, digest_mismatch, duplicate_approver or approval_expired"),
                    },
                }
            },
        },
    }


OPENAPI = _openapi()

__all__ = [
    "AUTH_SCHEME",
    "OPENAPI",
    "ApprovalsPlane",
    "approval_routes",
    "auth_header",
    "auth_statement",
    "build_app",
]
