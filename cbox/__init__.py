"""claude-box: run the Claude Code CLI in a fresh, limited Docker container per task.

The public surface is small: `Settings`, the models in `cbox.models`, the
exception tree in `cbox.errors`, and `TaskService` (the one core every other
part — HTTP API, CLI, workers — goes through).
"""

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    # `__version__` is looked up on first use: importlib.metadata costs ~30 ms,
    # which every `cbox run` would otherwise pay for a string it never prints.
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("claude-box")
    except PackageNotFoundError:  # running from a source tree that was never installed
        value = "0.0.0+src"
    globals()["__version__"] = value
    return value
