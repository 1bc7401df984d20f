"""The API token: always required, generated into a 0600 file when not given.

The seed listened on 0.0.0.0 with no authentication, and even a loopback-only
server is reachable from every web page in the user's browser (see
`cbox.api.guard`). So there is always a token. `CBOX_API_TOKEN` gives it;
otherwise the first start generates one (Jupyter's way) into
`CBOX_API_TOKEN_FILE` (default `~/.config/cbox/api-token`, mode 0600), and the
CLI and the Linear worker on the same machine read it from there, so the first
start stays a one-command affair.

A server running as root (the compose service) writes the file for the owner
of the directory it goes in, so that the user whose `~/.config/cbox` is
mounted can read it. That grants nothing new: whoever owns the directory can
already replace the file with a token of their own choosing.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import stat
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


def _tighten(path: Path) -> None:
    """A token file others can read is made 0600 (the file is ours to keep secret)."""
    try:
        info = path.stat()
        if info.st_mode & 0o077 and info.st_uid == os.geteuid():
            path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    except OSError as exc:
        raise ConfigError(f"cannot restrict the API token file {path}: {exc.strerror}") from exc


def ensure_token(path: Path) -> tuple[str, bool]:
    """The token in `path`, creating it if missing. Returns (token, created)."""
    existing = read_token(path)
    if existing:
        _tighten(path)
        return existing, False
    token = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            owner = path.parent.stat()
            if os.geteuid() == 0 and owner.st_uid != 0:
                os.fchown(fh.fileno(), owner.st_uid, owner.st_gid)
            os.fchmod(fh.fileno(), 0o600)
            fh.write(token + "\n")
    except OSError as exc:
        raise ConfigError(
            f"the API needs a token, and {path} cannot be written ({exc.strerror}); "
            "set CBOX_API_TOKEN, or CBOX_API_TOKEN_FILE to a writable path"
        ) from exc
    return token, True
