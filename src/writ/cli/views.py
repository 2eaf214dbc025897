"""`writ views`: the ledger's views (the log projected into tables): list and read intents, stats,
read-only SQL, projection lag, rebuild, and bearer tokens for the views HTTP API."""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Annotated, Any

import typer

from writ.cli import render
from writ.cli.base import call, connect, console, fail, query, run, settings
from writ.cli.intents import check_intent_id
from writ_common import events as ev

views_app = typer.Typer(
    help="Query the ledger's views: intents, one intent in full, stats, read-only SQL; lag; rebuild.",
    no_args_is_help=True,
)
token_app = typer.Typer(help="Bearer tokens for the views HTTP API.", no_args_is_help=True)
views_app.add_typer(token_app, name="token")

REBUILD_TIMEOUT = 900.0
TOKEN_PREFIX = "writv_"


@views_app.command("intents")
def views_intents(
    *,
    agent: Annotated[str | None, typer.Option(help="only this agent's intents")] = None,
    tool: Annotated[str | None, typer.Option(help="tool as requested, its name, or server/tool")] = None,
    status: Annotated[str | None, typer.Option(help="succeeded, denied, failed, rejected, expired, ...")] = None,
    since: Annotated[str | None, typer.Option(help="submitted at or after (RFC 3339)")] = None,
    until: Annotated[str | None, typer.Option(help="submitted before (RFC 3339)")] = None,
    reason: Annotated[str | None, typer.Option(help="a reason code, or text the reason contains")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="rows per page")] = 50,
    cursor: Annotated[str | None, typer.Option(help="the next page: the cursor the previous page printed")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the page as JSON")] = False,
) -> None:
    """Intents, newest first, filtered; one page at a time."""
    body = {"agent": agent, "tool": tool, "status": status, "since": since, "until": until, "reason": reason}
    body = {k: v for k, v in body.items() if v is not None}
    page = run(query("ledger", "views_intents", {**body, "limit": limit, "cursor": cursor}))
    if as_json:
        console.print_json(json.dumps(page))
        return
    console.print(render.views_intents_table(page["intents"]))
    if page.get("next_cursor"):
        console.print(f"[dim]more: --cursor {page['next_cursor']}[/]", soft_wrap=True)


@views_app.command("intent")
def views_intent(
    intent_id: Annotated[str, typer.Argument(metavar="ID")],
    as_json: Annotated[bool, typer.Option("--json", help="print everything as JSON")] = False,
) -> None:
    """One intent in full: stage timings, decisions, approval, attempts, every event, and its receipt."""
    check_intent_id(intent_id)
    found = run(query("ledger", "views_intent", {"intent_id": intent_id}))
    if as_json:
        console.print_json(json.dumps(found))
        return
    console.print(render.views_intent_panel(found))


@views_app.command("stats")
def views_stats(
    by: Annotated[str, typer.Option(help="agent, tool or hour")] = "agent",
    since: Annotated[str | None, typer.Option(help="from this hour on (RFC 3339)")] = None,
    until: Annotated[str | None, typer.Option(help="up to this hour (RFC 3339)")] = None,
) -> None:
    """Calls, outcomes and latency percentiles (submit to end, exact) per agent, tool or hour."""
    if by not in ("agent", "tool", "hour"):
        run(_refuse("invalid_by", "--by must be one of agent, tool, hour"))
    body: dict[str, Any] = {"by": by, "since": since, "until": until}
    out = run(query("ledger", "views_stats", {k: v for k, v in body.items() if v is not None}))
    console.print(render.views_stats_table(out["rows"], by))


@views_app.command("shadow")
def views_shadow(
    digest: Annotated[str | None, typer.Option(help="only this shadow bundle (its digest)")] = None,
    since: Annotated[str | None, typer.Option(help="decided at or after (RFC 3339)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="disagreements to list")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
) -> None:
    """The shadow bundle beside the enforced one: decisions seen, how many agreed, and each disagreement."""
    body: dict[str, Any] = {"digest": digest, "since": since, "limit": limit}
    out = run(query("ledger", "views_shadow", {k: v for k, v in body.items() if v is not None}))
    if as_json:
        console.print_json(json.dumps(out))
        return
    console.print(render.shadow_tables(out))


@views_app.command("rollouts")
def views_rollouts(
    limit: Annotated[int, typer.Option(min=1, max=500, help="rollouts to list, newest first")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
) -> None:
    """The canary rollouts: slice, triggers, how each ended and the signals that decided it, and
    the decisions made under the candidate."""
    out = run(query("ledger", "views_rollouts", {"limit": limit}))
    if as_json:
        console.print_json(json.dumps(out))
        return
    console.print(render.rollouts_table(out["rollouts"]))


@views_app.command("sql")
def views_sql(
    sql: Annotated[
        str, typer.Argument(help='one SELECT statement, e.g. "SELECT status, COUNT(*) FROM intents GROUP BY 1"')
    ],
    max_rows: Annotated[int, typer.Option(min=1, max=1000, help="rows to print at most")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="print columns and rows as JSON")] = False,
) -> None:
    """Run one read-only SQL statement on the views (read-only file, query_only, reads-only authorizer)."""
    out = run(query("ledger", "views_sql", {"sql": sql, "max_rows": max_rows}))
    if as_json:
        console.print_json(json.dumps(out))
        return
    console.print(render.sql_table(out["columns"], out["rows"]))
    if out.get("truncated"):
        console.print(f"[dim]first {max_rows} rows shown[/]")


@views_app.command("status")
def views_status() -> None:
    """Projection lag per stream: position applied, head of the stream, events and seconds behind."""
    out = run(query("ledger", "views_status", {}))
    console.print(render.views_status_table(out["streams"]))
    console.print(f"[dim]file {out['file']}[/]" + (f"[dim] · API {out['api']}[/]" if out.get("api") else ""))


async def _rebuild() -> dict[str, Any]:
    async with connect(settings()) as nc:
        return dict(await call(nc, "ledger", "views_rebuild", {}, timeout=REBUILD_TIMEOUT))


@views_app.command("rebuild")
def views_rebuild() -> None:
    """Replay the log from the first event into fresh tables and swap them in atomically."""
    out = run(_rebuild())
    rate = out.get("events_per_second")
    console.print(
        f"rebuilt from {out['events']} events in {out['seconds']:.2f}s"
        + (f" ({rate:,.0f} events/s)" if rate else "")
        + f" · digest {out['digest']}",
        soft_wrap=True,
    )


# -- tokens -------------------------------------------------------------------------------------


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="who or what the token is for (a-z, 0-9, - and _)")],
    scope: Annotated[
        str,
        typer.Option(
            help="summary: everything but tool arguments and results (the default); full: those too;"
            " operator: those and the plane's state (the console's Plane page)",
        ),
    ] = ev.SUMMARY_SCOPE,
) -> None:
    """Issue a bearer token for the views API; it is shown once, and only its sha256 is recorded.

    Issuing again under the same name replaces the previous token.
    """
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    digest = "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    run(query("identity", "issue_reader_token", {"name": name, "token_hash": digest, "scope": scope}))
    api = settings()._runtime().get("views_api")
    what = "arguments and results included" if scope in ev.VALUE_SCOPES else "arguments and results withheld"
    console.print(f"{scope} token for {name}, {what} (shown once; keep it secret):")
    console.print(token, soft_wrap=True)
    where = api if api and api != "None" else "http://127.0.0.1:$WRIT_VIEWS_PORT"
    console.print(f"[dim]curl -H 'Authorization: Bearer {token[:10]}...' {where}/intents[/]", soft_wrap=True)


@token_app.command("revoke")
def token_revoke(
    name: Annotated[str, typer.Argument(help="the token's name")],
    reason: Annotated[str, typer.Option(help="why")] = "",
) -> None:
    """Revoke a views API token: it stops authenticating at once."""
    run(query("identity", "revoke_reader_token", {"name": name, "reason": reason}))
    console.print(f"revoked the views token {name}")


async def _refuse(code: str, message: str) -> None:
    fail(code, message)
