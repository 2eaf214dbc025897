"""What every command shares: settings, the NATS connection, and turning expected failures into one line."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from nacl.signing import SigningKey
from nats.aio.client import Client
from rich.console import Console
from rich.markup import escape

from writ_common.errors import CodedError
from writ_common.ids import TOKEN_RULE
from writ_common.settings import WritSettings

T = TypeVar("T")

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

# The id rule as help text shows it: escaped, or rich takes ``[a-z0-9]`` for markup and drops it.
TOKEN_HELP = escape(TOKEN_RULE)

CONNECT_TIMEOUT = 2.0
ADD_SERVER_TIMEOUT = 75.0  # the registry allows discovery 60s


class CliError(CodedError):
    """An expected failure: printed as ``error: <code>: <message>``, exit 1."""


@dataclass
class Options:
    """Global options (``writ --data-dir D --nats-url U ...``); None means: from WRIT_* or defaults."""

    data_dir: Path | None = None
    nats_url: str | None = None


OPTIONS = Options()


def settings(data_dir: Path | None = None) -> WritSettings:
    overrides: dict[str, Any] = {}
    if data_dir or OPTIONS.data_dir:
        overrides["data_dir"] = data_dir or OPTIONS.data_dir
    if OPTIONS.nats_url:
        overrides["nats_url"] = OPTIONS.nats_url
    return WritSettings(**overrides)


def fail(code: str, message: str) -> NoReturn:
    raise CliError(code, message)


def print_error(code: str, message: str) -> None:
    if message.startswith(f"{code}: "):
        message = message.removeprefix(f"{code}: ")
    err_console.print(f"[bold red]error:[/] [red]{code}: {message}[/]", soft_wrap=True)


def _expected(exc: BaseException) -> tuple[str, str] | None:
    """(code, message) of an expected failure, or None for a bug (which keeps its traceback)."""
    import nats.errors

    from writ.runtime.supervisor import PlaneAlreadyRunning
    from writ.sdk import AwaitingApproval, ReceiptTimeout
    from writ_common.envelope import UndecodableEvent

    match exc:
        case CodedError():  # CliError, CommandError, KeyFileError...
            return exc.code, exc.message
        case AwaitingApproval():
            return "awaiting_approval", f"{exc}; `writ intent status {exc.intent_id}` shows it"
        case ReceiptTimeout():
            return "receipt_timeout", f"{exc}; the intent may still be in flight: `writ intent status ID` shows it"
        case UndecodableEvent():
            return exc.code, exc.reason
        case PlaneAlreadyRunning():
            return "plane_running", str(exc)
        case nats.errors.ConnectionClosedError() | nats.errors.NoServersError():
            return "disconnected", "lost the connection to the Writ plane's NATS server"
        case nats.errors.TimeoutError():
            return "timeout", "the Writ plane's NATS server did not answer in time"
        case nats.errors.Error():
            return "nats_error", f"{type(exc).__name__}: {exc}"
    return None


def report(fn: Callable[[], T]) -> T:
    """Run ``fn``; an expected failure becomes one red line on stderr and exit code 1."""
    try:
        return fn()
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None
    except Exception as exc:
        expected = _expected(exc)
        if expected is None:
            raise
        print_error(*expected)
        raise typer.Exit(1) from None


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` one command's coroutine, reporting expected failures."""
    return report(lambda: asyncio.run(coro))


def not_running(url: str) -> CliError:
    return CliError("no_plane", f"no Writ plane is running at {url}; start one with `make run` (or `writ up`)")


def no_data_dir(cfg: WritSettings) -> CliError | None:
    """Why the operator has no credential, when the reason is that there is no data directory here."""
    if cfg.nats_creds_file or cfg.runtime_file().is_file():
        return None
    where = cfg.data_dir.resolve()
    return CliError(
        "no_data_dir",
        f"no Writ data directory at {where} (no runtime.json there), so there is no operator credential to "
        "speak with: run writ from the directory where `make run` runs (it keeps .writ there), or point "
        "--data-dir / $WRIT_DATA_DIR at that .writ",
    )


RECONNECT_WAIT = 1.0


@asynccontextmanager
async def connect(
    cfg: WritSettings,
    user: str = "operator",
    *,
    reconnect: bool = False,
    on_reconnected: Callable[[], None] | None = None,
) -> AsyncIterator[Client]:
    """A NATS connection with a 2s connect timeout.

    Short commands take the default: no reconnect loop, a lost connection is an error. Long-lived
    commands (``approvals watch``) pass ``reconnect=True``: they ride out a restart of the plane,
    saying on stderr when the connection is lost and when it is back (subscriptions are renewed by
    the client); ``on_reconnected`` is then called, e.g. to look again for what was missed.
    """
    import nats
    import nats.errors

    url = cfg.resolved_nats_url()
    refusals: list[str] = []
    connected = False

    async def on_error(exc: Exception) -> None:
        # nats-py logs every failed attempt with a traceback by default; we report one line instead.
        if "authorization" in str(exc).lower():
            refusals.append(str(exc))

    async def on_disconnected() -> None:
        if connected and reconnect:
            err_console.print(
                f"[yellow]lost the plane at {url}; reconnecting every {RECONNECT_WAIT:g}s (Ctrl-C to stop)[/]"
            )

    async def on_back() -> None:
        err_console.print(f"[green]reconnected to the plane at {url}[/]")
        if on_reconnected is not None:
            on_reconnected()

    reconnecting: dict[str, Any] = (
        {"allow_reconnect": True, "max_reconnect_attempts": -1, "reconnect_time_wait": RECONNECT_WAIT}
        if reconnect
        else {
            "allow_reconnect": False,
            "max_reconnect_attempts": 1,  # 0 would mean "forever" on the first connect
            "reconnect_time_wait": 0.1,
        }
    )
    try:
        nc = await asyncio.wait_for(
            nats.connect(
                cfg.nats_servers(),
                name="writ-cli",
                connect_timeout=CONNECT_TIMEOUT,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_back,
                **reconnecting,
                **cfg.bus_options(user),
            ),
            CONNECT_TIMEOUT + 1.0,
        )
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        if refusals:
            if user == "operator" and (missing := no_data_dir(cfg)) is not None:
                raise missing from exc
            creds = cfg.resolved_nats_creds_file()
            raise CliError(
                "not_authorized",
                f"the bus at {url} refused {user}'s credential ({creds or 'none'}): "
                + (
                    "a revoked agent, or creds this bus's account did not sign"
                    if user.startswith("agent-")
                    else "not a user it knows"
                ),
            ) from exc
        if (missing := no_data_dir(cfg)) is not None and cfg.nats_url is None:
            raise CliError("no_plane", f"{not_running(url).message}; {missing.message}") from exc
        raise not_running(url) from exc
    connected = True
    try:
        yield nc
    finally:
        connected = False  # closing is not losing the plane
        await nc.close()


async def call(nc: Client, service: str, command: str, body: dict[str, Any], timeout: float = 30.0) -> Any:
    from writ_common import commands

    return await commands.call(nc, service, command, body, timeout=timeout)


async def register_with_identity(
    command: str, body: dict[str, Any], *, bus_creds: Path, new_key: tuple[Path, SigningKey] | None
) -> dict[str, Any]:
    """Register an agent or an approver (``command``) with its bus key, the public half of the seed
    in ``bus_creds``; then save ``new_key`` (only now: a failed registration leaves no orphan key
    behind) and the user JWT identity signed for the bus key (none on an open bus) beside the seed."""
    from writ.keys import write_new_key
    from writ_common.busauth import public_nkey, read_creds, write_private
    from writ_common.busjwt import creds

    _jwt, seed = read_creds(bus_creds)
    async with connect(settings()) as nc:
        registered: dict[str, Any] = await call(nc, "identity", command, {**body, "bus_key": public_nkey(seed)})
    if new_key is not None:
        write_new_key(*new_key)
    if registered.get("bus_jwt"):
        write_private(bus_creds, creds(registered.pop("bus_jwt"), seed))
    return registered


async def query(service: str, command: str, body: dict[str, Any]) -> Any:
    """One command to one service on a short-lived connection."""
    async with connect(settings()) as nc:
        return await call(nc, service, command, body)


# -- the default policy ---------------------------------------------------------------------------

DEFAULT_POLICY_RELATIVE = Path("deploy") / "policies" / "default.cedar"

# A copy of deploy/policies/default.cedar, used when the CLI runs outside a checkout.
DEFAULT_POLICY_FALLBACK = """\
@id("read-only-tools")
permit(principal, action == Action::"call_tool", resource) when { resource.read_only };

@id("destructive-needs-approval")
@approval("operators")
@quorum("1")
permit(principal, action == Action::"call_tool", resource) when { resource.destructive && !resource.read_only };
"""


def default_policy_file() -> Path | None:
    """deploy/policies/default.cedar of the checkout this package (or the current directory) is in."""
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for parent in (start, *start.parents):
            candidate = parent / DEFAULT_POLICY_RELATIVE
            if candidate.is_file():
                return candidate
    return None


def default_policy() -> tuple[str, str]:
    """(Cedar text, where it came from)."""
    path = default_policy_file()
    if path is not None:
        return path.read_text(), str(path)
    return DEFAULT_POLICY_FALLBACK, "the built-in copy of deploy/policies/default.cedar"
