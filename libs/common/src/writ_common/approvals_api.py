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
from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any, Literal

import nats
import nats.errors
from fastapi import APIRouter, Depends, FastAPI, Request, Response, Security
from fastapi.security import APIKeyHeader
from nacl.signing import SigningKey
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import BaseModel, ConfigDict

from writ_common import commands, sse, subjects
from writ_common.approvals import Approver, apply_approver_event
from writ_common.bus import split_servers
from writ_common.commands import CommandError
from writ_common.control import ControlFollower
from writ_common.httpapi import ApiError, BodyChecked, api_app, bounded_route, checked_intent_id, refusals
from writ_common.signing import SignatureInvalid, sign, verify
from writ_common.subjects import intent_subject
from writ_common.topology import INTENT_ROUTES

AUTH_SCHEME = "Writ-Ed25519"
CLOCK_WINDOW_SECONDS = 300
REFRESH_INTERVAL_SECONDS = 1.0  # an unknown approver re-reads the identity stream at most this often
COMMAND_TIMEOUT_SECONDS = 30.0
# The intent events that change an inbox (a request, a decision, an end); a stream also reads
# again every INBOX_REFRESH_SECONDS whatever it heard.
INBOX_TOKENS = tuple(
    r.token for r in INTENT_ROUTES if r.type.startswith("approval.") or r.type in ("intent.expired", "intent.cancelled")
)
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


def _unauthorized(code: str, message: str) -> ApiError:
    return ApiError(401, code, message, challenge=AUTH_SCHEME)


async def authenticate(request: Request, directory: ApproverDirectory) -> Approver:
    """The approver who signed this request.

    Raises:
        ApiError: 401 ``unauthenticated``, ``bad_authorization``, ``clock_skew``, ``unknown_approver``,
            ``approver_inactive`` or ``bad_signature``.
    """
    header = request.headers.get("authorization")
    if not header:
        raise _unauthorized("unauthenticated", f"send Authorization: {AUTH_SCHEME} <approver_id>:<unix_ts>:<signature>")
    scheme, _, credentials = header.partition(" ")
    approver_id, _, rest = credentials.strip().partition(":")
    stamp, _, signature = rest.partition(":")
    if scheme != AUTH_SCHEME or not approver_id or not signature or not stamp.isdigit():
        raise _unauthorized(
            "bad_authorization",
            f"the Authorization header must read {AUTH_SCHEME} <approver_id>:<unix_ts>:<signature>",
        )
    timestamp = int(stamp)
    skew = int(time.time()) - timestamp
    if abs(skew) > CLOCK_WINDOW_SECONDS:
        raise _unauthorized(
            "clock_skew",
            f"the request's timestamp is {abs(skew)}s {'old' if skew > 0 else 'in the future'};"
            f" it must be within ±{CLOCK_WINDOW_SECONDS}s of the server's clock",
        )
    approver = await directory.get(approver_id)
    if approver is None:
        raise _unauthorized("unknown_approver", f"no approver {approver_id!r} is registered")
    if not approver.active:
        raise _unauthorized("approver_inactive", f"approver {approver_id!r} is not active")
    try:
        verify(approver.public_key, auth_statement(request.method, request.url.path, timestamp), signature)
    except SignatureInvalid as exc:
        raise _unauthorized(
            "bad_signature", f"the request is not signed by the registered key of approver {approver_id!r}"
        ) from exc
    return approver


# -- the API ----------------------------------------------------------------------------------------


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


def serve_approvals(app: FastAPI, plane: ApprovalsPlane, *, closing: asyncio.Event | None = None) -> None:
    """Serve :data:`router` on ``app`` over ``plane``; ``closing`` ends the inbox streams when the
    server stops."""
    app.state.approvals = plane
    app.state.approvals_closing = closing
    app.include_router(router)


def _plane(request: Request) -> ApprovalsPlane:
    plane = getattr(request.app.state, "approvals", None)
    if not isinstance(plane, ApprovalsPlane):
        raise ApiError(503, "plane_unreachable", "the approvals API is not connected to the plane")
    return plane


# Documents the scheme; ``authenticate`` reads and checks the header itself (every way it can be wrong).
ED25519_HEADER = APIKeyHeader(
    name="Authorization",
    scheme_name="writEd25519",
    description=f"{AUTH_SCHEME} <approver_id>:<unix_ts>:<base64 signature>",
    auto_error=False,
)
Plane = Annotated[ApprovalsPlane, Depends(_plane)]


async def _signer(request: Request, plane: Plane, _header: Annotated[str | None, Security(ED25519_HEADER)]) -> Approver:
    return await authenticate(request, plane.directory)


Signer = Annotated[Approver, Depends(_signer)]


def _no_store(response: Response) -> None:
    response.headers["Cache-Control"] = "no-store"


async def command(plane: ApprovalsPlane, approver: Approver, name: str, body: dict[str, Any]) -> Any:
    """``name`` for the approver the request's signature proved, on that approver's own subject
    (this API's connection may speak for any approver: it checked who is asking)."""
    try:
        return await commands.call_as_approver(
            plane.nc, approver.approver_id, name, body, timeout=COMMAND_TIMEOUT_SECONDS
        )
    except CommandError as exc:
        if exc.code in ("service_down", "timeout"):
            raise ApiError(503, exc.code, exc.message) from exc
        if exc.code == "forbidden":
            raise ApiError(403, "not_in_group", exc.message) from exc
        raise ApiError(COMMAND_STATUS.get(exc.code, 400), exc.code, exc.message) from exc
    except nats.errors.Error as exc:
        raise ApiError(503, "plane_unreachable", f"the plane's NATS server did not answer: {exc}") from exc


async def inbox(plane: ApprovalsPlane, approver: Approver) -> ApprovalList:
    """The open requests ``approver``'s groups may decide."""
    rows = await command(plane, approver, "list_approvals", {})
    return ApprovalList(approvals=[ApprovalRequest.model_validate(r) for r in rows])


UNAUTHORIZED = "missing, malformed, stale (±300 s) or badly signed Authorization"
router = APIRouter(
    prefix="/approvals",
    tags=["approvals"],
    route_class=bounded_route(MAX_BODY_BYTES),
    responses=refusals((401, UNAUTHORIZED)),
)


@router.get("", summary="Open requests the caller's groups may decide", dependencies=[Depends(_no_store)])
async def list_approvals(approver: Signer, plane: Plane) -> ApprovalList:
    return await inbox(plane, approver)


@router.get(
    "/stream",  # before /{intent_id}: "stream" is not an id
    summary="GET /approvals as Server-Sent Events: an `approvals` event with the list at once and whenever it "
    "changes (signed like any request, once; the stream ends after two minutes and the client reconnects "
    "with a fresh signature)",
    response_class=sse.EventStream,
    responses=refusals((401, UNAUTHORIZED), stream=True),
)
async def stream_approvals(request: Request, approver: Signer, plane: Plane) -> Response:
    async def read() -> Any:
        return (await inbox(plane, approver)).model_dump(mode="json")

    closing = getattr(request.app.state, "approvals_closing", None)
    frames = sse.snapshots(
        read, event="approvals", pulse=plane.pulse, every=INBOX_REFRESH_SECONDS, closing=closing, request=request
    )
    return sse.response(frames)


@router.get(
    "/{intent_id}",
    summary="One request in full",
    dependencies=[Depends(_no_store)],
    responses=refusals(
        (403, "not_in_group: the caller's groups may not decide it"), (404, "not_found: no such request")
    ),
)
async def get_approval(
    approver: Signer, intent_id: Annotated[str, Depends(checked_intent_id)], plane: Plane
) -> ApprovalRequest:
    return ApprovalRequest.model_validate(await command(plane, approver, "show_approval", {"intent_id": intent_id}))


@router.post(
    "/{intent_id}/decision",
    summary="Grant or deny, signed with the approver's key",
    dependencies=[Depends(_no_store)],
    response_description="granted, authorized or denied",
    responses=refusals(
        (400, "invalid_request or bad_signature"),
        (403, "not_in_group or owner_not_allowed"),
        (404, "not_found"),
        (409, "not_pending, digest_mismatch, duplicate_approver or approval_expired"),
        (413, "too_large: the body is over 64 KiB"),
    ),
)
async def post_decision(
    approver: Signer,
    intent_id: Annotated[str, Depends(checked_intent_id)],
    _checked: BodyChecked,
    body: DecisionBody,
    plane: Plane,
) -> DecisionOutcome:
    pending = await command(plane, approver, "show_approval", {"intent_id": intent_id})  # 403 first, 404 if gone
    signed = {
        **body.model_dump(),
        "intent_id": intent_id,
        "agent_id": pending["agent_id"],
        "approver_id": approver.approver_id,
    }
    outcome = DecisionOutcome.model_validate(await command(plane, approver, "decide_approval", signed))
    if outcome.outcome == "refused":
        raise ApiError(REFUSAL_STATUS.get(outcome.code, 409), outcome.code, outcome.reason)
    return outcome


DESCRIPTION = (
    "Approval requests for destructive tool calls, decided by approvers who sign with their own Ed25519 keys. "
    "Authorization: `Writ-Ed25519 <approver_id>:<unix_ts>:<sig>` where sig is the base64 Ed25519 signature of "
    '"<METHOD>\\n<path>\\n<unix_ts>".'
)


def build_app(nats_url: str, bus_options: Mapping[str, Any] | None = None) -> FastAPI:
    """The API over the plane at ``nats_url``; connects on start-up, closes on shutdown.
    ``bus_options``: NATS connect options (the bus credential), see ``WritSettings.bus_options``."""
    bus_options = dict(bus_options or {})

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nc = await nats.connect(
            split_servers(nats_url), name="writ-approvals-api", max_reconnect_attempts=-1, **bus_options
        )
        plane = ApprovalsPlane(nc)
        try:
            await plane.start()
            app.state.approvals = plane
            yield
        finally:
            await plane.stop()
            await nc.close()

    app = api_app("Writ approvals API", DESCRIPTION, lifespan=lifespan)
    app.include_router(router)
    return app


__all__ = [
    "AUTH_SCHEME",
    "ApprovalsPlane",
    "auth_header",
    "auth_statement",
    "build_app",
    "router",
    "serve_approvals",
]
