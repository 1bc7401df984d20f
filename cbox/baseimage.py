"""A Debian base image made locally with debootstrap, for machines without a registry.

`cbox image build --debootstrap` (and the test bed) use it where `docker pull`
cannot work. The mirror is read from this machine's own apt sources at run
time, so whatever mirror or proxy the machine is configured for is used, and
none is written down here. The tag is derived from the recipe and the mirror,
so a second run finds the image and builds nothing.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from cbox.errors import ImageBuildError

SUITE = "bookworm"
RECIPE = "debootstrap --variant=minbase v1"


def apt_mirror(suite: str = SUITE) -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources)."""
    candidates: list[str] = []
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        text = path.read_text(encoding="utf-8", errors="replace")
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.MULTILINE)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.MULTILINE)
            if uris and suites and suite in suites.group(1).split():
                candidates.append(uris.group(1))
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = [p for p in line.split() if not p.startswith("[")]
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == suite:
                candidates.append(parts[1])
    for uri in candidates:
        if "security" not in uri:
            return uri.rstrip("/")
    raise ImageBuildError(f"no apt source for Debian {suite} in /etc/apt; cannot debootstrap")


def base_tag(suite: str = SUITE) -> str:
    digest = hashlib.sha256(f"{RECIPE}\0{suite}\0{apt_mirror(suite)}".encode()).hexdigest()
    return f"cbox-base:{suite}-{digest[:12]}"


def image_present(tag: str) -> bool:
    return subprocess.run(
        ["docker", "image", "inspect", tag], capture_output=True, check=False
    ).returncode == 0


def debootstrap_base(suite: str = SUITE) -> tuple[str, bool]:
    """Make (or find) the base image. Returns (tag, built). Blocking: run in a thread."""
    tag = base_tag(suite)
    if image_present(tag):
        return tag, False
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap is not installed (apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(prefix="cbox-rootfs-") as root:
        step = subprocess.run(
            ["debootstrap", "--variant=minbase", suite, root, apt_mirror(suite)],
            capture_output=True, text=True, check=False,
        )
        if step.returncode != 0:
            tail = " / ".join(step.stderr.strip().splitlines()[-3:])
            raise ImageBuildError(f"debootstrap failed: {tail}")
        with subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE) as tar:
            imported = subprocess.run(
                ["docker", "import", "-", tag], stdin=tar.stdout, capture_output=True,
                text=True, check=False,
            )
        if tar.returncode != 0 or imported.returncode != 0:
            raise ImageBuildError(f"importing the base image failed: {imported.stderr.strip()}")
    return tag, True
