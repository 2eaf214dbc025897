"""What the MCP gateway says, decided without I/O: tool names, the tool list, and call results.

Tool names: a tool is listed under its server's own name when no other registered server offers a
tool of that name; where two do, each is listed as ``server__tool`` (Writ's ``server/tool``). The
separator is ``__`` because the model APIs a client hands the list to accept only
``[A-Za-z0-9_-]`` in a function name (OpenAI, Anthropic; MCP itself also allows ``.``, which the
gateway uses with ``--separator .``). Both spellings are accepted in tools/call for every listed
tool, and the gateway maps the name it listed back to the exact ``server/tool`` it stands for, so a
name keeps meaning the tool the client saw listed. What Writ adds to a name (a prefix, an alias,
the separator) is always model-safe; a tool's own name is kept as its server gave it. A tool whose
name does not fit MCP's rule (``[A-Za-z0-9_.-]``, 1-128 characters) is not listed.

The listing is the server's own: the tool as it listed it (title, icons, annotations as given,
outputSchema, _meta), Writ adding only ``writ/tool`` under ``_meta``.

Resources, resource templates and prompts are listed as their servers list them, ``writ/server``
added under ``_meta`` (:func:`offered`); a read, prompt or completion Writ did not complete is a
JSON-RPC error ``WRIT_DID_NOT_COMPLETE`` (:func:`operation_error`).
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import mcp_types as types
from pydantic import ValidationError

from writ.sdk import retry_after
from writ_common.catalog import GATEWAY_SEPARATORS as SEPARATORS
from writ_common.digest import sha256_digest
from writ_common.events import Receipt
from writ_common.mcp_client import IDEMPOTENCY_META_KEY

SEPARATOR = "__"  # between a server's prefix and a tool's name, by default
MCP_TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
# What model APIs accept as a function name (OpenAI, Anthropic): a listed name outside it is logged.
MODEL_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A prefix (alias) of its own: no separator inside it, none at its ends.
PREFIX = re.compile(r"[A-Za-z0-9-]+(?:_[A-Za-z0-9-]+)*")

# Keys of the results' _meta: which intent answered, how it ended.
INTENT_META_KEY = "writ/intent_id"
STATUS_META_KEY = "writ/status"
CODE_META_KEY = "writ/code"
STAGE_META_KEY = "writ/stage"
REASON_META_KEY = "writ/reason"
RETRY_AFTER_META_KEY = "writ/retry_after_ms"  # an `overloaded` answer: when to call again
# Key of a listed tool's _meta: the Writ tool it stands for (server/tool).
TOOL_META_KEY = "writ/tool"

__all__ = [
    "IDEMPOTENCY_META_KEY",
    "WRIT_DID_NOT_COMPLETE",
    "Listing",
    "Naming",
    "Offered",
    "call_result",
    "callable_tools",
    "idempotency_key",
    "listing",
    "mcp_tool_name",
    "not_completed",
    "offered",
    "operation_error",
    "pending_result",
    "receipt_meta",
    "refusal_result",
    "renamed",
    "template_pattern",
    "upstream_error",
]


def mcp_tool_name(server: str, tool: str, naming: Naming | None = None) -> str | None:
    """``server__tool`` (``alias__tool`` when the server has an alias; ``.`` when the naming says
    so), or None when that cannot be an MCP tool name."""
    naming = naming or Naming()
    name = f"{naming.aliases.get(server, server)}{naming.separator}{tool}"
    return name if MCP_TOOL_NAME.fullmatch(name) else None


@dataclass(frozen=True, slots=True)
class Naming:
    """How the gateway names tools for its clients, as its operator configured it.

    ``prefixed``: every tool is ``SERVER__TOOL``, so no name ever changes when a server is added
    (by default a tool keeps its bare name while it is unique across servers, and turns
    ``SERVER__TOOL`` when a second server offers the same name; the gateway then says so in its
    log and in tools/list_changed). ``aliases``: the prefix a server's tools take instead of the
    server's own name (a short or stable one). ``separator``: ``__`` or ``.``."""

    prefixed: bool = False
    aliases: Mapping[str, str] = field(default_factory=dict)
    separator: str = SEPARATOR

    def refusal(self) -> str | None:
        """Why this naming cannot be used, or None: an alias must be a name prefix of its own and
        may not stand for two servers."""
        if self.separator not in SEPARATORS:
            return f"separator {self.separator!r}: use one of {', '.join(SEPARATORS)}"
        seen: dict[str, str] = {}
        for server, alias in self.aliases.items():
            if len(alias) > 32 or not PREFIX.fullmatch(alias):
                return (
                    f"alias {alias!r} for {server!r}: use up to 32 letters, digits, '-' or single '_'"
                    " inside (no '.', no '__')"
                )
            if (other := seen.setdefault(alias, server)) != server:
                return f"alias {alias!r} stands for both {other!r} and {server!r}"
        return None


@dataclass(frozen=True, slots=True)
class Listing:
    """What tools/list answers, and how tools/call reads a name back."""

    tools: list[types.Tool] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # every accepted MCP spelling -> server/tool
    digest: str = ""  # of the listed tools: a new one means the list changed

    def writ_name(self, mcp_name: str) -> str | None:
        return self.names.get(mcp_name)


def listing(rows: Iterable[Mapping[str, Any]], naming: Naming | None = None) -> Listing:
    """The registry's tool rows (``list_tools``) as MCP tools, named by ``naming``: accepted ones
    only. A tool with a version waiting in quarantine is left out too, since Writ refuses every
    call to it until an operator accepts that version."""
    naming = naming or Naming()
    rows = list(rows)
    waiting = {(r["server"], r["name"]) for r in rows if r.get("status") != "accepted"}
    # A bare name is Writ's too only while one server offers it (quarantined or not: Catalog.resolve).
    offered_by = Counter(name for name in {(r["server"], r["name"]) for r in rows})
    offered = Counter(name for _server, name in offered_by)
    tools: list[types.Tool] = []
    names: dict[str, str] = {}
    aliases: dict[str, str] = {}
    for row in rows:
        server, tool = row["server"], row["name"]
        if row.get("status") != "accepted" or (server, tool) in waiting:
            continue
        writ_name = f"{server}/{tool}"
        prefixed = mcp_tool_name(server, tool, naming)
        bare = not naming.prefixed and offered[tool] == 1 and MCP_TOOL_NAME.fullmatch(tool)
        name = tool if bare else prefixed
        if name is None or name in names:
            continue
        names[name] = writ_name
        for separator in SEPARATORS:  # every listed tool answers to both spellings
            spelled = mcp_tool_name(server, tool, replace(naming, separator=separator))
            if spelled is not None:
                aliases.setdefault(spelled, writ_name)
        tools.append(_mcp_tool(name, writ_name, row))
    for alias, writ_name in aliases.items():
        names.setdefault(alias, writ_name)
    dumped = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools]
    return Listing(tools=tools, names=names, digest=sha256_digest(dumped))


def renamed(before: Listing, after: Listing) -> list[tuple[str, str, str]]:
    """``(server/tool, old name, new name)`` for each tool listed in both under another name."""
    was = {str((t.meta or {}).get("writ/tool")): t.name for t in before.tools}
    return [
        (w, was[w], t.name)
        for t in after.tools
        if (w := str((t.meta or {}).get("writ/tool"))) in was and was[w] != t.name
    ]


def callable_tools(rows: Iterable[Mapping[str, Any]]) -> list[types.Tool]:
    """The MCP tools of :func:`listing`."""
    return listing(rows).tools


def _mcp_tool(name: str, writ_name: str, row: Mapping[str, Any]) -> types.Tool:
    listed = row.get("listed")
    if isinstance(listed, dict):
        meta = {**(listed.get("_meta") or {}), TOOL_META_KEY: writ_name}
        return types.Tool.model_validate({**listed, "name": name, "_meta": meta})
    # Pinned before Writ kept the server's own listing: what it kept (`writ server refresh` brings the rest).
    hints = row.get("annotations") or {}
    return types.Tool(
        name=name,
        description=row.get("description"),
        input_schema=row.get("input_schema") or {"type": "object"},
        output_schema=row.get("output_schema"),
        annotations=types.ToolAnnotations(
            read_only_hint=hints.get("read_only"),
            destructive_hint=hints.get("destructive"),
            idempotent_hint=hints.get("idempotent"),
            open_world_hint=hints.get("open_world"),
        ),
        meta={TOOL_META_KEY: writ_name},
    )


def idempotency_key(meta: Mapping[str, Any] | None) -> str | None:
    """The caller's idempotency key from the request's ``_meta``; a fresh one when it sent none;
    None when it sent something that is not a non-empty string."""
    given = (meta or {}).get(IDEMPOTENCY_META_KEY)
    if given is None:
        return str(uuid.uuid4())
    return given if isinstance(given, str) and given else None


def _meta(intent_id: str | None, status: str, code: str, key: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {STATUS_META_KEY: status, CODE_META_KEY: code}
    if intent_id:
        meta[INTENT_META_KEY] = intent_id
    if key:
        meta[IDEMPOTENCY_META_KEY] = key
    return meta


def receipt_meta(receipt: Receipt, key: str) -> dict[str, Any]:
    """Writ's word on a call, for a result's ``_meta``: status, stage, code, reason, intent, key;
    and for an ``overloaded`` answer, the retry-after in milliseconds."""
    meta = {
        **_meta(receipt.intent_id, receipt.status, receipt.code, key),
        STAGE_META_KEY: receipt.stage,
        REASON_META_KEY: receipt.reason,
    }
    if (wait := retry_after(receipt)) is not None:
        meta[RETRY_AFTER_META_KEY] = round(wait * 1000)
    return meta


def _text(text: str) -> types.TextContent:
    return types.TextContent(type="text", text=text)


def _without_code(code: str, reason: str) -> str:
    return reason.removeprefix(f"{code}: ")


def upstream_error(receipt: Receipt, key: str) -> types.ErrorData | None:
    """The JSON-RPC error the tool's server answered the call with (the executor keeps it as the
    failure's result), to pass on with its own code; None when the call did not end that way. Its
    data is the server's, else Writ's ``_meta`` keys (which intent, how it ended)."""
    error = (receipt.result or {}).get("error") if receipt.status == "failed" else None
    if not isinstance(error, dict) or isinstance(error.get("code"), bool) or not isinstance(error.get("code"), int):
        return None
    message = error.get("message")
    data = error.get("data", receipt_meta(receipt, key))
    return types.ErrorData(code=error["code"], message=message if isinstance(message, str) else "", data=data)


def call_result(receipt: Receipt, key: str) -> types.CallToolResult:
    """The receipt as the tool's answer: the tool's own result when it ran and answered, an error
    result included (``isError`` with its own content, nothing of Writ's before it); otherwise
    ``isError`` with one text saying why Writ did not complete the call. Writ's status, stage, code,
    reason and intent id always go in ``_meta``."""
    meta = receipt_meta(receipt, key)
    tool_output = _tool_result(receipt.result)
    if receipt.status == "succeeded":
        if tool_output is None:  # nothing the MCP types accept: show it as JSON rather than lose it
            return types.CallToolResult(content=[_text(json.dumps(receipt.result))], meta=meta)
        return tool_output.model_copy(update={"meta": {**(tool_output.meta or {}), **meta}})
    if receipt.status == "failed" and tool_output is not None and tool_output.is_error:
        return tool_output.model_copy(update={"meta": {**(tool_output.meta or {}), **meta}})
    what = f"Writ did not complete this call: {receipt.status} at {receipt.stage} ({receipt.code})"
    text = f"{what}: {_without_code(receipt.code, receipt.reason)}\nintent: {receipt.intent_id}"
    if receipt.status == "outcome_unknown":
        text += "\nthe tool may or may not have run; an operator settles it with `writ intent reconcile`"
    return types.CallToolResult(content=[_text(text)], is_error=True, meta=meta)


def _tool_result(result: dict[str, Any] | None) -> types.CallToolResult | None:
    if result is None:
        return None
    try:
        return types.CallToolResult.model_validate(result)
    except ValidationError:
        return None


def pending_result(intent_id: str, key: str, waited: float, *, awaiting_approval: bool) -> types.CallToolResult:
    """No receipt within the gateway's timeout: the intent goes on without us; say how to re-attach."""
    where = "awaiting human approval" if awaiting_approval else "still in flight"
    text = (
        f"Writ has no outcome for this call yet after {waited:g}s: intent {intent_id} is {where}.\n"
        f'Call this tool again with _meta {{"{IDEMPOTENCY_META_KEY}": "{key}"}} to re-attach to the same'
        " intent (it never runs twice)."
    )
    status = "awaiting_approval" if awaiting_approval else "pending"
    return types.CallToolResult(content=[_text(text)], is_error=True, meta=_meta(intent_id, status, "pending", key))


def refusal_result(code: str, message: str, key: str | None = None) -> types.CallToolResult:
    """The gateway could not submit the call at all (bad input, the plane unreachable)."""
    text = f"Writ did not take this call: {code}: {_without_code(code, message)}"
    return types.CallToolResult(content=[_text(text)], is_error=True, meta=_meta(None, "not_submitted", code, key))


# -- resources, prompts, completion: listed as the servers list them, each read a governed intent --

# The JSON-RPC error code of a resource, prompt or completion request Writ did not complete (denied,
# rejected, expired, still pending...): in the range JSON-RPC leaves to the implementation, apart
# from the codes the MCP SDK uses (-32000 connection closed, -32001 request timeout, -32002
# resource not found). Writ's status, stage, code, reason and intent id are its data.
WRIT_DID_NOT_COMPLETE = -32010
SERVER_META_KEY = "writ/server"  # a listed resource's, template's or prompt's server
_TEMPLATE_VARIABLE = re.compile(r"\{[^}]*\}")


@dataclass(frozen=True, slots=True)
class Offered:
    """What the servers list beyond tools, merged, and which server each item is read back from."""

    resources: list[types.Resource] = field(default_factory=list)
    templates: list[types.ResourceTemplate] = field(default_factory=list)
    prompts: list[types.Prompt] = field(default_factory=list)
    uris: dict[str, str] = field(default_factory=dict)  # resource URI -> server
    template_servers: list[tuple[re.Pattern[str], str, str]] = field(default_factory=list)  # (match, template, server)
    prompt_names: dict[str, tuple[str, str]] = field(default_factory=dict)  # listed name -> (server, prompt)

    def server_of_uri(self, uri: str) -> str | None:
        """The server a resource URI is read from: the one listing it, else the one whose template it fits."""
        if uri in self.uris:
            return self.uris[uri]
        return next((server for pattern, _t, server in self.template_servers if pattern.fullmatch(uri)), None)

    def server_of_template(self, template: str) -> str | None:
        return next((server for _p, t, server in self.template_servers if t == template), None)


def _with_server(item: Mapping[str, Any], server: str) -> dict[str, Any]:
    return {**item, "_meta": {**(item.get("_meta") or {}), SERVER_META_KEY: server}}


def template_pattern(template: str) -> re.Pattern[str]:
    """A URI template (RFC 6570, simple expansion) as a pattern its expansions fully match."""
    parts = _TEMPLATE_VARIABLE.split(template)
    return re.compile("[^/?#]+".join(re.escape(p) for p in parts))


def offered(
    resources: Iterable[Mapping[str, Any]],
    templates: Iterable[Mapping[str, Any]],
    prompts: Iterable[Mapping[str, Any]],
    naming: Naming | None = None,
) -> Offered:
    """The executor's ``list_offered`` answers (``[{server, items}]`` each) as one listing. A
    resource URI two servers list is read from the first by server name; a prompt name two servers
    offer is listed as ``SERVER__NAME`` by each, as tools are."""
    result = Offered()
    for answer in resources:
        for item in answer["items"]:
            if item.get("uri") in result.uris:
                continue
            result.uris[item["uri"]] = answer["server"]
            result.resources.append(types.Resource.model_validate(_with_server(item, answer["server"])))
    for answer in templates:
        for item in answer["items"]:
            template = item.get("uriTemplate", "")
            result.template_servers.append((template_pattern(template), template, answer["server"]))
            result.templates.append(types.ResourceTemplate.model_validate(_with_server(item, answer["server"])))
    rows = [(answer["server"], item) for answer in prompts for item in answer["items"]]
    offered_by = Counter(item.get("name") for _server, item in rows)
    for server, item in rows:
        name = item.get("name", "")
        listed = name if offered_by[name] == 1 else f"{server}{(naming or Naming()).separator}{name}"
        if listed in result.prompt_names:
            continue
        result.prompt_names[listed] = (server, name)
        result.prompts.append(types.Prompt.model_validate({**_with_server(item, server), "name": listed}))
    return result


def operation_error(receipt: Receipt, key: str) -> types.ErrorData:
    """Why Writ did not complete a resource, prompt or completion request: the server's own JSON-RPC
    error when it refused, else Writ's (``WRIT_DID_NOT_COMPLETE``) with the status, stage, code,
    reason and intent id in its message and its data."""
    if (error := upstream_error(receipt, key)) is not None:
        return error
    what = f"Writ did not complete this request: {receipt.status} at {receipt.stage} ({receipt.code})"
    text = f"{what}: {_without_code(receipt.code, receipt.reason)}; intent {receipt.intent_id}"
    return types.ErrorData(code=WRIT_DID_NOT_COMPLETE, message=text, data=receipt_meta(receipt, key))


def not_completed(code: str, message: str, key: str | None = None, intent_id: str | None = None) -> types.ErrorData:
    """Writ could not submit, or has no outcome yet for, a resource, prompt or completion request."""
    status = "pending" if code == "pending" else "not_submitted"
    return types.ErrorData(
        code=WRIT_DID_NOT_COMPLETE,
        message=f"Writ did not complete this request: {code}: {_without_code(code, message)}",
        data=_meta(intent_id, status, code, key),
    )
