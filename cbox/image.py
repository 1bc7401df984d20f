"""Build the sandbox image (`cbox image build`).

Idempotent: the image is labelled with a hash of everything that goes into it
(the build context, the base image's id, the wheel, the build args), and a
build whose inputs match the present image's label does nothing.

The Claude Code wheel is fetched on the host with the host's own pip by
default, then handed to the build in its context. That works wherever
claude-box itself was pip-installed — including networks whose TLS is
re-signed by a CA only the host trusts, where a download inside the build
would fail — and the wheel is cached between builds.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Any

import aiodocker
import aiohttp

from cbox.errors import ImageBuildError

LABEL_INPUTS = "dev.cbox.inputs-hash"
DEFAULT_BASE = "debian:bookworm-slim"

Progress = Callable[[str], None]


def context_dir() -> Path:
    """The sandbox-image directory (in a source tree, or shipped in the package)."""
    here = Path(str(resources.files("cbox") / "sandbox_image"))
    if (here / "Dockerfile").is_file():
        return here
    raise ImageBuildError(f"the sandbox image definition is missing ({here}/Dockerfile)")


def pinned_sdk_version(context: Path | None = None) -> str:
    text = ((context or context_dir()) / "Dockerfile").read_text(encoding="utf-8")
    match = re.search(r"^ARG CLAUDE_AGENT_SDK_VERSION=(\S+)", text, re.MULTILINE)
    if not match:
        raise ImageBuildError("Dockerfile does not pin CLAUDE_AGENT_SDK_VERSION")
    return match.group(1)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def context_files(context: Path) -> list[Path]:
    """Files of the build context; the vendor drop box is filled per build, not from disk."""
    return sorted(
        p for p in context.rglob("*")
        if p.is_file() and "vendor" not in p.relative_to(context).parts[:1]
    )


def inputs_hash(context: Path, base_id: str, wheel: Path | None, args: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for path in context_files(context):
        digest.update(str(path.relative_to(context)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    digest.update(base_id.encode() + b"\0")
    digest.update((_file_digest(wheel) if wheel else "no-wheel").encode() + b"\0")
    for key in sorted(args):
        digest.update(f"{key}={args[key]}\0".encode())
    return digest.hexdigest()[:16]


async def download_wheel(version: str, cache_dir: Path, progress: Progress) -> Path:
    """`pip download` the pinned claude-agent-sdk wheel on the host (cached)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(cache_dir.glob(f"claude_agent_sdk-{version}-*.whl"))
    if found:
        return found[0]
    progress(f"downloading claude-agent-sdk=={version} with pip (about 180 MB)")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "-d", str(cache_dir), f"claude-agent-sdk=={version}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    found = sorted(cache_dir.glob(f"claude_agent_sdk-{version}-*.whl"))
    if proc.returncode != 0 or not found:
        tail = out.decode(errors="replace").strip().splitlines()[-3:]
        raise ImageBuildError(
            f"could not download claude-agent-sdk=={version}: {' / '.join(tail)}"
        )
    return found[0]


def _tar_context(context: Path, wheel: Path | None, out: IO[bytes]) -> None:
    with tarfile.open(fileobj=out, mode="w") as tar:
        for path in context_files(context):
            tar.add(path, arcname=str(path.relative_to(context)), recursive=False)
        readme = context / "vendor" / "README.md"
        if readme.is_file():
            tar.add(readme, arcname="vendor/README.md")
        else:
            info = tarfile.TarInfo("vendor")
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        if wheel is not None:
            tar.add(wheel, arcname=f"vendor/{wheel.name}")
    out.seek(0)


@dataclass(frozen=True, slots=True)
class BuildResult:
    tag: str
    built: bool
    inputs_hash: str
    claude_code_version: str | None


async def _image(docker: aiodocker.Docker, name: str) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = await docker.images.inspect(name)
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return None
        raise ImageBuildError(f"inspect {name}: {exc.message}") from exc
    return data


async def build_image(
    docker: aiodocker.Docker,
    *,
    tag: str,
    base_image: str = DEFAULT_BASE,
    wheel: Path | None = None,
    progress: Progress = lambda _: None,
    force: bool = False,
) -> BuildResult:
    context = context_dir()
    try:
        base = await _image(docker, base_image)
        if base is None:
            if base_image != DEFAULT_BASE:
                raise ImageBuildError(f"base image {base_image!r} is not present")
            progress(f"pulling {base_image}")
            try:
                await docker.images.pull(base_image)
            except aiodocker.DockerError as exc:
                raise ImageBuildError(
                    f"cannot pull {base_image}: {exc.message}. Without a registry, build "
                    "with `cbox image build --debootstrap`"
                ) from exc
            base = await _image(docker, base_image)
        base_id = str((base or {}).get("Id", base_image))
        args = {"BASE_IMAGE": base_image}
        digest = inputs_hash(context, base_id, wheel, args)
        present = await _image(docker, tag)
        labels = ((present or {}).get("Config") or {}).get("Labels") or {}
        if present is not None and labels.get(LABEL_INPUTS) == digest and not force:
            progress(f"{tag} is up to date (inputs {digest}); nothing to build")
            return BuildResult(tag, False, digest, labels.get("dev.cbox.claude-code.version"))
        progress(f"building {tag} from {base_image} (inputs {digest})")
        with tempfile.TemporaryFile() as fh:
            _tar_context(context, wheel, fh)
            stream = docker.images.build(
                fileobj=fh, encoding="application/x-tar", tag=tag, buildargs=args,
                labels={LABEL_INPUTS: digest}, rm=True, forcerm=True, stream=True,
            )
            async for item in stream:
                if "error" in item:
                    detail = item.get("errorDetail", {}).get("message") or item["error"]
                    raise ImageBuildError(f"building {tag} failed: {str(detail).strip()}")
                text = str(item.get("stream", "")).rstrip()
                if text:
                    progress(text)
    except aiodocker.DockerError as exc:
        raise ImageBuildError(f"building {tag} failed: {exc.message}") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise ImageBuildError(f"the Docker engine is unreachable: {exc}") from exc
    built = await _image(docker, tag)
    labels = ((built or {}).get("Config") or {}).get("Labels") or {}
    return BuildResult(tag, True, digest, labels.get("dev.cbox.claude-code.version"))
