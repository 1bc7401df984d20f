"""Where the shared test material (recorded Claude Code output, ...) lives.

It sits outside the repo (`<repo>/../shared` unless `CBOX_SHARED_DIR` says
otherwise). A developer without it gets a skip that says why; in CI (`CI=true`)
a missing directory is a failure, so the tests that need it cannot silently
stop running.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DEFAULT_SHARED_DIR = Path(__file__).resolve().parent.parent.parent / "shared"


def shared_dir() -> Path:
    """The shared directory; skips the test (fails it in CI) when it is missing."""
    return shared_path()


def shared_path(*parts: str) -> Path:
    """A directory below the shared one, with the same skip-or-fail rule."""
    root = Path(os.environ.get("CBOX_SHARED_DIR") or DEFAULT_SHARED_DIR)
    path = root.joinpath(*parts)
    if not path.is_dir():
        reason = f"shared test material not found at {path} (set CBOX_SHARED_DIR)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path
