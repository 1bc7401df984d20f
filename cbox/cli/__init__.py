"""The `cbox` command line and the HTTP/SSE client it shares with workers."""
