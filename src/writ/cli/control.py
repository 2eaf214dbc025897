"""Operator commands: agents, MCP servers, tools, policy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.syntax import Syntax

from writ.cli import render
from writ.cli.base import (
    ADD_SERVER_TIMEOUT,
    TOKEN_HELP,
    call,
    connect,
    console,
    default_policy,
    fail,
    query,
    register_with_identity,
    report,
    run,
    settings,
)

agent_app = typer.Typer(help="Register and list agents.", no_args_is_help=True)
server_app = typer.Typer(help="Register and list MCP servers.", no_args_is_help=True)
tool_app = typer.Typer(help="List the tools the registered servers offer; correct their hints.", no_args_is_help=True)
policy_app = typer.Typer(
    help="Load and show the Cedar policy bundle; try a candidate over the history (simulate) or beside it (--shadow).",
    no_args_is_help=True,
)
shadow_app = typer.Typer(help="The shadow bundle: evaluated beside the enforced one, never enforced.")
policy_app.add_typer(shadow_app, name="shadow")
SIMULATE_TIMEOUT = 300.0


# -- agents -----------------------------------------------------------------------------------------


async def register_agent(
    name: str, *, owner: str, teams: list[str], acts_for: list[str], key_file: Path | None
) -> dict[str, Any]:
    """Register ``name``; with no ``key_file``, generate a key and save it once registration succeeded."""
    from writ.keys import agent_bus_creds_path, agent_key_path, ensure_absent, read_key
    from writ_common.signing import generate_key, public_key_b64

    cfg = settings()
    if key_file is not None:
        key, path, new = read_key(key_file), key_file, False
    else:
        path = agent_key_path(cfg.data_dir, name)
        ensure_absent(path, name)
        key, new = generate_key(), True
    seed_path = agent_bus_creds_path(cfg.data_dir, name)
    body = {"agent_id": name, "public_key": public_key_b64(key), "owner": owner, "teams": teams, "acts_for": acts_for}
    registered = await register_with_identity(
        "register_agent", body, bus_creds=seed_path, new_key=(path, key) if new else None
    )
    return {**registered, "key_file": str(path.resolve()), "bus_creds_file": str(seed_path.resolve())}


@agent_app.command("register")
def agent_register(
    name: Annotated[str, typer.Argument(help=f"Agent id: {TOKEN_HELP}")],
    owner: Annotated[str, typer.Option(help="Who answers for this agent")] = "unknown",
    team: Annotated[list[str] | None, typer.Option("--team", help="A team it belongs to (repeat)")] = None,
    acts_for: Annotated[list[str] | None, typer.Option("--acts-for", help="A user it may act for (repeat)")] = None,
    key: Annotated[Path | None, typer.Option(help="Register this existing key instead of generating one")] = None,
) -> None:
    """Generate an Ed25519 key (saved 0600 under <data>/keys/agents/) and register its public half."""
    done = run(register_agent(name, owner=owner, teams=team or [], acts_for=acts_for or [], key_file=key))
    console.print(f"[green]registered[/] agent [bold]{done['agent_id']}[/]")
    console.print(f"  key id    {done['key_id']}")
    console.print(f"  key file  {done['key_file']}")
    console.print(f"  bus creds {done['bus_creds_file']} (NATS user JWT + seed: publish its own intents only)")


@agent_app.command("list")
def agent_list() -> None:
    """The registered agents."""
    console.print(render.agents_table(run(query("identity", "list_agents", {}))))


async def rotate_agent_key(name: str, grace: float) -> dict[str, Any]:
    """A new key for ``name``; the old file is kept as NAME.key.previous while its grace lasts."""
    from writ.keys import agent_key_path, read_key, write_new_key
    from writ_common.signing import generate_key, public_key_b64

    cfg = settings()
    path = agent_key_path(cfg.data_dir, name)
    old = read_key(path)
    new = generate_key()
    body = {"agent_id": name, "public_key": public_key_b64(new), "grace_seconds": grace}
    async with connect(cfg) as nc:
        rotated = dict(await call(nc, "identity", "rotate_key", body))
    previous = path.with_suffix(".key.previous")
    previous.unlink(missing_ok=True)
    write_new_key(previous, old)
    path.unlink()
    write_new_key(path, new)
    return rotated


@agent_app.command("rotate-key")
def agent_rotate_key(
    name: Annotated[str, typer.Argument(help="Agent id")],
    grace: Annotated[float, typer.Option(help="Seconds the old key still signs valid intents")] = 3600.0,
) -> None:
    """Generate a new key for the agent; the old one stays valid for --grace seconds."""
    done = run(rotate_agent_key(name, grace))
    console.print(f"[green]rotated[/] agent [bold]{name}[/] to key {done['key_id']}")
    console.print(f"  the previous key signs valid intents until {done['previous_valid_until']}")


@agent_app.command("revoke")
def agent_revoke(
    name: Annotated[str, typer.Argument(help="Agent id")],
    reason: Annotated[str, typer.Option(help="Why, for the record")] = "",
) -> None:
    """Refuse every intent the agent issues from now on."""
    done = run(query("identity", "revoke_agent", {"agent_id": name, "reason": reason}))
    console.print(f"[red]revoked[/] agent [bold]{name}[/] at {done['revoked_at']}")


@agent_app.command("creds")
def agent_creds(
    name: Annotated[str, typer.Argument(help="Agent id")],
    seed_file: Annotated[
        Path | None,
        typer.Option(help="The agent's nkey seed (default: its creds, else the .nk an older Writ wrote)"),
    ] = None,
) -> None:
    """Write the agent's bus creds again (<data>/keys/agents/NAME.creds): identity signs a user JWT
    for the bus key it registered. For lost creds, a data dir from before JWT auth, or to reinstate
    an agent suspended at the bus (once the cause of its flood is fixed)."""
    done, reinstated = run(write_agent_creds(name, seed_file))
    if reinstated:
        console.print(f"[green]reinstated[/] agent [bold]{name}[/]: its suspension at the bus ends with these creds")
    console.print(f"[green]bus creds[/] {done}")


async def write_agent_creds(name: str, seed_file: Path | None) -> tuple[Path, bool]:
    from writ.keys import agent_bus_creds_path
    from writ_common.busauth import public_nkey, write_private
    from writ_common.busjwt import creds, creds_parts

    cfg = settings()
    path = agent_bus_creds_path(cfg.data_dir, name)
    source = seed_file or (path if path.exists() else path.with_suffix(".nk"))
    if not source.is_file():
        fail("key_missing", f"no seed for agent {name!r} at {source}; pass --seed-file PATH")
    text = source.read_text()
    seed = creds_parts(text)[1] if "BEGIN NATS USER JWT" in text else text.strip()
    async with connect(cfg) as nc:
        issued = await call(nc, "identity", "agent_bus_jwt", {"agent_id": name, "bus_key": public_nkey(seed)})
    if issued["bus_key"] != public_nkey(seed):
        fail("bus_key_mismatch", f"{source} is not the seed of the bus key agent {name!r} registered")
    write_private(path, creds(issued["bus_jwt"], seed))
    return path.resolve(), bool(issued.get("reinstated"))


@agent_app.command("show")
def agent_show(name: Annotated[str, typer.Argument(help="Agent id")]) -> None:
    """One agent: owner, teams, delegation, current and previous key, revocation, suspension at the bus."""
    shown = run(query("identity", "show_agent", {"agent_id": name}))
    for field_name, value in shown.items():
        console.print(f"  {field_name:<22} {value if value not in (None, []) else '-'}")


# -- servers and tools ------------------------------------------------------------------------------


SECRET_PREFIX = "secret:"


def parse_pairs(pairs: list[str] | None, option: str) -> tuple[dict[str, str], dict[str, str]]:
    """``KEY=VALUE`` pairs, split into plain values and secret references (``KEY=secret:NAME``)."""
    plain: dict[str, str] = {}
    secret: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail("invalid_option", f"{option} takes KEY=VALUE or KEY=secret:NAME, got {pair!r}")
        if value.startswith(SECRET_PREFIX):
            secret[key] = value.removeprefix(SECRET_PREFIX)
        else:
            plain[key] = value
    return plain, secret


async def _add_server(
    name: str,
    command: list[str],
    *,
    url: str | None,
    env: list[str] | None,
    headers: list[str] | None,
    idempotency_header: str | None,
    max_concurrency: int | None = None,
) -> dict[str, Any]:
    env_values, env_secrets = parse_pairs(env, "--env")
    header_values, header_secrets = parse_pairs(headers, "--header")
    body = server_body(name, command, url, env_values, header_values)
    if env_secrets:
        body["secret_env"] = env_secrets
    if header_secrets:
        body["secret_headers"] = header_secrets
    if idempotency_header:
        if body["transport"] != "http":
            fail("invalid_server", "--idempotency-header is for an HTTP server (--url)")
        body["idempotency_header"] = idempotency_header
    if max_concurrency is not None:
        body["max_concurrency"] = max_concurrency
    async with connect(settings()) as nc:
        return dict(await call(nc, "registry", "add_server", body, timeout=ADD_SERVER_TIMEOUT))


def server_body(
    name: str, command: list[str], url: str | None, env: dict[str, str], headers: dict[str, str]
) -> dict[str, Any]:
    if url and command:
        fail("invalid_server", "give either --url URL (streamable HTTP) or `-- COMMAND [ARGS...]` (stdio), not both")
    if url:
        return {"name": name, "transport": "http", "url": url, "headers": headers}
    if not command:
        fail("invalid_server", "give the server's command after `--` (stdio) or --url URL (streamable HTTP)")
    return {
        "name": name,
        "transport": "stdio",
        "command": absolute_command(command[0]),
        "args": command[1:],
        "env": env,
    }


def absolute_command(command: str) -> str:
    """A relative path to a program (``.venv/bin/x``) made absolute: the executor starts it from its
    own working directory, and the same program registered twice is then the same configuration."""
    import os

    if os.sep in command and not os.path.isabs(command) and os.path.exists(command):
        return os.path.abspath(command)
    return command


@server_app.command("add")
def server_add(
    name: Annotated[str, typer.Argument(help=f"Server name: {TOKEN_HELP}")],
    command: Annotated[list[str] | None, typer.Argument(help="stdio: `-- COMMAND [ARGS...]`")] = None,
    *,
    url: Annotated[str | None, typer.Option(help="Streamable HTTP endpoint")] = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", help="stdio: K=V, or K=secret:NAME to take a stored secret (repeat)"),
    ] = None,
    header: Annotated[
        list[str] | None,
        typer.Option("--header", help="HTTP: K=V, or K=secret:NAME to take a stored secret (repeat)"),
    ] = None,
    idempotency_header: Annotated[
        str | None, typer.Option(help="HTTP: the header through which the server takes Writ's idempotency key")
    ] = None,
    max_concurrency: Annotated[
        int | None,
        typer.Option(
            help="The most calls the server takes at once (1: one at a time). Writ never sends it more;"
            " a call past it waits briefly or is answered `overloaded` with a retry-after"
        ),
    ] = None,
) -> None:
    """Register an MCP server (stdio: `writ server add NAME -- COMMAND ARGS`; HTTP: --url) and list its tools."""
    added = run(
        _add_server(
            name,
            command or [],
            url=url,
            env=env,
            headers=header,
            idempotency_header=idempotency_header,
            max_concurrency=max_concurrency,
        )
    )
    console.print(f"[green]registered[/] server [bold]{added['server']}[/] · {len(added['tools'])} tools discovered")
    console.print(render.tools_table(added["tools"], title=f"tools of {added['server']}", width=console.width))


@server_app.command("remove")
def server_remove(
    name: Annotated[str, typer.Argument(help="Server name")],
    reason: Annotated[str, typer.Option(help="Why, for the record")] = "",
) -> None:
    """Forget a server: its configuration, tools and overrides. Intents naming its tools are then
    rejected (unknown_tool); the name may be registered again with `writ server add`."""
    import getpass

    body = {"name": name, "removed_by": getpass.getuser(), "reason": reason}
    removed = run(query("registry", "remove_server", body))
    tools = ", ".join(removed["tools"]) or "no tools"
    console.print(f"[red]removed[/] server [bold]{removed['server']}[/] ({tools})")


@server_app.command("list")
def server_list() -> None:
    """The registered MCP servers."""
    console.print(render.servers_table(run(query("registry", "list_servers", {}))))


@tool_app.command("list")
def tool_list(server: Annotated[str | None, typer.Option(help="Only this server's tools")] = None) -> None:
    """Every tool, pinned by version (a digest of its definition)."""
    console.print(render.tools_table(run(query("registry", "list_tools", {"server": server})), width=console.width))


@server_app.command("refresh")
def server_refresh(name: Annotated[str, typer.Argument(help="Server name")]) -> None:
    """Discover a server's tools again; a changed or new definition waits in quarantine."""
    refreshed = run(query("registry", "refresh_server", {"name": name}))
    console.print(render.tools_table(refreshed["tools"], title=f"tools of {name}", width=console.width))
    if refreshed["quarantined"]:
        names = ", ".join(f"{name}/{t}" for t in refreshed["quarantined"])
        console.print(f"[yellow]quarantined[/]: {names} · intents are refused until `writ tool accept` each")
    else:
        console.print("no change: every tool is at its accepted version")


@tool_app.command("accept")
def tool_accept(tool: Annotated[str, typer.Argument(help="SERVER/TOOL")]) -> None:
    """Accept the quarantined version of a tool: intents may call it from now on."""
    import getpass

    server, _, name = tool.partition("/")
    if not server or not name:
        report(lambda: fail("invalid_tool", f"name the tool as SERVER/TOOL, not {tool!r}"))
    row = run(query("registry", "accept_tool", {"server": server, "tool": name, "accepted_by": getpass.getuser()}))
    console.print(f"[green]accepted[/] {tool} at version {row['tool_digest'][7:19]}")


@tool_app.command("override")
def tool_override(
    tool: Annotated[str, typer.Argument(help="SERVER/TOOL")],
    read_only: Annotated[bool | None, typer.Option("--read-only/--not-read-only")] = None,
    destructive: Annotated[bool | None, typer.Option("--destructive/--not-destructive")] = None,
    idempotent: Annotated[bool | None, typer.Option("--idempotent/--not-idempotent")] = None,
    idempotency_arg: Annotated[
        str | None, typer.Option(help="the argument through which the tool takes Writ's idempotency key")
    ] = None,
) -> None:
    """Say what a tool really is where its MCP annotations are missing or wrong (policy and retries use it)."""
    server, _, name = tool.partition("/")
    if not server or not name:
        report(lambda: fail("invalid_tool", f"name the tool as SERVER/TOOL, not {tool!r}"))
    body = {
        "server": server,
        "tool": name,
        "read_only": read_only,
        "destructive": destructive,
        "idempotent": idempotent,
        "idempotency_arg": idempotency_arg,
    }
    row = run(query("registry", "set_override", body))
    console.print(render.tools_table([row], title="overridden", width=console.width))


# -- policy -----------------------------------------------------------------------------------------


def read_policy(file: Path | None, use_default: bool) -> tuple[str, str]:
    if use_default == (file is not None):
        fail("invalid_option", "give a Cedar FILE or --default (deploy/policies/default.cedar), not both or neither")
    if use_default:
        return default_policy()
    assert file is not None
    try:
        return file.read_text(), str(file)
    except OSError as exc:
        fail("file_unreadable", f"cannot read {file}: {exc.strerror or exc}")


async def _load_policy(file: Path | None, use_default: bool, *, shadow: bool) -> tuple[str, dict[str, Any]]:
    cedar, source = read_policy(file, use_default)
    return source, dict(await query("policy", "load", {"cedar": cedar, "shadow": shadow}))


@policy_app.command("load")
def policy_load(
    file: Annotated[Path | None, typer.Argument(help="A Cedar policy bundle")] = None,
    default: Annotated[bool, typer.Option("--default", help="Load deploy/policies/default.cedar")] = False,
    shadow: Annotated[
        bool,
        typer.Option(
            "--shadow",
            help="Evaluate it beside the enforced bundle on every decision and record what it would decide;"
            " it decides nothing (see `writ views shadow`, stop with `writ policy shadow off`)",
        ),
    ] = False,
) -> None:
    """Publish a Cedar bundle; it replaces the current one for every decision that follows."""
    source, loaded = run(_load_policy(file, default, shadow=shadow))
    console.print(f"[green]loaded[/] {source}" + (" as the shadow bundle (recorded, never enforced)" if shadow else ""))
    console.print(f"  digest    {loaded['policy_digest']}")
    console.print(f"  policies  {', '.join(loaded.get('policy_ids') or []) or '-'}")


@shadow_app.command("off")
def policy_shadow_off() -> None:
    """Stop evaluating the shadow bundle; its record stays in the log and the views."""
    stopped = run(query("policy", "shadow_off", {}))
    console.print(f"[green]stopped[/] shadow bundle {stopped['policy_digest']}")


async def _simulate(body: dict[str, Any]) -> dict[str, Any]:
    async with connect(settings()) as nc:
        return dict(await call(nc, "policy", "simulate", body, timeout=SIMULATE_TIMEOUT))


@policy_app.command("simulate")
def policy_simulate(
    file: Annotated[Path, typer.Argument(help="The candidate Cedar bundle")],
    *,
    since: Annotated[
        str, typer.Option(help="intents submitted since: a span (7d, 12h, 30m), an RFC 3339 time, or all")
    ] = "7d",
    agent: Annotated[str | None, typer.Option(help="only this agent's intents")] = None,
    tool: Annotated[str | None, typer.Option(help="only calls of this tool (server/tool or its name)")] = None,
    examples: Annotated[int, typer.Option(min=0, max=50, help="example intent ids per change")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="print the diff as JSON")] = False,
) -> None:
    """Replay FILE over the recorded intents (each as it was planned: tool, annotations, arguments, the
    agent's teams then, on-behalf-of) beside the enforced bundle; changes nothing. Prints the
    candidate's validation errors first, then every change of decision. Rate limits are not replayed.
    Exits 1 when the candidate would not load."""
    cedar, _source = read_policy(file, False)
    body = {
        "cedar": cedar,
        "since": None if since == "all" else since,
        "agent": agent,
        "tool": tool,
        "examples": examples,
    }
    diff = run(_simulate({k: v for k, v in body.items() if v is not None}))
    if as_json:
        console.print_json(data=diff)
    else:
        for error in diff["validation_errors"]:
            console.print(f"[bold red]invalid[/] {error}", soft_wrap=True)
        scope = ", ".join(f"{k} {v}" for k, v in (("since", diff["since"]), ("agent", agent), ("tool", tool)) if v)
        console.print(
            f"replayed {diff['evaluated']:,} decided intents{f' ({scope})' if scope else ''}:"
            f" {diff['unchanged']:,} unchanged, [bold]{diff['changed']:,} changed[/]"
        )
        console.print(
            f"  enforced   {render.short_digest(diff['current_digest'])}  {render.counts_text(diff['current'])}"
        )
        console.print(
            f"  candidate  {render.short_digest(diff['candidate_digest'])}  {render.counts_text(diff['candidate'])}"
        )
        if diff["changes"]:
            console.print(render.simulation_table(diff))
    if diff["validation_errors"]:
        raise typer.Exit(1)


@policy_app.command("rollout")
def policy_rollout(
    target: Annotated[
        str, typer.Argument(metavar="FILE|status|abort", help="A candidate Cedar bundle, or status, or abort")
    ],
    *,
    canary: Annotated[
        str | None, typer.Option(help="the slice: this share of agents, by a stable hash of the agent id (10%)")
    ] = None,
    agents: Annotated[str | None, typer.Option(help="the slice: exactly these agents (a,b)")] = None,
    rollback_if: Annotated[
        list[str] | None,
        typer.Option(
            "--rollback-if",
            help="SIGNAL>THRESHOLD \\[over WINDOW] \\[for HOLD], repeatable; signals denial_rate, approval_backlog,"
            " p99_decision_ms (e.g. 'denial_rate>0.2 over 5m for 30s')",
        ),
    ] = None,
    promote_after: Annotated[str, typer.Option(help="the soak: promote after this long with no trigger held")] = "30m",
    cooldown: Annotated[
        str | None, typer.Option(help="no step before this long after the start (default 60s, or half the soak)")
    ] = None,
    min_decisions: Annotated[
        int, typer.Option(help="a rate or percentile over fewer of the slice's decisions is no signal")
    ] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="print the rollout as JSON")] = False,
) -> None:
    """Enforce FILE for a slice of agents (--canary 10% or --agents a,b) while the rest keep the current
    bundle; policy promotes it after --promote-after, or rolls it back by itself as soon as a
    --rollback-if trigger holds. Everything is checked before anything changes. `writ policy rollout
    status` shows the rollout and its signals, `writ policy rollout abort` rolls it back now."""
    if target in ("status", "abort"):
        shown = run(query("policy", f"rollout_{target}", {}))
    else:
        cedar, _source = read_policy(Path(target), False)
        body = {
            "cedar": cedar,
            "canary": canary,
            "agents": [a.strip() for a in agents.split(",") if a.strip()] if agents else [],
            "rollback_if": rollback_if or [],
            "promote_after": promote_after,
            "cooldown": cooldown,
            "min_decisions": min_decisions,
        }
        shown = run(query("policy", "rollout", {k: v for k, v in body.items() if v is not None}))
    if as_json:
        console.print_json(data=shown)
    else:
        console.print(render.rollout_text(shown))


@policy_app.command("show")
def policy_show() -> None:
    """The bundle in force: its digest, policy ids and Cedar text."""
    shown = run(query("policy", "show", {}))
    console.print(f"digest    {shown['policy_digest']}")
    console.print(f"policies  {', '.join(shown.get('policy_ids') or []) or '-'}")
    if shown.get("shadow_digest"):
        console.print(f"shadow    {shown['shadow_digest']} (recorded beside every decision, never enforced)")
    if rollout := shown.get("rollout"):
        slice_ = (
            f"{rollout['percent']:g}% of agents" if rollout.get("percent") is not None else ", ".join(rollout["agents"])
        )
        console.print(
            f"rollout   {rollout['candidate_digest']} enforced for {slice_} (`writ policy rollout status`)",
            soft_wrap=True,
        )
    console.print(Syntax(shown["cedar"], "rust", background_color="default", word_wrap=True))


@policy_app.command("schema")
def policy_schema() -> None:
    """Writ's Cedar schema as `writ policy load` validates against it: Agent (in Team; owner), Tool
    (server, name, read_only, destructive, idempotent, open_world), Action call_tool, and the context
    (on_behalf_of; arguments typed from the registered tools' input schemas) — as JSON."""
    console.print_json(data=run(query("policy", "schema", {})))
