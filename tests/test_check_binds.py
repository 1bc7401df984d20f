"""`docker.check_binds`: the last check before the engine follows a bind source."""

from __future__ import annotations

from pathlib import Path

import pytest

from cbox.errors import UnsafeMount
from cbox.orchestrator.docker import check_binds


def config(*binds: str) -> dict[str, object]:
    return {"HostConfig": {"Binds": list(binds)}}


def test_canonical_sources_and_volumes_pass(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    check_binds(config(f"{tmp_path.resolve()}/ws:/workspace:rw", "cbox-session-x:/home/agent"))


@pytest.mark.parametrize("swap", ["leaf", "parent"])
def test_a_source_that_now_passes_through_a_symlink_is_refused(tmp_path: Path, swap: str) -> None:
    root = tmp_path.resolve()
    (root / "home").mkdir()
    (root / "ws").mkdir()
    if swap == "leaf":
        (root / "ws" / "sub").symlink_to(root / "home")
        source = root / "ws" / "sub"
    else:
        (root / "ws" / "deep").symlink_to(root / "home")
        (root / "home" / "x").mkdir()
        source = root / "ws" / "deep" / "x"
    with pytest.raises(UnsafeMount, match="replaced by a symlink"):
        check_binds(config(f"{source}:/workspace:ro"))
