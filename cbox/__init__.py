"""claude-box: run the Claude Code CLI in a fresh, limited Docker container per task.

The public surface is small: `Settings`, the models in `cbox.models`, the
exception tree in `cbox.errors`, and `TaskService` (the one core every other
part — HTTP API, CLI, workers — goes through).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("claude-box")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+src"

__all__ = ["__version__"]
