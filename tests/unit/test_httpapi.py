"""The HTTP APIs on FastAPI: refusals answered as ``{error, message}`` with Writ's status codes
(400 for an invalid request, never FastAPI's 422; 413 for a body over its bound, before parsing),
and OpenAPI documents that follow the routes (the approvals API, the views API with and without
the approvals API beside it)."""

from __future__ import annotations

import json
from typing import Annotated, Any, cast

import pytest
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict

from writ_common import approvals_api
from writ_common.httpapi import ApiError, BodyChecked, api_app, bounded_route, refusals
from writ_ledger.views import api as views_api
from writ_ledger.views.models import IntentsQuery

Answer = tuple[int, dict[str, str], bytes]


async def call(app: Any, method: str, path: str, *, body: bytes = b"", headers: dict[str, str] | None = None) -> Answer:
    """One request through the ASGI app, as a server would make it (signed in to the small app)."""
    raw_path, _, query = path.partition("?")
    sent = [{"type": "http.request", "body": body, "more_body": False}]
    answer: dict[str, Any] = {"body": b""}

    async def receive() -> dict[str, Any]:
        return sent.pop() if sent else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    heads = {"host": "127.0.0.1", "content-type": "application/json", "authorization": "yes", **(headers or {})}
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": raw_path,
        "raw_path": raw_path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in heads.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    return answer["status"], answer["headers"], answer["body"]


class Note(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    level: int = 0


class Page(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = 50


def signed_in(request: Request) -> None:
    if request.headers.get("authorization") != "yes":
        raise ApiError(401, "unauthenticated", "say yes", challenge="Yes")


def small_app() -> Any:
    router = APIRouter(route_class=bounded_route(256), responses=refusals((401, "who are you")))

    @router.post("/notes")
    async def post_note(_who: Annotated[None, Depends(signed_in)], _checked: BodyChecked, note: Note) -> Note:
        return note

    @router.get("/notes")
    async def list_notes(page: Annotated[Page, Query()]) -> Page:
        return page

    @router.get("/secret")
    async def secret() -> None:
        raise ApiError(401, "unauthenticated", "send a token", challenge='Bearer realm="test"')

    app = api_app("test", "a test API")
    app.include_router(router)
    return app


def refusal(answer: Answer) -> tuple[int, str, str]:
    status, _, body = answer
    parsed = json.loads(body)
    assert set(parsed) == {"error", "message"}, parsed
    return status, parsed["error"], parsed["message"]


async def test_a_valid_request_is_answered_and_an_invalid_one_is_a_400_naming_the_field() -> None:
    app = small_app()
    status, _, body = await call(app, "POST", "/notes", body=b'{"text": "hi"}')
    assert (status, json.loads(body)) == (200, {"text": "hi", "level": 0})

    assert refusal(await call(app, "POST", "/notes", body=b'{"text": "hi", "level": "high"}'))[:2] == (
        400,
        "invalid_request",
    )
    status, code, message = refusal(await call(app, "POST", "/notes", body=b'{"text": "hi", "extra": 1}'))
    assert (status, code) == (400, "invalid_request") and message.startswith("extra: "), message
    status, code, message = refusal(await call(app, "POST", "/notes", body=b"{not json"))
    assert (status, code, message) == (
        400,
        "invalid_request",
        "body: Invalid JSON: key must be a string at line 1 column 2",
    )
    status, code, message = refusal(await call(app, "POST", "/notes"))
    assert (status, code) == (400, "invalid_request") and message.startswith("body: Invalid JSON: EOF"), message
    status, code, message = refusal(await call(app, "GET", "/notes?limit=many"))
    assert (status, code) == (400, "invalid_request") and message.startswith("limit: "), message
    status, code, message = refusal(await call(app, "GET", "/notes?colour=red"))
    assert (status, code) == (400, "invalid_request") and message.startswith("colour: "), message


async def test_a_body_over_its_bound_or_nested_too_deep_is_refused_before_parsing() -> None:
    app = small_app()
    big = json.dumps({"text": "x" * 300}).encode()
    assert refusal(await call(app, "POST", "/notes", body=big))[:2] == (413, "too_large")
    deep = b'{"text": "hi", "level": ' + b"[" * 100 + b"]" * 100 + b"}"
    status, code, message = refusal(await call(app, "POST", "/notes", body=deep))
    assert (status, code) == (400, "invalid_request") and "not usable" in message, message


async def test_a_stranger_is_told_401_before_anything_about_the_body() -> None:
    app = small_app()
    for body in (b"x" * 300, b"{not json", b"[" * 100 + b"]" * 100, b'{"text": 1}'):
        status, headers, _ = await call(app, "POST", "/notes", body=body, headers={"authorization": "no"})
        assert (status, headers["www-authenticate"]) == (401, "Yes"), body


def test_a_route_with_a_body_must_check_it_after_authenticating() -> None:
    router = APIRouter(route_class=bounded_route(256))
    with pytest.raises(TypeError, match="BodyChecked"):

        @router.post("/unchecked")
        async def unchecked(note: Note) -> Note:
            return note


async def test_a_401_names_its_challenge_and_an_unknown_path_is_a_plain_404() -> None:
    app = small_app()
    status, headers, _ = await call(app, "GET", "/secret")
    assert (status, headers["www-authenticate"]) == (401, 'Bearer realm="test"')
    status, _, body = await call(app, "GET", "/nowhere")
    assert (status, body) == (404, b"Not Found")


def operations(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [op for path in spec["paths"].values() for op in path.values()]


def test_the_approvals_document_follows_its_routes() -> None:
    spec = approvals_api.build_app("nats://127.0.0.1:1").openapi()

    assert set(spec["paths"]) == {
        "/approvals",
        "/approvals/stream",
        "/approvals/{intent_id}",
        "/approvals/{intent_id}/decision",
    }
    decide = spec["paths"]["/approvals/{intent_id}/decision"]["post"]
    assert decide["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/DecisionBody")
    assert {"400", "401", "403", "404", "409", "413", "4XX"} <= set(decide["responses"])
    assert spec["components"]["securitySchemes"]["writEd25519"]["name"] == "Authorization"
    for op in operations(spec):
        assert op["security"] == [{"writEd25519": []}]
        assert "422" not in op["responses"]  # invalid requests are 400 invalid_request
        assert op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    stream = spec["paths"]["/approvals/stream"]["get"]["responses"]["200"]["content"]
    assert set(stream) == {"text/event-stream"}


def test_the_views_document_follows_its_routes_and_names_each_filter() -> None:
    views = cast(Any, None)  # the document needs no views
    spec = views_api.build_app(views).openapi()

    assert set(spec["paths"]) == {
        "/intents",
        "/intents/stream",
        "/intents/{intent_id}",
        "/plane",
        "/plane/stream",
        "/stats",
        "/status",
        "/shadow",
        "/rollouts",
        "/policy/simulate",
    }  # no console files, no approvals without a bus connection
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "a token from `writ views token create NAME`",
    }
    listed = spec["paths"]["/intents"]["get"]
    assert {p["name"] for p in listed["parameters"]} == set(IntentsQuery.model_fields)
    assert all(p["in"] == "query" for p in listed["parameters"])
    assert listed["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/IntentPage")
    assert "403" in spec["paths"]["/plane"]["get"]["responses"]
    for op in operations(spec):
        assert op["security"] == [{"bearer": []}]
        assert "422" not in op["responses"]


def test_the_views_document_includes_the_approvals_api_it_serves() -> None:
    approvals = approvals_api.ApprovalsPlane(cast(Any, None))
    spec = views_api.build_app(cast(Any, None), approvals=approvals).openapi()

    assert {"/intents", "/approvals", "/approvals/{intent_id}/decision"} <= set(spec["paths"])
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "writEd25519"}


async def test_a_body_is_read_as_json_whatever_its_content_type_says() -> None:
    app = small_app()
    for content_type in ("application/x-www-form-urlencoded", "text/plain"):
        status, _, body = await call(
            app, "POST", "/notes", body=b'{"text": "hi"}', headers={"content-type": content_type}
        )
        assert (status, json.loads(body)) == (200, {"text": "hi", "level": 0}), content_type
