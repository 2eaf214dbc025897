"""The approvals HTTP API; it lives in ``writ_common.approvals_api`` so the ledger can serve it
beside the views API and the console (same origin). Kept here for existing imports."""

from writ_common.approvals_api import AUTH_SCHEME, auth_header, auth_statement, build_app

__all__ = ["AUTH_SCHEME", "auth_header", "auth_statement", "build_app"]
