"""Get a working Docker engine, starting one when `docker info` fails and we can."""

from __future__ import annotations

import os
import shutil
import subprocess
import time


class EngineUnavailable(RuntimeError):
    pass


def engine_ok() -> bool:
    try:
        return subprocess.run(
            ["docker", "info"], capture_output=True, timeout=30, check=False
        ).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_engine(timeout_s: float = 60.0) -> None:
    if engine_ok():
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0 or os.environ.get("DOCKER_HOST"):
        raise EngineUnavailable(
            "no Docker engine answers `docker info`, and this test bed cannot start one "
            "(needs root and dockerd: apt-get install docker.io). scripts/test does this."
        )
    with open("/var/log/cbox-dockerd.log", "ab") as log:
        subprocess.Popen(
            [dockerd], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if engine_ok():
            return
        time.sleep(0.5)
    raise EngineUnavailable("dockerd did not come up; see /var/log/cbox-dockerd.log")
