"""Who may say what on the bus: NATS users (nkeys) and their permissions, held by the cluster.

The nats-server itself refuses a publish outside a user's allow list, so a service can only append
the event types it owns, and an agent can only submit intents under its own id and read its own.
Each user's allow lists travel in its user JWT, signed by the Writ account's signing key
(:mod:`writ_common.busjwt`): the servers hold only the operator's JWT and the accounts, so adding
a user changes nothing on any server, and revoking one is an account update every node takes.
Each seed stays in a 0600 file with its holder.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nkeys

from writ_common import busjwt, consumers, subjects, topology
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
    # and its requests for the client's input (sampling, elicitation); a resource an agent
    # subscribed to changed (for that agent); a server's resources or prompts listing changed (for all).
    "executor": (
        *(f"writ.notice.*.*.{kind}" for kind in ("progress", "message", "input")),
        subjects.resource_updated_subject("*"),
        subjects.LIST_CHANGED_FILTER,
    ),
}
# Core NATS answers a service hears beyond its own subtree: the agents' answers to its requests
# for input (each under the agent's id, where only that agent may publish).
ANSWERS_BY_SERVICE: Mapping[str, tuple[str, ...]] = {"executor": (f"{subjects.ANSWER_PREFIX}.>",)}
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
        # Moving its own consumer back to the progress it had (ConsumerGuard): never another's.
        consumers.reset_subject(stream, durable),
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
    limits: busjwt.UserLimits = field(default_factory=busjwt.UserLimits)


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
            # Replies to operators' and approvers' commands, allowed by name too: a reply must
            # not depend on what allow_responses happens to track (a reconnect forgets it).
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
            *ANSWERS_BY_SERVICE.get(service, ()),
            # JetStream announces a deletion of its consumer here (it recreates it at once), and a
            # new leader (placed anew after a node's removal, it may have lost its progress).
            consumers.deleted_advisory(subjects.INTENTS_STREAM, durable_of(service)),
            consumers.leader_elected_advisory(subjects.INTENTS_STREAM, durable_of(service)),
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
        limits=busjwt.AGENT_LIMITS,  # one agent cannot send a message the size of the server's max
        publish=(
            *(f"{subjects.INTENT_PREFIX}.{agent_id}.*.{token}" for token in topology.intent_tokens_of(topology.AGENT)),
            f"$JS.API.DIRECT.GET.{subjects.INTENTS_STREAM}.{subjects.INTENT_PREFIX}.{agent_id}.>",
            f"$JS.API.DIRECT.GET.{subjects.LEDGER_STREAM}.{subjects.agent_receipts(agent_id)}",
            *(f"writ.cmd.{call}" for call in COMMANDS_CALLED_BY_AGENT),
            # Its client's answers to a server's requests for input during its own calls.
            f"{subjects.ANSWER_PREFIX}.{agent_id}.>",
        ),
        subscribe=(
            f"{subjects.INTENT_PREFIX}.{agent_id}.>",
            f"writ.notice.{agent_id}.>",
            f"{inbox_prefix(f'agent-{agent_id}')}.>",
            subjects.LIST_CHANGED_FILTER,  # any server's resources or prompts listing changed
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
    return busjwt.new_seed(nkeys.PREFIX_BYTE_USER)


def public_nkey(seed: str) -> str:
    return busjwt.public_key(seed)


def is_user_nkey(key: str) -> bool:
    """A NATS user public nkey ("U" + base32 with a valid checksum)."""
    if not key.startswith("U") or len(key) != 56:
        return False
    try:
        raw = base64.b32decode(key + "=" * (-len(key) % 8))
    except ValueError:
        return False
    return bool(raw[0] == nkeys.PREFIX_BYTE_USER and nkeys.crc16_checksum(raw[:-2]) == raw[-2:])


def write_private(path: Path, text: str) -> None:
    """Write ``path`` whole, readable by its owner only (0600) whatever the umask."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def read_creds(path: Path) -> tuple[str, str]:
    """The (user JWT, seed) of the creds file at ``path``, or ("", a fresh seed) when there is none
    yet (to write there once its user is registered)."""
    if path.exists():
        return busjwt.creds_parts(path.read_text())
    return "", new_seed()


class BusUpdateFailed(CodedError):
    """The cluster did not take the Writ account's new JWT (a revocation is not in force)."""

    def __init__(self, message: str) -> None:
        super().__init__("bus_update_failed", message)


# -- trust: the operator, its accounts, and the issuer identity holds --

WRIT_ACCOUNT, SYSTEM_ACCOUNT = "writ", "SYS"
# Account JWTs the servers start from (resolver_preload). They are written once, so a restart never
# puts an older account (without later revocations) back: a node keeps the newest it has seen.
AUTH_CONF = "auth.conf"
ISSUER_FILE = "identity.issuer.json"


@dataclass(frozen=True)
class Issuer:
    """What identity holds to run the bus: the Writ account's signing key (it signs users), an
    operator signing key (it signs the account's new JWT when a user is revoked), and a system
    account user (it pushes that JWT on ``$SYS.REQ.CLAIMS.UPDATE``). Never the operator's own key.
    """

    account: str
    account_signing_seed: str
    operator_signing_seed: str
    system_creds: str

    def user_jwt(self, user: BusUser) -> str:
        if user.admin:
            return busjwt.user_jwt(self.account_signing_seed, user.nkey, account=self.account, name=user.name)
        return busjwt.user_jwt(
            self.account_signing_seed,
            user.nkey,
            account=self.account,
            name=user.name,
            publish=user.publish,
            subscribe=user.subscribe,
            allow_responses=user.allow_responses,
            limits=user.limits,
        )

    def account_jwt(self, revocations: Mapping[str, int] | None = None, *, iat: int | None = None) -> str:
        """The Writ account: JetStream on, this issuer's signing key, and ``revocations``."""
        return busjwt.account_jwt(
            self.operator_signing_seed,
            self.account,
            name=WRIT_ACCOUNT,
            signing_keys=[busjwt.public_key(self.account_signing_seed)],
            revocations=revocations,
            iat=iat,
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "account": self.account,
                "account_signing_seed": self.account_signing_seed,
                "operator_signing_seed": self.operator_signing_seed,
                "system_creds": self.system_creds,
            },
            indent=2,
        )

    @classmethod
    def load(cls, path: Path) -> Issuer:
        """Raises: OSError, ValueError (not an issuer file)."""
        data = json.loads(path.read_text())
        return cls(
            **{k: str(data[k]) for k in ("account", "account_signing_seed", "operator_signing_seed", "system_creds")}
        )


@dataclass(frozen=True)
class BusTrust:
    """One bus's keys and credentials, as ``writ bus init`` (or ``writ up``) lays them out in ``root``:

    - ``keys/{operator,operator-signing,system,writ}.nk``: the operator's and the accounts' seeds
      (0600), kept by whoever runs the cluster; no service reads them.
    - ``identity.issuer.json`` (0600): identity's :class:`Issuer`.
    - ``creds/<user>.creds`` (0600): each service's user and the operator's (everything in the account).
    - ``auth.conf``: what every nats-server includes (operator JWT, system account, preloaded accounts).
    """

    root: Path

    @classmethod
    def of_plane(cls, data_dir: Path) -> BusTrust:
        """The bus ``writ up`` keeps in its data directory."""
        return cls(data_dir / "bus")

    def key_file(self, name: str) -> Path:
        return self.root / "keys" / f"{name}.nk"

    def creds_file(self, user: str) -> Path:
        return self.root / "creds" / f"{user}.creds"

    @property
    def issuer_file(self) -> Path:
        return self.root / ISSUER_FILE

    @property
    def auth_conf(self) -> Path:
        return self.root / AUTH_CONF

    def issuer(self) -> Issuer:
        return Issuer.load(self.issuer_file)


def _seed(path: Path, prefix: int) -> str:
    if not path.exists():
        write_private(path, busjwt.new_seed(prefix) + "\n")
    return path.read_text().strip()


def init_trust(root: Path, services: Iterable[str]) -> BusTrust:
    """Create (or keep) the operator, the system and Writ accounts, identity's issuer, and a creds
    file per service and for the operator. Idempotent: existing seeds and the servers' ``auth.conf``
    are kept as they are; service creds are issued again (their permissions follow this code).
    """
    trust = BusTrust(root)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    operator = _seed(trust.key_file("operator"), nkeys.PREFIX_BYTE_OPERATOR)
    operator_signing = _seed(trust.key_file("operator-signing"), nkeys.PREFIX_BYTE_OPERATOR)
    system = _seed(trust.key_file("system"), nkeys.PREFIX_BYTE_ACCOUNT)
    account = _seed(trust.key_file(WRIT_ACCOUNT), nkeys.PREFIX_BYTE_ACCOUNT)
    if not trust.issuer_file.exists():
        system_user = new_seed()
        system_jwt = busjwt.user_jwt(
            system, public_nkey(system_user), account=busjwt.public_key(system), name="writ-sys"
        )
        issuer = Issuer(
            account=busjwt.public_key(account),
            account_signing_seed=busjwt.new_seed(nkeys.PREFIX_BYTE_ACCOUNT),
            operator_signing_seed=operator_signing,
            system_creds=busjwt.creds(system_jwt, system_user),
        )
        write_private(trust.issuer_file, issuer.to_json())
    issuer = trust.issuer()
    if not trust.auth_conf.exists():
        operator_jwt = busjwt.operator_jwt(
            operator,
            system_account=busjwt.public_key(system),
            signing_keys=[busjwt.public_key(operator_signing)],
        )
        sys_jwt = busjwt.account_jwt(operator, busjwt.public_key(system), name=SYSTEM_ACCOUNT, jetstream=False)
        write_private(
            trust.auth_conf,
            "# Written by `writ bus init`: the operator every node trusts and the accounts it starts from.\n"
            "# No secret here (JWTs are signed, public claims). Identity pushes newer account JWTs.\n"
            f"operator: {operator_jwt}\n"
            f"system_account: {busjwt.public_key(system)}\n"
            "resolver_preload: {\n"
            f"  {busjwt.public_key(system)}: {sys_jwt}\n"
            f"  {issuer.account}: {issuer.account_jwt()}\n"
            "}\n",
        )
    for service in services:
        issue_creds(trust.creds_file(service), issuer, functools.partial(service_user, service))
    issue_creds(trust.creds_file("operator"), issuer, lambda nkey: BusUser("operator", nkey, admin=True))
    return trust


def issue_creds(path: Path, issuer: Issuer, user_for: Callable[[str], BusUser]) -> Path:
    """(Re)write the creds file at ``path`` for the user ``user_for(public key)``, keeping its seed."""
    _jwt, seed = read_creds(path)
    write_private(path, busjwt.creds(issuer.user_jwt(user_for(public_nkey(seed))), seed))
    return path


CLAIMS_UPDATE = "$SYS.REQ.CLAIMS.UPDATE"


def claims_lookup_subject(account: str) -> str:
    return f"$SYS.REQ.ACCOUNT.{account}.CLAIMS.LOOKUP"


async def system_connection(
    servers: list[str], issuer: Issuer, timeout: float, *, name: str = "writ-identity-claims", reconnect: bool = False
) -> Any:
    """A connection as the system account's user (the servers' own requests: claims, CONNZ).

    Raises:
        BusUpdateFailed: it could not connect.
    """
    import nats
    from nats.aio.client import RawCredentials

    try:
        return await nats.connect(
            servers,
            user_credentials=RawCredentials(issuer.system_creds),
            name=name,
            allow_reconnect=reconnect,
            max_reconnect_attempts=-1,
            connect_timeout=timeout,
        )
    except Exception as exc:  # nats-py raises several unrelated types for "could not connect"
        raise BusUpdateFailed(f"cannot connect to the bus as the system user: {exc}") from exc


async def _push(nc: Any, issuer: Issuer, revocations: Mapping[str, int], timeout: float) -> None:
    try:
        reply = await nc.request(CLAIMS_UPDATE, issuer.account_jwt(revocations).encode(), timeout=timeout)
        answer = json.loads(reply.data)
    except Exception as exc:  # a timeout, no responders, or not JSON
        raise BusUpdateFailed(f"the bus account was not pushed: {exc}") from exc
    data = answer.get("data") or {}
    if answer.get("error") or data.get("code") != 200:
        raise BusUpdateFailed(f"the bus refused the account update: {answer.get('error') or data}")


async def push_revocations(
    servers: list[str], issuer: Issuer, revocations: Mapping[str, int], timeout: float = 5.0
) -> dict[str, int]:
    """Give the cluster the Writ account revoking ``revocations`` and every user it already
    revokes, as its system user: every node with the full resolver stores it and applies it at
    once (a revoked user's connections are closed on each node). Returns the revocations pushed.

    A node takes any account JWT its operator signed, even one older than what it holds, so the
    cluster's current list is read first and kept: a replica of identity that has not yet seen a
    revocation (or a later suspension) cannot undo it (the union, each key at its latest time).

    Raises:
        BusUpdateFailed: no node took it (unreachable, or its answer names why).
    """
    nc = await system_connection(servers, issuer, timeout)
    try:
        try:
            current = await nc.request(claims_lookup_subject(issuer.account), b"", timeout=timeout)
        except Exception as exc:  # a timeout or no responders
            raise BusUpdateFailed(f"the bus account was not pushed: {exc}") from exc
        merged = union_of_revocations(_revocations_of(current.data), revocations)
        await _push(nc, issuer, merged, timeout)
    finally:
        await nc.close()
    return merged


async def every_node_answers(nc: Any, subject: str, body: bytes = b"", *, listen: float, timeout: float) -> list[bytes]:
    """What every node answers to a system request (``$SYS.REQ...``) within ``listen`` seconds:
    each running node answers once; one that is down, not at all."""
    inbox = nc.new_inbox()
    answers: list[bytes] = []

    async def answer(msg: Any) -> None:
        answers.append(msg.data)

    sub = await nc.subscribe(inbox, cb=answer)
    try:
        await nc.publish(subject, body, reply=inbox)
        await nc.flush(timeout=timeout)
        await asyncio.sleep(listen)
    finally:
        await sub.unsubscribe()
    return answers


async def reconcile_revocations(
    servers: list[str], issuer: Issuer, revocations: Mapping[str, int], *, listen: float = 0.5, timeout: float = 5.0
) -> bool:
    """Ask every node which revocations it holds (each answers the lookup) and push the union
    with ``revocations`` when any node lacks one: a node that was down during a revocation (or
    restarted from its preloaded account) catches up. NATS's own resolver sync asks a queue group
    that the asking node itself belongs to, so it cannot be relied on for this. Returns whether
    it pushed.

    Raises:
        BusUpdateFailed: the push was needed and no node took it.
    """
    nc = await system_connection(servers, issuer, timeout)
    try:
        answers = await every_node_answers(nc, claims_lookup_subject(issuer.account), listen=listen, timeout=timeout)
        held = [_revocations_of(data) for data in answers]
        merged = union_of_revocations(*held, revocations)
        if held and all(all(node.get(k, -1) >= t for k, t in merged.items()) for node in held):
            return False
        await _push(nc, issuer, merged, timeout)
        return True
    finally:
        await nc.close()


def union_of_revocations(*lists: Mapping[str, int]) -> dict[str, int]:
    """Every key any list revokes, each as of the latest time any list says: a later time refuses
    more (every JWT issued until then), so no replica behind the log can shorten a suspension."""
    merged: dict[str, int] = {}
    for revocations in lists:
        for key, at in revocations.items():
            merged[key] = max(at, merged.get(key, at))
    return merged


def _revocations_of(account_jwt: bytes) -> dict[str, int]:
    """The revocations of the account JWT a node holds (none when it holds none, or not ours)."""
    if not account_jwt:
        return {}
    try:
        found = busjwt.decode(account_jwt.decode())["nats"].get("revocations") or {}
    except (busjwt.InvalidJwt, UnicodeDecodeError, KeyError, TypeError):
        return {}
    return {str(k): int(v) for k, v in found.items()}
