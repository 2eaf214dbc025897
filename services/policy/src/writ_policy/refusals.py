"""A rule's expected "no" (a :class:`Refusal`) as the error a policy command answers with."""

from __future__ import annotations

from writ_common.commands import CommandError
from writ_common.errors import Refusal


def refuse(refusal: Refusal | None) -> None:
    """Raise the command's error for ``refusal``; nothing was changed. None: the rule said yes.

    Raises:
        CommandError: ``refusal.code``, with its reason.
    """
    if refusal is not None:
        raise CommandError.of(refusal)
