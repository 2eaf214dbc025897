"""Pytest plugin: real third-party MCP servers for integration and fault tests.

``mcp-server-sqlite`` is written against the ``mcp`` 1.x server API but only declares
``mcp>=1.6``; under ``mcp`` 2.x it dies at start-up (``Server`` has no ``list_resources``).
So it cannot share our venv, and its own venv pins ``mcp<2`` explicitly. It is installed
once at ``<repo>/.venv-tools/mcp-server-sqlite`` (gitignored), guarded by an ``fcntl`` file
lock so parallel sessions do not race, and reused while its marker file records the same
requirements (a venv from an older or interrupted install is rebuilt).
A failed install raises ``McpServerInstallError``: CI must never skip these tests silently.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS_DIR = REPO_ROOT / ".venv-tools"
SQLITE_PACKAGE = "mcp-server-sqlite==2025.4.25"
SQLITE_REQUIREMENTS = [SQLITE_PACKAGE, "mcp<2"]
SQLITE_VENV = TOOLS_DIR / "mcp-server-sqlite"
SQLITE_EXE = SQLITE_VENV / "bin" / "mcp-server-sqlite"
SQLITE_MARKER = SQLITE_VENV / ".writ-requirements"
INSTALL_TIMEOUT_S = 300.0

FAULTY_SERVER = Path(__file__).resolve().parent / "servers" / "faulty_stdio.py"


class McpServerInstallError(RuntimeError):
    """The isolated venv of a third-party MCP server could not be created."""


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(argv: list[str], deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise McpServerInstallError(f"timed out ({INSTALL_TIMEOUT_S:.0f}s) before running: {' '.join(argv)}")
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=remaining)
    except subprocess.TimeoutExpired as exc:
        raise McpServerInstallError(
            f"timed out after {INSTALL_TIMEOUT_S:.0f}s installing {' '.join(SQLITE_REQUIREMENTS)}: {' '.join(argv)}"
        ) from exc
    except subprocess.CalledProcessError as exc:
        raise McpServerInstallError(
            f"installing {' '.join(SQLITE_REQUIREMENTS)} into {SQLITE_VENV} failed (network or index unreachable?)\n"
            f"$ {' '.join(argv)}\n{exc.stdout}\n{exc.stderr}"
        ) from exc


def _sqlite_venv_ready() -> bool:
    marker = "\n".join(SQLITE_REQUIREMENTS)
    return SQLITE_EXE.exists() and SQLITE_MARKER.exists() and SQLITE_MARKER.read_text() == marker


def ensure_sqlite_server() -> Path:
    """Return the ``mcp-server-sqlite`` executable, installing its isolated venv on first use."""
    if _sqlite_venv_ready():
        return SQLITE_EXE
    with _file_lock(TOOLS_DIR / "mcp-server-sqlite.lock"):
        if _sqlite_venv_ready():  # another session finished the install while we waited
            return SQLITE_EXE
        # Missing, interrupted or built with other requirements: start over.
        shutil.rmtree(SQLITE_VENV, ignore_errors=True)
        deadline = time.monotonic() + INSTALL_TIMEOUT_S
        python = SQLITE_VENV / "bin" / "python"
        uv = TOOLS_DIR / "bin" / "uv"
        try:
            if uv.exists():
                _run([str(uv), "venv", "--quiet", "--python", sys.executable, str(SQLITE_VENV)], deadline)
                _run([str(uv), "pip", "install", "--quiet", "--python", str(python), *SQLITE_REQUIREMENTS], deadline)
            else:
                _run([sys.executable, "-m", "venv", str(SQLITE_VENV)], deadline)
                _run([str(python), "-m", "pip", "install", "--quiet", *SQLITE_REQUIREMENTS], deadline)
        except BaseException:
            shutil.rmtree(SQLITE_VENV, ignore_errors=True)
            raise
        if not SQLITE_EXE.exists():
            shutil.rmtree(SQLITE_VENV, ignore_errors=True)
            raise McpServerInstallError(f"{SQLITE_PACKAGE} installed but {SQLITE_EXE} is missing")
        SQLITE_MARKER.write_text("\n".join(SQLITE_REQUIREMENTS))
    return SQLITE_EXE


@pytest.fixture(scope="session")
def sqlite_mcp() -> Callable[[Path], list[str]]:
    """Factory: ``sqlite_mcp(db_path) -> [exe, "--db-path", str(db_path)]``, a stdio MCP server.

    The isolated venv is built at fixture set-up if missing (once per checkout: ~2 s with uv, ~15 s with pip).
    """
    exe = ensure_sqlite_server()

    def command(db_path: Path) -> list[str]:
        return [str(exe), "--db-path", str(db_path)]

    return command


@pytest.fixture(scope="session")
def faulty_mcp() -> Callable[[Path], tuple[list[str], dict[str, str]]]:
    """Factory: ``faulty_mcp(db_path) -> (argv, env)`` for ``tests/servers/faulty_stdio.py`` (stdio).

    ``env`` holds only ``FAULTY_DB``; merge it over the parent environment when spawning.
    """

    def command(db_path: Path) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, str(FAULTY_SERVER)], {"FAULTY_DB": str(db_path)}

    return command


__all__ = ["McpServerInstallError", "ensure_sqlite_server", "faulty_mcp", "sqlite_mcp"]
