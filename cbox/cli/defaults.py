"""Which server the CLI talks to, and with which token, when the user does not say."""

from __future__ import annotations

import os

DEFAULT_SERVER = "http://127.0.0.1:8080"


def token_file() -> str:
    """`cbox.auth.default_token_file()`, without importing cbox.auth.

    cbox.auth imports secrets, hmac, ipaddress and pathlib for the server's
    side of tokens, ~20 ms that `cbox run` would pay to read one file; a test
    keeps the two paths the same.
    """
    return os.path.join(os.path.expanduser("~"), ".config", "cbox", "api-token")


def resolve_token(value: str | None) -> str | None:
    """An explicit token, else the one a local server generated (see cbox.auth)."""
    if value:
        return value
    try:
        with open(token_file(), encoding="utf-8") as fh:
            token = fh.read().strip()
    except OSError:  # missing or unreadable: no token, as before
        return None
    return token or None
