"""Settings shared by every process, from ``WRIT_*`` environment variables."""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from writ_common.bus import split_servers
from writ_common.local import DEFAULT_NATS_URL, RUNTIME_FILE, bus_credentials, read_runtime
from writ_common.streams import StreamLimits

ARGS_DIGEST_KEY_FILE = "args_digest.key"
SECRET_BYTES = 32


def ensure_secret_file(path: Path) -> str:
    """The base64 secret in ``path``, written first (32 random bytes, mode 0600, its directory
    0700) when the file does not exist. Two processes racing to create it read the same one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        # Written whole under a private name, then linked into place: nobody reads a half file.
        draft = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(base64.b64encode(os.urandom(SECRET_BYTES)).decode() + "\n")
            with contextlib.suppress(FileExistsError):
                os.link(draft, path)
        finally:
            draft.unlink(missing_ok=True)
    return path.read_text().strip()


def _secret_bytes(text: str, source: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{source}: the key must be base64") from exc
    if len(raw) < SECRET_BYTES:
        raise ValueError(f"{source}: the key must be at least {SECRET_BYTES} random bytes (base64)")
    return raw


class WritSettings(BaseSettings):
    """Where the plane lives and how to reach it.

    ``nats_url`` and ``redis_url`` default to what the embedded runtime wrote into
    ``<data_dir>/runtime.json``, so CLI and services find a running plane with no flags.
    """

    model_config = SettingsConfigDict(env_prefix="WRIT_", extra="ignore")

    data_dir: Path = Field(default=Path(".writ"), description="The one directory all local state lives in")
    nats_url: str | None = Field(
        default=None,
        description="The plane's NATS: one URL or several seeds, comma-separated (default: <data>/runtime.json,"
        " else nats://127.0.0.1:4222)",
    )
    redis_url: str | None = Field(
        default=None, description="Redis for nonces, rate limits and execution leases (default: <data>/runtime.json)"
    )
    redis_password_file: Path | None = Field(
        default=None,
        description="File (0600) holding the password Redis asks for (embedded: <data>/creds/redis.password)",
    )
    instance: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="This process's name in every event it writes (producer.instance); default HOST-PID",
    )
    clock_skew_seconds: float = Field(default=300.0, description="Freshness window for an intent's issued_at")
    request_timeout: float = Field(default=30.0, description="How long a command to a service waits for its answer")
    tool_timeout: float = Field(
        default=60.0, description="Upper bound of one tool call (the intent's deadline may cut it shorter)"
    )
    default_deadline_seconds: float = Field(
        default=300.0, description="An intent's deadline when its agent gives none: past it, it ends expired"
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Attempts per tool call (retryable errors only, within the deadline)"
    )
    trace_file: Path | None = Field(
        default=None, description="Write every span as JSON Lines to this file (OTEL_EXPORTER_OTLP_*: to a collector)"
    )
    executor_concurrency: int = Field(
        default=64, ge=1, description="Tool calls one executor replica runs at once, over all servers"
    )
    executor_per_server: int = Field(
        default=32, ge=1, description="Tool calls one executor replica runs at once on one tool server"
    )
    executor_per_server_max: int | None = Field(
        default=None,
        ge=1,
        description="Ceiling the executor may raise a server's limit to, one verified step at a time"
        " (unset: the limit stays executor_per_server)",
    )
    tuning_window: float = Field(default=30.0, gt=0, description="Seconds of calls a limit change is judged on")
    admission: bool = Field(
        default=True,
        description="Admission control: a first attempt past its route's limit ends at once as `overloaded`",
    )
    admission_initial_limit: int = Field(
        default=32,
        ge=1,
        description="The adaptive limit per route (server/tool) at start, before any change is recorded",
    )
    admission_min_limit: int = Field(default=1, ge=1, description="The adaptive limit per route never goes below this")
    admission_max_limit: int = Field(
        default=32,
        ge=1,
        description="The adaptive limit per route never goes above this (nor above EXECUTOR_PER_SERVER,"
        " or EXECUTOR_PER_SERVER_MAX when set, nor a server's declared max_concurrency)",
    )
    admission_tolerance: float = Field(
        default=1.5, ge=1.0, description="A call slower than this times its route's baseline cuts the limit"
    )
    admission_slack_ms: float = Field(
        default=250.0,
        ge=0.0,
        description="... and only when also this many ms above the baseline (noise on fast tools)",
    )
    admission_streak: int = Field(
        default=3, ge=1, description="Slow calls in a row before the limit is cut (one is a hiccup, not a queue)"
    )
    admission_backoff: float = Field(default=0.9, gt=0.0, lt=1.0, description="A cut multiplies the limit by this")
    admission_window_seconds: float = Field(
        default=30.0,
        gt=0.0,
        description="The baseline is the fastest call of the last one to two such windows",
    )
    admission_max_wait_ms: int = Field(
        default=1000,
        ge=0,
        description="A call that finds its healthy route full waits in place up to half a typical call"
        " (within the room its route's bound leaves for a queue), at most this long, before it waits in the stream",
    )
    admission_retry_after_min_ms: int = Field(
        default=100, ge=0, description="Least retry-after given with an `overloaded` answer"
    )
    admission_max_step: int = Field(
        default=8, ge=1, description="A recorded raise of a route's limit moves it by at most this many calls"
    )
    admission_verify_seconds: float = Field(
        default=10.0,
        gt=0.0,
        description="A recorded change of a route's limit is judged on this long of calls after it,"
        " against as long before it",
    )
    admission_cooldown_seconds: float = Field(
        default=5.0, ge=0.0, description="After a route's verdict, this long before its limit is recorded again"
    )
    admission_verify_tolerance: float = Field(
        default=0.2,
        gt=0.0,
        lt=1.0,
        description="How much worse (p99, throughput) a change may make a route and be kept",
    )
    max_argument_bytes: int = Field(default=64 * 1024, description="Largest tool arguments accepted, as JSON")
    max_output_bytes: int = Field(default=1024 * 1024, description="Largest tool output kept, as JSON")
    secrets_key: SecretStr | None = Field(
        default=None,
        description="Executor: 32 random bytes, base64, that encrypt the secret store at rest"
        " (unset: a key generated once into <data>/executor/secrets/key, 0600)",
    )
    args_digest_key: SecretStr | None = Field(
        default=None,
        description="Registry: the plane secret (32+ random bytes, base64) that keys args_digest (HMAC-SHA256);"
        " set it in a deployment, the same for every replica (unset: generated once into"
        " <data>/creds/args_digest.key, 0600, by the embedded runtime or the first registry)",
    )
    nats_creds_file: Path | None = Field(
        default=None,
        description="NATS user creds (user JWT + nkey seed, 0600) when the bus checks who publishes;"
        " default: the operator's",
    )
    nats_issuer_file: Path | None = Field(
        default=None,
        description="Identity: its bus issuer (0600 JSON from `writ bus init`): it signs agents' and approvers'"
        " user JWTs and pushes revocations to the cluster; unset: an open bus",
    )
    bus_resync_seconds: float = Field(
        default=30.0,
        ge=0.0,
        description="Identity: how often it checks that every bus node holds every revocation, and pushes"
        " the account to one that does not (a node down during a revocation); 0: only at start",
    )
    agent_ingress_msgs_per_second: float = Field(
        default=1000.0,
        ge=0.0,
        description="Identity: messages per second one agent may send on the bus (all its connections, averaged"
        " over ingress_window_seconds); above it the agent is suspended at the bus; 0: no message budget",
    )
    agent_ingress_bytes_per_second: float = Field(
        default=16 * 1024 * 1024,
        ge=0.0,
        description="Identity: bytes per second one agent may send on the bus (as the message budget); 0: no"
        " byte budget. Both 0: no ingress guard",
    )
    ingress_check_seconds: float = Field(
        default=1.0,
        gt=0.0,
        description="Identity: how often it reads every bus node's connections in the Writ account"
        " ($SYS.REQ.SERVER.PING.CONNZ) to measure each agent's ingress",
    )
    ingress_window_seconds: float = Field(
        default=5.0,
        gt=0.0,
        description="Identity: the sliding window an agent's ingress rate is averaged over (a burst of up to"
        " budget x window is allowed)",
    )
    stream_replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="How many JetStream servers store each stream when it is created (1 embedded)",
    )
    consumer_state: Literal["auto", "file", "memory"] = Field(
        default="auto",
        description="Where the stages' durable consumers keep their delivery state (ack floor, pending) when"
        " created: memory or file; auto: memory where that memory is replicated (STREAM_REPLICAS > 1 with"
        " CONSUMER_REPLICAS=0), else file. A replicated file-state consumer pays a replicated, fsync'd write"
        " per delivery (make bench-hop); replicated memory state survives any node but loses the stages'"
        " progress if every node restarts at once, and then the stages replay the stream (every handler is"
        " idempotent: nothing twice, nothing lost)",
    )
    consumer_replicas: int = Field(
        default=1,
        ge=0,
        le=5,
        description="How many of the stream's servers keep each stage's consumer progress, when created: 1 (on"
        " one node, on file: an R3 call at 1.4-1.5x a single node's p50 on loopback; a stage waits while that"
        " node is down, and a node lost for good is taken out with `writ bus remove-node`, after which each"
        " service moves its consumer back to its progress) or 0 (as many as the stream: a stage goes on through"
        " the loss of any node, at 1.7x; docs/configuration.md)",
    )
    intents_max_bytes: int = Field(
        default=StreamLimits().intents_max_bytes,
        ge=1024 * 1024,
        description="Bytes the intents stream may hold; when full, new submissions get storage_full (never dropped)",
    )
    ledger_max_bytes: int = Field(
        default=StreamLimits().ledger_max_bytes,
        ge=1024 * 1024,
        description="Bytes the receipts stream may hold; when full, receipts wait (storage_full), never dropped",
    )
    metrics_port: int = Field(
        default=0, description="Serve Prometheus /metrics on HTTP_HOST:PORT (0: off, unless METRICS_PORT_FILE is set)"
    )
    metrics_port_file: Path | None = Field(
        default=None,
        description="Serve /metrics (on an ephemeral port when METRICS_PORT is 0) and write the port bound here",
    )
    views_file: Path | None = Field(
        default=None,
        description="The ledger's views file (default <data>/ledger/views.sqlite3); one per ledger process",
    )
    views_port: int = Field(default=0, description="The ledger serves the views HTTP API on HTTP_HOST:PORT (0: off)")
    http_host: str = Field(
        default="127.0.0.1",
        description="Address /metrics and the views API listen on: loopback, except in containers (0.0.0.0)",
    )
    console_hosts: str = Field(
        default="",
        description="Host names the views API and console answer to besides loopback (comma-separated), "
        "e.g. the name a container's port is published under; any other Host is refused (DNS rebinding)",
    )
    fault_file: Path | None = Field(
        default=None,
        description="Test only: the fault hook's arming file (writ_common.faults); unset: the hook is off",
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        default="uvloop",
        description="Each service's event loop: uvloop (libuv; less CPU per event) or the standard library's",
    )
    profile_dir: Path | None = Field(
        default=None,
        description=(
            "Tuning only: each service samples its CPU time and writes the stacks per window to"
            " <dir>/<window>/<service>-<pid>.folded (writ_common.profiling)"
        ),
    )

    def stream_limits(self) -> StreamLimits:
        return StreamLimits(intents_max_bytes=self.intents_max_bytes, ledger_max_bytes=self.ledger_max_bytes)

    def runtime_file(self) -> Path:
        return self.data_dir / RUNTIME_FILE

    def _runtime(self) -> dict[str, str]:
        return read_runtime(self.data_dir)

    def resolved_nats_url(self) -> str:
        """The NATS seed URL(s) as configured: one, or several separated by commas."""
        return self.nats_url or self._runtime().get("nats_url", DEFAULT_NATS_URL)

    def nats_servers(self) -> list[str]:
        """The seed URLs to connect to (``WRIT_NATS_URL`` may list several, comma-separated):
        a client tries each, so it connects while any one node is up, and learns the rest of the
        cluster from the one it reaches."""
        return split_servers(self.resolved_nats_url())

    def resolved_nats_creds_file(self) -> Path | None:
        """This process's bus credential; a local operator's falls back to the one the embedded
        runtime wrote (readable only by the user who runs the plane)."""
        if self.nats_creds_file:
            return self.nats_creds_file
        creds = self._runtime().get("operator_creds_file")
        return Path(creds) if creds and Path(creds).is_file() else None

    @property
    def consumer_state_in_memory(self) -> bool:
        """Whether new durable consumers keep their state in memory (``consumer_state``): auto
        means only where that memory is replicated. A consumer kept on one node keeps it on file,
        so that node's restart does not make the stage replay the stream."""
        replicated = self.stream_replicas > 1 and self.consumer_replicas != 1
        return self.consumer_state == "memory" or (self.consumer_state == "auto" and replicated)

    def bus_options(self, user: str = "operator") -> dict[str, Any]:
        """Connect options for nats.connect / NatsBroker: the user's creds and its own inbox."""
        return bus_credentials(self.resolved_nats_creds_file(), user)

    def resolved_redis_url(self) -> str:
        return self.redis_url or self._runtime().get("redis_url", "redis://127.0.0.1:6379/0")

    def redis_options(self) -> dict[str, Any]:
        """Connect options for ``redis.asyncio.from_url``: the password, read from its file (never
        from the URL or runtime.json, which name only the file)."""
        path = self.redis_password_file
        if path is None and (named := self._runtime().get("redis_password_file")):
            path = Path(named)
        if path is None or not path.is_file():
            return {}
        return {"password": path.read_text().strip()}

    def args_digest_key_file(self) -> Path:
        return self.data_dir / "creds" / ARGS_DIGEST_KEY_FILE

    def resolved_args_digest_key(self) -> bytes:
        """The plane secret that keys ``args_digest``: ``WRIT_ARGS_DIGEST_KEY`` when set, else the
        key file in the data dir, generated once (0600) if it does not exist yet.

        Raises:
            ValueError: the key is not base64 of at least 32 bytes.
        """
        if self.args_digest_key is not None:
            return _secret_bytes(self.args_digest_key.get_secret_value(), "WRIT_ARGS_DIGEST_KEY")
        path = self.args_digest_key_file()
        return _secret_bytes(ensure_secret_file(path), str(path))

    def service_dir(self, service: str) -> Path:
        path = self.data_dir / service
        path.mkdir(parents=True, exist_ok=True)
        return path
