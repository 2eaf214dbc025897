"""Any MCP client through Writ: the official `mcp` SDK's client launches `writ gateway` over stdio,
lists the tools the agent may call, and calls one; Writ governs the call like any other intent.

    python examples/mcp_client.py demo-bot get_current_time --args '{"timezone": "UTC"}'

Prints the tool names, then the call's result (text and Writ's `_meta`: status, intent id) as one
JSON line; exits 1 if the call was refused or failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


def writ_command() -> str:
    """`writ` beside this Python (the project's venv), else on PATH."""
    beside = Path(sys.executable).parent / "writ"
    return str(beside) if beside.exists() else (shutil.which("writ") or "writ")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("agent", help="the agent every call is made as")
    parser.add_argument("tool", help="a tool name as tools/list gives it, or Writ's SERVER/TOOL")
    parser.add_argument("--args", default="{}", help="tool arguments, a JSON object")
    parser.add_argument("--data-dir", help="the plane's data directory (default: $WRIT_DATA_DIR or .writ)")
    args = parser.parse_args()

    env = dict(os.environ)
    if args.data_dir:
        env["WRIT_DATA_DIR"] = args.data_dir
    server = StdioServerParameters(command=writ_command(), args=["gateway", "--as", args.agent], env=env)
    async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        listed = await session.list_tools()
        print(json.dumps({"tools": sorted(tool.name for tool in listed.tools)}))
        # Each listed tool says which Writ tool it stands for in _meta["writ/tool"] (SERVER/TOOL).
        by_writ_name = {(tool.meta or {}).get("writ/tool"): tool.name for tool in listed.tools}
        name = by_writ_name.get(args.tool, args.tool)
        result = await session.call_tool(name, json.loads(args.args))
    texts = [block.text for block in result.content if block.type == "text"]
    # Writ's own account of the call rides in _meta under "writ/..." keys (status, intent_id, code...).
    writ = {key: value for key, value in (result.meta or {}).items() if key.startswith("writ/")}
    print(json.dumps({"is_error": result.is_error, "text": texts, "writ": writ}))
    return 1 if result.is_error else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
