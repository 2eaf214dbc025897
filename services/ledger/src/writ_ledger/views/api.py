"""The views HTTP API (read only), served by the ledger on a loopback port.

Every request but ``/openapi.json`` carries ``Authorization: Bearer <token>``. Tokens are issued
by ``writ views token create NAME``: the token is generated on the operator's machine and only its
sha256 is recorded (``reader_token.issued`` on the identity stream), which is what this API looks
up. A revoked token stops working as soon as its revocation is projected.

A FastAPI app: the routes below, their models (:mod:`writ_ledger.views.models`) and their
authentication dependencies are the OpenAPI document (``/openapi.json``); refusals are
``{"error", "message"}`` (:mod:`writ_common.httpapi`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.middleware import Middleware

from writ_common import commands, sse, subjects
from writ_common import events as ev
from writ_common.approvals_api import ApprovalsPlane, serve_approvals
from writ_common.httpapi import (
    ApiError,
    BodyChecked,
    api_app,
    bounded_route,
    checked_intent_id,
    error_response,
    refusals,
)
from writ_common.receipts import GENESIS, receipt_hash
from writ_common.signing import SignatureInvalid, key_id, verify
from writ_ledger.console import SameOrigin, console_routes
from writ_ledger.plane import PlaneReader
from writ_ledger.views.models import (
    SIMULATE_MAX_BYTES,
    IntentDetail,
    IntentPage,
    IntentsQuery,
    PlaneSnapshot,
    ReceiptCheck,
    RolloutsQuery,
    RolloutsReport,
    ShadowQuery,
    ShadowReport,
    SimulateRequest,
    Simulation,
    Stats,
    StatsQuery,
    StatsRow,
    Status,
    StreamLag,
)
from writ_ledger.views.queries import (
    IntentFilter,
    QueryError,
    get_intent,
    list_intents,
    previous_receipt_hash,
    rollouts,
    shadow,
    stats,
    withhold_content,
    withhold_row,
)
from writ_ledger.views.runner import Views

AUTH_SCHEME = "Bearer"
REFRESH_INTERVAL_SECONDS = 1.0
QUERY_STATUS = {"not_found": 404, "no_views": 503, "busy": 409}
SIMULATE_TIMEOUT_SECONDS = 120.0
COMMAND_STATUS = {"service_down": 503, "timeout": 504}
STREAM_REFRESH_SECONDS = 5.0  # an intents stream reads again at each append, and at least this often
PLANE_REFRESH_SECONDS = 1.0  # the supervisor's restarts are in no stream: the plane stream looks again


def token_hash(token: str) -> str:
    """What is recorded and looked up for a token: ``sha256:<hex>`` of its UTF-8 bytes."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


CHALLENGE = f'{AUTH_SCHEME} realm="writ-views"'


# -- the app --------------------------------------------------------------------------------------


def check_receipt(body: dict[str, Any], prev_hash: str | None, public_key: str) -> ReceiptCheck:
    """Hash, signature and chain link of one stored receipt body, each checked on its own."""
    receipt = msgspec.convert(body, ev.Receipt)
    hash_ok = receipt_hash(receipt) == receipt.receipt_hash
    try:
        verify(public_key, receipt.receipt_hash.encode(), receipt.signature)
        signature_ok = True
    except SignatureInvalid:
        signature_ok = False
    chain_ok = None if prev_hash is None else receipt.prev_hash == prev_hash
    if receipt.position == 1:
        chain_ok = receipt.prev_hash == GENESIS
    problem = next(
        (
            text
            for ok, text in (
                (hash_ok, "the receipt body does not hash to its receipt_hash"),
                (signature_ok, "the signature is not the ledger's"),
                (chain_ok is not False, "prev_hash is not the previous receipt's hash"),
            )
            if not ok
        ),
        None,
    )
    return ReceiptCheck(
        hash_ok=hash_ok,
        signature_ok=signature_ok,
        chain_ok=chain_ok,
        prev_position=receipt.position - 1 if receipt.position > 1 else None,
        ledger_key_id=key_id(public_key),
        problem=problem,
    )


@dataclass
class ViewsContext:
    """What the routes read: the views, and the plane's parts this server was given."""

    views: Views
    ledger_public_key: str | None = None
    approvals: ApprovalsPlane | None = None
    plane: PlaneReader | None = None
    closing: asyncio.Event | None = None
    refreshed: float = 0.0  # when an unknown token last made the identity stream be read on


@dataclass(frozen=True)
class Reader:
    """The holder of the request's token: its name and scope."""

    name: str
    scope: str


def _context(request: Request) -> ViewsContext:
    context = request.app.state.views_context
    assert isinstance(context, ViewsContext)
    return context


Context = Annotated[ViewsContext, Depends(_context)]
# Documents the scheme; ``authenticate`` reads and checks the header itself (every way it can be wrong).
BEARER = HTTPBearer(scheme_name="bearer", description="a token from `writ views token create NAME`", auto_error=False)


def _unauthorized(code: str, message: str) -> ApiError:
    return ApiError(401, code, message, challenge=CHALLENGE)


def _token_holder(db: Any, digest: str) -> tuple[str, str] | None:
    row = db.execute(
        "SELECT name, scope FROM reader_tokens WHERE token_hash = ? AND revoked_at IS NULL", (digest,)
    ).fetchone()
    return (str(row[0]), str(row[1])) if row else None


async def authenticate(context: ViewsContext, header: str | None) -> Reader:
    """Who holds the bearer token of ``header`` (an ``Authorization`` value).

    Raises:
        ApiError: 401 ``unauthenticated``, ``bad_authorization`` or ``bad_token``.
    """
    if not header:
        raise _unauthorized("unauthenticated", "send Authorization: Bearer <token> (writ views token create NAME)")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != AUTH_SCHEME.lower() or not token.strip():
        raise _unauthorized("bad_authorization", "the Authorization header must read Bearer <token>")
    digest = token_hash(token.strip())
    holder = await context.views.read(_token_holder, digest)
    if holder is None and time.monotonic() - context.refreshed > REFRESH_INTERVAL_SECONDS:
        # Issued a moment ago? Read the identity stream on; rate-limited against guessing.
        context.refreshed = time.monotonic()
        await context.views.catch_up(subjects.IDENTITY_STREAM)
        holder = await context.views.read(_token_holder, digest)
    if holder is None:
        raise _unauthorized("bad_token", "the token is unknown or revoked")
    return Reader(*holder)


async def _reader(
    request: Request, context: Context, _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]
) -> Reader:
    return await authenticate(context, request.headers.get("authorization"))


ReaderOf = Annotated[Reader, Depends(_reader)]


async def _operator(reader: ReaderOf) -> Reader:
    """Only an operator's token reads the plane."""
    if reader.scope != ev.OPERATOR_SCOPE:
        raise ApiError(
            403,
            "not_operator",
            f"a {reader.scope} token cannot read the plane; an operator issues an operator token"
            " with `writ views token create NAME --scope operator`",
        )
    return reader


OperatorOf = Annotated[Reader, Depends(_operator)]


def _policy_line(context: Context) -> ApprovalsPlane:
    """The bus connection over which policy is asked (``/policy/simulate``)."""
    if context.approvals is None:
        raise ApiError(503, "unavailable", "this views API has no bus connection to ask policy")
    return context.approvals


async def _query_refused(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, QueryError)
    return error_response(ApiError(QUERY_STATUS.get(exc.code, 400), exc.code, exc.message))


# -- what the routes read -------------------------------------------------------------------------


async def intents_page(context: ViewsContext, scope: str, q: IntentsQuery) -> IntentPage:
    where = IntentFilter(**q.model_dump(exclude={"limit", "cursor"}))
    page = await context.views.read(list_intents, where, limit=q.limit, cursor=q.cursor)
    if scope not in ev.VALUE_SCOPES:
        page["intents"] = [withhold_row(row) for row in page["intents"]]
    return IntentPage.model_validate(page)


async def intent_detail(context: ViewsContext, scope: str, intent_id: str) -> IntentDetail:
    found = await context.views.read(get_intent, intent_id)
    if found is None:
        raise ApiError(404, "not_found", f"no intent {intent_id!r} in the views")
    check = None
    if found["receipt"] is not None and context.ledger_public_key is not None:
        prev_hash = await context.views.read(previous_receipt_hash, int(found["receipt"]["position"]))
        check = check_receipt(found["receipt"], prev_hash, context.ledger_public_key)
    if scope not in ev.VALUE_SCOPES:
        found = withhold_content(found)
    return IntentDetail.model_validate({**found, "verification": check})


async def plane_snapshot(context: ViewsContext) -> PlaneSnapshot:
    if context.plane is None:
        raise ApiError(503, "unavailable", "this views API has no bus connection to read the plane")
    lags = [StreamLag.model_validate(lag.as_dict()) for lag in await context.views.lag()]
    return PlaneSnapshot.model_validate({**await context.plane.read(), "views_lag": lags})


async def read_caught_up(context: ViewsContext, stream: str, query: Callable[..., Any], **args: Any) -> Any:
    """``query`` over the views once they have applied ``stream`` up to its head (what was just
    appended counts)."""
    await context.views.catch_up(stream)
    return await context.views.read(query, **args)


async def event_stream(
    read: Callable[[], Awaitable[BaseModel]],
    event: str,
    *,
    request: Request,
    context: ViewsContext,
    pulse: sse.Pulse | None,
    every: float,
) -> Response:
    """``read``'s answer as Server-Sent Events, sent again whenever it changes (``sse``). The first
    reading is made before the stream starts, so a bad query fails as JSON, like the JSON route."""
    readings = [(await read()).model_dump(mode="json")]

    async def again() -> Any:
        return readings.pop() if readings else (await read()).model_dump(mode="json")

    frames = sse.snapshots(again, event=event, pulse=pulse, every=every, closing=context.closing, request=request)
    return sse.response(frames)


# -- the routes -----------------------------------------------------------------------------------


UNAUTHORIZED = "no, malformed, unknown or revoked bearer token"
router = APIRouter(
    tags=["views"],
    route_class=bounded_route(SIMULATE_MAX_BYTES + 4096),
    responses=refusals((401, UNAUTHORIZED)),
)
STREAM_REFUSALS = refusals((401, UNAUTHORIZED), stream=True)


@router.get(
    "/intents",
    summary="List intents, filtered, newest first, one page at a time",
    response_description="a page",
    responses=refusals((400, "invalid_request, invalid_time or invalid_cursor")),
)
async def get_intents(q: Annotated[IntentsQuery, Query()], reader: ReaderOf, context: Context) -> IntentPage:
    return await intents_page(context, reader.scope, q)


@router.get(
    "/intents/stream",  # before /intents/{intent_id}: "stream" is not an id
    summary="GET /intents as Server-Sent Events: an `intents` event with the page at once and whenever it "
    "changes (the same filters and withholding); the stream ends after two minutes and the client reconnects",
    response_class=sse.EventStream,
    responses=STREAM_REFUSALS,
)
async def stream_intents(
    request: Request, q: Annotated[IntentsQuery, Query()], reader: ReaderOf, context: Context
) -> Response:
    return await event_stream(
        lambda: intents_page(context, reader.scope, q),
        "intents",
        request=request,
        context=context,
        pulse=context.views.pulse,
        every=STREAM_REFRESH_SECONDS,
    )


@router.get(
    "/plane",
    summary="The plane (an operator token): each process's state and restarts, consumer lag, dead letters, "
    "breakers, quarantined tools with their diff, rate-limit windows",
    response_description="the plane",
    responses=refusals((403, "not_operator: a summary or full token")),
)
async def get_plane(_operator: OperatorOf, context: Context) -> PlaneSnapshot:
    return await plane_snapshot(context)


@router.get(
    "/plane/stream",
    summary="GET /plane as Server-Sent Events (`plane` events), read every second",
    response_class=sse.EventStream,
    responses=refusals((401, UNAUTHORIZED), (403, "not_operator"), stream=True),
)
async def stream_plane(request: Request, _operator: OperatorOf, context: Context) -> Response:
    return await event_stream(
        lambda: plane_snapshot(context),
        "plane",
        request=request,
        context=context,
        pulse=None,
        every=PLANE_REFRESH_SECONDS,
    )


@router.get(
    "/intents/{intent_id}",
    summary="One intent with its full event history and its receipt (arguments and results withheld from a "
    "summary token)",
    response_description="the intent",
    responses=refusals((404, "not_found")),
)
async def get_intent_detail(
    reader: ReaderOf, intent_id: Annotated[str, Depends(checked_intent_id)], context: Context
) -> IntentDetail:
    return await intent_detail(context, reader.scope, intent_id)


@router.get(
    "/stats",
    summary="Calls, outcomes and exact latency percentiles per agent, tool or hour",
    response_description="one row per key",
)
async def get_stats(q: Annotated[StatsQuery, Query()], _reader: ReaderOf, context: Context) -> Stats:
    rows = await context.views.read(stats, q.by, since=q.since, until=q.until)
    return Stats(by=q.by, rows=[StatsRow.model_validate(r) for r in rows])


@router.get(
    "/status",
    summary="Projection lag per stream: position, head, events and seconds behind",
    response_description="lag",
)
async def get_status(_reader: ReaderOf, context: Context) -> Status:
    return Status(streams=[StreamLag.model_validate(lag.as_dict()) for lag in await context.views.lag()])


@router.get(
    "/shadow",
    summary="The shadow bundle beside the enforced one: agreement and each disagreement",
    response_description="per bundle, then disagreements",
)
async def get_shadow(q: Annotated[ShadowQuery, Query()], _reader: ReaderOf, context: Context) -> ShadowReport:
    report = await read_caught_up(
        context, subjects.INTENTS_STREAM, shadow, digest=q.digest, since=q.since, limit=q.limit
    )
    return ShadowReport.model_validate(report)


@router.get(
    "/rollouts",
    summary="The canary rollouts: slice, triggers, how each ended and the signals that decided it",
    response_description="newest first",
)
async def get_rollouts(q: Annotated[RolloutsQuery, Query()], _reader: ReaderOf, context: Context) -> RolloutsReport:
    return RolloutsReport.model_validate(await read_caught_up(context, subjects.POLICY_STREAM, rollouts, limit=q.limit))


@router.post(
    "/policy/simulate",
    summary="Replay a candidate bundle over the recorded intents beside the enforced one; changes nothing "
    "(a summary token reads counts only)",
    response_description="validation errors, then the decision diff",
    responses=refusals(
        (400, "invalid_request or invalid_policy (unparseable)"),
        (413, "too_large"),
        (503, "service_down: policy is not running"),
    ),
)
async def simulate(
    reader: ReaderOf,
    line: Annotated[ApprovalsPlane, Depends(_policy_line)],
    _checked: BodyChecked,
    body: SimulateRequest,
) -> Simulation:
    full = reader.scope in ev.VALUE_SCOPES
    ask = body.model_dump(exclude_none=True) | {"examples": body.examples if full else 0}
    try:
        out = await commands.call(line.nc, "policy", "simulate", ask, timeout=SIMULATE_TIMEOUT_SECONDS)
    except commands.CommandError as exc:
        raise ApiError(COMMAND_STATUS.get(exc.code, 400), exc.code, exc.message) from exc
    if not full:  # counts, never the intents themselves
        out["changes"] = [{k: v for k, v in c.items() if k != "examples"} for c in out["changes"]]
    return Simulation.model_validate(out)


DESCRIPTION = (
    "Read-only queries over the ledger's views: the log projected into tables. "
    "Authorization: `Bearer <token>` from `writ views token create NAME [--scope summary|full|operator]`. "
    "A summary token (the default) reads everything except the fields that carry values (tool "
    "arguments and results, idempotency keys, approvers' comments, reconciliation notes), which "
    "only a full token sees. Lists are newest first and paginated by an opaque cursor. "
    "With a bus connection the same port also serves the approvals API (`/approvals...`) and the console."
)


def build_app(
    views: Views,
    *,
    ledger_public_key: str | None = None,
    approvals: ApprovalsPlane | None = None,
    extra_hosts: tuple[str, ...] = (),
    plane: PlaneReader | None = None,
    closing: asyncio.Event | None = None,
) -> FastAPI:
    """The views API; with ``approvals``, also the approvals API and the console on the same origin.
    ``extra_hosts``: Host names allowed besides loopback (a container's published name);
    ``plane``: what ``GET /plane`` reads; ``closing``: set when the server stops (ends the streams)."""
    app = api_app("Writ views API", DESCRIPTION, middleware=[Middleware(SameOrigin, extra_hosts=extra_hosts)])
    app.add_exception_handler(QueryError, _query_refused)
    app.state.views_context = ViewsContext(views, ledger_public_key, approvals, plane, closing)
    app.include_router(router)
    app.router.routes.extend(console_routes())
    if approvals is not None:
        serve_approvals(app, approvals, closing=closing)
    return app


class ApiServer(uvicorn.Server):
    """uvicorn inside the ledger's event loop, without its signal handlers (the service owns those)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving(views: Views, port: int, host: str = "127.0.0.1", **options: Any) -> AsyncIterator[ApiServer]:
    """Serve the API on ``host``:``port`` until the block ends (``options``: see :func:`build_app`)."""
    closing = asyncio.Event()
    app = build_app(views, closing=closing, **options)
    # An open event stream would hold a graceful shutdown: ``closing`` ends them, the timeout backs it.
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", server_header=False, timeout_graceful_shutdown=5
    )
    server = ApiServer(config)
    task = asyncio.create_task(server.serve(), name="views-api")
    while not server.started and not task.done():  # noqa: ASYNC110 (uvicorn offers no "started" event)
        await asyncio.sleep(0.02)
    if not server.started:
        with contextlib.suppress(BaseException):
            await task
        raise RuntimeError(f"the views API could not listen on {host}:{port} (see the log above)")
    try:
        yield server
    finally:
        closing.set()
        server.should_exit = True
        await task
