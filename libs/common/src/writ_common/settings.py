"""Settings shared by every process, from ``WRIT_*`` environment variables."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class WritSettings(BaseSettings):
    """Where the plane lives and how to reach it.

    ``nats_url`` and ``redis_url`` default to what the embedded runtime wrote into
    ``<data_dir>/runtime.json``, so CLI and services find a running plane with no flags.
    """

    model_config = SettingsConfigDict(env_prefix="WRIT_", extra="ignore")

    data_dir: Path = Field(default=Path(".writ"), description="The one directory all local state lives in")
    nats_url: str | None = None
    redis_url: str | None = None
    instance: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    clock_skew_seconds: float = 300.0
    request_timeout: float = 30.0
    tool_timeout: float = 60.0
    default_deadline_seconds: float = 300.0
    max_attempts: int = 3
    max_argument_bytes: int = Field(default=64 * 1024, description="Largest tool arguments accepted, as JSON")
    max_output_bytes: int = Field(default=1024 * 1024, description="Largest tool output kept, as JSON")
    secrets_key: SecretStr | None = Field(
        default=None,
        description="Executor: 32 random bytes, base64, that encrypt the secret store at rest"
        " (unset: a key generated once into <data>/executor/secrets/key, 0600)",
    )
    nats_seed_file: Path | None = Field(
        default=None,
        description="NATS user nkey seed (0600) when the bus checks who publishes; default: the operator's",
    )
    nats_auth_dir: Path | None = Field(
        default=None,
        description="Embedded runtime: where identity keeps the agents' bus users (it reloads nats-server)",
    )
    stream_replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="How many JetStream servers store each stream when it is created (1 embedded)",
    )
    metrics_port: int = Field(default=0, description="Serve Prometheus /metrics on HTTP_HOST:PORT (0: off)")
    views_file: Path | None = Field(
        default=None,
        description="The ledger's views file (default <data>/ledger/views.sqlite3); one per ledger process",
    )
    views_port: int = Field(default=0, description="The ledger serves the views HTTP API on HTTP_HOST:PORT (0: off)")
    http_host: str = Field(
        default="127.0.0.1",
        description="Address /metrics and the views API listen on: loopback, except in containers (0.0.0.0)",
    )
    fault_exit_after_appends: int = Field(
        default=0, description="Test only: exit the process right after this many appends, before acking"
    )

    def runtime_file(self) -> Path:
        return self.data_dir / "runtime.json"

    def _runtime(self) -> dict[str, str]:
        try:
            data = json.loads(self.runtime_file().read_text())
        except (OSError, ValueError):
            return {}
        return {k: str(v) for k, v in data.items()}

    def resolved_nats_url(self) -> str:
        """The NATS seed URL(s) as configured: one, or several separated by commas."""
        return self.nats_url or self._runtime().get("nats_url", "nats://127.0.0.1:4222")

    def nats_servers(self) -> list[str]:
        """The seed URLs to connect to (``WRIT_NATS_URL`` may list several, comma-separated):
        a client tries each, so it connects while any one node is up, and learns the rest of the
        cluster from the one it reaches."""
        return split_servers(self.resolved_nats_url())

    def resolved_nats_seed_file(self) -> Path | None:
        """This process's bus credential; a local operator's falls back to the one the embedded
        runtime wrote (readable only by the user who runs the plane)."""
        if self.nats_seed_file:
            return self.nats_seed_file
        seed = self._runtime().get("operator_seed_file")
        return Path(seed) if seed and Path(seed).is_file() else None

    def bus_options(self, user: str = "operator") -> dict[str, Any]:
        """Connect options for nats.connect / NatsBroker: the nkey seed and the user's own inbox."""
        from writ_common.busauth import inbox_prefix

        seed = self.resolved_nats_seed_file()
        return {} if seed is None else {"nkeys_seed": str(seed), "inbox_prefix": inbox_prefix(user)}

    def resolved_redis_url(self) -> str:
        return self.redis_url or self._runtime().get("redis_url", "redis://127.0.0.1:6379/0")

    def service_dir(self, service: str) -> Path:
        path = self.data_dir / service
        path.mkdir(parents=True, exist_ok=True)
        return path


def split_servers(urls: str) -> list[str]:
    """``"nats://a:4222, nats://b:4222"`` -> ``["nats://a:4222", "nats://b:4222"]``.

    Raises:
        ValueError: no URL at all.
    """
    servers = [u.strip() for u in urls.split(",") if u.strip()]
    if not servers:
        raise ValueError(f"no NATS URL in {urls!r}")
    return servers
