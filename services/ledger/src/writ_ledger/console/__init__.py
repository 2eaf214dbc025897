"""The Writ console: static pages served beside the views and approvals APIs, on the same origin.

The pages hold no data of their own: they read the views API with the analyst's bearer token
and the approvals API with requests signed, in the browser, by the approver's own key.
"""

from writ_ledger.console.web import CONSOLE_PATH, SameOrigin, console_routes

__all__ = ["CONSOLE_PATH", "SameOrigin", "console_routes"]
