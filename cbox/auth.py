"""API tokens: required whenever the server listens beyond loopback.

The seed listened on 0.0.0.0 with no authentication. To keep the first start a
one-command affair without leaving that door open, a server that listens
beyond loopback with no `CBOX_API_TOKEN` generates one (Jupyter's way), keeps
it in the user's config file with mode 0600, says so once, and the CLI on the
same machine picks it up from there. Loopback-only servers need no token.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path

from cbox.errors import ConfigError


def default_token_file() -> Path:
    return Path.home() / ".config" / "cbox" / "api-token"


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: Path) -> str | None:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the API token file {path}: {exc.strerror}") from exc
    return token or None


def ensure_token(path: Path) -> tuple[str, bool]:
    """The token in `path`, creating it if missing. Returns (token, created)."""
    existing = read_token(path)
    if existing:
        return existing, False
    token = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(token + "\n")
    except OSError as exc:
        raise ConfigError(
            f"listening beyond loopback needs an API token, and {path} cannot be written "
            f"({exc.strerror}); set CBOX_API_TOKEN"
        ) from exc
    return token, True
