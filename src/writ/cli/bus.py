"""``writ bus``: the keys and credentials of a deployed bus (NATS decentralized JWT auth)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Annotated

import typer

from writ.cli.base import console, report

bus_app = typer.Typer(
    help="Create the bus's operator, accounts and credentials for a deployment (`writ up` does it by itself).",
    no_args_is_help=True,
)


@bus_app.command("init")
def bus_init(
    directory: Annotated[
        Path, typer.Option("--dir", help="Where the keys and credentials go (0700; keep it out of version control)")
    ] = Path("deploy/bus"),
    nats_dir: Annotated[
        Path | None,
        typer.Option(help="Also copy auth.conf here, beside nats-N.conf, which include it (docker-compose)"),
    ] = Path("deploy/nats"),
) -> None:
    """Create (or keep) the operator, the system and Writ accounts, identity's issuer and each
    service's creds. Run again, it keeps every key and the servers' auth.conf, and reissues the
    services' creds (their permissions follow this version of Writ)."""
    from writ_common import topology
    from writ_common.busauth import init_trust

    trust = report(lambda: init_trust(directory, topology.SERVICES))
    if nats_dir is not None:
        nats_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(trust.auth_conf, nats_dir / trust.auth_conf.name)
    issuer = trust.issuer()
    console.print(f"[green]bus ready[/] in {directory} (Writ account {issuer.account})")
    console.print(f"  nats-server  {trust.auth_conf}" + (f" (copied to {nats_dir})" if nats_dir else ""))
    console.print("               operator JWT, system account, the accounts to start from: no secret")
    console.print(f"  identity     {trust.issuer_file} -> WRIT_NATS_ISSUER_FILE")
    for service in topology.SERVICES:
        console.print(f"  {service:<12} {trust.creds_file(service)} -> WRIT_NATS_CREDS_FILE")
    console.print(f"  operator     {trust.creds_file('operator')} (the CLI: WRIT_NATS_CREDS_FILE)")
    console.print(f"  keep offline {directory / 'keys'} (the operator's and the accounts' own seeds)")


PING_WAIT = 1.0  # seconds to hear every running node answer $SYS.REQ.SERVER.PING
REMOVE_WITHIN = 60.0  # seconds to keep asking while the cluster elects a meta leader


@bus_app.command("remove-node")
def bus_remove_node(
    name: Annotated[str, typer.Argument(help="The lost node's server_name (nats-1, nats-2, ...)")],
    issuer_file: Annotated[
        Path | None,
        typer.Option(
            help="Identity's issuer (it holds the system account's user); default: WRIT_NATS_ISSUER_FILE,"
            " else the embedded plane's"
        ),
    ] = None,
) -> None:
    """Take a node lost for good out of the JetStream cluster (a peer-remove), so that what it held
    is placed on the others: its streams' replicas, and the stages' consumers kept on it alone
    (WRIT_CONSUMER_REPLICAS=1), which each service then moves back to the progress it had seen.
    Refused while the node is up: stop it first. A replacement node joins under a new name."""
    from writ.cli.base import run

    run(_remove_node(name, issuer_file))


async def _remove_node(name: str, issuer_file: Path | None) -> None:
    import json

    import nats.errors

    from writ.cli.base import fail, settings
    from writ_common.busauth import BusTrust, Issuer, every_node_answers, system_connection

    cfg = settings()
    path = issuer_file or cfg.nats_issuer_file or BusTrust.of_plane(cfg.data_dir).issuer_file
    try:
        issuer = Issuer.load(path)
    except (OSError, ValueError, KeyError) as exc:
        fail("no_issuer", f"cannot read the bus issuer at {path} ({exc}); pass --issuer-file (from `writ bus init`)")
    nc = await system_connection(cfg.nats_servers(), issuer, 2.0, name="writ-cli-system")
    try:
        pongs = await every_node_answers(nc, "$SYS.REQ.SERVER.PING", listen=PING_WAIT, timeout=2.0)
        running = [json.loads(data).get("server", {}).get("name", "") for data in pongs]
        if name in running:
            fail(
                "node_running",
                f"{name} is up (running: {', '.join(sorted(running))}); remove-node is for a node"
                " lost for good: stop it first",
            )
        # The meta leader answers; just after a node's loss (it may have been the leader) there is
        # none for a few seconds: ask again until REMOVE_WITHIN.
        give_up = asyncio.get_running_loop().time() + REMOVE_WITHIN
        while True:
            try:
                reply = await nc.request("$JS.API.SERVER.REMOVE", json.dumps({"peer": name}).encode(), timeout=5.0)
                break
            except nats.errors.TimeoutError:
                if asyncio.get_running_loop().time() > give_up:
                    fail(
                        "no_meta_leader",
                        f"no JetStream meta leader answered within {REMOVE_WITHIN:g}s (running:"
                        f" {', '.join(sorted(running))}); a majority of the nodes must be up",
                    )
        answer = json.loads(reply.data)
        if not answer.get("success"):
            error = answer.get("error", {})
            fail(
                "remove_refused",
                f"JetStream did not remove {name}: {error.get('description', answer)}"
                f" (running: {', '.join(sorted(running))})",
            )
    finally:
        await nc.close()
    console.print(f"[green]removed {name}[/] from the JetStream cluster (running: {', '.join(sorted(running))})")
    console.print("  its replicas and the consumers it alone held are placed on the others within seconds;")
    console.print("  each service resets its consumer to the progress it had seen (writ_consumers_restored_total)")
