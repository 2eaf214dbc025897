"""The one shape of an expected refusal across Writ: a stable ``code`` and a sentence for people.

Rules (pure functions in each service's ``domain.py``) *return* a :class:`Refusal`; the adapters
that run them turn it into what their caller sees: an ``intent.rejected``/``execution.failed``
payload, a dead-letter reason, or a :class:`CodedError` raised to a command's caller. A refusal
is a value, never a ``"code: sentence"`` string split apart again.
"""

from __future__ import annotations

import msgspec


class Refusal(msgspec.Struct, frozen=True, kw_only=True):
    """A rule said no: ``code`` is stable (programs branch on it), ``reason`` is for people."""

    code: str
    reason: str

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"


class CodedError(Exception):
    """An expected failure: ``code`` is stable (programs branch on it), ``message`` is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def of(cls, refusal: Refusal) -> CodedError:
        """The error a command raises for a rule's refusal (subclasses keep their own type)."""
        return cls(refusal.code, refusal.reason)
