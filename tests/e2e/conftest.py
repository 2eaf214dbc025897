"""Fixtures for the e2e tier (the CLI runner lives in ``cli_runner.py``)."""

from cli_runner import writ

__all__ = ["writ"]
