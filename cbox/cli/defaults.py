"""Which server the CLI talks to, and with which token, when the user does not say."""

from __future__ import annotations

from cbox.errors import CboxError

DEFAULT_SERVER = "http://127.0.0.1:8080"


def resolve_token(value: str | None) -> str | None:
    """An explicit token, else the one a local server generated (see cbox.auth)."""
    if value:
        return value
    from cbox.auth import default_token_file, read_token

    try:
        return read_token(default_token_file())
    except CboxError:
        return None
