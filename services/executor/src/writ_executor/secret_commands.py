"""Secrets inside the executor: the store's current values with their redactor, and the operator's
commands. Values arrive by request/reply and go to the store, never to a stream; what is
recorded is that a name was set or deleted, and by whom."""

from __future__ import annotations

import asyncio
import contextlib
import time
from contextlib import AbstractContextManager
from typing import Any, TextIO

import msgspec

from writ_common import events as ev
from writ_common import subjects
from writ_common.commands import CommandError, refuse_if, require_token
from writ_common.service import Service
from writ_executor.known_servers import KnownServers
from writ_executor.redaction import Redactor, invalid_secret_value
from writ_executor.scrubbed_output import scrubbed_pipe
from writ_executor.secret_store import SecretStore, SecretStoreError


class SetSecret(msgspec.Struct, kw_only=True):
    name: str
    value: str
    by: str = ""


class DeleteSecret(msgspec.Struct, kw_only=True):
    name: str
    by: str = ""


class Secrets:
    """The store's current values, and a redactor for them (rebuilt only when they change)."""

    def __init__(self, store: SecretStore) -> None:
        self._store = store
        self._known: dict[str, str] = {}
        self._redactor = Redactor({})
        self._redactor_for: dict[str, str] = {}

    def current(self) -> dict[str, str]:
        """Every secret's value.

        Raises:
            SecretStoreError: the store cannot be opened (wrong key, unreadable file).
        """
        self._known = self._store.values()
        return self._known

    def current_or_none(self) -> dict[str, str]:
        """Every secret's value, or none when the store cannot be opened."""
        with contextlib.suppress(SecretStoreError):
            return self.current()
        return {}

    def redactor(self, known: dict[str, str]) -> Redactor:
        if known != self._redactor_for:
            self._redactor, self._redactor_for = Redactor(known), known
        return self._redactor

    def latest(self) -> Redactor:
        """For logs and tool stderr: the redactor of the latest values that could be read."""
        with contextlib.suppress(SecretStoreError):
            self.current()
        return self.redactor(self._known)

    def stderr(self) -> AbstractContextManager[TextIO | None]:
        """A tool server's stderr: scrubbed with the latest values, line by line, then logged."""
        return scrubbed_pipe(self.latest)

    def scrub_text(self, text: str) -> str:
        """``text`` scrubbed with the latest values that could be read."""
        return self.latest().text(text)


def store_call(fn: Any, *args: Any) -> Any:
    """Run a store operation; its failure is a command error with the store's code."""
    try:
        return fn(*args)
    except SecretStoreError as exc:
        raise CommandError(exc.code, exc.message) from None


class SecretCommands:
    """``set_secret``, ``delete_secret``, ``list_secrets``: the operator's hold on the store."""

    def __init__(self, svc: Service, store: SecretStore, servers: KnownServers) -> None:
        self.svc = svc
        self.store = store
        self.servers = servers

    async def audit(self, event: ev.SecretSet | ev.SecretDeleted, verb: str) -> None:
        await self.svc.append_control(
            subjects.secret_subject(event.name, verb),
            event,
            message_id=f"secret:{event.name}:{verb}:{self.svc.settings.instance}:{time.time_ns()}",
        )

    async def set_secret(self, body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, SetSecret)
        require_token(cmd.name, code="invalid_secret_name", what="secret name")
        refuse_if(invalid_secret_value(cmd.value))
        entry = await asyncio.to_thread(store_call, self.store.put, cmd.name, cmd.value)
        await self.audit(ev.SecretSet(name=cmd.name, set_by=cmd.by), "set")
        return {"name": entry.name, "set_at": entry.set_at, "referenced_by": await self.servers.referring_to(cmd.name)}

    async def delete_secret(self, body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, DeleteSecret)
        if not await asyncio.to_thread(store_call, self.store.delete, cmd.name):
            raise CommandError("unknown_secret", f"no secret {cmd.name!r} is set")
        await self.audit(ev.SecretDeleted(name=cmd.name, deleted_by=cmd.by), "deleted")
        return {"name": cmd.name, "referenced_by": await self.servers.referring_to(cmd.name)}

    async def list_secrets(self, _body: dict[str, Any]) -> Any:
        entries = await asyncio.to_thread(store_call, self.store.entries)
        return [
            {"name": e.name, "set_at": e.set_at, "referenced_by": await self.servers.referring_to(e.name)}
            for e in entries
        ]

    def wire(self) -> None:
        self.svc.command("set_secret", self.set_secret)
        self.svc.command("delete_secret", self.delete_secret)
        self.svc.command("list_secrets", self.list_secrets)
