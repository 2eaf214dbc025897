"""The embedded plane: nats-server, redis-server and the five services as child processes under
one data directory, supervised (crashed children restart with backoff) until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from writ.runtime.backoff import Backoff
from writ.runtime.processes import (
    HOST,
    ManagedProcess,
    free_port,
    log_tail,
    pick_port,
    redis_password,
    start_module,
    start_nats,
    start_redis,
    write_private,
)
from writ_common import faults, topology
from writ_common.bus import split_servers
from writ_common.busauth import BusTrust, init_trust
from writ_common.intent_consumer import DRAIN_TIMEOUT
from writ_common.metrics import read_port_file
from writ_common.settings import WritSettings

if TYPE_CHECKING:
    from rich.table import Table

SERVICES: tuple[str, ...] = ("identity", "registry", "policy", "executor", "ledger")
DEFAULT_NATS_PORT = 4222
DEFAULT_REDIS_PORT = 6379
MAX_CLUSTER = 5  # nats-servers in a local cluster (JetStream streams take at most 5 replicas)
CLUSTER_READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0  # nats-server, redis: SIGTERM, then SIGKILL this long after
# A service's clean stop first lets the calls in flight finish (up to DRAIN_TIMEOUT), then closes
# what it holds: a SIGKILL before that would cut a call it was finishing into outcome_unknown.
SERVICE_STOP_TIMEOUT = DRAIN_TIMEOUT + 10.0
POLL_INTERVAL = 0.2

T = TypeVar("T")
EventSink = Callable[[str, str], None]


class PlaneAlreadyRunning(RuntimeError):
    """Another supervisor is serving the same data directory."""


@dataclass(frozen=True)
class UnitStatus:
    """A snapshot of one supervised process, for status displays and tests."""

    name: str
    pid: int | None
    state: str
    restarts: int
    uptime: float
    last_exit: int | None
    metrics_port: int | None = None  # where a service process serves /metrics, once it said so


@dataclass
class _Unit:
    name: str
    launch: Callable[[], ManagedProcess]
    process: ManagedProcess | None = None
    state: str = "stopped"  # starting | running | backoff | stopped
    restarts: int = 0
    backoff: Backoff = field(default_factory=Backoff)
    next_start: float = 0.0
    last_exit: int | None = None
    # Held while launching or stopping, so the monitor and an operator never act at once.
    busy: threading.Lock = field(default_factory=threading.Lock)

    def status(self) -> UnitStatus:
        proc = self.process
        running = self.state == "running" and proc is not None
        return UnitStatus(
            name=self.name,
            pid=proc.pid if running and proc else None,
            state=self.state,
            restarts=self.restarts,
            uptime=time.monotonic() - proc.started_at if running and proc else 0.0,
            last_exit=self.last_exit,
        )


def _run_coro(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a private loop, even when called from inside a running one."""
    with ThreadPoolExecutor(1, thread_name_prefix="writ-plane-io") as pool:
        return pool.submit(asyncio.run, coro).result()


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    # 0600, and replaced whole: readers see the old file or the new one, never half of one.
    write_private(path, json.dumps(data, indent=2) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # An orphan nobody reaps stays a zombie: dead, though signal 0 still reaches it.
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _accepts(url: str) -> bool:
    hostport = url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host or HOST, int(port)), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False


def _port_of(url: str | None) -> int | None:
    if not url:
        return None
    try:
        return int(url.split("://", 1)[-1].split("/", 1)[0].rpartition(":")[2])
    except ValueError:
        return None


class Plane:
    """The embedded plane, usable from a CLI, a test fixture or a benchmark.

    ``start()`` returns once nats and redis answer and the services' processes are running;
    ``wait_ready()`` then waits until each service answers ``ping``. A background thread
    restarts any child that exits until ``stop()``.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        nats_port: int | None = None,
        redis_port: int | None = None,
        services: Sequence[str] = SERVICES,
        replicas: Mapping[str, int] | None = None,
        on_event: EventSink | None = None,
        fault_hooks: bool = False,
        cluster: int = 1,
    ) -> None:
        if not 1 <= cluster <= MAX_CLUSTER:
            raise ValueError(f"cluster takes 1 to {MAX_CLUSTER} nats-servers, not {cluster}")
        self.data_dir = Path(data_dir).resolve()
        # 1: one nats-server (R1 streams); n > 1: n nats-servers in a loopback cluster, streams Rn.
        self.cluster = cluster
        self.services = tuple(services)
        self.replicas = {name: max(1, (replicas or {}).get(name, 1)) for name in self.services}
        self._nats_port = nats_port
        self._redis_port = redis_port
        self._on_event = on_event
        self._fault_hooks = fault_hooks
        self._units: dict[str, _Unit] = {}
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None
        self._file_lock = threading.Lock()
        self._started_at = ""
        self.nats_url = ""  # one URL, or every member's, comma-separated (bus.split_servers)
        self.nats_monitors: dict[str, str] = {}  # a cluster member's /varz, /jsz... by unit name
        self.redis_url = ""
        self.service_env: dict[str, dict[str, str]] = {}  # per-service extra environment (tests)
        # Where each service process is serving /metrics, as it reported (see metrics_port_file).
        self.metrics_ports: dict[str, int] = {}
        self.views_port = 0
        # The bus's operator, accounts and credentials, as `writ bus init` lays them out (0700).
        self.bus = BusTrust.of_plane(self.data_dir)

    # -- public API ---------------------------------------------------------------------------

    @property
    def settings(self) -> WritSettings:
        """Settings that point a client at this plane, with the operator's bus credential."""
        return WritSettings(
            data_dir=self.data_dir,
            nats_url=self.nats_url,
            redis_url=self.redis_url,
            redis_password_file=self.redis_password_file,
            nats_creds_file=self.bus.creds_file("operator"),
            stream_replicas=self.cluster,
        )

    @property
    def redis_password_file(self) -> Path:
        """Redis's password (0600, in the 0700 creds dir): services and the operator AUTH with it."""
        return self.data_dir / "creds" / "redis.password"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    def start(self) -> None:
        """Start nats, redis and the services; resume from whatever the data dir holds.

        Raises:
            PlaneAlreadyRunning: a live supervisor already serves this data dir.
            RuntimeError: a server failed to start (the message carries its log tail).
        """
        if self._units:
            raise RuntimeError("this Plane was already started")
        self.logs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.logs_dir.chmod(0o700)  # as an older version left it: logs may carry what tools printed
        previous = self._read_runtime()
        self._reap_stale(previous)
        previous_ports = [_port_of(url) for url in str(previous.get("nats_url") or "").split(",")]
        nats_port = self._nats_port or pick_port(previous_ports[0], DEFAULT_NATS_PORT)
        redis_port = self._redis_port or pick_port(_port_of(previous.get("redis_url")), DEFAULT_REDIS_PORT)
        self._started_at = datetime.now(UTC).isoformat()
        try:
            nats_dir, redis_dir = self.data_dir / "nats", self.data_dir / "redis"
            self.bus = init_trust(self.bus.root, topology.SERVICES)
            (self.data_dir / "creds").mkdir(mode=0o700, parents=True, exist_ok=True)
            # The plane secret that keys args_digest, generated once like the bus credentials
            # (a WRIT_ARGS_DIGEST_KEY in the environment takes its place).
            WritSettings(data_dir=self.data_dir).resolved_args_digest_key()
            if self.cluster == 1:
                self._start_unit(_Unit("nats", lambda: start_nats(nats_dir, nats_port, bus=self.bus)))
                nats_url = f"nats://{HOST}:{nats_port}"
            else:
                nats_url = self._start_cluster(nats_port, previous_ports)
            password = redis_password(self.redis_password_file)
            self._start_unit(_Unit("redis", lambda: start_redis(redis_dir, redis_port, password_file=password)))
            self.nats_url = nats_url
            self.redis_url = f"redis://{HOST}:{redis_port}/0"
            self._write_runtime()
            _run_coro(self._ensure_streams())
            env = self._service_env()
            if "ledger" in self.services:
                # The ledger serves the views HTTP API on its own loopback port (runtime.json: views_api).
                self.views_port = self.views_port or free_port()
                self.service_env.setdefault("ledger", {})["WRIT_VIEWS_PORT"] = str(self.views_port)
            for service in self.services:
                for n in range(1, self.replicas[service] + 1):
                    # Replicas after the first are units of their own: "executor-2" (log, restarts, kills).
                    name = service if n == 1 else f"{service}-{n}"
                    extra = self.service_env.setdefault(name, {})
                    # Each process serves Prometheus /metrics on a loopback port it binds itself (port 0)
                    # and reports in a file; runtime.json lists them. A port picked here could be taken
                    # by someone else before a restart, and the service would crash-loop on it.
                    extra["WRIT_METRICS_PORT"] = "0"
                    extra["WRIT_METRICS_PORT_FILE"] = str(self.metrics_port_file(name))
                    if self._fault_hooks:
                        extra["WRIT_FAULT_FILE"] = str(self.fault_file(name))
                    # A service's own bus user: it may publish only the events it owns.
                    extra["WRIT_NATS_CREDS_FILE"] = str(self.bus.creds_file(service))
                    if service == "identity":
                        # It signs agents' and approvers' user JWTs and pushes their revocations.
                        extra["WRIT_NATS_ISSUER_FILE"] = str(self.bus.issuer_file)
                    if service == "ledger" and n > 1:
                        # One views file per ledger process: two writers of one file corrupt it.
                        extra["WRIT_VIEWS_FILE"] = str(self.data_dir / "ledger" / f"views-{n}.sqlite3")
                    self._start_unit(_Unit(name, self._service_launcher(name, service, env)))
        except BaseException:
            self.stop()
            raise
        self._monitor = threading.Thread(target=self._watch, name="writ-plane-monitor", daemon=True)
        self._monitor.start()

    def stop(self) -> None:
        """Stop services (SIGTERM; SIGKILL once they had the time to finish the calls in flight),
        then redis, then nats; forget runtime.json."""
        self._stopping.set()
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join()
        services = [u for u in self._units.values() if not self._is_server(u.name)]
        # Signal every service first so they drain in parallel, then wait on one shared deadline.
        for unit in services:
            if unit.process is not None and unit.process.alive():
                unit.process.terminate()
        deadline = time.monotonic() + SERVICE_STOP_TIMEOUT
        for unit in services:
            self._stop_unit(unit, max(0.0, deadline - time.monotonic()))
        for name in ("redis", *self.nats_units):
            if name in self._units:
                self._stop_unit(self._units[name], self._stop_timeout(name))
        runtime = self._read_runtime()
        if runtime.get("pid") == os.getpid() and runtime.get("started_at") == self._started_at:
            self.data_dir.joinpath("runtime.json").unlink(missing_ok=True)

    @property
    def console_url(self) -> str:
        """The console's page, served by the ledger beside the views and approvals APIs ("" when off)."""
        return f"http://{HOST}:{self.views_port}/console/" if self.views_port else ""

    def status(self) -> list[UnitStatus]:
        """One snapshot per supervised process: nats, redis, then the services."""
        return [self.status_of(name) for name in list(self._units)]

    def status_of(self, name: str) -> UnitStatus:
        status = self._unit(name).status()
        port = self.metrics_ports.get(name) if status.state == "running" else None
        return dataclasses.replace(status, metrics_port=port)

    def pid(self, name: str) -> int | None:
        return self._unit(name).status().pid

    def nats_monitor_urls(self) -> dict[str, str]:
        """Each nats-server unit's HTTP monitoring endpoint (``/varz``, ``/connz``), by unit name."""
        if self.nats_monitors:
            return dict(self.nats_monitors)
        out = {}
        for name in self.nats_units:
            process = self._units[name].process if name in self._units else None
            if process is not None and process.monitor_url:
                out[name] = process.monitor_url
        return out

    def kill_service(self, name: str) -> int:
        """SIGKILL one child (a service, ``nats`` or ``redis``); the monitor restarts it.

        Returns the killed pid.
        """
        unit = self._unit(name)
        with unit.busy:
            if unit.process is None:
                raise RuntimeError(f"{name} has no process to kill (state {unit.state})")
            unit.process.kill()
            return unit.process.pid

    def restart_service(self, name: str) -> int:
        """Stop one child gracefully and start it again at once. Returns the new pid."""
        unit = self._unit(name)
        with unit.busy:
            if unit.process is not None:
                unit.last_exit = unit.process.stop(self._stop_timeout(name))
            unit.restarts += 1
            self._launch(unit)
            assert unit.process is not None
            return unit.process.pid

    def _stop_timeout(self, name: str) -> float:
        return STOP_TIMEOUT if self._is_server(name) else SERVICE_STOP_TIMEOUT

    def hold_service(self, name: str, *, kill: bool = False) -> None:
        """Stop one child gracefully (SIGKILL it when ``kill``) and keep it down (the monitor
        leaves it) until released."""
        unit = self._unit(name)
        with unit.busy:
            if unit.process is not None:
                unit.last_exit = unit.process.kill() if kill else unit.process.stop(self._stop_timeout(name))
            unit.state = "held"
            self._emit(name, "held down")
            self._write_runtime()

    def release_service(self, name: str) -> int:
        """Start a held child again. Returns the new pid."""
        unit = self._unit(name)
        with unit.busy:
            unit.restarts += 1
            self._launch(unit)
            assert unit.process is not None
            return unit.process.pid

    def wait_nats_healthy(self, timeout: float = CLUSTER_READY_TIMEOUT) -> None:
        """Block until every nats-server of a cluster says ``/healthz`` ok (its JetStream assets
        current); at once with a single server.

        Raises:
            TimeoutError: some member was not healthy in time.
        """
        _wait_healthy(self.nats_monitors, timeout)

    def metrics_port_file(self, name: str) -> Path:
        """Where process ``name`` writes the port it serves ``/metrics`` on."""
        return self.data_dir / "run" / f"{name}.metrics-port"

    def metrics_url(self, name: str) -> str | None:
        """``/metrics`` of process ``name`` as it runs now; None until it has bound its port."""
        port = read_port_file(self.metrics_port_file(name))
        return f"http://{HOST}:{port}/metrics" if port else None

    def fault_file(self, name: str) -> Path:
        """The fault hook's arming file of process ``name`` (see :meth:`arm_fault`)."""
        return self.data_dir / "faults" / f"{name}.arm"

    @contextmanager
    def arm_fault(self, name: str, after_appends: int) -> Iterator[Callable[[], bool]]:
        """Test only: make process ``name`` exit right after ``after_appends`` more appends, once.

        Yields a function that tells whether the hook has fired. The arming is consumed when it
        fires and removed when the block ends, fired or not, so no later start of ``name`` dies.

        Raises:
            RuntimeError: the plane was not created with ``fault_hooks=True``.
        """
        if not self._fault_hooks:
            raise RuntimeError("this Plane runs without fault hooks; create it with fault_hooks=True")
        self._unit(name)  # a name that is not ours fails here, not as a hook that never fires
        path = self.fault_file(name)
        with faults.armed(path, after_appends) as arming:
            self._emit(name, f"fault hook armed: exit after {after_appends} appends")
            yield lambda: faults.has_fired(path, arming)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until every service answers ``writ.cmd.<service>.ping``.

        Raises:
            TimeoutError: some service did not answer in time (the message has its log tail).
        """
        _run_coro(self.wait_ready_async(timeout))

    async def wait_ready_async(self, timeout: float = 60.0) -> None:
        """Async form of :meth:`wait_ready`."""
        import nats
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout

        from writ_common.subjects import command_subject

        deadline = time.monotonic() + timeout
        pending = set(self.services)
        nc = await nats.connect(
            split_servers(self.nats_url), connect_timeout=5, name="writ-plane-ready", **self.settings.bus_options()
        )
        try:
            while pending and time.monotonic() < deadline:
                for name in sorted(pending):
                    try:
                        reply = await nc.request(command_subject(name, "ping"), b"{}", timeout=1.0)
                        if json.loads(reply.data).get("ok"):
                            pending.discard(name)
                    except (NoRespondersError, NatsTimeout, ValueError):
                        continue  # not subscribed yet, busy starting, or a half-started reply
                if pending:
                    await asyncio.sleep(0.1)
        finally:
            await nc.close()
        if pending:
            tails = "\n".join(
                f"--- {name} ({self._units[name].state}), {self.logs_dir / f'{name}.log'}:\n"
                f"{log_tail(self.logs_dir / f'{name}.log', 10)}"
                for name in sorted(pending)
                if name in self._units
            )
            raise TimeoutError(f"not ready after {timeout:g}s: {', '.join(sorted(pending))}\n{tails}")

    def __enter__(self) -> Plane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def nats_units(self) -> tuple[str, ...]:
        """The nats-server units: ``nats``, or a cluster's ``nats-1`` ... ``nats-<n>``."""
        if self.cluster == 1:
            return ("nats",)
        return tuple(f"nats-{i}" for i in range(1, self.cluster + 1))

    def nats_node_url(self, name: str) -> str:
        """The client URL of nats unit ``name`` alone (to talk to one member of a cluster)."""
        return split_servers(self.nats_url)[self.nats_units.index(name)]

    # -- internals ----------------------------------------------------------------------------

    def _is_server(self, name: str) -> bool:
        return name == "redis" or name in self.nats_units

    def _start_cluster(self, first_port: int, previous_ports: Sequence[int | None]) -> str:
        """Start the cluster's nats-servers (each config from deploy/nats/common.conf, on loopback,
        each store under the data dir) and wait until JetStream is healthy on every one.

        Returns the members' client URLs, comma-separated.
        """
        from writ.runtime import natsconf

        names = self.nats_units
        ports: list[int] = [first_port]
        for i in range(1, len(names)):
            earlier = previous_ports[i] if i < len(previous_ports) else None
            # 4222, 4223, ... as a plain `writ up --cluster 3` would; any free ports next to a chosen one.
            port = pick_port(earlier, DEFAULT_NATS_PORT + i) if self._nats_port is None else free_port()
            while port in ports:
                port = free_port()
            ports.append(port)
        route_ports = self._distinct_free_ports(len(names), avoid=ports)
        monitor_ports = self._distinct_free_ports(len(names), avoid=[*ports, *route_ports])
        route_password = _route_password(self.data_dir / "creds" / "nats-route.password")
        for i, name in enumerate(names):
            routes = natsconf.Routes(
                port=route_ports[i], peers=tuple(route_ports), user="writ-route", password=route_password
            )
            store = self.data_dir / name
            port, monitor = ports[i], monitor_ports[i]
            self.nats_monitors[name] = f"http://{HOST}:{monitor}"

            def launch(name: str = name, store: Path = store, port: int = port, monitor: int = monitor,
                       routes: natsconf.Routes = routes) -> ManagedProcess:  # fmt: skip
                return start_nats(store, port, bus=self.bus, name=name, monitor_port=monitor, routes=routes)

            self._start_unit(_Unit(name, launch))
        _wait_healthy(self.nats_monitors, CLUSTER_READY_TIMEOUT)
        return ",".join(f"nats://{HOST}:{port}" for port in ports)

    @staticmethod
    def _distinct_free_ports(n: int, avoid: Sequence[int]) -> list[int]:
        ports: list[int] = []
        while len(ports) < n:
            port = free_port()
            if port not in ports and port not in avoid:
                ports.append(port)
        return ports

    def _unit(self, name: str) -> _Unit:
        try:
            return self._units[name]
        except KeyError:
            raise KeyError(f"no process named {name!r}; known: {', '.join(self._units)}") from None

    def _emit(self, name: str, message: str) -> None:
        if self._on_event is not None:
            self._on_event(name, message)

    def _service_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            WRIT_DATA_DIR=str(self.data_dir),
            WRIT_NATS_URL=self.nats_url,
            WRIT_STREAM_REPLICAS=str(self.cluster),
            WRIT_REDIS_URL=self.redis_url,
            WRIT_REDIS_PASSWORD_FILE=str(self.redis_password_file),
            PYTHONUNBUFFERED="1",  # logs reach the file as they are written
        )
        return env

    def _service_launcher(self, name: str, service: str, env: Mapping[str, str]) -> Callable[[], ManagedProcess]:
        log_path = self.logs_dir / f"{name}.log"
        port_file = self.metrics_port_file(name)

        def launch() -> ManagedProcess:
            port_file.unlink(missing_ok=True)  # the last process's port: gone with it
            self.metrics_ports.pop(name, None)
            # Extra env is read at each launch, so a test can change it before a restart.
            return start_module(name, f"writ_{service}", log_path, {**env, **self.service_env.get(name, {})})

        return launch

    def _start_unit(self, unit: _Unit) -> None:
        self._units[unit.name] = unit
        with unit.busy:
            self._launch(unit)

    def _launch(self, unit: _Unit) -> None:
        """Start ``unit``'s process (caller holds ``unit.busy``)."""
        unit.state = "starting"
        try:
            unit.process = unit.launch()
        except Exception as exc:
            self._schedule_retry(unit, time.monotonic(), f"failed to start: {exc}")
            raise
        unit.state = "running"
        self._emit(unit.name, f"running, pid {unit.process.pid}")
        if self.nats_url:
            self._write_runtime()

    def _stop_unit(self, unit: _Unit, timeout: float) -> None:
        with unit.busy:
            if unit.process is not None and unit.state != "stopped":
                unit.last_exit = unit.process.stop(timeout)
                self._emit(unit.name, f"stopped (exit {unit.last_exit})")
            unit.state = "stopped"

    def _schedule_retry(self, unit: _Unit, now: float, why: str, ran_for: float = 0.0) -> None:
        delay = unit.backoff.next_delay(ran_for)
        unit.state = "backoff"
        unit.next_start = now + delay
        self._emit(unit.name, f"{why}; restarting in {delay:g}s")
        if self.nats_url:
            self._write_runtime()  # the console's Plane page reads each unit's state from runtime.json

    def _watch(self) -> None:
        while not self._stopping.wait(POLL_INTERVAL):
            for unit in list(self._units.values()):
                if self._stopping.is_set():
                    return
                if not unit.busy.acquire(blocking=False):
                    continue  # an operator is restarting or killing it right now
                try:
                    self._check(unit)
                finally:
                    unit.busy.release()
            self._refresh_metrics_ports()

    def _check(self, unit: _Unit) -> None:
        now = time.monotonic()
        proc = unit.process
        if unit.state == "running" and proc is not None and not proc.alive():
            unit.last_exit = proc.popen.returncode
            self._schedule_retry(unit, now, f"exited with code {unit.last_exit}", now - proc.started_at)
        elif unit.state == "backoff" and now >= unit.next_start:
            unit.restarts += 1
            with contextlib.suppress(Exception):  # _launch already scheduled the next try
                self._launch(unit)

    def _refresh_metrics_ports(self) -> None:
        """Pick up the ports services reported since the last look; runtime.json follows."""
        changed = False
        for name in list(self._units):
            if self._is_server(name):
                continue
            port = read_port_file(self.metrics_port_file(name))
            if port is not None and self.metrics_ports.get(name) != port:
                self.metrics_ports[name] = port
                changed = True
        if changed and self.nats_url:
            self._write_runtime()

    async def _ensure_streams(self) -> None:
        import nats
        from nats.errors import Error as NatsError

        from writ_common.streams import ensure_streams

        nc = await nats.connect(
            split_servers(self.nats_url), connect_timeout=5, name="writ-plane", **self.settings.bus_options()
        )
        try:
            # A cluster elects its JetStream meta leader, then each stream's, before it takes them.
            attempts = 50 if self.cluster == 1 else 150
            for attempt in range(attempts):
                try:
                    await ensure_streams(
                        nc.jetstream(),
                        replicas=self.settings.stream_replicas,
                        limits=self.settings.stream_limits(),
                        update=True,  # the operator's runtime brings older streams to today's limits
                    )
                    return
                except NatsError:
                    if attempt == attempts - 1:
                        raise
                    await asyncio.sleep(0.2)  # JetStream may still be recovering its store
        finally:
            await nc.close()

    # -- runtime.json -------------------------------------------------------------------------

    def _read_runtime(self) -> dict[str, Any]:
        try:
            data = json.loads(self.data_dir.joinpath("runtime.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_runtime(self) -> None:
        with self._file_lock:
            _write_json_atomic(
                self.data_dir / "runtime.json",
                {
                    "nats_url": self.nats_url,
                    "cluster": self.cluster,
                    "nats_monitors": dict(self.nats_monitors) or None,
                    "redis_url": self.redis_url,
                    # The path only: the password stays in its own 0600 file.
                    "redis_password_file": str(self.redis_password_file),
                    # A local operator's CLI connects with this (the file is 0600, like the data).
                    "operator_creds_file": str(self.bus.creds_file("operator")),
                    "pid": os.getpid(),
                    "started_at": self._started_at,
                    "metrics": {
                        name: f"http://{HOST}:{port}/metrics" for name, port in dict(self.metrics_ports).items()
                    },
                    "views_api": f"http://{HOST}:{self.views_port}" if self.views_port else None,
                    # The console: static pages on the views API's port (same origin as both APIs).
                    "console": self.console_url or None,
                    # Each supervised process as the status table shows it (the console's Plane page).
                    "units": {u.name: _unit_record(u) for u in self._units.values()},
                    # Lets the next start reap children orphaned by a killed supervisor.
                    "processes": {
                        u.name: {"pid": u.process.pid, "argv": u.process.argv}
                        for u in self._units.values()
                        if u.process is not None
                    },
                },
            )

    def _reap_stale(self, previous: Mapping[str, Any]) -> None:
        """Refuse to share the data dir with a live plane; stop orphans of a dead one.

        Two nats-servers on one store would corrupt it, and nats-server does not lock it.
        """
        if not previous:
            return
        pid = previous.get("pid")
        seeds = str(previous.get("nats_url") or "").split(",")
        if isinstance(pid, int) and _pid_alive(pid) and any(_accepts(url) for url in seeds if url):
            raise PlaneAlreadyRunning(
                f"a Writ plane (pid {pid}) is already running on {self.data_dir} at "
                f"{previous.get('nats_url')}; stop it first"
            )
        processes = previous.get("processes")
        if isinstance(processes, dict):
            orphans = [
                (name, entry["pid"])
                for name, entry in processes.items()
                if isinstance(entry, dict) and self._owns(entry.get("pid"), entry.get("argv"))
            ]
            for name, orphan in orphans:
                self._emit(name, f"stopping orphan pid {orphan} left by a previous run")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(orphan, signal.SIGTERM)
            _wait_gone([pid for _, pid in orphans], STOP_TIMEOUT)
        self.data_dir.joinpath("runtime.json").unlink(missing_ok=True)

    def _owns(self, pid: object, argv: object) -> bool:
        """Whether ``pid`` is still the process we recorded (same binary, same data dir)."""
        if not isinstance(pid, int) or not isinstance(argv, list) or not argv:
            return False
        proc = Path("/proc") / str(pid)
        try:
            exe = os.path.realpath(proc / "exe")
            cwd = Path(os.path.realpath(proc / "cwd"))
            cmdline = [part.decode(errors="replace") for part in proc.joinpath("cmdline").read_bytes().split(b"\0")]
            environ = b"\0" + proc.joinpath("environ").read_bytes() + b"\0"
        except OSError:
            return False  # gone, not ours to read, or no /proc on this OS
        if exe != os.path.realpath(argv[0]):
            return False
        if cwd.is_relative_to(self.data_dir):
            return True  # redis-server rewrites its cmdline but chdirs into its --dir
        marker = str(self.data_dir)
        return [part for part in cmdline if part] == [part for part in argv if part] and (
            marker in " ".join(argv) or f"\0WRIT_DATA_DIR={marker}\0".encode() in environ
        )


def _unit_record(unit: _Unit) -> dict[str, Any]:
    """One unit for runtime.json: state, pid, restarts, last exit, and since when it runs (wall clock)."""
    status = unit.status()
    since = datetime.fromtimestamp(time.time() - status.uptime, UTC).isoformat() if status.pid else None
    return {
        "state": status.state,
        "pid": status.pid,
        "restarts": status.restarts,
        "last_exit": status.last_exit,
        "running_since": since,
    }


def _route_password(path: Path) -> str:
    """The password cluster routes present (0600 in the creds dir), created once."""
    if not path.exists():
        write_private(path, secrets.token_hex(24) + "\n")
    return path.read_text().strip()


def _wait_healthy(monitors: Mapping[str, str], timeout: float) -> None:
    """Wait until every nats-server's ``/healthz`` says ok (JetStream current in its cluster).

    Raises:
        TimeoutError: some member was not healthy in time (with what it last said).
    """
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    pending = dict(monitors)
    last: dict[str, str] = {}
    while pending and time.monotonic() < deadline:
        for name, url in list(pending.items()):
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                    if response.status == 200:
                        del pending[name]
            except urllib.error.HTTPError as exc:
                last[name] = exc.read().decode(errors="replace")[:200]
            except OSError as exc:
                last[name] = str(exc)
        if pending:
            time.sleep(0.2)
    if pending:
        raise TimeoutError(
            f"nats cluster not healthy after {timeout:g}s: "
            + "; ".join(f"{name}: {last.get(name, '?')}" for name in sorted(pending))
        )


def _wait_gone(pids: Iterable[int], timeout: float) -> None:
    remaining = list(pids)
    deadline = time.monotonic() + timeout
    while remaining and time.monotonic() < deadline:
        remaining = [pid for pid in remaining if _pid_alive(pid)]
        time.sleep(0.05)
    for pid in remaining:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# -- the blocking entry point ---------------------------------------------------------------------


def _uptime(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _table(plane: Plane) -> Table:
    from rich.table import Table

    styles = {"running": "green", "backoff": "red", "starting": "yellow", "stopped": "dim"}
    table = Table(
        title=f"writ plane · {plane.data_dir}",
        caption=f"{plane.nats_url} · {plane.redis_url} · logs in {plane.logs_dir} · Ctrl-C to stop",
    )
    for column in ("service", "pid", "state", "restarts", "uptime", "last exit", "metrics"):
        table.add_column(column, justify="right" if column in ("pid", "restarts", "uptime", "metrics") else "left")
    for s in plane.status():
        table.add_row(
            s.name,
            str(s.pid or "-"),
            f"[{styles.get(s.state, '')}]{s.state}[/]",
            str(s.restarts),
            _uptime(s.uptime),
            "-" if s.last_exit is None else str(s.last_exit),
            str(s.metrics_port or "-"),
        )
    return table


def run_plane(
    settings: WritSettings,
    *,
    nats_port: int | None = None,
    replicas: Mapping[str, int] | None = None,
    show_status: bool = True,
    cluster: int = 1,
) -> None:
    """Run the embedded plane in the foreground until Ctrl-C or SIGTERM.

    Args:
        settings: ``data_dir`` is where everything lives; a second run resumes from it.
        nats_port: client port for nats-server (default: the last one used, else 4222, else free).
        replicas: processes per service (default one each).
        cluster: nats-servers; more than one makes a loopback cluster with streams of that many replicas.
        show_status: draw a live status table when stdout is a terminal; otherwise (or when
            False) print one line per state change.

    Raises:
        PlaneAlreadyRunning: another supervisor serves this data dir.
        RuntimeError: nats or redis failed to start.
    """
    asyncio.run(_run_plane(settings, nats_port, replicas, show_status, cluster))


def _next_steps(data_dir: Path) -> str:
    """What to type in another terminal: `writ` is in the venv, which `make run` does not activate."""
    import shutil
    import sys

    here = Path(sys.executable).parent
    shown = Path(os.path.relpath(here)) if here.is_relative_to(Path.cwd()) else here
    on_path = shutil.which("writ") == str(here / "writ")
    data = "" if data_dir.resolve() == Path(".writ").resolve() else f", with WRIT_DATA_DIR={data_dir}"
    if on_path:
        return f"next, in another terminal in this directory{data}: `writ demo` · Ctrl-C stops the plane"
    return (
        f"next, in another terminal in this directory{data}: `{shown / 'writ'} demo`"
        f" (or `source {shown / 'activate'}` once, then `writ demo`) · Ctrl-C stops the plane"
    )


async def _run_plane(
    settings: WritSettings,
    nats_port: int | None,
    replicas: Mapping[str, int] | None,
    show_status: bool,
    cluster: int = 1,
) -> None:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    live = show_status and console.is_terminal

    def on_event(name: str, message: str) -> None:
        if not live:
            console.print(f"{time.strftime('%H:%M:%S')} {name:<9} {message}", highlight=False)

    plane = Plane(settings.data_dir, nats_port=nats_port, replicas=replicas, on_event=on_event, cluster=cluster)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.to_thread(plane.start)
        if plane.cluster > 1:
            console.print(
                f"nats cluster of {plane.cluster} on loopback, streams R{plane.cluster} · monitoring "
                + " ".join(plane.nats_monitors.values()),
                highlight=False,
            )
        console.print(
            f"writ plane up · nats {plane.nats_url} · redis {plane.redis_url} · data {plane.data_dir}",
            highlight=False,
        )
        if plane.console_url:
            console.print(
                f"console {plane.console_url} (views API and approvals API on the same port)", highlight=False
            )
        console.print(_next_steps(plane.data_dir), highlight=False, soft_wrap=True)
        if live:
            with Live(_table(plane), console=console, refresh_per_second=4) as view:
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)
                    view.update(_table(plane))
        else:
            await stop.wait()
        console.print("stopping…")
        await asyncio.to_thread(plane.stop)
        console.print("stopped")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
