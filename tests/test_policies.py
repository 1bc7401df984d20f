"""Policies: loading, aliases, request tightening and ceilings, broken files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cbox.errors import ConfigError, InvalidRequest, PolicyViolation
from cbox.models import MountMode, TaskSpec
from cbox.policies import PolicySet


def test_builtins_and_alias() -> None:
    policies = PolicySet.load(None)
    assert {"default", "readonly"} <= set(policies.names())
    assert policies.get("analysis").name == "readonly"
    readonly = policies.resolve(TaskSpec(prompt="x", policy="analysis"))
    assert readonly.mount_mode is MountMode.RO
    assert "Write" in readonly.policy.disallowed_tools
    assert policies.resolve(TaskSpec(prompt="x")).mount_mode is MountMode.RW


def test_read_only_request_forces_ro_mount() -> None:
    limits = PolicySet.load(None).resolve(TaskSpec(prompt="x", read_only=True))
    assert limits.mount_mode is MountMode.RO


def test_requests_tighten_but_never_loosen(tmp_path: Path) -> None:
    (tmp_path / "small.toml").write_text("memory_mb = 512\ncpus = 1\nmax_turns = 5\n")
    policies = PolicySet.load(tmp_path)
    limits = policies.resolve(TaskSpec(prompt="x", policy="small", memory_mb=256, max_turns=3))
    assert (limits.memory_mb, limits.cpus, limits.max_turns) == (256, 1, 3)
    for field, value in [("memory_mb", 1024), ("cpus", 2.0), ("max_turns", 6),
                         ("timeout_s", 10**6), ("pids", 10**6)]:
        with pytest.raises(PolicyViolation) as caught:
            policies.resolve(TaskSpec.model_validate({"prompt": "x", "policy": "small",
                                                      field: value}))
        assert caught.value.field == field
        assert field in str(caught.value)


def test_user_file_overrides_builtin(tmp_path: Path) -> None:
    (tmp_path / "default.toml").write_text('workspace = "ro"\n')
    assert PolicySet.load(tmp_path).get("default").workspace == "ro"


def test_unknown_policy() -> None:
    with pytest.raises(InvalidRequest, match="unknown policy 'nope'"):
        PolicySet.load(None).get("nope")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("memory_mb = [", "not valid TOML"),
        ("memory_mb = 'lots'", "field memory_mb"),
        ("colour = 'red'", "field colour: Extra inputs are not permitted"),
        ('workspace = "sideways"', "field workspace"),
        ('agent = "command"', "field command: required"),
    ],
)
def test_broken_file_names_file_field_reason(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "broken.toml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        PolicySet.load(tmp_path)
    assert str(tmp_path / "broken.toml") in str(caught.value)
    assert needle in str(caught.value)


def test_broken_file_stops_server_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "broken.toml").write_text("cpus = -1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "cbox", "serve"],
        env={**os.environ, "CBOX_POLICIES_DIR": str(tmp_path), "AGENT_PORT": "0",
             "CBOX_DB_PATH": str(tmp_path / "db.sqlite"),
             "CBOX_API_TOKEN_FILE": str(tmp_path / "api-token")},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert f"policy file {tmp_path / 'broken.toml'}: field cpus:" in proc.stderr
