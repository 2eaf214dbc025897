"""Who may say what on the bus: NATS users (nkeys) and their permissions, as server config.

The nats-server itself refuses a publish outside a user's allow list, so a service can only append
the event types it owns, and an agent can only submit intents under its own id and read its own.
Only public nkeys go into the server config; each seed stays in a 0600 file with its holder.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import nkeys

from writ_common import subjects, topology
from writ_common.errors import CodedError
from writ_common.ids import check_token
from writ_common.subjects import approver_bus_name, inbox_prefix

# What each service may append, from the one topology table: intent events by subject token,
# control events in its own subtree.
INTENT_EVENTS_BY_SERVICE: Mapping[str, tuple[str, ...]] = {s: topology.intent_tokens_of(s) for s in topology.SERVICES}
CONTROL_PREFIX_BY_SERVICE = topology.CONTROL_PREFIX_BY_SERVICE
# Core NATS wake-ups a service sends outside any stream.
NOTICES_BY_SERVICE: Mapping[str, tuple[str, ...]] = {
    "ledger": ("writ.notice.*.*.receipt",),
    "policy": ("writ.notice.approvals.>",),
    # What a tool's server said during a call (progress, log messages), for the agent that asked.
    "executor": tuple(f"writ.notice.*.*.{kind}" for kind in ("progress", "message")),
}
# What a service needs of the JetStream API: reads and stream info of any stream; of consumers,
# only its own durable on the intents stream (create, info, pull, ack). Never stream admin, never
# another service's consumer (deleting or draining it would stall that stage).
SERVICE_JS_READS = (
    "$JS.API.INFO",
    "$JS.API.DIRECT.GET.>",
    "$JS.API.STREAM.INFO.>",
    "$JS.API.STREAM.MSG.GET.>",
)


def durable_of(service: str) -> str:
    """The one durable consumer a service owns on the intents stream."""
    return f"writ-{service}"


def service_js_api(service: str) -> tuple[str, ...]:
    stream, durable = subjects.INTENTS_STREAM, durable_of(service)
    consumer = f"{stream}.{durable}"
    return (
        *SERVICE_JS_READS,
        f"$JS.API.CONSUMER.INFO.{consumer}",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{consumer}",
        f"$JS.API.CONSUMER.CREATE.{consumer}",
        f"$JS.API.CONSUMER.CREATE.{consumer}.>",  # the named form carries the filter subject
        f"$JS.API.CONSUMER.MSG.NEXT.{consumer}",
        f"$JS.ACK.{consumer}.>",
    )


APPROVER_COMMANDS = ("decide_approval", "list_approvals", "show_approval", "approver_groups")
# Commands one service asks of another (service -> "other.command"), all else is operators' only.
COMMANDS_CALLED_BY_SERVICE: Mapping[str, tuple[str, ...]] = {
    "registry": ("executor.discover",),
    # refresh_server: on notifications/tools/list_changed; recheck: a call authorized under an
    # earlier policy bundle runs only if its permit still holds.
    "executor": ("registry.refresh_server", "policy.recheck"),
    # The console and approvals API the ledger serves: it forwards an approver's request after checking
    # that approver's signature on it. It learns nothing it does not already read (every intent event),
    # and a decision still counts only with the approver's own signature over its digest.
    # And `POST /policy/simulate` of the views API: a replay that reads the log and changes nothing.
    "ledger": (
        *(f"policy.{subjects.APPROVER_CALLER}.*.{command}" for command in APPROVER_COMMANDS),
        "policy.simulate",
    ),
}
# Read-only JetStream API one service needs beyond its own: the ledger reads every service's durable
# consumer on the intents stream (how far behind each is) for the console's Plane page.
JS_READS_BY_SERVICE: Mapping[str, tuple[str, ...]] = {
    "ledger": (f"$JS.API.CONSUMER.INFO.{subjects.INTENTS_STREAM}.*",),
}
# What an agent may ask a service: only what the MCP gateway (`writ gateway`) needs to answer
# tools/list, resources/list, resources/templates/list and prompts/list, read-only commands. The
# reply reaches the agent's own inbox (allow_responses).
COMMANDS_CALLED_BY_AGENT = ("registry.list_tools", "executor.list_offered")


@dataclass(frozen=True)
class BusUser:
    """One NATS user: a public nkey and what it may publish and subscribe to."""

    name: str
    nkey: str
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    allow_responses: bool = False
    admin: bool = field(default=False)  # the operator and the runtime: everything

    def config(self) -> dict[str, object]:
        if self.admin:
            return {"nkey": self.nkey}
        permissions: dict[str, object] = {
            "publish": {"allow": list(self.publish)},
            "subscribe": {"allow": list(self.subscribe)},
        }
        if self.allow_responses:
            permissions["allow_responses"] = True
        return {"nkey": self.nkey, "permissions": permissions}


def service_user(service: str, nkey: str) -> BusUser:
    own = tuple(f"{subjects.INTENT_PREFIX}.*.*.{token}" for token in INTENT_EVENTS_BY_SERVICE[service])
    return BusUser(
        name=service,
        nkey=nkey,
        publish=(
            *own,
            CONTROL_PREFIX_BY_SERVICE[service],
            *NOTICES_BY_SERVICE.get(service, ()),
            subjects.dlq_subject(service),
            *service_js_api(service),
            *JS_READS_BY_SERVICE.get(service, ()),
            # Replies to operators' and approvers' commands; a config reload forgets the
            # reply subjects allow_responses tracks, so these are allowed by name too.
            f"{inbox_prefix('operator')}.>",
            f"{inbox_prefix('approvers')}.>",
            *(f"{inbox_prefix(caller)}.>" for caller in COMMANDS_CALLED_BY_SERVICE),
            *(f"writ.cmd.{call}" for call in COMMANDS_CALLED_BY_SERVICE.get(service, ())),
        ),
        subscribe=(
            f"{subjects.INTENT_PREFIX}.>",
            "writ.identity.>",
            "writ.registry.>",
            "writ.policy.>",
            "writ.executor.>",
            "writ.ledger.>",
            f"writ.cmd.{service}.>",
            f"{inbox_prefix(service)}.>",
            # JetStream announces a deletion of its consumer here (it recreates it at once).
            f"$JS.EVENT.ADVISORY.CONSUMER.DELETED.{subjects.INTENTS_STREAM}.{durable_of(service)}",
            "_INBOX.>",  # nats-py's pull consumers fetch into the default inbox, whatever the prefix
        ),
        allow_responses=True,
    )


def agent_user(agent_id: str, nkey: str) -> BusUser:
    """Submit under its own id only; read its own intents and receipts (by direct get); list the
    tools (registry.list_tools) and what the servers offer (executor.list_offered), and ask nothing else.

    Raises:
        ValueError: ``agent_id`` is not one subject token (it would widen or break the allow lists).
    """
    check_token(agent_id, "agent id")
    return BusUser(
        name=f"agent-{agent_id}",
        nkey=nkey,
        publish=(
            *(f"{subjects.INTENT_PREFIX}.{agent_id}.*.{token}" for token in topology.intent_tokens_of(topology.AGENT)),
            f"$JS.API.DIRECT.GET.{subjects.INTENTS_STREAM}.{subjects.INTENT_PREFIX}.{agent_id}.>",
            f"$JS.API.DIRECT.GET.{subjects.LEDGER_STREAM}.{subjects.agent_receipts(agent_id)}",
            *(f"writ.cmd.{call}" for call in COMMANDS_CALLED_BY_AGENT),
        ),
        subscribe=(
            f"{subjects.INTENT_PREFIX}.{agent_id}.>",
            f"writ.notice.{agent_id}.>",
            f"{inbox_prefix(f'agent-{agent_id}')}.>",
        ),
    )


def approver_user(approver_id: str, nkey: str, groups: Iterable[str]) -> BusUser:
    """An approver asks policy (on ``writ.cmd.policy.approver.<its id>.*``, nowhere else) what waits
    for its groups and sends signed decisions, and hears only its own groups' new requests. Policy
    still checks group and signature per decision.

    Raises:
        ValueError: the id or a group is not one subject token.
    """
    check_token(approver_id, "approver id")
    for group in groups:
        check_token(group, "approval group")
    name = approver_bus_name(approver_id)
    return BusUser(
        name=name,
        nkey=nkey,
        # Its own subjects only: policy knows who asks from the subject, never from the body.
        publish=tuple(subjects.approver_command_subject(approver_id, c) for c in APPROVER_COMMANDS),
        subscribe=(
            *(subjects.approval_notice_subject(group, ">") for group in groups),
            f"{inbox_prefix(name)}.>",
        ),
    )


def new_seed() -> str:
    return str(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode())


def public_nkey(seed: str) -> str:
    return str(nkeys.from_seed(seed.encode()).public_key.decode())


def seed_in(path: Path) -> str:
    """The seed kept at ``path``, or a fresh one (to write there once its user is registered)."""
    return path.read_text().strip() if path.exists() else new_seed()


def write_seed(path: Path, seed: str | None = None) -> str:
    """Create (or keep) the seed file at ``path``, mode 0600; returns the seed."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    seed = seed or new_seed()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(seed + "\n")
    return seed


def is_user_nkey(key: str) -> bool:
    """A NATS user public nkey ("U" + base32 with a valid checksum)."""
    if not key.startswith("U") or len(key) != 56:
        return False
    try:
        raw = base64.b32decode(key + "=" * (-len(key) % 8))
    except ValueError:
        return False
    return bool(raw[0] == nkeys.PREFIX_BYTE_USER and nkeys.crc16_checksum(raw[:-2]) == raw[-2:])


# -- the embedded runtime's files: <auth dir>/{static_users.json, registered_users.json, users.conf,
#    nats.pid, nats.monitor, nats.check} --


def write_atomically(path: Path, text: str, mode: int = 0o600) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_users_conf(auth_dir: Path) -> None:
    """users.conf = the runtime's fixed users + the agents and approvers identity lets in."""
    static = json.loads((auth_dir / "static_users.json").read_text())
    people = auth_dir / "registered_users.json"
    registered = json.loads(people.read_text()) if people.exists() else []
    write_atomically(auth_dir / "users.conf", "users = " + json.dumps([*static, *registered], indent=2) + "\n")


class BusReloadFailed(CodedError):
    """nats-server refused (or did not take) new users; the previous users file is back in force."""

    def __init__(self, message: str) -> None:
        super().__init__("bus_reload_failed", message)


def publish_users(auth_dir: Path, users: Iterable[BusUser]) -> bool:
    """Give the bus exactly these registered users (agents, approvers) and make nats-server
    reload its users. Returns False when nothing changed (no reload).

    All or nothing: the new users file is checked by nats-server itself (``-t``) before the reload;
    if the check or the reload fails, the previous files are put back and stay in force.

    Raises:
        BusReloadFailed: with nats-server's own complaint.
    """
    people = auth_dir / "registered_users.json"
    wanted = [u.config() for u in sorted(users, key=lambda u: u.name)]
    if people.exists() and json.loads(people.read_text()) == wanted:
        return False
    kept = {path: path.read_text() if path.exists() else None for path in (people, auth_dir / "users.conf")}
    try:
        write_atomically(people, json.dumps(wanted, indent=2))
        write_users_conf(auth_dir)
        check_nats_config(auth_dir)
        reload_nats(auth_dir)
    except (OSError, ValueError, TimeoutError, BusReloadFailed) as exc:
        for path, text in kept.items():
            if text is None:
                path.unlink(missing_ok=True)
            else:
                write_atomically(path, text)
        with contextlib.suppress(OSError, ValueError, TimeoutError):
            reload_nats(auth_dir)  # in case the server did take the new file after all
        detail = exc.message if isinstance(exc, BusReloadFailed) else str(exc)
        raise BusReloadFailed(f"the bus users were not changed; the previous ones stay in force: {detail}") from exc
    return True


def check_nats_config(auth_dir: Path, timeout: float = 10.0) -> None:
    """Have nats-server test its config (with the users file as it is now) without touching the
    running server. Skipped where whoever started the server left no check command.

    Raises:
        BusReloadFailed: the server would refuse the config (its message says where and why).
    """
    check = auth_dir / CHECK_FILE
    if not check.exists():
        return
    argv = [str(a) for a in json.loads(check.read_text())]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        complaint = " ".join((done.stderr or done.stdout).split()) or f"exit code {done.returncode}"
        raise BusReloadFailed(f"nats-server refuses the new users: {complaint}")


RELOAD_PAUSE = 0.3  # seconds, when the server's reload cannot be observed
# In the auth dir, written by whoever starts nats-server: its pid, its monitoring URL, and the
# command (JSON argv) that tests its config without touching the running server. A local cluster
# (``writ up --cluster 3``) lists its members instead in NODES_FILE: [{"name", "pid_file", "monitor"}].
PID_FILE, MONITOR_FILE, CHECK_FILE, NODES_FILE = "nats.pid", "nats.monitor", "nats.check", "nats.nodes.json"


@dataclass(frozen=True)
class NatsNode:
    """One local nats-server identity signals: where it writes its pid, where it serves ``/varz``."""

    name: str
    pid_file: Path
    monitor: str | None


def local_nodes(auth_dir: Path) -> list[NatsNode]:
    """The local nats-servers that hold the users file: the cluster's members when the runtime
    listed them, else the one server of the embedded plane."""
    nodes = auth_dir / NODES_FILE
    if nodes.exists():
        return [
            NatsNode(name=str(n["name"]), pid_file=Path(n["pid_file"]), monitor=n.get("monitor") or None)
            for n in json.loads(nodes.read_text())
        ]
    monitor = auth_dir / MONITOR_FILE
    url = monitor.read_text().strip() if monitor.exists() else ""
    return [NatsNode(name="nats", pid_file=auth_dir / PID_FILE, monitor=url or None)]


def write_local_nodes(auth_dir: Path, nodes: Iterable[NatsNode]) -> None:
    write_atomically(
        auth_dir / NODES_FILE,
        json.dumps([{"name": n.name, "pid_file": str(n.pid_file), "monitor": n.monitor} for n in nodes], indent=2),
    )


def reload_nats(auth_dir: Path, timeout: float = 10.0) -> None:
    """SIGHUP every local nats-server (each rereads the users file) and return once each has: its
    ``/varz`` ``config_load_time`` moves. Without a monitoring port, a short pause has to do.

    A cluster member that is down (no pid file, or no such process) is skipped: it reads the users
    file as it is when it starts again. With a single server, its pid file must be there.
    """
    nodes = local_nodes(auth_dir)
    # (node, pid, /varz URL, config_load_time before the signal): URL and time None when unobservable.
    signalled: list[tuple[NatsNode, int, str | None, str | None]] = []
    for node in nodes:
        url = node.monitor + "/varz" if node.monitor else None
        before = _config_load_time(url) if url else None
        try:
            pid = int(node.pid_file.read_text().strip())
            if not _is_nats_server(pid):
                raise ProcessLookupError(f"pid {pid} of {node.pid_file} is not a nats-server")
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError):
            if len(nodes) == 1:
                raise
            continue  # that member is down
        signalled.append((node, pid, url, before))
    if not signalled:
        raise TimeoutError("no local nats-server is running to reload its users")
    if any(url is None or before is None for _, _, url, before in signalled):
        time.sleep(RELOAD_PAUSE)
    deadline = time.monotonic() + timeout
    for node, pid, url, before in signalled:
        if url is None or before is None:
            continue
        while _config_load_time(url) in (before, None):
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats-server {node.name} (pid {pid}) did not reload its users within {timeout:g}s")
            time.sleep(0.02)


def _is_nats_server(pid: int) -> bool:
    """Whether ``pid`` still runs nats-server: a member SIGKILLed leaves its pid file behind, and
    its pid may have gone to another process since (which a SIGHUP would end). True where there
    is no /proc to ask."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "nats-server"
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    except OSError:
        return True


def _config_load_time(varz_url: str) -> str | None:
    try:
        with urllib.request.urlopen(varz_url, timeout=2) as response:
            return str(json.loads(response.read())["config_load_time"])
    except (OSError, ValueError, KeyError):
        return None


@dataclass(frozen=True)
class EmbeddedBus:
    """Where the embedded runtime keeps bus credentials: seeds in ``creds_dir`` (one per service
    and the operator's), server-side users in ``auth_dir``."""

    creds_dir: Path
    auth_dir: Path

    def seed_file(self, user: str) -> Path:
        return self.creds_dir / f"{user}.nk"

    @property
    def pid_file(self) -> Path:
        return self.auth_dir / PID_FILE

    def node_pid_file(self, node: str | None = None) -> Path:
        """The pid file of a local cluster's member ``node``; the single server's when None."""
        return self.auth_dir / f"{node}.pid" if node else self.pid_file

    @property
    def nodes_file(self) -> Path:
        """A local cluster's members (see :func:`local_nodes`); absent with a single server."""
        return self.auth_dir / NODES_FILE

    @property
    def users_conf(self) -> Path:
        return self.auth_dir / "users.conf"

    @property
    def check_file(self) -> Path:
        """``nats-server -t -c <conf>`` as a JSON argv: checks the users before each reload."""
        return self.auth_dir / CHECK_FILE

    @property
    def monitor_file(self) -> Path:
        """The server's monitoring URL, by which identity sees a reload take effect."""
        return self.auth_dir / MONITOR_FILE


def prepare_embedded(data_dir: Path, services: Iterable[str]) -> EmbeddedBus:
    """Create (or keep) every fixed user's seed and write the server's users for them."""
    bus = EmbeddedBus(creds_dir=data_dir / "creds", auth_dir=data_dir / "bus")
    for directory in (bus.creds_dir, bus.auth_dir):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    users = [service_user(s, public_nkey(write_seed(bus.seed_file(s)))) for s in services]
    users.append(BusUser("operator", public_nkey(write_seed(bus.seed_file("operator"))), admin=True))
    write_atomically(bus.auth_dir / "static_users.json", json.dumps([u.config() for u in users], indent=2))
    write_users_conf(bus.auth_dir)
    return bus
