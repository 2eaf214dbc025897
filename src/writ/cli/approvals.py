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
from writ.cli.base import call, connect, console, fail, query, report, run, settings
from writ.cli.intents import check_intent_id
from writ_common.approvals import Decision
from writ_common.settings import WritSettings

approver_app = typer.Typer(help="Register and list approvers (people who grant or deny calls).", no_args_is_help=True)
approvals_app = typer.Typer(help="See, follow, grant and deny approval requests as an approver.", no_args_is_help=True)

As = Annotated[str, typer.Option("--as", help="The approver you act as")]
KeyOption = Annotated[
    Path | None, typer.Option("--key", help="Private key file (default: <data>/keys/approvers/NAME.key)")
]
SHOW_RETRIES = 50  # x 0.1s: the policy service may see a new request a moment after we do


def approver_key_path(data_dir: Path, approver_id: str) -> Path:
    """Where ``writ approver register`` keeps an approver's private key."""
    return data_dir / "keys" / "approvers" / f"{approver_id}.key"


def approver_bus_creds_path(data_dir: Path, approver_id: str) -> Path:
    """An approver's bus credential (NATS user JWT and nkey seed, 0600), from ``writ approver register``."""
    return data_dir / "keys" / "approvers" / f"{approver_id}.creds"


def as_approver(approver: str) -> tuple[WritSettings, str]:
    """Settings and bus user to speak as ``approver`` (its own credential when this machine has it;
    else the local operator's)."""
    from writ_common.busauth import approver_bus_name

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


async def register_approver(name: str, *, groups: list[str], key_file: Path | None) -> dict[str, Any]:
    """Register ``name``; with no ``key_file``, generate a key and save it once registration succeeded."""
    from writ.keys import write_new_key
    from writ_common.busauth import public_nkey, read_creds, write_private
    from writ_common.busjwt import creds
    from writ_common.signing import generate_key, public_key_b64

    cfg = settings()
    if not groups:
        fail("invalid_groups", "an approver belongs to at least one group: pass --group GROUP")
    if key_file is not None:
        key, path, new = read_approver_key(key_file, name), key_file, False
    else:
        path = approver_key_path(cfg.data_dir, name)
        if path.exists():
            fail(
                "key_exists",
                f"a key for approver {name!r} already exists at {path}; "
                "register it with `--key` to reuse it, or move it away to start over",
            )
        key, new = generate_key(), True
    seed_path = approver_bus_creds_path(cfg.data_dir, name)
    _jwt, seed = read_creds(seed_path)
    body = {"approver_id": name, "public_key": public_key_b64(key), "groups": groups, "bus_key": public_nkey(seed)}
    async with connect(cfg) as nc:
        registered = await call(nc, "identity", "register_approver", body)
    if new:
        write_new_key(path, key)  # only now: a failed registration leaves no orphan key behind
    if registered.get("bus_jwt"):  # the user JWT identity signed for its key (none on an open bus)
        write_private(seed_path, creds(registered.pop("bus_jwt"), seed))
    return {**registered, "key_file": str(path.resolve()), "bus_creds_file": str(seed_path.resolve())}


@approver_app.command("register")
def approver_register(
    name: Annotated[str, typer.Argument(help="Approver id: [a-z0-9][a-z0-9_-]{0,62}")],
    group: Annotated[
        list[str] | None, typer.Option("--group", help="A group whose requests it decides (repeat)")
    ] = None,
    key: Annotated[Path | None, typer.Option(help="Register this existing key instead of generating one")] = None,
) -> None:
    """Generate an Ed25519 key (saved 0600 under <data>/keys/approvers/) and register its public half."""
    done = run(register_approver(name, groups=group or [], key_file=key))
    console.print(f"[green]registered[/] approver [bold]{done['approver_id']}[/]")
    console.print(f"  groups    {', '.join(done['groups'])}")
    console.print(f"  key id    {done['key_id']}")
    console.print(f"  key file  {done['key_file']}")
    console.print(f"  bus creds {done['bus_creds_file']} (hears only its groups' requests)")


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


async def _show_when_known(nc: Any, intent_id: str, approver: str) -> dict[str, Any] | None:
    """The request as this approver sees it; None if its groups may not decide it (or it is gone)."""
    from writ_common.commands import CommandError

    for _ in range(SHOW_RETRIES):
        try:
            return dict(await ask_as(nc, approver, "show_approval", {"intent_id": intent_id}))
        except CommandError as exc:
            if exc.code == "forbidden":
                return None
            if exc.code != "not_found":
                raise
        await asyncio.sleep(0.1)
    return None


async def _pending_after_reconnect(nc: Any, approver: str) -> list[dict[str, Any]]:
    """The requests pending now; policy may still be starting after a restart, so ask a few times."""
    from writ_common.commands import CommandError

    for _ in range(SHOW_RETRIES):
        try:
            return list(await ask_as(nc, approver, "list_approvals", {}))
        except CommandError as exc:
            if exc.code not in ("service_down", "timeout"):
                raise
        await asyncio.sleep(0.2)
    return []


async def watch(approver: str, count: int | None) -> int:
    """Print each new request this approver may decide, until ``count`` of them or Ctrl-C; returns how many."""
    from nats.aio.msg import Msg

    from writ_common import subjects

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Ctrl-C ends the loop rather than the process; not possible off the main thread (then it just raises).
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    shown = 0
    arrived: asyncio.Queue[str] = asyncio.Queue()
    missed = ""  # put in the queue on a reconnect: look for requests made while the plane was away
    try:
        async with connect(
            *as_approver(approver), reconnect=True, on_reconnected=lambda: arrived.put_nowait(missed)
        ) as nc:

            async def on_request(msg: Msg) -> None:
                arrived.put_nowait(msg.subject.rsplit(".", 1)[-1])

            # Also checks that the approver exists (unknown_approver otherwise).
            groups = await ask_as(nc, approver, "approver_groups", {})
            # Policy announces each new request to its group; the bus lets an approver hear only its own.
            subs = [await nc.subscribe(subjects.approval_notice_subject(g, "*"), cb=on_request) for g in groups]
            waiting = await ask_as(nc, approver, "list_approvals", {})
            console.print(f"watching approval requests for [bold]{approver}[/] (Ctrl-C to stop)")
            if waiting:
                console.print(f"[dim]{len(waiting)} already pending: `writ approvals list --as {approver}`[/]")
            seen: set[str] = {str(row["intent_id"]) for row in waiting}
            while count is None or shown < count:
                next_id = asyncio.ensure_future(arrived.get())
                stopped = asyncio.ensure_future(stop.wait())
                await asyncio.wait({next_id, stopped}, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                if not next_id.done():
                    next_id.cancel()
                    break
                intent_id = next_id.result()
                if intent_id == missed:
                    for row in await _pending_after_reconnect(nc, approver):
                        arrived.put_nowait(str(row["intent_id"]))
                    continue
                if intent_id in seen:
                    continue
                seen.add(intent_id)
                request = await _show_when_known(nc, intent_id, approver)
                if request is None:
                    continue
                shown += 1
                console.print(render.approval_panel(request, title=f"new approval request · {intent_id}"))
                console.print(
                    f"  decide: `writ approvals approve {intent_id} --as {approver}`"
                    f" or `writ approvals deny {intent_id} --as {approver}`",
                    soft_wrap=True,
                )
            for sub in subs:
                await sub.unsubscribe()
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
        build_app(nats_url, settings().bus_options()), host=host, port=port, log_level="info", server_header=False
    )
