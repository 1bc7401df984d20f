"""claude-box: run the Claude Code CLI in a fresh, limited Docker container per task.

The public surface is small: `Settings`, the models in `cbox.models`, the
exception tree in `cbox.errors`, and `TaskService` (the one core every other
part — HTTP API, CLI, workers — goes through).
"""

__all__ = ["__version__"]

#: The distribution name as installers write it in `<name>-<version>.dist-info`.
_DIST_INFO_PREFIX = "claude_box-"


def __getattr__(name: str) -> str:
    # `__version__` is looked up on first use: importlib.metadata costs ~30 ms
    # to import and ~10 ms to search, which every `cbox run` would otherwise pay
    # for a string it never prints.
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = _version_from_dist_info() or _version_from_metadata()
    globals()["__version__"] = value
    return value


def _version_from_dist_info() -> str | None:
    """The version in the name of the first `claude_box-<version>.dist-info` on sys.path.

    The directory name carries the version by specification ("Recording installed
    projects"); reading it is a listdir, where importlib.metadata parses METADATA
    with the email package. None when there is none (an egg, a zip, a source tree).
    """
    import os
    import sys

    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for entry_name in names:
            lowered = entry_name.lower()
            if lowered.startswith(_DIST_INFO_PREFIX) and lowered.endswith(".dist-info"):
                return entry_name[len(_DIST_INFO_PREFIX) : -len(".dist-info")]
    return None


def _version_from_metadata() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("claude-box")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0+src"
