"""The HTTP layer: aiohttp handlers that parse, make one service call, serialize."""
