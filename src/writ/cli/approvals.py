"""Approver commands: register approvers; see, follow, grant and deny approval requests; serve the HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from pathlib import Path
from typing import Annotated, Any

import typer
from nacl.signing import SigningKey

from writ.cli import render
from writ.cli.base import TOKEN_HELP, connect, console, fail, query, register_with_identity, report, run, settings
from writ.cli.intents import check_intent_id
from writ.keys import approver_bus_creds_path, approver_key_path
from writ_common.approvals import Decision
from writ_common.settings import WritSettings

approver_app = typer.Typer(help="Register and list approvers (people who grant or deny calls).", no_args_is_help=True)
approvals_app = typer.Typer(help="See, follow, grant and deny approval requests as an approver.", no_args_is_help=True)

As = Annotated[str, typer.Option("--as", help="The approver you act as")]
KeyOption = Annotated[
    Path | None, typer.Option("--key", help="Private key file (default: <data>/keys/approvers/NAME.key)")
]


def as_approver(approver: str) -> tuple[WritSettings, str]:
    """Settings and bus user to speak as ``approver`` (its own credential when this machine has it;
    else the local operator's)."""
    from writ_common.subjects import approver_bus_name

    cfg = settings()
    seed = approver_bus_creds_path(cfg.data_dir, approver)
    if seed.exists():
        return cfg.model_copy(update={"nats_creds_file": seed}), approver_bus_name(approver)
    return cfg, "operator"


async def ask_policy(approver: str, command: str, body: dict[str, Any]) -> Any:
    """``command`` on the approver's own subject: policy answers for that approver, and no one else."""
    cfg, user = as_approver(approver)
    async with connect(cfg, user) as nc:
        return await ask_as(nc, approver, command, body)


async def ask_as(nc: Any, approver: str, command: str, body: dict[str, Any]) -> Any:
    from writ_common.commands import call_as_approver

    return await call_as_approver(nc, approver, command, body)


def read_approver_key(path: Path, approver_id: str) -> SigningKey:
    from writ.keys import KeyFileError, read_key

    try:
        return read_key(path)
    except KeyFileError as exc:
        if exc.code != "key_missing":
            raise
        fail(
            "key_missing",
            f"no key for approver {approver_id!r} at {path}; register with `writ approver register` or pass --key PATH",
        )


# -- approvers --------------------------------------------------------------------------------------


async def register_approver(
    name: str, *, groups: list[str], key_file: Path | None, public_key_file: Path | None = None
) -> dict[str, Any]:
    """Register ``name``; with no ``key_file`` nor ``public_key_file``, generate a key and save it
    once registration succeeded. With ``public_key_file`` (from ``writ approver keygen`` on the
    approver's machine) only the public half is ever here."""
    from writ.keys import KeyFileError, read_public_key
    from writ_common.signing import generate_key, public_key_b64

    cfg = settings()
    if not groups:
        fail("invalid_groups", "an approver belongs to at least one group: pass --group GROUP")
    if key_file is not None and public_key_file is not None:
        fail("invalid_key", "pass --key (a private key here) or --public-key (its public half), not both")
    key: SigningKey | None = None
    path: Path | None = None
    new = False
    if public_key_file is not None:
        try:
            public_key = read_public_key(public_key_file)
        except KeyFileError as exc:
            fail(exc.code, str(exc))
    elif key_file is not None:
        key, path = read_approver_key(key_file, name), key_file
    else:
        path = approver_key_path(cfg.data_dir, name)
        if path.exists():
            fail(
                "key_exists",
                f"a key for approver {name!r} already exists at {path}; "
                "register it with `--key` to reuse it, or move it away to start over",
            )
        key, new = generate_key(), True
    if key is not None:
        public_key = public_key_b64(key)
    seed_path = approver_bus_creds_path(cfg.data_dir, name)
    body = {"approver_id": name, "public_key": public_key, "groups": groups}
    to_save = (path, key) if new and key is not None and path is not None else None
    registered = await register_with_identity("register_approver", body, bus_creds=seed_path, new_key=to_save)
    held = str(path.resolve()) if path is not None else None
    return {**registered, "key_file": held, "bus_creds_file": str(seed_path.resolve())}


@approver_app.command("register")
def approver_register(
    name: Annotated[str, typer.Argument(help=f"Approver id: {TOKEN_HELP}")],
    group: Annotated[
        list[str] | None, typer.Option("--group", help="A group whose requests it decides (repeat)")
    ] = None,
    key: Annotated[
        Path | None, typer.Option(help="Register this existing private key instead of generating one")
    ] = None,
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key", help="Register only this public key (NAME.pub from `writ approver keygen` on their machine)"
        ),
    ] = None,
) -> None:
    """Register an approver: by its public key (--public-key, the private half never comes here), or
    generate an Ed25519 key (saved 0600 under <data>/keys/approvers/) and register its public half."""
    done = run(register_approver(name, groups=group or [], key_file=key, public_key_file=public_key))
    console.print(f"[green]registered[/] approver [bold]{done['approver_id']}[/]")
    console.print(f"  groups    {', '.join(done['groups'])}")
    console.print(f"  key id    {done['key_id']}")
    if done["key_file"]:
        console.print(f"  key file  {done['key_file']}")
    else:
        console.print("  key file  none here: the approver signs with their own (`--key PATH` when deciding)")
    console.print(f"  bus creds {done['bus_creds_file']} (hears only its groups' requests)")


def _new_approver_key(name: str, path: Path) -> tuple[Path, Path, str]:
    """Write a fresh private key at ``path`` (0600, never over an existing file) and NAME.pub beside it."""
    from writ.keys import public_key_path, write_new_key, write_public_key
    from writ_common.ids import check_token
    from writ_common.signing import generate_key, key_id, public_key_b64

    try:
        check_token(name, "approver id")
    except ValueError as exc:
        fail("invalid_name", str(exc))
    key = generate_key()
    write_new_key(path, key)  # KeyFileError (key_exists...) is reported as it is
    pub = public_key_path(path)
    write_public_key(pub, key)
    return path, pub, key_id(public_key_b64(key))


@approver_app.command("keygen")
def approver_keygen(
    name: Annotated[str, typer.Argument(help=f"Approver id the key is for: {TOKEN_HELP}")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Private key file to write (default: ./NAME.key); NAME.pub beside it")
    ] = None,
) -> None:
    """On the approver's own machine: a fresh Ed25519 key (0600) and its public half to give the operator.

    Needs no plane: the private key never leaves this machine; the operator registers NAME.pub
    with `writ approver register NAME --group G --public-key NAME.pub`."""
    path, pub, key_fingerprint = report(lambda: _new_approver_key(name, out or Path(f"{name}.key")))
    console.print(f"[green]key[/] for approver [bold]{name}[/] · {key_fingerprint}")
    console.print(f"  private  {path.resolve()} (0600: keep it here; import it into the console once)")
    console.print(f"  public   {pub.resolve()}")
    console.print(f"  next     the operator runs: writ approver register {name} --group GROUP --public-key {pub.name}")


@approver_app.command("list")
def approver_list() -> None:
    """The registered approvers and their groups."""
    console.print(render.approvers_table(run(query("identity", "list_approvers", {}))))


# -- requests ---------------------------------------------------------------------------------------


@approvals_app.command("list")
def approvals_list(approver: As) -> None:
    """Open requests this approver's groups may decide."""
    rows = run(ask_policy(approver, "list_approvals", {}))
    if not rows:
        console.print(f"no pending approval requests for {approver}")
        return
    console.print(render.approvals_table(rows, title=f"pending approvals for {approver}"))


@approvals_app.command("show")
def approvals_show(intent_id: Annotated[str, typer.Argument(metavar="INTENT_ID")], approver: As) -> None:
    """One request in full: the call, the tool version, the arguments, the policy, the quorum and the digest."""
    console.print(render.approval_panel(run(show(intent_id, approver))))


async def show(intent_id: str, approver: str) -> dict[str, Any]:
    from writ_common.commands import CommandError

    check_intent_id(intent_id)
    try:
        return dict(await ask_policy(approver, "show_approval", {"intent_id": intent_id}))
    except CommandError as exc:
        if exc.code != "forbidden":
            raise
        fail("not_in_group", f"{exc.message}, which decides this call")


async def decide(
    intent_id: str, approver: str, decision: Decision, comment: str, key_file: Path | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fetch the request, sign ``decision`` on its digest, send it; (request, outcome). A refusal fails."""
    from writ.approver import ApproverClient
    from writ_common.commands import CommandError

    check_intent_id(intent_id)
    cfg = settings()
    key = read_approver_key(key_file or approver_key_path(cfg.data_dir, approver), approver)
    async with connect(*as_approver(approver)) as nc:
        # Fetched as this approver: one whose groups may not decide it learns only that (not_in_group).
        try:
            request = dict(await ask_as(nc, approver, "show_approval", {"intent_id": intent_id}))
        except CommandError as exc:
            if exc.code != "forbidden":
                raise
            fail("not_in_group", f"{exc.message}, which decides this call")
        outcome = await ApproverClient(nc, approver, key).decide(request, decision, comment)
    if outcome.get("outcome") == "refused":
        fail(str(outcome.get("code") or "refused"), str(outcome.get("reason") or "the decision was refused"))
    return request, outcome


def _decide_command(intent_id: str, approver: str, decision: Decision, comment: str, key: Path | None) -> None:
    request, outcome = run(decide(intent_id, approver, decision, comment, key))
    console.print(f"intent {request['intent_id']} · {request.get('tool')} · agent {request.get('agent_id')}")
    console.print(render.decision_text(outcome, decision))


Comment = Annotated[str, typer.Option(help="Why; signed with the decision and kept in the receipt trail")]


@approvals_app.command("approve")
def approvals_approve(
    intent_id: Annotated[str, typer.Argument(metavar="INTENT_ID")],
    approver: As,
    comment: Comment = "",
    key: KeyOption = None,
) -> None:
    """Grant: sign the request's digest with your key and send it; prints granted k/n or authorized."""
    _decide_command(intent_id, approver, "grant", comment, key)


@approvals_app.command("deny")
def approvals_deny(
    intent_id: Annotated[str, typer.Argument(metavar="INTENT_ID")],
    approver: As,
    comment: Comment = "",
    key: KeyOption = None,
) -> None:
    """Deny: sign a denial of the request's digest; the intent ends as denied."""
    _decide_command(intent_id, approver, "deny", comment, key)


# -- watch ------------------------------------------------------------------------------------------


async def watch(approver: str, count: int | None) -> int:
    """Print each new request this approver may decide, until ``count`` of them or Ctrl-C; returns how many."""
    from writ.approver import ApproverClient

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Ctrl-C ends the loop rather than the process; not possible off the main thread (then it just raises).
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    shown = 0

    def ready(waiting: list[dict[str, Any]]) -> None:
        console.print(f"watching approval requests for [bold]{approver}[/] (Ctrl-C to stop)")
        if waiting:
            console.print(f"[dim]{len(waiting)} already pending: `writ approvals list --as {approver}`[/]")

    async def show_each(client: ApproverClient) -> None:
        nonlocal shown
        # Also checks that the approver exists (unknown_approver otherwise).
        async for request in client.requests(pending=False, on_ready=ready):
            shown += 1
            intent_id = request["intent_id"]
            console.print(render.approval_panel(request, title=f"new approval request · {intent_id}"))
            console.print(
                f"  decide: `writ approvals approve {intent_id} --as {approver}`"
                f" or `writ approvals deny {intent_id} --as {approver}`",
                soft_wrap=True,
            )
            if count is not None and shown >= count:
                return

    holder: list[ApproverClient] = []

    def look_again() -> None:  # requests made while the plane was away are shown too
        for client in holder:
            client.look_again()

    try:
        async with connect(*as_approver(approver), reconnect=True, on_reconnected=look_again) as nc:
            holder.append(ApproverClient(nc, approver, None))
            shower = asyncio.ensure_future(show_each(holder[0]))
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({shower, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not shower.done():
                shower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await shower
            else:
                shower.result()  # its error, if any (unknown_approver...)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
    return shown


@approvals_app.command("watch")
def approvals_watch(
    approver: As,
    count: Annotated[int | None, typer.Option(min=1, help="Exit after printing this many requests")] = None,
) -> None:
    """Follow new approval requests live and print each one this approver may decide."""
    shown = run(watch(approver, count))
    if count is None or shown < count:
        console.print(f"stopped watching ({shown} shown)")


# -- HTTP API ---------------------------------------------------------------------------------------


def _check_bindable(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        fail("invalid_host", f"cannot resolve {host!r}: {exc.strerror}")
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            fail("port_in_use", f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another with --port")


async def _reachable() -> str:
    cfg = settings()
    async with connect(cfg):
        return cfg.resolved_nats_url()


@approvals_app.command("serve")
def approvals_serve(
    host: Annotated[
        str, typer.Option(help="Interface to bind (plain HTTP: keep it on loopback or put TLS in front)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8787,
) -> None:
    """Serve the approvals HTTP API (requests signed with an approver's key; OpenAPI at /openapi.json)."""
    import uvicorn

    from writ.approvals_api import build_app

    nats_url = run(_reachable())
    report(lambda: _check_bindable(host, port))
    console.print(
        f"approvals API on http://{host}:{port} · OpenAPI at /openapi.json · plane at {nats_url}", soft_wrap=True
    )
    uvicorn.run(
        build_app(nats_url, settings().bus_options()),
        host=host,
        port=port,
        log_level="info",
        server_header=False,
        timeout_graceful_shutdown=5,  # an open inbox stream must not hold Ctrl-C for its two minutes
    )
