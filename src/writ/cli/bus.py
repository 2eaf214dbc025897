"""``writ bus``: the keys and credentials of a deployed bus (NATS decentralized JWT auth)."""

from __future__ import annotations

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
