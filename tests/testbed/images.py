"""Build the test images offline, cached under tags derived from their inputs.

- Base: `cbox.baseimage` (debootstrap from the machine's own apt mirror, read
  at run time), tagged `cbox-base:<suite>-<hash of recipe and mirror>`.
- Sandbox: sandbox-image/ built on that base, with the Claude Code wheel that
  the host's pip fetched. Tag: `cbox-sandbox:test-<hash of all inputs>`.

A second run finds both tags and builds nothing.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiodocker

from cbox import image as images
from cbox.baseimage import debootstrap_base

WHEEL_CACHE = Path.home() / ".cache" / "cbox" / "wheels"


def base_image() -> str:
    started = time.monotonic()
    tag, built = debootstrap_base()
    if built:
        print(f"test bed: built {tag} in {time.monotonic() - started:.0f}s")
    return tag


async def sandbox_image(base: str) -> str:
    wheel = await images.download_wheel(images.pinned_sdk_version(), WHEEL_CACHE, print)
    docker = aiodocker.Docker()
    try:
        base_id = (await docker.images.inspect(base))["Id"]
        digest = images.inputs_hash(images.context_dir(), base_id, wheel, {"BASE_IMAGE": base})
        tag = f"cbox-sandbox:test-{digest}"
        started = time.monotonic()
        result = await images.build_image(docker, tag=tag, base_image=base, wheel=wheel)
        if result.built:
            print(f"test bed: built {tag} in {time.monotonic() - started:.0f}s")
        return tag
    finally:
        await docker.close()


def build_all() -> str:
    return asyncio.run(sandbox_image(base_image()))


if __name__ == "__main__":
    print(build_all())
