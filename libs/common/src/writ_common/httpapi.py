"""What Writ's HTTP APIs (approvals, views) share: the error body and its response, request
validation errors, the intent id path parameter, and the OpenAPI plumbing."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from writ_common.errors import CodedError
from writ_common.ids import is_token


class ErrorBody(BaseModel):
    error: str
    message: str


class ApiError(CodedError):
    """A refusal with its HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(code, message)
        self.status = status


def error_response(exc: ApiError, *, challenge: str) -> JSONResponse:
    """The JSON error; a 401 also says how to authenticate (``WWW-Authenticate: challenge``)."""
    body = ErrorBody(error=exc.code, message=exc.message.removeprefix(f"{exc.code}: "))
    headers = {"WWW-Authenticate": challenge} if exc.status == 401 else None
    return JSONResponse(body.model_dump(), status_code=exc.status, headers=headers)


def invalid_request(exc: ValidationError, where: str) -> ApiError:
    """400 naming the first invalid field (``where`` when the error has no location)."""
    first = exc.errors()[0]
    location = ".".join(str(p) for p in first["loc"]) or where
    return ApiError(400, "invalid_request", f"{location}: {first['msg']}")


def intent_id_param(request: Request) -> str:
    """The ``{intent_id}`` path parameter, which must be an id token."""
    intent_id = str(request.path_params["intent_id"])
    if not is_token(intent_id):
        raise ApiError(400, "invalid_intent_id", f"{intent_id!r} is not an intent id")
    return intent_id


INTENT_ID_PARAMETER = {"name": "intent_id", "in": "path", "required": True, "schema": {"type": "string"}}


def component_schemas(models: Iterable[type[BaseModel]]) -> dict[str, Any]:
    """``components.schemas`` for these models (nested definitions lifted alongside)."""
    schemas: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def json_content(model: str) -> dict[str, Any]:
    """An OpenAPI body of the named component schema."""
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}}


def error_doc(description: str) -> dict[str, Any]:
    """An OpenAPI error response (an :class:`ErrorBody`)."""
    return {"description": description, **json_content("ErrorBody")}
