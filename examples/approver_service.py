"""An approver service: decides approval requests by a rule, live, signing each decision with its
own key, as a person would with `writ approvals approve` (the plane checks it the same way).

    writ approver keygen pay-bot --out pay-bot.key          # on the machine this runs on
    writ approver register pay-bot --group payments --public-key pay-bot.pub
    python examples/approver_service.py pay-bot pay-bot.key --grant-tool append_row --max-number 100

The rule (``judge``) grants a request for one of the --grant-tool tools whose numeric arguments are
all at most --max-number, and denies every other with a comment saying why. Prints one JSON line per
decision; runs until Ctrl-C, or until --count decisions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from writ.approver import ApproverClient
from writ_common.approvals import Decision


def judge(request: dict[str, Any], grant_tools: set[str], max_number: float) -> tuple[Decision, str]:
    """Grant or deny one request, with the reason that goes into the signed decision's comment."""
    tool = str(request.get("tool") or "")
    name = tool.rsplit("/", 1)[-1]
    if name not in grant_tools and tool not in grant_tools:
        return "deny", f"{tool} is not a tool this service may grant"
    arguments = request.get("arguments") or {}
    too_big = sorted(
        key
        for key, value in arguments.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and value > max_number
    )
    if too_big:
        return "deny", f"{', '.join(too_big)} above {max_number:g}"
    return "grant", f"within the rule: {name}, numbers at most {max_number:g}"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("approver", help="the approver's id (as registered)")
    parser.add_argument("key", type=Path, help="its private key file (writ approver keygen)")
    parser.add_argument("--grant-tool", action="append", default=[], help="a tool it may grant (repeat)")
    parser.add_argument("--max-number", type=float, default=0.0, help="the largest number an argument may hold")
    parser.add_argument("--count", type=int, help="stop after this many decisions")
    parser.add_argument("--data-dir", help="the plane's data directory (default: $WRIT_DATA_DIR or .writ)")
    args = parser.parse_args()

    approver = await ApproverClient.local(args.approver, args.key, args.data_dir)
    decided = 0
    try:
        print(json.dumps({"listening": args.approver, "groups": await approver.groups()}), flush=True)
        async for request in approver.requests():
            decision, why = judge(request, set(args.grant_tool), args.max_number)
            outcome = await approver.decide(request, decision, comment=why)
            print(
                json.dumps(
                    {
                        "intent_id": request["intent_id"],
                        "decision": decision,
                        "comment": why,
                        "outcome": outcome.get("outcome"),
                    }
                ),
                flush=True,
            )
            decided += 1
            if args.count is not None and decided >= args.count:
                break
    finally:
        await approver.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(130)
