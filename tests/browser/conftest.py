"""One headless Chromium per session (Debian's ``chromium``), driven with Playwright.

A machine without chromium gets it from apt (as root, the way CI and a fresh machine run); the
browser tests skip, saying why, only when that install fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from playwright.async_api import Browser, async_playwright

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_HINT = "install it with `apt-get install -y chromium` (Debian) or set WRIT_CHROMIUM=/path/to/chromium"


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True, timeout=900, check=False)


def _apt_install() -> str | None:
    """Install Debian's chromium (refreshing the package lists if the first try fails); None on
    success, else why not."""
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine"
    if os.geteuid() != 0:
        return "not root, so apt-get cannot install it"
    if _apt("install", "-y", "-q", "chromium").returncode == 0:
        return None
    updated = _apt("update", "-q")
    if updated.returncode != 0:
        return f"apt-get update failed: {updated.stderr.strip()[-300:]}"
    again = _apt("install", "-y", "-q", "chromium")
    return None if again.returncode == 0 else f"apt-get install chromium failed: {again.stderr.strip()[-300:]}"


def chromium_path() -> str:
    """The chromium binary, installed now if missing; skips the test with the reason if it cannot be."""
    found = os.environ.get("WRIT_CHROMIUM") or shutil.which("chromium")
    if found:
        return found
    why = _apt_install()
    found = shutil.which("chromium")
    if why is not None or not found:
        pytest.skip(f"browser tests need chromium, which is missing and could not be installed ({why}); {INSTALL_HINT}")
    return found


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    executable = chromium_path()
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS, headless=True)
        print(f"chromium {launched.version} at {executable}")
        try:
            yield launched
        finally:
            await launched.close()
