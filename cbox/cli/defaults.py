"""Which server the CLI talks to, and with which token, when the user does not say.

Like `CBOX_SERVER` in `cbox.cli.main`, the CLI's own environment is read here,
at the CLI's edge, and not through `cbox.settings.Settings`, which costs the
import of pydantic on every `cbox run`.
"""

from __future__ import annotations

import os

DEFAULT_SERVER = "http://127.0.0.1:8080"


def token_file() -> str:
    """`CBOX_API_TOKEN_FILE`, else `cbox.auth.default_token_file()`, without importing it.

    cbox.auth imports secrets, ipaddress and pathlib for the server's side of
    tokens, ~20 ms that `cbox run` would pay to read one file; a test keeps
    the two paths the same.
    """
    configured = os.environ.get("CBOX_API_TOKEN_FILE")
    if configured:
        return configured
    return os.path.join(os.path.expanduser("~"), ".config", "cbox", "api-token")


def resolve_token(value: str | None) -> str | None:
    """An explicit token, else the one a server on this machine keeps (see cbox.auth)."""
    if value:
        return value
    try:
        with open(token_file(), encoding="utf-8") as fh:
            token = fh.read().strip()
    except OSError:  # missing or unreadable: no token; the server will say 401
        return None
    return token or None
