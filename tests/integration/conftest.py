"""Fixtures for the integration tier (the in-process plane lives in ``inprocess.py``)."""

from inprocess import spine

__all__ = ["spine"]
