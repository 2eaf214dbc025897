"""A plain agent: sign an intent with its own key, submit it, wait for the signed receipt.

    writ agent register demo-bot --owner alice      # once: its key and bus credential under .writ/
    python examples/agent.py demo-bot get_current_time --args '{"timezone": "Europe/Paris"}'

Prints the receipt's outcome as one JSON line; exits 1 if the call did not succeed (denied,
failed, expired...), 2 if it waits for approvers (and says by whom, until when).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from writ.sdk import AwaitingApproval, WritAgent


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("agent", help="the agent's id (as registered)")
    parser.add_argument("tool", help="tool name, or server/tool when several servers offer it")
    parser.add_argument("--args", default="{}", help="tool arguments, a JSON object")
    parser.add_argument("--key", dest="idempotency_key", help="idempotency key: the same key is the same call")
    parser.add_argument("--data-dir", help="the plane's data directory (default: $WRIT_DATA_DIR or .writ)")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()

    agent = await WritAgent.local(args.agent, args.data_dir)
    try:
        submission = await agent.submit(args.tool, json.loads(args.args), idempotency_key=args.idempotency_key)
        try:
            receipt = await agent.receipt(submission.intent_id, args.timeout)
        except AwaitingApproval as waiting:
            print(
                json.dumps(
                    {
                        "intent_id": waiting.intent_id,
                        "status": "awaiting_approval",
                        "group": waiting.group,
                        "quorum": waiting.quorum,
                        "expires_at": waiting.expires_at,
                    }
                )
            )
            return 2
    finally:
        await agent.close()
    print(
        json.dumps(
            {
                "intent_id": receipt.intent_id,
                "status": receipt.status,
                "reason": receipt.reason,
                "result": receipt.result,
                "receipt_hash": receipt.receipt_hash,
            }
        )
    )
    return 0 if receipt.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
