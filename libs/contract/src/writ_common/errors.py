"""The one shape of an expected refusal across Writ: a stable ``code`` and a sentence for people."""

from __future__ import annotations


class CodedError(Exception):
    """An expected failure: ``code`` is stable (programs branch on it), ``message`` is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
