"""``writ gateway``: Writ's governed tools as one MCP server, for any MCP client."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from writ.cli.base import connect, fail, report, run, settings

if TYPE_CHECKING:
    from nacl.signing import SigningKey

    from writ.gateway.translate import Naming
    from writ_common.settings import WritSettings


def agent_credentials(agent: str, key_file: Path | None, bus_creds: Path | None) -> tuple[WritSettings, SigningKey]:
    """Settings that speak as the agent on the bus (its creds, where `writ agent register` put them) and its key."""
    from writ.keys import agent_bus_creds_path, agent_key_path, read_key

    cfg = settings()
    if bus_creds is not None and not bus_creds.is_file():
        fail("key_missing", f"no bus credential at {bus_creds}")
    creds = bus_creds or agent_bus_creds_path(cfg.data_dir, agent)
    if creds.exists():  # else the local operator's (a plane without per-agent bus users)
        cfg = cfg.model_copy(update={"nats_creds_file": creds})
    return cfg, read_key(key_file or agent_key_path(cfg.data_dir, agent))


async def serve(
    cfg: WritSettings,
    agent: str,
    key: SigningKey,
    *,
    http_port: int | None,
    on_behalf_of: str | None,
    timeout: float,
    deadline: float | None,
    token_file: Path | None,
    naming: Naming,
) -> None:
    from writ.gateway.server import CallOptions, Gateway, log, serve_http, serve_stdio
    from writ.sdk import WritAgent

    async with connect(cfg, user=f"agent-{agent}"):
        pass  # fail now, in one line, if the plane is down or refuses the agent
    writ_agent = await WritAgent.connect(
        cfg.resolved_nats_url(),
        agent,
        key,
        creds_file=cfg.resolved_nats_creds_file(),
        allow_reconnect=True,  # a long-lived server rides out a restart of the plane
        max_reconnect_attempts=-1,
        reconnect_time_wait=2.0,
        error_cb=_quiet,
    )
    gateway = Gateway(
        writ_agent,
        CallOptions(
            on_behalf_of=on_behalf_of,
            timeout=timeout,
            deadline_seconds=deadline or cfg.default_deadline_seconds,
            via="writ-gateway/stdio" if http_port is None else "writ-gateway/http",
            naming=naming,
        ),
    )
    try:
        if http_port is None:
            log(f"MCP over stdio, calling tools as agent {agent!r}")
            await serve_stdio(gateway)
        else:
            token = bearer_token(token_file)
            if token is None:
                asked = "no bearer token asked (--no-token): any local process can call tools as the agent"
            else:
                asked = f"clients send Authorization: Bearer <the token in {token_file}>"
            await serve_http(
                gateway,
                http_port,
                lambda url: log(f"MCP at {url}, calling tools as agent {agent!r}; {asked}"),
                token=token,
            )
    finally:
        await writ_agent.nc.close()


def configured_naming(prefixed: bool, aliases: list[str], separator: str = "__") -> Naming:
    """``--prefixed``, ``--alias SERVER=ALIAS`` and ``--separator`` as the gateway's naming, or a
    clear refusal."""
    from writ.gateway.translate import Naming

    pairs = [a.partition("=") for a in aliases]
    if bad := [a for a, (server, eq, name) in zip(aliases, pairs, strict=True) if not (server and eq and name)]:
        fail("invalid_alias", f"{bad[0]!r}: write --alias SERVER=ALIAS")
    naming = Naming(prefixed=prefixed, aliases={server: name for server, _eq, name in pairs}, separator=separator)
    if (why := naming.refusal()) is not None:
        fail("invalid_alias", why)
    return naming


def bearer_token(token_file: Path | None) -> str | None:
    """The token HTTP clients must send (made on first use, 0600); None: ``--no-token``."""
    from writ.gateway.auth import load_or_create_token

    if token_file is None:
        return None
    try:
        return load_or_create_token(token_file)
    except (OSError, ValueError) as exc:
        fail("invalid_token_file", str(exc))


async def _quiet(_exc: Exception) -> None:
    """nats-py logs every failed reconnect with a traceback; a call that fails says so itself."""


def gateway(
    *,
    agent: Annotated[str, typer.Option("--as", help="The agent every call is made as (its key signs the intents)")],
    http: Annotated[
        int | None,
        typer.Option(
            "--http",
            metavar="PORT",
            min=0,
            max=65535,
            help="Serve streamable HTTP at http://127.0.0.1:PORT/mcp (0: any free port) instead of stdio",
        ),
    ] = None,
    on_behalf_of: Annotated[str | None, typer.Option(help="The user the agent acts for, on every call")] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds a call waits for its receipt before answering that it is pending")
    ] = 30.0,
    deadline: Annotated[
        float | None, typer.Option(help="Seconds after submission by which a call must have run (default: 300)")
    ] = None,
    key: Annotated[Path | None, typer.Option(help="The agent's key (default: <data>/keys/agents/AGENT.key)")] = None,
    bus_creds: Annotated[
        Path | None, typer.Option(help="The agent's bus credential (default: <data>/keys/agents/AGENT.creds)")
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            help="HTTP: the bearer token every request must carry, made on first use (0600)"
            " (default: <data>/keys/agents/AGENT.gateway-token)"
        ),
    ] = None,
    prefixed: Annotated[
        bool,
        typer.Option("--prefixed", help="Name every tool SERVER__TOOL, so no name changes when a server is added"),
    ] = False,
    alias: Annotated[
        list[str] | None,
        typer.Option(metavar="SERVER=ALIAS", help="List SERVER's tools as ALIAS__TOOL where prefixed (repeatable)"),
    ] = None,
    separator: Annotated[
        str,
        typer.Option(help="Between a prefix and a tool's name: __ (model APIs accept it) or . (MCP's own)"),
    ] = "__",
    no_token: Annotated[
        bool,
        typer.Option(
            "--no-token", help="HTTP: ask no bearer token (any local process can then call tools as the agent)"
        ),
    ] = False,
) -> None:
    """Serve Writ's tools to any MCP client, as one MCP server (stdio by default).

    tools/list: the registry's accepted tools as their servers list them; SERVER__TOOL only where two share a name.

    tools/call: a signed intent as the agent; the answer is the tool's result, else isError with the reason.

    A call pending after --timeout (e.g. awaiting approval) answers isError with its intent id.

    Idempotency: send _meta {"writ/idempotency_key": KEY}; the same key re-attaches to the same intent.

    Names: --prefixed lists every tool as SERVER__TOOL; --alias SERVER=ALIAS uses ALIAS as SERVER's prefix.

    HTTP: every request carries Authorization: Bearer TOKEN (the token file, made on first use, 0600).
    """
    from writ.gateway.auth import gateway_token_path

    naming = report(lambda: configured_naming(prefixed, alias or [], separator))
    cfg, signing_key = report(lambda: agent_credentials(agent, key, bus_creds))
    if no_token and token_file is not None:
        report(lambda: fail("invalid_token_file", "pass --token-file or --no-token, not both"))
    token_path = None if no_token or http is None else token_file or gateway_token_path(cfg.data_dir, agent)
    run(
        serve(
            cfg,
            agent,
            signing_key,
            http_port=http,
            on_behalf_of=on_behalf_of,
            timeout=timeout,
            deadline=deadline,
            token_file=token_path,
            naming=naming,
        )
    )
