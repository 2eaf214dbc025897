"""The security tier drives the session plane like the e2e tier: the same `writ` CLI runner."""

from cli_runner import writ

__all__ = ["writ"]
