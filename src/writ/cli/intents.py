"""Agent-side commands: submit a signed intent, see where an intent stands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from writ.cli import render
from writ.cli.base import call, connect, console, fail, run, settings
from writ_common import subjects
from writ_common.events import Receipt

intent_app = typer.Typer(help="Submit intents and follow them.", no_args_is_help=True)


def parse_arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        fail("invalid_json", f'--args is not valid JSON ({exc}); pass an object, e.g. --args \'{{"timezone": "UTC"}}\'')
    if not isinstance(value, dict):
        fail("invalid_json", f"--args must be a JSON object, got {type(value).__name__}")
    return value


def check_intent_id(intent_id: str) -> str:
    from writ_common.ids import is_token

    if not is_token(intent_id):
        fail("invalid_intent_id", f"{intent_id!r} is not an intent id (they look like in-abc123...)")
    return intent_id


async def submit(
    tool: str,
    args: str,
    agent: str,
    *,
    key_file: Path | None,
    idempotency_key: str | None,
    on_behalf_of: str | None,
    deadline: float | None,
    wait: bool,
    timeout: float,
) -> bool:
    """Sign and submit; with ``wait``, print the receipt. Returns whether the intent succeeded (or was sent)."""
    from writ.keys import agent_bus_creds_path, agent_key_path, read_key
    from writ.sdk import new_intent, publish_intent, sign_intent, wait_receipt

    cfg = settings()
    seed = agent_bus_creds_path(cfg.data_dir, agent)
    if seed.exists():  # speak as the agent: the bus itself checks it submits only its own intents
        cfg = cfg.model_copy(update={"nats_creds_file": seed})
    arguments = parse_arguments(args)
    key = read_key(key_file or agent_key_path(cfg.data_dir, agent))
    intent = new_intent(
        agent,
        tool,
        arguments,
        idempotency_key=idempotency_key,
        on_behalf_of=on_behalf_of,
        deadline_seconds=deadline or cfg.default_deadline_seconds,
    )
    async with connect(cfg, user=f"agent-{agent}") as nc:
        submission = await publish_intent(nc, sign_intent(intent, key))
        console.print(f"intent {submission.intent_id}")
        if submission.duplicate:
            console.print("[yellow]duplicate: original intent kept[/] (this idempotency key was used before)")
        if not wait:
            return True
        wake = subjects.receipt_notice_subject(agent, submission.intent_id)
        receipt = await wait_receipt(nc, submission.intent_id, timeout, agent_id=agent, wake_subject=wake)
    console.print(render.receipt_panel(receipt))
    return receipt.status == "succeeded"


@intent_app.command("submit")
def intent_submit(
    tool: Annotated[str, typer.Argument(help="Tool name, or server/tool when several servers offer it")],
    *,
    agent: Annotated[str, typer.Option("--as", help="The agent submitting (its key signs the intent)")],
    args: Annotated[str, typer.Option("--args", help="Tool arguments as a JSON object")] = "{}",
    key: Annotated[Path | None, typer.Option(help="Private key file (default: <data>/keys/agents/AGENT.key)")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Same key, same intent: resubmits are no-ops")] = None,
    on_behalf_of: Annotated[str | None, typer.Option(help="The user the agent acts for")] = None,
    deadline: Annotated[float | None, typer.Option(help="Seconds from now after which it must not run")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the receipt; exit 1 unless it succeeded")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the receipt")] = 30.0,
) -> None:
    """Sign an intent with the agent's key and submit it."""
    succeeded = run(
        submit(
            tool,
            args,
            agent,
            key_file=key,
            idempotency_key=idempotency_key,
            on_behalf_of=on_behalf_of,
            deadline=deadline,
            wait=wait,
            timeout=timeout,
        )
    )
    if not succeeded:
        raise typer.Exit(1)


async def cancel(intent_id: str, agent: str, *, reason: str, timeout: float) -> bool:
    """Ask to cancel the agent's intent, print what came of it. True: it ended cancelled."""
    from writ.keys import agent_bus_creds_path
    from writ.sdk import cancel_intent

    check_intent_id(intent_id)
    cfg = settings()
    seed = agent_bus_creds_path(cfg.data_dir, agent)
    if seed.exists():  # speak as the agent: the bus lets only it ask, on its own intent's subject
        cfg = cfg.model_copy(update={"nats_creds_file": seed})
    async with connect(cfg, user=f"agent-{agent}") as nc:
        answer = await cancel_intent(nc, agent, intent_id, reason=reason, timeout=timeout)
    if answer.outcome == "unknown_intent":
        fail("not_found", f"agent {agent!r} has no intent {intent_id!r}: nothing to cancel")
    if answer.receipt is not None:
        console.print(render.receipt_panel(answer.receipt))
    console.print(str(answer))
    return answer.outcome == "cancelled"


@intent_app.command("cancel")
def intent_cancel(
    intent_id: Annotated[str, typer.Argument(metavar="ID")],
    *,
    agent: Annotated[str, typer.Option("--as", help="The agent whose intent it is (only it may cancel it)")],
    reason: Annotated[str, typer.Option(help="Why, recorded with the request")] = "",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the receipt")] = 10.0,
) -> None:
    """Cancel one of the agent's intents: not yet run, it ends cancelled; its call running, the call
    is cancelled upstream; already ended, nothing changes. Exit 1 unless it ended cancelled."""
    if not run(cancel(intent_id, agent, reason=reason, timeout=timeout)):
        raise typer.Exit(1)


async def status(intent_id: str) -> tuple[dict[str, Any] | None, Receipt | None]:
    """The ledger's row for the intent (None if it has none yet) and its receipt (None if none yet)."""
    from writ.sdk import fetch_receipt
    from writ_common.commands import CommandError

    check_intent_id(intent_id)
    async with connect(settings()) as nc:
        try:
            row: dict[str, Any] | None = dict(await call(nc, "ledger", "intent_status", {"intent_id": intent_id}))
        except CommandError as exc:
            if exc.code != "not_found":
                raise
            row = None
        receipt = await fetch_receipt(nc, intent_id)
    if row is None and receipt is None:
        fail("not_found", f"the ledger knows no intent {intent_id!r} and it has no receipt yet")
    return row, receipt


@intent_app.command("status")
def intent_status(intent_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Where an intent stands, from the ledger's view, and whether it has its receipt."""
    row, receipt = run(status(intent_id))
    if row is None:
        assert receipt is not None
        row = {"intent_id": intent_id, "agent_id": receipt.agent_id, "tool": receipt.tool, "server": receipt.server,
               "status": receipt.status, "code": receipt.code, "reason": receipt.reason}  # fmt: skip
    console.print(render.intent_row(row, receipt.position if receipt else None))


async def reconcile(
    intent_id: str, outcome: str, *, by: str, note: str, key_file: Path | None, wait: bool, timeout: float
) -> None:
    """Settle an unknown outcome; a retry is a new intent signed with the agent's key."""
    from writ.keys import agent_key_path, read_key
    from writ.sdk import fetch_receipt, retry_intent, wait_receipt

    check_intent_id(intent_id)
    cfg = settings()
    async with connect(cfg) as nc:
        receipt = await fetch_receipt(nc, intent_id)
        if receipt is None:
            fail("no_receipt", f"{intent_id} has not ended yet; only an outcome_unknown intent is reconciled")
        if receipt.status != "outcome_unknown":
            fail("not_unknown", f"{intent_id} ended as {receipt.status}; only an outcome_unknown intent is reconciled")
        body: dict[str, Any] = {"intent_id": intent_id, "agent_id": receipt.agent_id, "outcome": outcome, "by": by}
        body["note"] = note
        retried = None
        if outcome == "retry":
            key = read_key(key_file or agent_key_path(cfg.data_dir, receipt.agent_id))
            retried = await retry_intent(nc, key, receipt.agent_id, intent_id)
            body["retry_intent_id"] = retried.intent_id
        await call(nc, "executor", "reconcile", body)
        console.print(f"reconciled {intent_id} as [bold]{outcome}[/] by {by}")
        if retried is not None:
            console.print(f"retry: intent {retried.intent_id} (authenticated, planned and authorized like a new call)")
            if wait:
                console.print(render.receipt_panel(await wait_receipt(nc, retried.intent_id, timeout)))


@intent_app.command("reconcile")
def intent_reconcile(
    intent_id: Annotated[str, typer.Argument(metavar="ID")],
    *,
    succeeded: Annotated[bool, typer.Option("--succeeded", help="the call did take effect")] = False,
    failed: Annotated[bool, typer.Option("--failed", help="the call did not take effect")] = False,
    retry: Annotated[bool, typer.Option("--retry", help="run it again as a new, freshly authorized intent")] = False,
    note: Annotated[str, typer.Option(help="why you know")] = "",
    by: Annotated[str | None, typer.Option(help="who settles it (default: $USER)")] = None,
    key: Annotated[Path | None, typer.Option(help="the agent's key, for --retry")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="with --retry: wait for the retry's receipt")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait")] = 60.0,
) -> None:
    """Settle an outcome_unknown intent: say it ran, it did not, or retry it as a new call."""
    import getpass

    chosen = [name for name, flag in (("succeeded", succeeded), ("failed", failed), ("retry", retry)) if flag]
    if len(chosen) != 1:
        run(_refuse("invalid_option", "give exactly one of --succeeded, --failed, --retry"))
    run(
        reconcile(intent_id, chosen[0], by=by or getpass.getuser(), note=note, key_file=key, wait=wait, timeout=timeout)
    )


async def _refuse(code: str, message: str) -> None:
    fail(code, message)
