"""What a plane on this machine left for its clients, read without the services' settings: the
data directory, the plane's NATS seed URLs from ``<data>/runtime.json`` (written by ``writ up``),
and the connect options a bus credential needs. The SDK and the services' settings both read
them here, so an agent process needs nothing but the SDK."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from writ_common.subjects import inbox_prefix

DEFAULT_DATA_DIR = Path(".writ")
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
RUNTIME_FILE = "runtime.json"


def data_dir(given: str | Path | None = None) -> Path:
    """``given``, else ``$WRIT_DATA_DIR``, else ``.writ``."""
    if given is not None:
        return Path(given)
    return Path(os.environ.get("WRIT_DATA_DIR") or DEFAULT_DATA_DIR)


def read_runtime(data: Path) -> dict[str, str]:
    """``<data>/runtime.json`` as strings; empty when there is none (no plane started here)."""
    try:
        parsed = json.loads((data / RUNTIME_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in parsed.items()} if isinstance(parsed, dict) else {}


def nats_url(data: Path) -> str:
    """``$WRIT_NATS_URL``, else the plane's seeds from runtime.json, else the default local port."""
    return os.environ.get("WRIT_NATS_URL") or read_runtime(data).get("nats_url") or DEFAULT_NATS_URL


def bus_credentials(creds_file: Path | None, user: str) -> dict[str, Any]:
    """nats.connect options for a bus user: its ``.creds`` (the user JWT identity issued, with its
    nkey seed) and its own reply inbox; none: an open bus."""
    if creds_file is None:
        return {}
    return {"user_credentials": str(creds_file), "inbox_prefix": inbox_prefix(user)}
