"""An analyst's script over the views HTTP API: why were calls denied, and how slow are they?

    writ views token create analyst-1                   # a summary-scope token, shown once
    WRIT_VIEWS_TOKEN=... python examples/analyst.py --since 1h

Reads the API's address from <data>/runtime.json (views_api), pages through the denied intents
with the opaque cursor, and prints the denial reasons by tool and the latency percentiles per tool
as one JSON document. Plain standard library: any HTTP client does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any


def get(base: str, token: str, path: str, **query: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode({k: v for k, v in query.items() if v})}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


SPAN_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def as_time(since: str) -> str:
    """``/intents`` takes an RFC 3339 time: a span such as 1h or 7d counts back from now."""
    if since[:-1].isdigit() and since[-1:] in SPAN_UNITS:
        start = datetime.now(UTC) - timedelta(**{SPAN_UNITS[since[-1]]: int(since[:-1])})
        return start.isoformat(timespec="seconds").replace("+00:00", "Z")
    return since


def denied_intents(base: str, token: str, since: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = ""
    while True:
        page = get(base, token, "/intents", status="denied", since=as_time(since), limit="200", cursor=cursor)
        rows += page["intents"]
        cursor = page.get("next_cursor") or ""
        if not cursor:
            return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--since", default="24h", help="a window such as 30m, 1h or 7d, or an RFC 3339 time")
    parser.add_argument("--data-dir", default=os.environ.get("WRIT_DATA_DIR", ".writ"))
    parser.add_argument("--token", default=os.environ.get("WRIT_VIEWS_TOKEN", ""), help="or $WRIT_VIEWS_TOKEN")
    args = parser.parse_args()
    if not args.token:
        parser.error("a views token is needed: `writ views token create NAME`, then --token or $WRIT_VIEWS_TOKEN")
    runtime = json.loads((Path(args.data_dir) / "runtime.json").read_text())
    base = runtime.get("views_api")
    if not base:
        parser.error(f"no views API in {args.data_dir}/runtime.json: is the plane running?")
    try:
        denied = denied_intents(base, args.token, args.since)
        by_tool = get(base, args.token, "/stats", by="tool", since=as_time(args.since))
    except urllib.error.HTTPError as exc:
        print(f"error: the views API answered {exc.code}: {exc.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    reasons = Counter((row.get("tool") or "?", row.get("code") or "?") for row in denied)
    print(
        json.dumps(
            {
                "denied": len(denied),
                "denied_by_tool_and_code": [{"tool": t, "code": c, "count": n} for (t, c), n in reasons.most_common()],
                "latency_by_tool": by_tool,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
