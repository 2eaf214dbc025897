"""``writ demo``: the whole story on one screen, against a running plane or an embedded one.

An agent gets a key, an MCP server is registered, a policy is loaded; then one intent runs and
four are refused (by policy, by the tool's schema, for an unknown tool, for a forged signature),
each ending in a signed receipt; the first receipt is verified at the end.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey
from nats.aio.client import Client
from rich import box
from rich.markdown import Markdown
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table

from writ.cli import render
from writ.cli.base import ADD_SERVER_TIMEOUT, CliError, call, connect, console, default_policy
from writ.cli.receipts import print_verified, verify_stored
from writ.keys import agent_key_path, read_key, write_new_key
from writ.sdk import new_intent, publish_intent, sign_intent, wait_receipt
from writ_common.commands import CommandError
from writ_common.events import Receipt
from writ_common.settings import WritSettings
from writ_common.signing import generate_key, key_id, public_key_b64

AGENT = "demo-agent"
SERVER = "time"
TIME_SERVER = str(Path(sys.executable).parent / "mcp-server-time")
RECEIPT_TIMEOUT = 60.0

DEMO_FORBID = """\
// Added by `writ demo`: every time tool is read-only, so to show a denial we forbid one outright.
@id("no-convert")
forbid(principal, action == Action::"call_tool", resource) when { resource.name == "convert_time" };
"""


@dataclass(frozen=True)
class Scene:
    """One intent of the story and the outcome it should have."""

    title: str
    explain: str
    tool: str
    arguments: dict[str, Any]
    expect: str  # the receipt status we expect
    forged: bool = False


def scenes() -> list[Scene]:
    paris = {"timezone": "Europe/Paris"}
    convert = {"source_timezone": "Europe/Paris", "time": "12:00", "target_timezone": "Asia/Tokyo"}
    return [
        Scene("allowed: a read-only tool", "`read-only-tools` permits it; the executor runs it.",
              f"{SERVER}/get_current_time", paris, "succeeded"),
        Scene("denied by policy", "`no-convert` forbids `convert_time`; a forbid beats any permit.",
              f"{SERVER}/convert_time", convert, "denied"),
        Scene("rejected: arguments that fail the tool's input schema",
              "`timezone` must be a string; the registry checks arguments against the tool's schema "
              "before anyone decides anything.", f"{SERVER}/get_current_time", {"timezone": 42}, "rejected"),
        Scene("rejected: a tool nobody offers", "No registered server has a tool called `send_email`.",
              "send_email", {"to": "ceo@example.com"}, "rejected"),
        Scene("rejected: a forged signature",
              f"Signed with a fresh key that is not `{AGENT}`'s: identity refuses it before anything else.",
              f"{SERVER}/get_current_time", paris, "rejected", forged=True),
    ]  # fmt: skip


def chapter(number: int, title: str) -> None:
    console.print()
    console.rule(f"[bold]{number} · {title}", align="left")


def say(text: str) -> None:
    console.print(Markdown(text))


# -- setting the stage ------------------------------------------------------------------------------


async def agent_with_key(nc: Client, cfg: WritSettings) -> tuple[str, SigningKey]:
    """``demo-agent`` with a key we hold: reuse what a previous run left, else register afresh."""
    registered = {a["agent_id"]: a for a in await call(nc, "identity", "list_agents", {})}
    name = AGENT
    path = agent_key_path(cfg.data_dir, name)
    if name in registered:
        if path.exists() and key_id(public_key_b64(read_key(path))) == registered[name]["key_id"]:
            console.print(f"agent [bold]{name}[/] is already registered and its key is at {path}: reusing both")
            return name, read_key(path)
        suffix = 2
        while f"{AGENT}-{suffix}" in registered or agent_key_path(cfg.data_dir, f"{AGENT}-{suffix}").exists():
            suffix += 1
        name = f"{AGENT}-{suffix}"
        path = agent_key_path(cfg.data_dir, name)
        console.print(f"[yellow]{AGENT} is registered but its key is not here; using {name} instead[/]")
    key = read_key(path) if path.exists() else generate_key()
    body = {"agent_id": name, "public_key": public_key_b64(key), "owner": "demo", "teams": ["demo"]}
    done = await call(nc, "identity", "register_agent", body)
    if not path.exists():
        write_new_key(path, key)
    console.print(f"$ writ agent register {name} --owner demo --team demo", style="dim")
    console.print(
        f"[green]registered[/] agent [bold]{name}[/] · key id {done['key_id']} · key file {path.resolve()} (0600)"
    )
    return name, key


async def time_server(nc: Client) -> list[dict[str, Any]]:
    console.print(f"$ writ server add {SERVER} -- {TIME_SERVER}", style="dim")
    body = {"name": SERVER, "transport": "stdio", "command": TIME_SERVER}
    try:
        added = await call(nc, "registry", "add_server", body, timeout=ADD_SERVER_TIMEOUT)
        tools: list[dict[str, Any]] = added["tools"]
    except CommandError as exc:
        if exc.code != "server_exists":
            raise
        tools = list(await call(nc, "registry", "list_tools", {"server": SERVER}))
        console.print(
            f"[yellow]a server named {SERVER!r} is already registered with another command; the demo uses its tools"
            f" (`writ server remove {SERVER}` lets the demo register its own)[/]"
        )
    console.print(render.tools_table(tools, title=f"tools discovered on {SERVER} over MCP", width=console.width))
    return tools


async def demo_policy(nc: Client) -> None:
    cedar, source = default_policy()
    bundle = cedar.rstrip() + "\n\n" + DEMO_FORBID
    loaded = await call(nc, "policy", "load", {"cedar": bundle})
    say(
        f"The default policy ({source}) permits read-only tools and sends destructive ones to a person "
        "for approval. Both time tools are read-only, so the demo adds one `forbid` to have something to deny "
        "(loading a bundle replaces the plane's current policy):"
    )
    console.print(
        Panel(Syntax(bundle, "rust", background_color="default", word_wrap=True), title="policy", title_align="left")
    )
    console.print(f"[green]loaded[/] · digest {loaded['policy_digest']} · policies {', '.join(loaded['policy_ids'])}")


# -- the intents ------------------------------------------------------------------------------------


async def play(nc: Client, agent: str, key: SigningKey, scene: Scene) -> Receipt:
    say(scene.explain)
    console.print(
        f"$ writ intent submit {scene.tool} --args '{json.dumps(scene.arguments)}' --as {agent} --wait"
        + ("  [dim](signed with the wrong key)[/]" if scene.forged else ""),
        style="dim",
    )
    intent = new_intent(agent, scene.tool, scene.arguments)
    submission = await publish_intent(nc, sign_intent(intent, generate_key() if scene.forged else key))
    receipt = await wait_receipt(nc, submission.intent_id, RECEIPT_TIMEOUT)
    console.print(render.receipt_panel(receipt))
    if receipt.status != scene.expect:
        console.print(f"[bold red]unexpected: this intent should have ended {scene.expect}[/]")
    return receipt


def summary(played: list[tuple[Scene, Receipt]]) -> Table:
    table = Table(title="the receipts, in ledger order", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("#", "status", "stage", "code", "tool"):
        table.add_column(column, justify="right" if column == "#" else "left")
    for _scene, r in sorted(played, key=lambda p: p[1].position):
        table.add_row(str(r.position), render.status_text(r.status), r.stage, r.code, r.tool or "-")
    return table


async def story(cfg: WritSettings) -> bool:
    """Tell the story against the plane ``cfg`` points at; True if every intent ended as expected."""
    async with connect(cfg) as nc:
        chapter(1, "an agent and its key")
        say("Agents sign every intent with an Ed25519 key. Writ keeps only the public half.")
        agent, key = await agent_with_key(nc, cfg)
        chapter(2, "an MCP server")
        say("Writ discovers the server's tools over MCP and pins each one by a digest of its definition.")
        await time_server(nc)
        chapter(3, "a policy")
        await demo_policy(nc)
        played: list[tuple[Scene, Receipt]] = []
        for number, scene in enumerate(scenes(), start=4):
            chapter(number, scene.title)
            played.append((scene, await play(nc, agent, key, scene)))
    chapter(len(played) + 4, "verifying the first receipt")
    first = played[0][1]
    say("Each receipt is hashed, signed by the ledger's key, and chained to the receipt before it.")
    console.print(f"$ writ receipt verify {first.intent_id}", style="dim")
    print_verified(await verify_stored(cfg, first.intent_id))
    console.print()
    console.print(summary(played))
    ok = all(r.status == s.expect for s, r in played)
    console.print("[bold green]demo complete[/]" if ok else "[bold red]demo finished with unexpected outcomes[/]")
    return ok


# -- entry point ------------------------------------------------------------------------------------


def run_demo(cfg: WritSettings, *, embedded: bool, data_dir: Path | None) -> bool:
    """Run the story; with ``embedded``, on a plane started here (on ``data_dir`` or a temporary dir)."""
    if not embedded:
        return asyncio.run(story(cfg))
    from writ.runtime.processes import free_port
    from writ.runtime.supervisor import Plane, PlaneAlreadyRunning

    temporary = data_dir is None
    home = Path(tempfile.mkdtemp(prefix="writ-demo-")) if temporary else Path(data_dir or cfg.data_dir)
    # A temporary plane takes free ports so it never squats on 4222/6379 of a real `writ up`.
    plane = Plane(home, nats_port=free_port() if temporary else None, redis_port=free_port() if temporary else None)
    try:
        with console.status(f"starting an embedded plane in {home} (nats, redis, five services)…"):
            try:
                plane.start()
                plane.wait_ready(timeout=60.0)
            except PlaneAlreadyRunning:
                raise
            except (RuntimeError, TimeoutError) as exc:
                raise CliError("plane_failed", f"the embedded plane did not start: {exc}") from exc
        console.print(f"[green]embedded plane up[/] · {plane.nats_url} · data {home}")
        return asyncio.run(story(plane.settings))
    finally:
        with console.status("stopping the embedded plane…"):
            plane.stop()
        console.print("embedded plane stopped")
        if temporary:
            shutil.rmtree(home, ignore_errors=True)
