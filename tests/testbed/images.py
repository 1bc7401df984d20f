"""Build the test images offline, cached under tags derived from their inputs.

- Base: `debootstrap --variant=minbase` from the machine's own apt mirror
  (read from its apt sources at run time, never written down here), imported
  with `docker import`. Tag: `cbox-base:<suite>-<hash of recipe and mirror>`.
- Sandbox: sandbox-image/ built on that base, with the Claude Code wheel that
  the host's pip fetched. Tag: `cbox-sandbox:test-<hash of all inputs>`.

A second run finds both tags and builds nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import aiodocker

from cbox import image as images

SUITE = "bookworm"
BASE_RECIPE = "debootstrap --variant=minbase v1"
WHEEL_CACHE = Path.home() / ".cache" / "cbox" / "wheels"


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line format)."""
    candidates: list[str] = []
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        text = path.read_text(encoding="utf-8", errors="replace")
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.MULTILINE)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.MULTILINE)
            if uris and suites and SUITE in suites.group(1).split():
                candidates.append(uris.group(1))
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                candidates.append(parts[1] if not parts[1].startswith("[") else parts[2])
    for uri in candidates:
        if "security" not in uri:
            return uri.rstrip("/")
    raise RuntimeError(f"no apt source for Debian {SUITE} found in /etc/apt")


def _image_present(tag: str) -> bool:
    return subprocess.run(
        ["docker", "image", "inspect", tag], capture_output=True, check=False
    ).returncode == 0


def base_image() -> str:
    mirror = apt_mirror()
    digest = hashlib.sha256(f"{BASE_RECIPE}\0{SUITE}\0{mirror}".encode()).hexdigest()[:12]
    tag = f"cbox-base:{SUITE}-{digest}"
    if _image_present(tag):
        return tag
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is missing: apt-get install debootstrap")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cbox-rootfs-") as root:
        subprocess.run(
            ["debootstrap", "--variant=minbase", SUITE, root, mirror],
            check=True, capture_output=True,
        )
        with subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE) as tar:
            subprocess.run(
                ["docker", "import", "-", tag], stdin=tar.stdout, check=True, capture_output=True
            )
        if tar.returncode != 0:
            raise RuntimeError("tar of the debootstrapped root failed")
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
