"""The approver SDK: see pending approval requests, sign a grant or a denial with your own key.

    approver = await ApproverClient.local("carol", Path("carol.key"))
    async for request in approver.requests():  # pending ones first, then each new one, live
        await approver.decide(request, "grant", comment="checked the ticket")

The key never leaves this process: only the signature over the decision statement is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
from nacl.signing import SigningKey
from nats.aio.client import Client
from nats.aio.msg import Msg

from writ_common import commands, local, subjects
from writ_common.approvals import Decision, decision_statement
from writ_common.commands import CommandError
from writ_common.signing import sign

SHOW_TRIES, SHOW_PAUSE = 50, 0.1  # policy may hear of a new request a moment after its notice
LIST_TRIES, LIST_PAUSE = 50, 0.2  # after a reconnect, policy may still be starting
_LOOK_AGAIN = ""  # queued on a reconnect: look for requests made while the connection was away


def signed_decision(
    key: SigningKey, approver_id: str, request: dict[str, Any], decision: Decision, comment: str = ""
) -> dict[str, Any]:
    """The body of a ``decide_approval`` command: the decision on ``request``'s digest, signed."""
    signed_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    statement = decision_statement(
        intent_id=request["intent_id"],
        approval_digest=request["approval_digest"],
        decision=decision,
        approver_id=approver_id,
        signed_at=signed_at,
        comment=comment,
    )
    return {
        "intent_id": request["intent_id"],
        "agent_id": request["agent_id"],
        "approver_id": approver_id,
        "decision": decision,
        "approval_digest": request["approval_digest"],
        "signed_at": signed_at,
        "comment": comment,
        "signature": sign(key, statement),
    }


class ApproverClient:
    """Speaks for one approver over ``nc``: the approver's own bus connection (or an operator's).

    ``key`` may be None for a client that only looks (``writ approvals watch``); :meth:`decide`
    then refuses.
    """

    def __init__(self, nc: Client, approver_id: str, key: SigningKey | None, timeout: float = 30.0) -> None:
        self.nc = nc
        self.approver_id = approver_id
        self._key = key
        self._timeout = timeout
        self._arrived: asyncio.Queue[str] | None = None

    @classmethod
    async def local(
        cls, approver_id: str, key_file: Path, data_dir: str | Path | None = None, **options: Any
    ) -> ApproverClient:
        """Connect as ``approver_id`` with its bus credential from ``<data>/keys/approvers/`` (issued by
        ``writ approver register``) and the plane's NATS URL from ``<data>/runtime.json``; sign with
        the private key in ``key_file`` (``writ approver keygen``). ``data_dir`` defaults to
        ``$WRIT_DATA_DIR``, else ``.writ``. The connection reconnects on its own and looks again for
        requests made while it was away.

        Raises:
            writ.keys.KeyFileError: no readable key at ``key_file``.
        """
        from writ.keys import approver_bus_creds_path, read_key
        from writ_common.bus import split_servers

        key = read_key(key_file)
        data = local.data_dir(data_dir)
        creds = approver_bus_creds_path(data, approver_id)
        credentials = local.bus_credentials(creds if creds.is_file() else None, subjects.approver_bus_name(approver_id))
        client: ApproverClient | None = None

        async def on_reconnected() -> None:
            if client is not None:
                client.look_again()

        nc = await nats.connect(
            split_servers(local.nats_url(data)),
            name=f"writ-approver-{approver_id}",
            reconnected_cb=on_reconnected,
            max_reconnect_attempts=-1,
            **{**credentials, **options},
        )
        client = cls(nc, approver_id, key)
        return client

    async def close(self) -> None:
        await self.nc.drain()

    async def groups(self) -> list[str]:
        """The groups this approver decides for (``unknown_approver`` if it is not registered)."""
        return [str(g) for g in await self._ask("approver_groups", {})]

    async def pending(self) -> list[dict[str, Any]]:
        """Open requests this approver's groups may decide, each with the full picture."""
        return list(await self._ask("list_approvals", {}))

    async def requests(
        self, *, pending: bool = True, on_ready: Callable[[list[dict[str, Any]]], None] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Each request this approver may decide, once, with its full picture: first those pending
        now (unless ``pending`` is False), then each new one as policy announces it to the approver's
        groups, for as long as the caller iterates. ``on_ready`` gets the pending list once the
        approver listens, so nothing announced after it is missed."""
        arrived: asyncio.Queue[str] = asyncio.Queue()

        async def on_notice(msg: Msg) -> None:
            arrived.put_nowait(msg.subject.rsplit(".", 1)[-1])

        # The bus lets an approver hear only its own groups' announcements.
        subs = [
            await self.nc.subscribe(subjects.approval_notice_subject(g, "*"), cb=on_notice) for g in await self.groups()
        ]
        self._arrived = arrived
        try:
            waiting = await self.pending()
            if on_ready is not None:
                on_ready(waiting)
            seen = {str(row["intent_id"]) for row in waiting}
            if pending:
                for request in waiting:
                    yield request
            while True:
                intent_id = await arrived.get()
                if intent_id == _LOOK_AGAIN:
                    for row in await self._pending_patiently():
                        arrived.put_nowait(str(row["intent_id"]))
                    continue
                if intent_id in seen:
                    continue
                seen.add(intent_id)
                if (shown := await self._show_when_known(intent_id)) is not None:
                    yield shown
        finally:
            self._arrived = None
            for sub in subs:
                with contextlib.suppress(Exception):  # the connection may be closed by now
                    await sub.unsubscribe()

    def look_again(self) -> None:
        """After a reconnect: :meth:`requests` looks for requests made while the connection was away."""
        if self._arrived is not None:
            self._arrived.put_nowait(_LOOK_AGAIN)

    async def _show_when_known(self, intent_id: str) -> dict[str, Any] | None:
        """The request as this approver sees it; None if its groups may not decide it (or it is gone)."""
        for _ in range(SHOW_TRIES):
            try:
                return await self.show(intent_id)
            except CommandError as exc:
                if exc.code == "forbidden":
                    return None
                if exc.code != "not_found":
                    raise
            await asyncio.sleep(SHOW_PAUSE)
        return None

    async def _pending_patiently(self) -> list[dict[str, Any]]:
        for _ in range(LIST_TRIES):
            try:
                return await self.pending()
            except CommandError as exc:
                if exc.code not in ("service_down", "timeout"):
                    raise
            await asyncio.sleep(LIST_PAUSE)
        return []

    async def show(self, intent_id: str) -> dict[str, Any]:
        return dict(await self._ask("show_approval", {"intent_id": intent_id}))

    async def decide(self, request: dict[str, Any], decision: Decision, comment: str = "") -> dict[str, Any]:
        """Sign and send a decision on ``request`` (as returned by :meth:`show` or :meth:`pending`).

        Returns what it did: ``{"outcome": "granted" | "authorized" | "denied" | "refused", ...}``.
        """
        if self._key is None:
            raise ValueError(f"approver {self.approver_id!r} has no key here to sign a decision with")
        body = signed_decision(self._key, self.approver_id, request, decision, comment)
        return dict(await self._ask("decide_approval", body))

    async def _ask(self, command: str, body: dict[str, Any]) -> Any:
        # On this approver's own subject: policy takes who asks from it (the bus lets only this
        # approver's user, or an operator, publish there).
        return await commands.call_as_approver(self.nc, self.approver_id, command, body, self._timeout)
