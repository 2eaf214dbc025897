"""The MCP gateway (`writ gateway`): Writ's governed tools as one MCP server."""
