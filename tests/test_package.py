"""Issue: release-quality package. `pip install .` in a new virtualenv gives a working cbox."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow]


def test_pip_install_in_a_new_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(REPO)],
        capture_output=True, text=True, check=False, timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    helped = subprocess.run(
        [str(venv / "bin" / "cbox"), "--help"], capture_output=True, text=True, check=True
    )
    for command in ("run", "serve", "status", "stop", "history", "logs", "image", "doctor"):
        assert command in helped.stdout
    # Package data made it: built-in policies and the sandbox image definition.
    probe = subprocess.run(
        [str(python), "-c",
         "from cbox.policies import PolicySet; from cbox.image import context_dir;"
         "print(PolicySet.load(None).names()); print((context_dir() / 'Dockerfile').is_file())"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )
    assert "'readonly'" in probe.stdout
    assert probe.stdout.strip().endswith("True")
    assert "site-packages" in subprocess.run(
        [str(python), "-c", "import cbox; print(cbox.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout
    version = subprocess.run(
        [str(python), "-m", "cbox", "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.startswith("cbox, version ")
