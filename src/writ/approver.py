"""The approver SDK: see pending approval requests, sign a grant or a denial with your own key.

    approver = ApproverClient(nc, "carol", load_key(path))
    for request in await approver.pending():
        await approver.decide(request, "grant", comment="checked the ticket")

The key never leaves this process: only the signature over the decision statement is sent.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from nacl.signing import SigningKey
from nats.aio.client import Client

from writ_common import commands
from writ_common.approvals import Decision, decision_statement
from writ_common.signing import sign


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
    """Speaks for one approver over ``nc``: the approver's own bus connection (or an operator's)."""

    def __init__(self, nc: Client, approver_id: str, key: SigningKey, timeout: float = 30.0) -> None:
        self.nc = nc
        self.approver_id = approver_id
        self._key = key
        self._timeout = timeout

    async def pending(self) -> list[dict[str, Any]]:
        """Open requests this approver's groups may decide, each with the full picture."""
        return list(await self._ask("list_approvals", {}))

    async def show(self, intent_id: str) -> dict[str, Any]:
        return dict(await self._ask("show_approval", {"intent_id": intent_id}))

    async def decide(self, request: dict[str, Any], decision: Decision, comment: str = "") -> dict[str, Any]:
        """Sign and send a decision on ``request`` (as returned by :meth:`show` or :meth:`pending`).

        Returns what it did: ``{"outcome": "granted" | "authorized" | "denied" | "refused", ...}``.
        """
        body = signed_decision(self._key, self.approver_id, request, decision, comment)
        return dict(await self._ask("decide_approval", body))

    async def _ask(self, command: str, body: dict[str, Any]) -> Any:
        # On this approver's own subject: policy takes who asks from it (the bus lets only this
        # approver's user, or an operator, publish there).
        return await commands.call_as_approver(self.nc, self.approver_id, command, body, self._timeout)
