"""Fixtures for the integration tier (the in-process plane lives in ``inprocess.py``)."""

from inprocess import shared_spine, spine

__all__ = ["shared_spine", "spine"]
