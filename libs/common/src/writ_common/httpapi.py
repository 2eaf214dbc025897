"""What Writ's HTTP APIs (approvals, views) share on FastAPI: the error body and the handlers
that answer every refusal with it, the bounded request body, and the intent id path parameter.

The OpenAPI documents (``/openapi.json``) are FastAPI's, built from the routes, their pydantic
models and these declarations: nothing here is written by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.telemetry import TelemetryConfig
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from writ_common.envelope import UndecodableEvent, check_bounds
from writ_common.errors import CodedError
from writ_common.ids import is_token

NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
# Where FastAPI puts a request's parts in a validation error's location (dropped from our message).
_PARTS = ("query", "body", "path", "header", "cookie")


class ErrorBody(BaseModel):
    """Every refusal: a stable code and a sentence saying what to do."""

    error: str
    message: str


class ApiError(CodedError):
    """A refusal with its HTTP status; a 401 names the ``challenge`` (``WWW-Authenticate``)."""

    def __init__(self, status: int, code: str, message: str, *, challenge: str | None = None) -> None:
        super().__init__(code, message)
        self.status = status
        self.challenge = challenge


def error_response(exc: ApiError) -> JSONResponse:
    """The JSON error; a 401 also says how to authenticate (``WWW-Authenticate: challenge``)."""
    body = ErrorBody(error=exc.code, message=exc.message.removeprefix(f"{exc.code}: "))
    headers = {"WWW-Authenticate": exc.challenge} if exc.status == 401 and exc.challenge else None
    return JSONResponse(body.model_dump(), status_code=exc.status, headers=headers)


def invalid_request(errors: Sequence[Any], where: str = "body") -> ApiError:
    """400 naming the first invalid field (``where`` when the error has no location)."""
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ())]
    location = ".".join(loc[1:] if loc and loc[0] in _PARTS and len(loc) > 1 else loc) or where
    return ApiError(400, "invalid_request", f"{location}: {first['msg']}")


async def _api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(invalid_request(exc.errors()))


async def _http_error(_request: Request, exc: Exception) -> Response:
    """No route, or not that method: Starlette's plain answer, as before FastAPI."""
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)


def answer_refusals(app: FastAPI) -> None:
    """Answer an :class:`ApiError` and an invalid request (400 ``invalid_request``, not FastAPI's
    422) with an :class:`ErrorBody`."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)


def api_app(title: str, description: str, **options: Any) -> FastAPI:
    """A FastAPI app answering refusals as :class:`ErrorBody`; its OpenAPI document at
    ``/openapi.json`` and no interactive docs pages (they would load scripts from elsewhere).

    FastAPI's own OpenTelemetry (request spans, metrics, and logs of validation failures, which
    can quote what was sent) stays off: a service's traces are Writ's intents, and nothing a
    request carries is exported."""
    app = FastAPI(
        title=title,
        version="1",
        description=description,
        docs_url=None,
        redoc_url=None,
        telemetry=NO_TELEMETRY,
        **options,
    )
    answer_refusals(app)
    return app


def refusals(*documented: tuple[int, str], stream: bool = False) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route for OpenAPI: each (status, description) is an :class:`ErrorBody`,
    and so is every other 4xx (which also keeps FastAPI from documenting a 422 it never sends).

    A ``stream`` route answers ``text/event-stream``, but its refusals in JSON: they name the
    schema themselves (FastAPI would give a model the route's media type)."""
    entries: list[tuple[int | str, str]] = [*documented, ("4XX", "any other refusal")]
    if stream:
        content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ErrorBody.__name__}"}}}
        return {status: {"description": text, "content": content} for status, text in entries}
    return {status: {"model": ErrorBody, "description": text} for status, text in entries}


def checked_intent_id(intent_id: Annotated[str, Path(description="the intent's id")]) -> str:
    """The ``{intent_id}`` path parameter, which must be an id token (a dependency)."""
    if not is_token(intent_id):
        raise ApiError(400, "invalid_intent_id", f"{intent_id!r} is not an intent id")
    return intent_id


async def bounded_body(request: Request, max_bytes: int) -> bytes:
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


_BODY_REFUSAL = "writ.body_refusal"
_ANY_JSON: TypeAdapter[Any] = TypeAdapter(Any)


async def checked_body(request: Request) -> None:
    """Raise the refusal of the request's body, if :func:`bounded_route` refused it (a dependency,
    declared after the route's authentication: a stranger is told 401 first, as always)."""
    refusal = request.scope.get(_BODY_REFUSAL)
    if isinstance(refusal, ApiError):
        raise refusal


BodyChecked = Annotated[None, Depends(checked_body)]


async def _json_body(request: Request, max_bytes: int) -> tuple[bytes, ApiError | None]:
    """The body if it is JSON within its bounds; else nothing, and why."""
    try:
        raw = await bounded_body(request, max_bytes)
        _ANY_JSON.validate_json(raw)
    except ApiError as exc:
        return b"", exc
    except ValidationError as exc:
        return b"", invalid_request(exc.errors())
    return raw, None


def bounded_route(max_bytes: int) -> type[APIRoute]:
    """A route class whose request body is read through :func:`bounded_body` before FastAPI parses
    it (``max_bytes`` at most, JSON nested no deeper than the event bounds), and parsed as JSON
    whatever its ``Content-Type`` says, as these APIs always have (``curl -d`` sends a form type).
    That opens no cross-site door: every route wants an ``Authorization`` header, which no
    cross-site form can send, and the console's guard refuses other origins.

    A body refused here is refused by :data:`BodyChecked`, which a route with a body must declare
    after its authentication (checked when the route is made)."""

    class BoundedRoute(APIRoute):
        def __init__(self, path: str, endpoint: Callable[..., Any], **options: Any) -> None:
            super().__init__(path, endpoint, **options)
            checks = [d.call for d in self.dependant.dependencies]
            if self.body_field is not None and checked_body not in checks:
                raise TypeError(f"{path}: a route with a body declares a BodyChecked parameter")

        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handle = super().get_route_handler()
            if self.body_field is None:
                return handle

            async def bounded(request: Request) -> Response:
                raw, refusal = await _json_body(request, max_bytes)
                headers = [(k, v) for k, v in request.scope["headers"] if k.lower() != b"content-type"]
                headers.append((b"content-type", b"application/json"))
                as_json = Request({**request.scope, "headers": headers, _BODY_REFUSAL: refusal}, request.receive)
                as_json._body = raw  # Starlette's body cache: FastAPI reads the body from here
                return await handle(as_json)

            return bounded

    return BoundedRoute
