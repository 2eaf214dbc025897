"""Registry's rules: which tool, at which pinned version, with valid arguments? Pure functions."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError

from writ_common import events as ev
from writ_common import operations
from writ_common.catalog import Catalog
from writ_common.digest import args_digest, sha256_digest
from writ_common.errors import Refusal
from writ_common.fold import IntentView
from writ_common.ids import TOKEN_RULE, is_token


class Validators:
    """Compiled input-schema validators, built once per tool version (tool_digest)."""

    def __init__(self) -> None:
        self._by_digest: dict[str, Draft202012Validator | str] = {}

    def for_tool(self, definition: ev.ToolDefinition) -> Draft202012Validator | str:
        """The validator, or why the tool's own schema is unusable."""
        found = self._by_digest.get(definition.tool_digest)
        if found is None:
            try:
                Draft202012Validator.check_schema(definition.input_schema)
                found = Draft202012Validator(definition.input_schema)
            except SchemaError as exc:
                found = f"the tool's own input schema is invalid: {exc.message}"
            self._by_digest[definition.tool_digest] = found
        return found


# Schema keywords whose value (from the tool's schema, never the caller's) says what was expected.
_RULE_VALUES = frozenset(
    {
        "type", "format", "pattern", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
        "minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties", "uniqueItems",
    }
)  # fmt: skip
_RULE_TEXT_MAX = 80


def describe_error(error: ValidationError) -> str:
    """``field: rule`` for one schema violation, naming the field and the rule the value broke,
    never the value itself (jsonschema's own messages quote it: an email, a card number)."""
    field = "/".join(map(str, error.absolute_path)) or "(root)"
    keyword = str(error.validator)
    if keyword == "required" and isinstance(error.instance, dict) and isinstance(error.validator_value, list):
        missing = [str(name) for name in error.validator_value if name not in error.instance]
        return f"{field}: missing required {', '.join(missing)}"
    if keyword == "additionalProperties":
        return f"{field}: has properties the schema does not allow (additionalProperties)"
    if keyword in _RULE_VALUES:
        rule = json.dumps(error.validator_value)
        rule = rule if len(rule) <= _RULE_TEXT_MAX else rule[: _RULE_TEXT_MAX - 3] + "..."
        return f"{field}: breaks {keyword} {rule}"
    return f"{field}: breaks {keyword}"


def argument_errors(validator: Draft202012Validator, arguments: dict[str, Any]) -> list[str]:
    """Every way ``arguments`` break the tool's input schema, as ``field: rule`` (no values)."""
    errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
    return [describe_error(e) for e in errors]


def needs_plan(view: IntentView) -> bool:
    """Whether the intent waits for the registry: authenticated, and not planned (or rejected) yet."""
    return view.planned is None and view.authenticated is not None and view.submitted is not None


def rejected(refusal: Refusal) -> ev.IntentRejected:
    """The rejection the registry appends for a refusal (its reason reads ``code: sentence``)."""
    return ev.IntentRejected(stage="plan", code=refusal.code, reason=str(refusal))


def plan(
    view: IntentView,
    catalog: Catalog,
    validators: Validators,
    *,
    args_key: bytes,
    max_argument_bytes: int = 64 * 1024,
) -> ev.IntentPlanned | ev.IntentRejected:
    """Pin the tool version and check the arguments, or say why not; ``args_key`` is the plane
    secret that keys ``args_digest``."""
    intent = view.submitted
    assert intent is not None
    size = len(msgspec.json.encode(intent.arguments))
    if size > max_argument_bytes:
        return rejected(
            Refusal(
                code="arguments_too_large",
                reason=f"the arguments are {size} bytes of JSON; the limit is {max_argument_bytes}",
            )
        )
    if intent.operation != operations.CALL_TOOL:
        return plan_operation(intent, catalog, args_key=args_key)
    resolved = catalog.resolve(intent.tool)
    if isinstance(resolved, Refusal):
        return rejected(resolved)
    server, definition = resolved
    validator = validators.for_tool(definition)
    errors = [validator] if isinstance(validator, str) else argument_errors(validator, intent.arguments)
    if errors:
        shown = "; ".join(errors[:5])
        return rejected(
            Refusal(
                code="invalid_arguments",
                reason=f"arguments do not match {server}/{definition.name}'s input schema: {shown}",
            )
        )
    return ev.IntentPlanned(
        server=server,
        tool=definition.name,
        tool_digest=definition.tool_digest,
        args_digest=args_digest(intent.arguments, key=args_key),
        annotations=catalog.annotations(server, definition),
        idempotency_arg=catalog.idempotency_arg(server, definition.name),
    )


def plan_operation(
    intent: ev.IntentSubmitted, catalog: Catalog, *, args_key: bytes
) -> ev.IntentPlanned | ev.IntentRejected:
    """Plan a governed MCP operation other than a tool call (read a resource, get a prompt,
    complete an argument, subscribe): its server must be registered and its arguments of the
    operation's shape. Its "version" is the operation and target themselves: a resource or prompt
    is read as it is at call time, not pinned."""
    server, target = operations.split_target(intent.tool)
    if server not in catalog.servers:
        return rejected(Refusal(code="unknown_server", reason=f"no server {server!r} is registered"))
    if (problem := operations.problem(intent.operation, target, intent.arguments)) is not None:
        return rejected(problem)
    read_only = operations.OPERATIONS[intent.operation].read_only
    return ev.IntentPlanned(
        server=server,
        tool=target,
        tool_digest=sha256_digest({"operation": intent.operation, "server": server, "target": target}),
        args_digest=args_digest(intent.arguments, key=args_key),
        annotations=ev.ToolAnnotations(read_only=read_only, destructive=False, idempotent=True, open_world=False),
    )


def secret_reference_problem(server: ev.ServerRegistered) -> str | None:
    """Why the server's secret references cannot be accepted, or None."""
    refs = {**server.secret_env, **server.secret_headers}
    if bad := sorted(ref for ref in refs.values() if not is_token(ref)):
        return f"secret name {bad[0]!r} must match [a-z0-9][a-z0-9_-]{{0,62}}"
    if server.secret_env and server.transport != "stdio":
        return "secret environment variables are for a stdio server; an HTTP server takes secret headers"
    if server.secret_headers and server.transport != "http":
        return "secret headers are for an HTTP server; a stdio server takes secret environment variables"
    if both := sorted(set(server.env) & set(server.secret_env) | set(server.headers) & set(server.secret_headers)):
        return f"{both[0]!r} is given both a value and a secret reference"
    return None


# -- commands ----------------------------------------------------------------------------------


MAX_DECLARED_CONCURRENCY = 1024  # a server's declared capacity; past it, a typo rather than a server


def server_refusal(server: ev.ServerRegistered) -> Refusal | None:
    """Why a server cannot be registered as configured, or None: its name must be a subject token,
    a stdio server needs a command and an http server a url, a declared capacity is at least one
    call, and its secret references must hold."""
    if not is_token(server.name):
        return Refusal(code="invalid_server_name", reason=f"server name {server.name!r} must match {TOKEN_RULE}")
    if server.transport == "stdio" and not server.command:
        return Refusal(code="invalid_server", reason="a stdio server needs a command")
    if server.transport == "http" and not server.url:
        return Refusal(code="invalid_server", reason="an http server needs a url")
    if server.max_concurrency is not None and not 1 <= server.max_concurrency <= MAX_DECLARED_CONCURRENCY:
        return Refusal(
            code="invalid_server",
            reason=f"max_concurrency must be between 1 and {MAX_DECLARED_CONCURRENCY}, not {server.max_concurrency}",
        )
    if problem := secret_reference_problem(server):
        return Refusal(code="invalid_server", reason=problem)
    return None


def registration_refusal(catalog: Catalog, server: ev.ServerRegistered) -> Refusal | None:
    """Why the name is taken: registered with another configuration (the same one again is a
    retry, and goes on)."""
    existing = catalog.servers.get(server.name)
    if existing is None or existing == server:
        return None
    return Refusal(
        code="server_exists",
        reason=f"server {server.name!r} is already registered with another configuration"
        f" ({describe_target(existing)}); `writ server remove {server.name}` first, or pick another name",
    )


def generation_suffix(catalog: Catalog, name: str) -> str:
    """A name registered again after a removal is a new generation: its message ids carry it."""
    generation = catalog.removals.get(name, 0)
    return f":{generation}" if generation else ""


def registered(catalog: Catalog, name: str, *, hint: str = "") -> ev.ServerRegistered | Refusal:
    """The server registered under ``name``, or ``unknown_server`` (``hint`` ends the reason)."""
    server = catalog.servers.get(name)
    if server is None:
        return Refusal(code="unknown_server", reason=f"no server {name!r} is registered{hint}")
    return server


def quarantined(catalog: Catalog, server: str, tool: str) -> ev.ToolDefinition | Refusal:
    """The tool version waiting for an operator, or ``not_quarantined``."""
    pending = catalog.quarantined.get(server, {}).get(tool)
    if pending is None:
        return Refusal(code="not_quarantined", reason=f"{server}/{tool} has no version waiting in quarantine")
    return pending


def accepted_tool(catalog: Catalog, server: str, tool: str) -> ev.ToolDefinition | Refusal:
    """The accepted tool an override applies to, or ``unknown_tool``."""
    definition = catalog.tools.get(server, {}).get(tool)
    if definition is None:
        return Refusal(code="unknown_tool", reason=f"no tool {tool!r} on server {server!r}")
    return definition


def describe_target(server: ev.ServerRegistered) -> str:
    """Where a server is: its URL, or its command line."""
    if server.transport == "http":
        return server.url or ""
    return " ".join([server.command or "", *server.args]).strip()
