"""The embedded plane's nats-server configs, generated from ``deploy/nats/common.conf``: the file
docker-compose mounts into each node of the deployed cluster.

Every setting of that file reaches the embedded servers as written (max_payload, the JetStream
block's sync_interval and limits, the cluster's name...), except the ones that place a server on
the network or the disk, which are put on loopback and under the data dir: ``listen``, ``http``,
``jetstream.store_dir``, ``resolver.dir``, ``cluster.listen`` and ``cluster.routes``. The bus's
trust (``auth.conf``: the operator JWT, the system account, the preloaded accounts, written by
``writ bus init``) is included as the deployed nodes include it; a server started without it (a
test's bare JetStream server) gets no ``resolver`` either. A setting that would bind an
address this module does not know how to move to loopback (leafnodes, a gateway, websocket...) is
refused rather than passed through.

Only the subset of the NATS config syntax that file uses is read: ``key: value`` (or ``=``, or a
space), ``key { ... }`` blocks, ``key: [ ... ]`` arrays of one value per line, ``#`` and ``//``
comments.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
COMMON_CONF = "common.conf"
# Where the wheel carries a copy of deploy/nats/common.conf (pyproject: force-include), and where
# a source checkout has it.
_PACKAGED = Path(__file__).parent / "deploy_nats" / COMMON_CONF
_CHECKOUT = Path(__file__).resolve().parents[3] / "deploy" / "nats" / COMMON_CONF
# Settings that bind an address, which the embedded plane cannot take as written.
UNPLACEABLE = frozenset({"leafnodes", "leaf", "gateway", "websocket", "mqtt", "https", "http_port", "port", "host"})

Value = str | list[str] | list["Entry"]
Entry = tuple[str, Value]


class ConfError(ValueError):
    """``common.conf`` uses syntax or a setting the embedded plane cannot carry over."""


def common_conf_path() -> Path:
    """``deploy/nats/common.conf`` of this checkout, else the copy packaged with the wheel.

    Raises:
        FileNotFoundError: neither exists.
    """
    for path in (_CHECKOUT, _PACKAGED):
        if path.is_file():
            return path
    raise FileNotFoundError(f"deploy/nats/{COMMON_CONF} not found at {_CHECKOUT} or {_PACKAGED}")


_KEY = r"[A-Za-z_][A-Za-z0-9_.-]*"
_BLOCK = re.compile(rf"^({_KEY})\s*[:=]?\s*\{{$")
_ARRAY = re.compile(rf"^({_KEY})\s*[:=]?\s*\[$")
_SCALAR = re.compile(rf"^({_KEY})\s*(?:[:=]\s*|\s+)(.+)$")


def _strip_comment(line: str) -> str:
    line = line.strip()
    if line.startswith(("#", "//")):
        return ""
    # A trailing comment after whitespace (URLs carry no " #").
    return re.split(r"\s+(?:#|//)", line, maxsplit=1)[0].strip()


def parse(text: str) -> list[Entry]:
    """The settings of ``text`` in order; blocks nest as lists of entries.

    Raises:
        ConfError: a line outside the subset described in the module's docstring.
    """
    lines = [stripped for raw in text.splitlines() if (stripped := _strip_comment(raw))]
    entries, rest = _parse_block(lines, 0, top=True)
    assert rest == len(lines)
    return entries


def _parse_block(lines: Sequence[str], i: int, *, top: bool) -> tuple[list[Entry], int]:
    entries: list[Entry] = []
    while i < len(lines):
        line = lines[i]
        if line == "}":
            if top:
                raise ConfError("unbalanced '}'")
            return entries, i + 1
        if m := _BLOCK.match(line):
            inner, i = _parse_block(lines, i + 1, top=False)
            entries.append((m.group(1), inner))
            continue
        if m := _ARRAY.match(line):
            items: list[str] = []
            i += 1
            while i < len(lines) and lines[i] != "]":
                items.append(lines[i].rstrip(","))
                i += 1
            if i == len(lines):
                raise ConfError(f"unterminated array {m.group(1)}")
            entries.append((m.group(1), items))
            i += 1
            continue
        if line.startswith("include "):
            raise ConfError(f"an include in {COMMON_CONF} is not followed: {line!r}")
        if m := _SCALAR.match(line):
            entries.append((m.group(1), m.group(2).strip()))
            i += 1
            continue
        raise ConfError(f"cannot read this line of {COMMON_CONF}: {line!r}")
    if not top:
        raise ConfError("unterminated block")
    return entries, i


def settings_of(entries: Sequence[Entry], block: str | None = None) -> dict[str, Value]:
    """The top-level settings (or those of ``block``) as a dict, for comparisons."""
    if block is None:
        return dict(entries)
    found = dict(entries).get(block)
    if not isinstance(found, list) or (found and not isinstance(found[0], tuple)):
        return {}
    return dict(found)  # type: ignore[arg-type]


def quote(path: Path | str) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Routes:
    """This node's place in a loopback cluster: where it listens for routes, every node's route
    port (its own is ignored by nats-server), and the credential a route must present."""

    port: int
    peers: tuple[int, ...]
    user: str
    password: str

    def urls(self) -> list[str]:
        return [f"nats-route://{self.user}:{self.password}@{HOST}:{peer}" for peer in self.peers]


@dataclass(frozen=True)
class Node:
    """One embedded nats-server: its name, client port, monitoring port, store and routes."""

    name: str
    port: int
    store_dir: Path
    monitor_port: int | None = None
    routes: Routes | None = None


def render(entries: Sequence[Entry], indent: int = 0) -> list[str]:
    pad = "  " * indent
    out: list[str] = []
    for key, value in entries:
        if isinstance(value, str):
            out.append(f"{pad}{key}: {value}")
        elif value and isinstance(value[0], tuple):
            out += [f"{pad}{key} {{", *render(value, indent + 1), f"{pad}}}"]
        elif not value and key in ("jetstream", "cluster", "authorization"):
            out += [f"{pad}{key} {{", f"{pad}}}"]
        else:
            out += [f"{pad}{key}: [", *(f"{pad}  {item}" for item in value), f"{pad}]"]
    return out


def embedded(
    node: Node,
    common: Sequence[Entry],
    *,
    conf_dir: Path,
    auth_conf: Path | None = None,
) -> str:
    """``common.conf``'s settings with ``node``'s loopback addresses and store, as one config.

    Args:
        node: a cluster node when ``node.routes`` is set; else the cluster block is left out.
        conf_dir: where the config will be written (nats-server resolves an include from there).
        auth_conf: the bus's trust (see :class:`writ_common.busauth.BusTrust`); None: no authentication.

    Raises:
        ConfError: ``common`` has a setting the embedded plane cannot place on loopback.
    """
    out: list[Entry] = [("server_name", quote(node.name))]
    seen: set[str] = set()
    for key, value in common:
        seen.add(key)
        placed = _placed(key, value, node, authenticated=auth_conf is not None)
        if placed is not None:
            out.append((key, placed))
    for required in ("listen", "jetstream"):
        if required not in seen:
            raise ConfError(f"{COMMON_CONF} has no {required!r}")
    if node.routes is not None and "cluster" not in seen:
        raise ConfError(f"{COMMON_CONF} has no 'cluster' block to build a cluster from")
    if node.monitor_port is not None and "http" not in seen:
        out.append(("http", f"{HOST}:{node.monitor_port}"))
    lines = ["# Written by writ on every start from deploy/nats/common.conf; edits are overwritten.", *render(out)]
    if auth_conf is not None:
        if "resolver" not in seen:
            raise ConfError(f"{COMMON_CONF} has no 'resolver' block: the bus's accounts would have no home")
        # Only users whose JWT the Writ account signed get in, each with its allow lists; identity
        # pushes the account (and its revocations) to the resolver, and nothing here changes.
        lines.append(f"include {quote(Path(os.path.relpath(auth_conf, conf_dir)))}")
    return "\n".join(lines) + "\n"


def _placed(key: str, value: Value, node: Node, *, authenticated: bool) -> Value | None:
    """``common.conf``'s ``key`` as ``node`` runs it on loopback (None: left out).

    Raises:
        ConfError: a setting the embedded plane cannot place on loopback.
    """
    if key in UNPLACEABLE:
        raise ConfError(f"{COMMON_CONF} sets {key!r}: the embedded plane cannot place it on loopback")
    match key:
        case "server_name" | "pid_file" | "authorization" | "accounts" | "operator" | "system_account":
            return None  # per node, or the embedded plane's own
        case "resolver":
            return _resolver(value, node.store_dir) if authenticated else None
        case "listen":
            return f"{HOST}:{node.port}"
        case "http":
            return f"{HOST}:{node.monitor_port}" if node.monitor_port is not None else None
        case "jetstream":
            return _jetstream(value, node.store_dir)
        case "cluster":
            return _cluster(value, node.routes) if node.routes is not None else None
        case _:
            return value


def _block(value: Value, name: str) -> list[Entry]:
    if isinstance(value, str) or (value and not isinstance(value[0], tuple)):
        raise ConfError(f"{COMMON_CONF}: {name} must be a block")
    return list(value)  # type: ignore[arg-type]


def _jetstream(value: Value, store_dir: Path) -> list[Entry]:
    entries = [(k, v) for k, v in _block(value, "jetstream") if k != "store_dir"]
    return [("store_dir", quote(store_dir)), *entries]


def _resolver(value: Value, store_dir: Path) -> list[Entry]:
    entries = [(k, v) for k, v in _block(value, "resolver") if k != "dir"]
    return [*entries, ("dir", quote(store_dir / "jwt"))]


def _cluster(value: Value, routes: Routes) -> list[Entry]:
    out: list[Entry] = []
    for key, item in _block(value, "cluster"):
        if key == "listen":
            out.append((key, f"{HOST}:{routes.port}"))
        elif key in ("routes", "authorization", "host", "port", "advertise"):
            continue
        else:
            out.append((key, item))
    if not any(key == "listen" for key, _ in out):
        out.append(("listen", f"{HOST}:{routes.port}"))
    # A route is a full member of the cluster, past every user's permissions: on a shared
    # machine only a node holding this password (in the 0600 configs) may join.
    auth: list[Entry] = [("user", routes.user), ("password", quote(routes.password))]
    out.append(("authorization", auth))
    out.append(("routes", routes.urls()))
    return out
