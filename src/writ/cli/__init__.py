"""``writ``: run the plane, register agents, servers and policy, submit intents, verify receipts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from writ.cli.approvals import approvals_app, approver_app
from writ.cli.base import OPTIONS, console, fail, report, settings
from writ.cli.bus import bus_app
from writ.cli.control import agent_app, policy_app, server_app, tool_app
from writ.cli.gateway import gateway
from writ.cli.intents import intent_app
from writ.cli.ledger import ledger_app
from writ.cli.receipts import receipt_app
from writ.cli.secrets import secret_app
from writ.cli.views import views_app

app = typer.Typer(
    name="writ",
    help="Writ: the agent control plane. Agents submit signed intents; the plane authenticates, plans, "
    "authorizes, executes and records each one as a signed receipt.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold private keys
    rich_markup_mode="rich",
)
app.add_typer(agent_app, name="agent")
app.add_typer(server_app, name="server")
app.add_typer(tool_app, name="tool")
app.add_typer(secret_app, name="secret")
app.add_typer(policy_app, name="policy")
app.add_typer(intent_app, name="intent")
app.add_typer(receipt_app, name="receipt")
app.add_typer(ledger_app, name="ledger")
app.add_typer(approver_app, name="approver")
app.add_typer(approvals_app, name="approvals")
app.add_typer(views_app, name="views")
app.add_typer(bus_app, name="bus")
app.command()(gateway)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Where all local state lives (default: $WRIT_DATA_DIR or .writ)"),
]


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"writ {version('writ')}")
        raise typer.Exit


@app.callback()
def _global(
    data_dir: DataDir = None,
    nats_url: Annotated[
        str | None, typer.Option(help="The plane's NATS (default: $WRIT_NATS_URL, else <data>/runtime.json)")
    ] = None,
    _version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit")
    ] = False,
) -> None:
    OPTIONS.data_dir = data_dir
    OPTIONS.nats_url = nats_url


@app.command()
def up(
    data_dir: DataDir = None,
    nats_port: Annotated[int | None, typer.Option(help="NATS client port (default: last used, else 4222)")] = None,
    replicas: Annotated[
        list[str] | None, typer.Option("--replicas", help="SERVICE=N processes of a service, e.g. executor=2")
    ] = None,
    cluster: Annotated[
        int,
        typer.Option(
            "--cluster",
            help="nats-servers: 3 runs the deployed shape on loopback (a JetStream cluster built from"
            " deploy/nats/common.conf, R3 streams); 1 (default) one server",
            min=1,
            max=5,
        ),
    ] = 1,
) -> None:
    """Run the whole plane (nats, redis, five services) in the foreground; Ctrl-C stops it."""
    from writ.runtime.supervisor import SERVICES, run_plane

    def start() -> None:
        counts: dict[str, int] = {}
        for spec in replicas or []:
            service, _, n = spec.partition("=")
            if service not in SERVICES or not n.isdigit() or int(n) < 1:
                fail("invalid_replicas", f"--replicas takes SERVICE=N, N >= 1, SERVICE one of {', '.join(SERVICES)}")
            counts[service] = int(n)
        run_plane(settings(data_dir), nats_port=nats_port, replicas=counts, cluster=cluster)

    report(start)


@app.command("console")
def open_console(
    data_dir: DataDir = None,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Only print the URL")] = False,
) -> None:
    """Open the running plane's web console (approvals inbox, intents, stats) in a browser."""
    import webbrowser

    from rich import print as rprint

    url = settings(data_dir)._runtime().get("console")
    if not url or url == "None":
        fail("not_running", "no running plane with a console here: start one with `writ up` (or pass --data-dir)")
    rprint(f"console {url}")
    rprint("  approvers: import <data>/keys/approvers/NAME.key once; analysts: `writ views token create NAME`")
    if not no_browser:
        webbrowser.open(str(url))


@app.command()
def demo(
    embedded: Annotated[
        bool, typer.Option("--embedded", help="Start a plane (on a temporary dir unless --data-dir) and stop it after")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """The tour: an agent, an MCP server, a policy, allowed and refused intents, and a verified receipt."""
    from writ.demo import run_demo

    chosen = data_dir or OPTIONS.data_dir
    if not report(lambda: run_demo(settings(chosen), embedded=embedded, data_dir=chosen)):
        raise typer.Exit(1)


def main() -> None:
    app()


__all__ = ["app", "main"]
