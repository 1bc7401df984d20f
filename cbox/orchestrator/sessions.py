"""Sessions: named conversations that later tasks continue with `--resume`.

Claude Code keeps a conversation as a transcript in its config dir
(`CLAUDE_CONFIG_DIR`). A session is a per-session Docker named volume mounted
there in each of its tasks, plus the CLI's session id from the last task's
`result`; the next task runs `claude -p ... --resume <id>` and the model is
sent the earlier turns.

Ownership. The box runs as the workspace owner's uid:gid on a read-only root
filesystem, and a fresh named volume is owned by root. The first time a
session is used, a short-lived helper container chowns the volume's root to
that uid:gid; it runs as root but with every capability dropped except
CAP_CHOWN, no network and `no-new-privileges`, so the box itself never gets
root. (Local-driver mount options such as `uid=` only work for tmpfs-like
mounts, which would not persist.) A session stays with that owner: a later
task whose workspace belongs to another uid is refused rather than handed
files it cannot read.

Failure is loud. Once a session has a conversation, its volume missing, or
the transcript missing from it, fails the task with a reason that says so
(`SessionBroken`) — never a silent fresh start. Deleting the session is how a
user starts over.

Two tasks of one session never run at once: the scheduler holds a lock per
session name (see `TaskService._dispatch`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from cbox.errors import Conflict, DockerError, SessionBroken, SessionNotFound
from cbox.models import Session
from cbox.orchestrator.docker import LABEL_INSTANCE, LABEL_MANAGED, LABEL_SESSION, DockerBackend
from cbox.orchestrator.store import Store

#: Where the volume is mounted in the box, and what CLAUDE_CONFIG_DIR says.
SESSION_MOUNT = "/cbox-session"

_VOLUME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def volume_name(instance: str, session: str) -> str:
    """One volume per (orchestrator instance, session name)."""
    return f"cbox-session-{_VOLUME_UNSAFE.sub('_', instance)}-{session}"


@dataclass(frozen=True, slots=True)
class SessionMount:
    """What a session task's container needs: the volume, and what to resume."""

    volume: str
    resume_id: str | None


class SessionManager:
    def __init__(self, store: Store, docker: DockerBackend, instance: str) -> None:
        self.store = store
        self.docker = docker
        self.instance = instance

    async def ensure(self, name: str) -> Session:
        """The session with this name, created (row only) on first use."""
        session = await self.store.get_session(name)
        if session is None:
            session = Session(id=name, volume=volume_name(self.instance, name))
            await self.store.put_session(session)
        return session

    async def get(self, name: str) -> Session:
        session = await self.store.get_session(name)
        if session is None:
            raise SessionNotFound(f"no session named {name!r}")
        return session

    async def all(self) -> list[Session]:
        return await self.store.list_sessions()

    async def prepare(
        self, name: str, *, task_id: str, uid: int, gid: int, image: str
    ) -> SessionMount:
        """Make the session's volume ready for a task run as uid:gid."""
        session = await self.ensure(name)
        exists = await self.docker.volume_exists(session.volume)
        if session.claude_session_id:
            if not exists:
                raise SessionBroken(
                    f"session {name!r} cannot be continued: its volume {session.volume} is "
                    f"gone, and with it the conversation. Delete the session "
                    f"(`cbox sessions delete {name}`) to start a new one."
                )
            if (session.uid, session.gid) != (uid, gid):
                raise SessionBroken(
                    f"session {name!r} belongs to uid {session.uid}:{session.gid}, but this "
                    f"task's workspace is owned by {uid}:{gid}; use a workspace of the same "
                    "owner, or another session"
                )
            await self._check_transcript(session, task_id, image)
            return SessionMount(session.volume, session.claude_session_id)
        if not exists:
            labels = {LABEL_INSTANCE: self.instance, LABEL_SESSION: name}
            await self.docker.create_volume(session.volume, labels)
        if not exists or (session.uid, session.gid) != (uid, gid):
            await self._chown(session, task_id, image, uid, gid)
            session.uid, session.gid = uid, gid
            await self.store.put_session(session)
        return SessionMount(session.volume, None)

    async def record(self, name: str, task_id: str, claude_session_id: str | None) -> None:
        """After a task: remember where the conversation now stands."""
        session = await self.store.get_session(name)
        if session is None:
            return
        session.last_task_id = task_id
        session.updated_at = time.time()
        if claude_session_id:
            session.claude_session_id = claude_session_id
        await self.store.put_session(session)

    async def delete(self, name: str) -> Session:
        session = await self.get(name)
        try:
            await self.docker.remove_volume(session.volume)
        except DockerError as exc:
            raise Conflict(f"cannot remove the volume of session {name!r}: {exc}") from exc
        await self.store.delete_session(name)
        return session

    # ------------------------------------------------------------------ helpers

    def _helper(self, session: Session, image: str, user: str, script: list[str],
                cap_add: list[str]) -> dict[str, object]:
        return {
            "Image": image,
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": script,
            "User": user,
            "Labels": {
                LABEL_MANAGED: "true",
                LABEL_INSTANCE: self.instance,
                LABEL_SESSION: session.id,
            },
            "NetworkDisabled": True,
            "HostConfig": {
                "Binds": [f"{session.volume}:{SESSION_MOUNT}:rw"],
                "CapDrop": ["ALL"],
                "CapAdd": cap_add,
                "SecurityOpt": ["no-new-privileges"],
                "ReadonlyRootfs": True,
                "NetworkMode": "none",
                "Memory": 64 * 1024 * 1024,
                "PidsLimit": 16,
            },
        }

    async def _chown(
        self, session: Session, task_id: str, image: str, uid: int, gid: int
    ) -> None:
        # chmod first: after the chown, root without CAP_FOWNER may not chmod.
        script = [f"chmod 0700 {SESSION_MOUNT} && chown {uid}:{gid} {SESSION_MOUNT}"]
        config = self._helper(session, image, "0:0", script, ["CHOWN"])
        code, output = await self.docker.run_helper(f"cbox-session-{task_id}-chown", config)
        if code != 0:
            raise SessionBroken(
                f"session {session.id!r}: could not prepare volume {session.volume}: "
                f"{output.strip()[-300:] or f'exit {code}'}"
            )

    async def _check_transcript(self, session: Session, task_id: str, image: str) -> None:
        """The conversation to resume must be in the volume (Claude Code keeps it as
        `projects/<cwd>/<session id>.jsonl` under its config dir)."""
        script = [
            f'find {SESSION_MOUNT}/projects -name "$1.jsonl" -size +0c 2>/dev/null | grep -q .',
            "sh",
            str(session.claude_session_id),
        ]
        config = self._helper(session, image, f"{session.uid}:{session.gid}", script, [])
        code, _ = await self.docker.run_helper(f"cbox-session-{task_id}-check", config)
        if code != 0:
            raise SessionBroken(
                f"session {session.id!r} is corrupt: the transcript of Claude Code session "
                f"{session.claude_session_id} is missing from volume {session.volume}. Delete "
                f"the session (`cbox sessions delete {session.id}`) to start a new one."
            )
