"""Test-only fault hook: an arming file that makes one service process exit right after its N-th
append, before the ack, exactly once per arming.

A test (through the supervisor) writes the arming file; the processes of that unit read it at
each append and count their appends from the moment they first see its token. The first to reach
the count claims the arming by renaming the file to ``<name>.fired`` and exits. The rename is
atomic, so of several replicas (or a restarted process) only one ever fires, and no later process
start finds the arming again: a fault never turns into a crash loop.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

EXIT_CODE = 86  # a process killed by the hook exits with this code


@dataclass(frozen=True)
class Arming:
    """One arming: die after ``after_appends`` appends; ``token`` tells armings apart."""

    token: str
    after_appends: int


def fired_path(path: Path) -> Path:
    """Where the arming lies once a process has claimed (and fired) it."""
    return path.with_name(path.name + ".fired")


def read_arming(path: Path) -> Arming | None:
    """The arming at ``path``, or None when there is none (or it is half-written or malformed)."""
    try:
        data = json.loads(path.read_text())
        return Arming(token=str(data["token"]), after_appends=int(data["after_appends"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def arm(path: Path, after_appends: int) -> Arming:
    """Arm the hook at ``path``: the next process to make ``after_appends`` appends exits.

    Raises:
        ValueError: ``after_appends`` is not positive.
    """
    if after_appends < 1:
        raise ValueError("after_appends must be at least 1")
    arming = Arming(token=uuid.uuid4().hex, after_appends=after_appends)
    path.parent.mkdir(parents=True, exist_ok=True)
    fired_path(path).unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"token": arming.token, "after_appends": after_appends}))
    os.replace(tmp, path)  # a reader sees no arming or the whole of it
    return arming


def has_fired(path: Path, arming: Arming) -> bool:
    """Whether a process claimed ``arming`` (it then exits at once)."""
    fired = read_arming(fired_path(path))
    return fired is not None and fired.token == arming.token


def disarm(path: Path) -> None:
    """Remove the arming at ``path``, fired or not."""
    path.unlink(missing_ok=True)
    fired_path(path).unlink(missing_ok=True)


@contextmanager
def armed(path: Path, after_appends: int) -> Iterator[Arming]:
    """Arm the hook for the duration of the block; disarmed on the way out, whatever happens."""
    try:
        yield arm(path, after_appends)
    finally:
        disarm(path)


class Trigger:
    """One process's view of one arming file: counts its appends per arming token."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._token: str | None = None
        self._count = 0

    def hit(self) -> bool:
        """Count one append; True when this process has just claimed the arming and must exit."""
        arming = read_arming(self.path)
        if arming is None:
            self._token, self._count = None, 0
            return False
        if arming.token != self._token:
            self._token, self._count = arming.token, 0
        self._count += 1
        if self._count < arming.after_appends:
            return False
        try:
            os.rename(self.path, fired_path(self.path))
        except FileNotFoundError:
            return False  # another process claimed it first, or the test disarmed it
        self._token, self._count = None, 0
        return True


@cache
def trigger(path: Path) -> Trigger:
    """This process's trigger for ``path`` (one per path, kept for the life of the process)."""
    return Trigger(path)
