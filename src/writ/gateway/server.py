"""The MCP gateway: one MCP server whose tools are the registry's accepted tools, each call a signed
intent submitted as one agent, answered from its receipt. Served over stdio or streamable HTTP
(127.0.0.1 only) with the ``mcp`` SDK's own transports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import uuid
import warnings
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
import nats.errors
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.shared.message import ServerMessageMetadata
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from writ.gateway.notices import held_elsewhere, holders_of, list_change_of, updated_of
from writ.gateway.translate import (
    MODEL_TOOL_NAME,
    Listing,
    Naming,
    Offered,
    call_result,
    idempotency_key,
    listing,
    not_completed,
    offered,
    operation_error,
    pending_result,
    receipt_meta,
    refusal_result,
    renamed,
    upstream_error,
)
from writ.sdk import ReceiptTimeout, WritAgent, request_cancel
from writ_common import commands, subjects
from writ_common import events as ev
from writ_common.bus import last_on_subject
from writ_common.commands import CommandError
from writ_common.ids import derive_intent_id
from writ_common.operations import PROMPT_REF, RESOURCE_REF

LIST_TIMEOUT = 5.0
CANCEL_REQUEST_TIMEOUT = 5.0  # seconds a cancelled call's request to cancel its intent may take
HTTP_PATH = "/mcp"
# An intent's events (the last token of their subjects) reported as progress: (order, what it says).
_STAGES = {
    subjects.event_token(event_type): (order, status.replace("_", " "))
    for order, (event_type, status) in enumerate(ev.STAGE_STATUS.items(), start=1)
}
_LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
WATCH_INTERVAL = 2.0  # seconds between two looks at the registry's accepted tools, for tools/list_changed
RELEASE_TIMEOUT = 10.0  # seconds the gateway gives the unsubscribes of clients that left, as it stops


@dataclass(frozen=True, slots=True)
class CallOptions:
    """How every call through this gateway is submitted and awaited."""

    on_behalf_of: str | None
    timeout: float  # seconds a call waits for its receipt
    deadline_seconds: float  # the intent's own deadline, however long the caller waits
    via: str = "writ-gateway/stdio"  # said in every intent and its receipt: the gateway signed for the client
    naming: Naming = field(default_factory=Naming)  # how tools are named for clients


@dataclass(eq=False)
class _Client:
    """One client connection: the resources it subscribed to through this gateway (URI -> server)
    and the notifications waiting to be sent to it (kind, URI)."""

    uris: dict[str, str] = field(default_factory=dict)
    outbox: asyncio.Queue[tuple[str, str]] = field(default_factory=asyncio.Queue)


class Gateway:
    """The gateway's two MCP handlers, speaking to Writ as ``agent``."""

    def __init__(self, agent: WritAgent, options: CallOptions) -> None:
        self.agent = agent
        self.options = options
        self.listing = Listing()  # the last one listed: how tools/call reads a name back
        self.offered = Offered()  # the resources, templates and prompts last listed: where each is read
        # Per client connection (connection_of a handler's session), gone with it.
        self._log_levels: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._clients: weakref.WeakKeyDictionary[Any, _Client] = weakref.WeakKeyDictionary()
        self._subscribing: dict[str, asyncio.Lock] = {}  # by URI: one subscribe or unsubscribe at a time
        self._releases: set[asyncio.Task[None]] = set()  # unsubscribes for clients that left
        self._said_unsafe: set[str] = set()  # listed names model APIs refuse, already said in the log

    async def watch_tools(self, interval: float = WATCH_INTERVAL) -> None:
        """Look at the registry's accepted tools every ``interval`` seconds, and wake every client
        connection when what the gateway lists has changed (a tool accepted, quarantined, removed).

        The agent's bus user may not read the registry's stream, only ask ``list_tools``: so it asks.
        """
        seen: str | None = None
        digest: str | None
        while True:
            try:
                digest = (await self.refresh_listing()).digest
            except (CommandError, nats.errors.Error):
                digest = seen  # the plane unreachable for a moment: nothing to announce
            if seen is not None and digest != seen:
                self._tell_all("tools")
            seen = digest
            await asyncio.sleep(interval)

    def _tell_all(self, kind: str, uri: str = "") -> None:
        for client in list(self._clients.values()):
            client.outbox.put_nowait((kind, uri))

    def _client(self, session: Any) -> _Client:
        connection = connection_of(session)
        client = self._clients.get(connection)
        if client is None:
            client = self._clients[connection] = _Client()
        return client

    async def serve_client(self, ctx: ServerRequestContext[Any], _params: types.NotificationParams) -> None:
        """Runs for the life of one client connection (from its notifications/initialized): sends it
        what concerns it unasked: tools/list_changed when the listing changes, resources and prompts
        list_changed when a server says so, resources/updated for the URIs it subscribed to. The SDK
        cancels this handler with the connection's other handlers when the connection closes: then
        what it alone still held is unsubscribed on its behalf."""
        client = self._client(ctx.session)
        send = {
            "tools": ctx.session.send_tool_list_changed,
            "resources": ctx.session.send_resource_list_changed,
            "prompts": ctx.session.send_prompt_list_changed,
        }
        try:
            while True:
                kind, uri = await client.outbox.get()
                if kind == "updated":
                    if uri in client.uris:  # not if it unsubscribed meanwhile
                        await ctx.session.send_resource_updated(uri)
                else:
                    await send[kind]()
        finally:
            self._clients.pop(connection_of(ctx.session), None)
            if client.uris:
                task = asyncio.get_running_loop().create_task(self._release(dict(client.uris)))
                self._releases.add(task)
                task.add_done_callback(self._releases.discard)

    async def watch_notices(self) -> None:
        """Hear what the executor says for this agent's clients: a resource one of them subscribed
        to changed (``writ.notice.<agent>.resources.updated``), a server's resources or prompts
        listing changed (``writ.list_changed.<server>.<kind>``, for every agent). A notice that is
        not one is ignored (and said in the log); the relay goes on."""
        nc = self.agent.nc
        updated = await nc.subscribe(subjects.resource_updated_subject(self.agent.agent_id))
        changed = await nc.subscribe(subjects.LIST_CHANGED_FILTER)

        async def updates() -> None:
            async for msg in updated.messages:
                self.on_updated(msg.data)

        async def changes() -> None:
            async for msg in changed.messages:
                self.on_list_changed(msg.subject)

        try:
            await asyncio.gather(updates(), changes())
        finally:
            for sub in (updated, changed):
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()

    def on_updated(self, data: bytes) -> None:
        update = updated_of(data)
        if update is None:
            log(f"ignored a resources/updated notice that is not one ({len(data)} bytes)")
            return
        for session in holders_of({session: client.uris for session, client in list(self._clients.items())}, update):
            self._clients[session].outbox.put_nowait(("updated", update.uri))

    def on_list_changed(self, subject: str) -> None:
        kind = list_change_of(subject)
        if kind is None:
            log(f"ignored a list-changed notice on {subject!r}")
            return
        self._tell_all(kind)

    async def released(self, timeout: float = RELEASE_TIMEOUT) -> None:
        """Wait (at most ``timeout`` seconds) for the unsubscribes of the clients that left."""
        if self._releases:
            await asyncio.wait(set(self._releases), timeout=timeout)

    async def list_tools(self, _ctx: Any, _params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        # Asked afresh each time, so a tool accepted a moment ago is listed (and a quarantined one is not).
        try:
            listed = await self.refresh_listing()
        except (CommandError, nats.errors.Error) as exc:
            raise MCPError(types.INTERNAL_ERROR, f"cannot list Writ's tools: {_described(exc)}") from exc
        return types.ListToolsResult(tools=listed.tools)

    async def refresh_listing(self) -> Listing:
        """The registry's accepted tools as listed now (and remembered for tools/call). A tool
        whose name changed (a second server now offers its bare name) is said in the log."""
        before = self.listing
        self.listing = listing(await self._registry_tools(), self.options.naming)
        for writ_name, old, new in renamed(before, self.listing):
            log(f"{writ_name} is listed as {new!r} now, not {old!r}: another server offers a tool of that name")
        if self.listing.digest != before.digest:
            for tool in self.listing.tools:
                if not MODEL_TOOL_NAME.fullmatch(tool.name) and tool.name not in self._said_unsafe:
                    self._said_unsafe.add(tool.name)
                    log(f"{tool.name!r} (its server's own name) is not a name model APIs accept ([A-Za-z0-9_-], 1-64)")
        return self.listing

    async def writ_name(self, mcp_name: str) -> str:
        """The ``server/tool`` an MCP tool name stands for: as last listed; else as listed now; else
        the name as given (the registry reads ``server/tool``, a bare name unique across servers and
        the gateway's spellings itself, and says why when it knows no such tool)."""
        if (known := self.listing.writ_name(mcp_name)) is not None:
            return known
        try:
            known = (await self.refresh_listing()).writ_name(mcp_name)
        except (CommandError, nats.errors.Error):
            known = None
        return known or mcp_name

    async def _registry_tools(self) -> list[dict[str, Any]]:
        try:
            rows = await commands.call(self.agent.nc, "registry", "list_tools", {}, timeout=LIST_TIMEOUT)
        except CommandError as exc:
            if exc.code != "timeout":
                raise
            # A reply can be lost when nats-server reloads its users (an agent registered) meanwhile.
            rows = await commands.call(self.agent.nc, "registry", "list_tools", {}, timeout=LIST_TIMEOUT)
        return list(rows)

    async def call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        key = idempotency_key(params.meta)
        if key is None:
            return refusal_result("invalid_idempotency_key", "the _meta idempotency key must be a non-empty string")
        intent_id = derive_intent_id(self.agent.agent_id, key)
        wire_meta = (ctx.params or {}).get("_meta")  # as the client sent it (the typed one renames keys)
        wants_progress = isinstance(wire_meta, dict) and wire_meta.get("progressToken") is not None
        async with (
            self._cancelled_with_its_request(repr(params.name), intent_id, key),
            self._relayed(ctx, intent_id, wants_progress=wants_progress),
        ):
            return await self._call(params, key)

    @asynccontextmanager
    async def _cancelled_with_its_request(self, name: str, intent_id: str, key: str) -> AsyncIterator[None]:
        """notifications/cancelled (or the connection closed) cancels the handler: the SDK answers
        nothing (as MCP asks), and the agent asks Writ to cancel the intent, shielded so the request
        goes out while the handler is being cancelled."""
        try:
            yield
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True), anyio.move_on_after(CANCEL_REQUEST_TIMEOUT):
                await self._request_cancel(name, intent_id, key)
            raise

    async def _request_cancel(self, name: str, intent_id: str, key: str) -> None:
        try:
            asked = await request_cancel(
                self.agent.nc, self.agent.agent_id, intent_id, reason="notifications/cancelled from the MCP client"
            )
        except (nats.errors.Error, OSError) as exc:
            log(f"call {name} cancelled by the client; could not ask Writ to cancel intent {intent_id}: {exc}")
            return
        if asked:
            log(
                f"call {name} cancelled (by the client, or its connection closed); Writ was asked to cancel intent"
                f" {intent_id}: not yet run, it ends cancelled; its call running, the call is cancelled upstream;"
                f" already ended, it stays as it ended (`writ receipt show {intent_id}`). The key {key!r} names"
                " that intent for good: call again with it to read its outcome, with a new key to run it anew"
            )
        else:
            log(f"call {name} cancelled by the client before its intent {intent_id} was submitted")

    @asynccontextmanager
    async def _relayed(
        self, ctx: ServerRequestContext[Any], intent_id: str, *, wants_progress: bool
    ) -> AsyncIterator[None]:
        """While the body runs, pass the caller what concerns its call: the intent's stages as they
        are recorded (submitted, authenticated, planned, awaiting approval, authorized, executing:
        progress 1-6) and then the tool's own progress (6 + its progress), when it sent a
        progressToken; and the log messages the tool's server sent during the call, at or above the
        level the client set. The agent's bus user hears its own intents' events and notices."""
        reached = 0.0
        level = _LOG_LEVELS.index(self._log_levels.get(connection_of(ctx.session), "debug"))

        def rank(said_level: Any) -> int:
            return _LOG_LEVELS.index(said_level) if said_level in _LOG_LEVELS else -1

        async def stages(sub: Subscription) -> None:
            nonlocal reached
            async for msg in sub.messages:
                stage = _STAGES.get(msg.subject.rsplit(".", 1)[-1])
                if stage is not None and stage[0] > reached:
                    reached = float(stage[0])
                    await ctx.session.report_progress(reached, message=stage[1])

        async def notices(sub: Subscription) -> None:
            nonlocal reached
            async for msg in sub.messages:
                said = json.loads(msg.data)
                kind = msg.subject.rsplit(".", 1)[-1]
                if kind == "progress" and wants_progress and isinstance(said.get("progress"), int | float):
                    done = len(_STAGES) + float(said["progress"])
                    total = said.get("total")
                    if done > reached:
                        reached = done
                        whole = len(_STAGES) + float(total) if isinstance(total, int | float) else None
                        await ctx.session.report_progress(done, whole, said.get("message"))
                elif kind == "input" and msg.reply:
                    tasks.append(asyncio.create_task(self._answer_input(ctx, msg)))
                elif kind == "message" and rank(said.get("level")) >= level:
                    await ctx.session.send_log_message(
                        said["level"], said.get("data"), said.get("logger"), related_request_id=ctx.request_id
                    )

        nc = self.agent.nc
        subs = [await nc.subscribe(subjects.relay_notice_subject(self.agent.agent_id, intent_id, "*"))]
        tasks = [asyncio.create_task(notices(subs[0]))]
        if wants_progress:
            subs.append(await nc.subscribe(subjects.intent_filter(self.agent.agent_id, intent_id)))
            tasks.append(asyncio.create_task(stages(subs[1])))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            with anyio.CancelScope(shield=True):
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError, nats.errors.Error, ValueError):
                        await task
                for sub in subs:
                    with contextlib.suppress(nats.errors.Error):
                        await sub.unsubscribe()

    async def _answer_input(self, ctx: ServerRequestContext[Any], msg: Msg) -> None:
        """A server asked this call's client for input (relayed by the executor): ask the client,
        as part of its tools/call, and reply with its result or its error."""
        try:
            result = await ask_client(ctx, json.loads(msg.data))
            body: dict[str, Any] = {"result": result}
        except MCPError as exc:
            body = {"error": {"code": exc.code, "message": exc.message}}
        except Exception as exc:  # the request could not be put to the client: the server hears why
            body = {
                "error": {"code": types.INTERNAL_ERROR, "message": f"writ gateway: could not ask the client: {exc!r}"}
            }
        body["via"] = self.options.via
        with contextlib.suppress(nats.errors.Error):
            await msg.respond(json.dumps(body).encode())

    async def _call(self, params: types.CallToolRequestParams, key: str) -> types.CallToolResult:
        try:
            async with self.agent.receipt_notices(derive_intent_id(self.agent.agent_id, key)) as listening:
                return await self._submit_call(params, key, listening)
        except nats.errors.Error as exc:  # the bus gone before the call could even listen for its receipt
            return refusal_result("writ_unavailable", _described(exc), key)

    async def _submit_call(
        self, params: types.CallToolRequestParams, key: str, listening: Subscription
    ) -> types.CallToolResult:
        try:
            submission = await self.agent.submit(
                await self.writ_name(params.name),
                params.arguments or {},
                idempotency_key=key,
                on_behalf_of=self.options.on_behalf_of,
                deadline_seconds=self.options.deadline_seconds,
                via=self.options.via,
            )
        except ValueError as exc:  # outside canonical JSON, so it cannot be signed
            return refusal_result("invalid_arguments", str(exc), key)
        except nats.errors.Error as exc:
            return refusal_result("writ_unavailable", _described(exc), key)
        try:
            receipt = await self.agent.receipt(
                submission.intent_id, self.options.timeout, listening=None if submission.duplicate else listening
            )
        except ReceiptTimeout:
            return pending_result(
                submission.intent_id,
                key,
                self.options.timeout,
                awaiting_approval=await self._awaits_approval(submission.intent_id),
            )
        except nats.errors.Error as exc:
            return refusal_result(
                "writ_unavailable", f"submitted as {submission.intent_id}, then {_described(exc)}", key
            )
        if (error := upstream_error(receipt, key)) is not None:
            raise MCPError.from_error_data(error)  # the server's own JSON-RPC error, with its code
        return call_result(receipt, key)

    async def _awaits_approval(self, intent_id: str) -> bool:
        subject = subjects.intent_subject(self.agent.agent_id, intent_id, "approval.requested")
        try:
            return await last_on_subject(self.agent.nc.jetstream(), subjects.INTENTS_STREAM, subject) is not None
        except nats.errors.Error:
            return False  # only for the wording: "still in flight"

    # -- resources, prompts, completion ---------------------------------------------------------

    async def refresh_offered(self) -> Offered:
        """What the servers list beyond tools, asked afresh (and remembered for reading back)."""
        try:
            answers = await asyncio.gather(
                *(
                    commands.call(self.agent.nc, "executor", "list_offered", {"method": m}, timeout=LIST_TIMEOUT * 3)
                    for m in ("resources/list", "resources/templates/list", "prompts/list")
                )
            )
        except (CommandError, nats.errors.Error) as exc:
            raise MCPError(types.INTERNAL_ERROR, f"cannot list what Writ's servers offer: {_described(exc)}") from exc
        resources, templates, prompts = answers
        self.offered = offered(resources, templates, prompts, self.options.naming)
        return self.offered

    async def list_resources(
        self, _ctx: Any, _params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=(await self.refresh_offered()).resources)

    async def list_resource_templates(
        self, _ctx: Any, _params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=(await self.refresh_offered()).templates)

    async def list_prompts(self, _ctx: Any, _params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=(await self.refresh_offered()).prompts)

    async def _server_of(self, find: Callable[[Offered], str | None], what: str) -> str:
        """The server ``find`` names in the last listing, else in a fresh one; an MCP error if none."""
        server = find(self.offered) or find(await self.refresh_offered())
        if server is None:
            raise MCPError(types.INVALID_PARAMS, f"no server Writ governs offers {what}")
        return server

    async def _resource_server(self, uri: str) -> str:
        try:
            return await self._server_of(lambda o: o.server_of_uri(uri), f"the resource {uri!r}")
        except MCPError:
            raise MCPError(-32002, f"Resource not found: no server Writ governs lists {uri!r}", {"uri": uri}) from None

    async def _prompt(self, name: str) -> tuple[str, str]:
        found = self.offered.prompt_names.get(name) or (await self.refresh_offered()).prompt_names.get(name)
        if found is None:
            raise MCPError(types.INVALID_PARAMS, f"no server Writ governs offers the prompt {name!r}")
        return found

    async def read_resource(
        self, ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = str(params.uri)
        result = await self._operate(ctx, "read_resource", await self._resource_server(uri), uri, {})
        return types.ReadResourceResult.model_validate(result)

    def _lock_of(self, uri: str) -> asyncio.Lock:
        return self._subscribing.setdefault(uri, asyncio.Lock())

    async def subscribe_resource(
        self, ctx: ServerRequestContext[Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        """Every client's subscribe is its own intent (its own decision and receipt), even where
        another client of this gateway holds the URI already (the executor subscribes once)."""
        uri = str(params.uri)
        server = await self._resource_server(uri)
        async with self._lock_of(uri):
            done = await self._operate(ctx, "subscribe_resource", server, uri, {})
            self._client(ctx.session).uris[uri] = server
        return types.EmptyResult.model_validate(done)

    async def unsubscribe_resource(
        self, ctx: ServerRequestContext[Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        """An intent only when no other client of this gateway still holds the URI; else this
        client alone stops hearing of it, and the subscription (the agent's) stays."""
        uri = str(params.uri)
        async with self._lock_of(uri):
            client = self._client(ctx.session)
            others = (held for conn, held in list(self._clients.items()) if conn is not connection_of(ctx.session))
            if held_elsewhere((c.uris for c in others), uri):
                client.uris.pop(uri, None)
                return types.EmptyResult.model_validate(
                    {"_meta": {"writ/unsubscribed": "this client only: another client of this gateway holds it"}}
                )
            server = client.uris.get(uri) or await self._resource_server(uri)
            done = await self._operate(ctx, "unsubscribe_resource", server, uri, {})
            client.uris.pop(uri, None)
        return types.EmptyResult.model_validate(done)

    async def _release(self, uris: dict[str, str]) -> None:
        """A client left holding ``uris``: unsubscribe, on its behalf, each that no other client of
        this gateway holds (best effort: each is an intent of its own, said in the log)."""
        for uri, server in sorted(uris.items()):
            async with self._lock_of(uri):
                if held_elsewhere((c.uris for c in list(self._clients.values())), uri):
                    continue
                key = f"writ-gateway-left-{uuid.uuid4().hex}"
                try:
                    await self._run_operation("unsubscribe_resource", server, uri, {}, key)
                    log(f"a client left subscribed to {uri!r}; unsubscribed on its behalf (key {key})")
                except MCPError as exc:
                    log(f"a client left subscribed to {uri!r}; could not unsubscribe on its behalf: {exc.message}")

    async def get_prompt(
        self, ctx: ServerRequestContext[Any], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult:
        server, name = await self._prompt(params.name)
        arguments = {"arguments": dict(params.arguments)} if params.arguments else {}
        return types.GetPromptResult.model_validate(await self._operate(ctx, "get_prompt", server, name, arguments))

    async def complete(
        self, ctx: ServerRequestContext[Any], params: types.CompleteRequestParams
    ) -> types.CompleteResult:
        ref = params.ref
        if isinstance(ref, types.PromptReference):
            server, target = await self._prompt(ref.name)
            ref_type = PROMPT_REF
        else:
            target, ref_type = ref.uri, RESOURCE_REF
            server = await self._server_of(lambda o: o.server_of_template(target), f"the resource template {target!r}")
        arguments: dict[str, Any] = {"ref_type": ref_type, "argument": params.argument.model_dump(mode="json")}
        if params.context is not None and params.context.arguments:
            arguments["context"] = {"arguments": dict(params.context.arguments)}
        return types.CompleteResult.model_validate(await self._operate(ctx, "complete", server, target, arguments))

    async def set_logging_level(
        self, ctx: ServerRequestContext[Any], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        # The lowest level of the log messages this client is passed from its calls' servers; not
        # sent upstream, where one session serves every agent (docs/gateway.md).
        self._log_levels[connection_of(ctx.session)] = params.level
        return types.EmptyResult()

    async def _operate(
        self, ctx: ServerRequestContext[Any], operation: str, server: str, target: str, arguments: dict[str, Any]
    ) -> dict[str, Any]:
        """Submit ``operation`` on ``server``'s ``target`` as a signed intent and wait for its
        receipt: the server's own result when it succeeded; an MCP error otherwise (the server's own
        JSON-RPC error when it refused, else Writ's saying why, with the intent id)."""
        wire_meta = (ctx.params or {}).get("_meta")
        key = idempotency_key(wire_meta if isinstance(wire_meta, dict) else None)
        if key is None:
            raise MCPError.from_error_data(
                not_completed("invalid_idempotency_key", "the _meta idempotency key must be a non-empty string")
            )
        intent_id = derive_intent_id(self.agent.agent_id, key)
        async with self._cancelled_with_its_request(f"{operation} {server}/{target}", intent_id, key):
            return await self._run_operation(operation, server, target, arguments, key)

    async def _run_operation(
        self, operation: str, server: str, target: str, arguments: dict[str, Any], key: str
    ) -> dict[str, Any]:
        """Submit the intent under ``key`` and wait for its receipt; as :meth:`_operate` answers."""
        intent_id = derive_intent_id(self.agent.agent_id, key)
        try:
            async with self.agent.receipt_notices(intent_id) as listening:
                submission = await self.agent.submit(
                    f"{server}/{target}",
                    arguments,
                    idempotency_key=key,
                    on_behalf_of=self.options.on_behalf_of,
                    deadline_seconds=self.options.deadline_seconds,
                    operation=operation,
                    via=self.options.via,
                )
                receipt = await self.agent.receipt(
                    submission.intent_id, self.options.timeout, listening=None if submission.duplicate else listening
                )
        except ValueError as exc:
            raise MCPError.from_error_data(not_completed("invalid_arguments", str(exc), key)) from exc
        except ReceiptTimeout as exc:
            message = f"no outcome yet for intent {intent_id}; ask again with _meta writ/idempotency_key {key!r}"
            raise MCPError.from_error_data(not_completed("pending", message, key, intent_id)) from exc
        except nats.errors.Error as exc:
            raise MCPError.from_error_data(not_completed("writ_unavailable", _described(exc), key)) from exc
        if receipt.status != "succeeded" or receipt.result is None:
            raise MCPError.from_error_data(operation_error(receipt, key))
        return {**receipt.result, "_meta": {**(receipt.result.get("_meta") or {}), **receipt_meta(receipt, key)}}

    def mcp_server(self) -> Server[Any]:
        with warnings.catch_warnings():  # logging: deprecated by MCP 2026-07-28, in 2025-11-25 and before
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            server = self._server()
        server.add_notification_handler("notifications/initialized", types.NotificationParams, self.serve_client)
        return server

    def _server(self) -> Server[Any]:
        return _Server(
            "writ",
            version="0.1.0",
            instructions=(
                f"Tools governed by Writ, called as agent {self.agent.agent_id!r}: each call is a signed intent "
                "that Writ authenticates, checks, authorizes (perhaps after human approval), runs and records."
            ),
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            on_list_resources=self.list_resources,
            on_list_resource_templates=self.list_resource_templates,
            on_read_resource=self.read_resource,
            on_subscribe_resource=self.subscribe_resource,
            on_unsubscribe_resource=self.unsubscribe_resource,
            on_list_prompts=self.list_prompts,
            on_get_prompt=self.get_prompt,
            on_completion=self.complete,
            on_set_logging_level=self.set_logging_level,
        )


class _Server(Server[Any]):
    """The SDK's low-level server, advertising tools, resources and prompts listChanged on every
    transport (streamable HTTP builds its initialization options itself)."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options
            or NotificationOptions(tools_changed=True, resources_changed=True, prompts_changed=True),
            experimental_capabilities,
            extensions,
        )


async def ask_client(ctx: ServerRequestContext[Any], asked: dict[str, Any]) -> dict[str, Any]:
    """Put a server's request for input (``kind`` sampling or elicitation, its ``params`` as the
    server sent them) to the MCP client of the tools/call in ``ctx``; the client's result as JSON.

    Raises:
        MCPError: the client did not declare the capability, or answered with an error.
    """
    kind, params = asked.get("kind"), asked.get("params")
    capabilities = ctx.session.client_capabilities
    request: types.CreateMessageRequest | types.ElicitRequest
    result_type: type[types.CreateMessageResult | types.CreateMessageResultWithTools | types.ElicitResult]
    if kind == "sampling":
        if capabilities is None or capabilities.sampling is None:
            raise MCPError(types.INVALID_REQUEST, "writ gateway: the MCP client does not support sampling")
        request = types.CreateMessageRequest.model_validate({"method": "sampling/createMessage", "params": params})
        tools = request.params.tools or request.params.tool_choice
        result_type = types.CreateMessageResultWithTools if tools else types.CreateMessageResult
    elif kind == "elicitation":
        if capabilities is None or capabilities.elicitation is None:
            raise MCPError(types.INVALID_REQUEST, "writ gateway: the MCP client does not support elicitation")
        request = types.ElicitRequest.model_validate({"method": "elicitation/create", "params": params})
        result_type = types.ElicitResult
    else:
        raise MCPError(types.INVALID_REQUEST, f"writ gateway: no such request for input: {kind!r}")
    result = await ctx.session.send_request(
        request, result_type, metadata=ServerMessageMetadata(related_request_id=ctx.request_id)
    )
    dumped: dict[str, Any] = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    return dumped


def connection_of(session: Any) -> Any:
    """The client connection a handler's session object speaks for: the ``mcp`` SDK (2.x) makes a
    ServerSession per request and notification, all over one ``Connection`` per client (read from
    its private ``_connection``, pinned by uv.lock; the session itself where there is none)."""
    return getattr(session, "_connection", session)


def _described(exc: BaseException) -> str:
    if isinstance(exc, CommandError):
        return f"{exc.code}: {exc.message}"
    return f"the Writ plane's NATS server did not answer ({type(exc).__name__})"


async def serve_stdio(gateway: Gateway) -> None:
    """Serve MCP over this process's stdin and stdout until the client closes them."""
    server = gateway.mcp_server()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(gateway.watch_tools)
        tasks.start_soon(gateway.watch_notices)
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())
        await gateway.released()  # the client closed without unsubscribing: unsubscribed for it
        tasks.cancel_scope.cancel()


async def serve_http(gateway: Gateway, port: int, on_listening: Callable[[str], None], *, token: str | None) -> None:
    """Serve MCP over streamable HTTP on 127.0.0.1:``port`` (0: any free port) until interrupted;
    ``on_listening`` gets the endpoint's URL once the port is bound. Every request must carry
    ``Authorization: Bearer <token>`` (``token`` None: none asked, by the operator's explicit choice)."""
    import uvicorn

    from writ.gateway.auth import BearerToken

    app: Any = gateway.mcp_server().streamable_http_app(streamable_http_path=HTTP_PATH, host="127.0.0.1")
    if token is not None:
        app = BearerToken(app, token)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))  # loopback only: whoever reaches the port calls tools as the agent
    on_listening(f"http://127.0.0.1:{sock.getsockname()[1]}{HTTP_PATH}")
    config = uvicorn.Config(app, log_level="warning", log_config=None)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(gateway.watch_tools)
            tasks.start_soon(gateway.watch_notices)
            await uvicorn.Server(config).serve(sockets=[sock])
            await gateway.released()
            tasks.cancel_scope.cancel()
    finally:
        sock.close()


def log(line: str) -> None:
    """The gateway's own messages go to stderr: on stdio, stdout is the MCP wire."""
    print(f"writ gateway: {line}", file=sys.stderr, flush=True)
