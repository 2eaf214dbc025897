"""``writ secret``: set, list and delete the secrets tool servers take by name.

A value is read from stdin or a file, never from the command line (it would sit in the shell's
history and in every process listing), and goes to the executor by request/reply: no stream
ever holds it.
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import Annotated

import typer

from writ.cli import render
from writ.cli.base import TOKEN_HELP, console, err_console, fail, query, report, run

secret_app = typer.Typer(
    help="Secrets for tool servers: stored by the executor, referenced by name (--env K=secret:NAME).",
    no_args_is_help=True,
)


def read_value(from_file: Path | None) -> str:
    """The secret's value: from the file, else stdin (a prompt without echo on a terminal).

    One trailing newline is dropped (``echo`` and editors add one); nothing else is changed.
    """
    if from_file is not None:
        try:
            text = from_file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            fail("file_unreadable", f"cannot read {from_file}: {getattr(exc, 'strerror', None) or exc}")
    elif sys.stdin.isatty():
        text = getpass.getpass("value (not echoed): ")
    else:
        text = sys.stdin.read()
    value = text.removesuffix("\n").removesuffix("\r")
    if not value:
        fail("invalid_secret", "the value is empty; pipe it on stdin or give --from-file PATH")
    return value


@secret_app.command("set")
def secret_set(
    name: Annotated[str, typer.Argument(help=f"Secret name: {TOKEN_HELP}")],
    from_file: Annotated[
        Path | None, typer.Option("--from-file", help="Read the value from this file instead of stdin")
    ] = None,
) -> None:
    """Set or replace a secret; the value comes from stdin (or --from-file), never the command line."""
    value = report(lambda: read_value(from_file))
    done = run(query("executor", "set_secret", {"name": name, "value": value, "by": getpass.getuser()}))
    console.print(f"[green]set[/] secret [bold]{done['name']}[/] at {done['set_at']}")
    if done["referenced_by"]:
        console.print(f"  used by   {', '.join(done['referenced_by'])} (their next session takes the new value)")


@secret_app.command("list")
def secret_list() -> None:
    """Secret names, when each was set and which servers refer to it; never a value."""
    console.print(render.secrets_table(run(query("executor", "list_secrets", {}))))


@secret_app.command("delete")
def secret_delete(name: Annotated[str, typer.Argument(help="Secret name")]) -> None:
    """Delete a secret; calls to servers that refer to it then fail with secret_missing."""
    done = run(query("executor", "delete_secret", {"name": name, "by": getpass.getuser()}))
    console.print(f"[green]deleted[/] secret [bold]{done['name']}[/]")
    if done["referenced_by"]:
        err_console.print(
            f"[yellow]warning:[/] still referred to by {', '.join(done['referenced_by'])}:"
            " their calls fail with secret_missing until it is set again"
        )
