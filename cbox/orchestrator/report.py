"""The agent's own account of its run, validated field by field at the parser.

Claude Code's `result` line (and a custom agent's result) is the one place
where the agent fills fields of `Outcome` that the store and the API later
read back through pydantic. A value of the wrong type there used to be
written as it came and then refused on every read (a string `num_turns`
made `/history` answer 500 for good). So each field is checked here, once,
with strict types and bounds; a field that fails is dropped, and the reason
is kept (`dropped`) so the task's log can say what was thrown away.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from cbox.orchestrator.untrusted import bound_json, clean_text, clip

#: What `--resume` takes and a Docker-safe name holds: a Claude Code session
#: id is a UUID; anything else (an option-looking string, a path) is refused.
SESSION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
SessionId = Annotated[str, StringConstraints(pattern=SESSION_ID_PATTERN)]
#: A cost over a million dollars or a run over ~30 years is not a report, it is noise.
Cost = Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=10**9)]
Millis = Annotated[int, Field(ge=0, le=10**12)]
#: Token counts nest and grow new keys with each CLI version: an object of
#: at most 64 keys, its values bounded like any event data (`bound_json`).
Usage = Annotated[dict[Annotated[str, StringConstraints(max_length=100)], Any],
                  Field(max_length=64)]

#: One line each in the task's log and in `outcome.dropped`.
REASON_CHARS = 160
SUBTYPE_CHARS = 100


class ResultReport(BaseModel):
    """The fields of a `result` line we keep, each checked (strict: no coercion)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    subtype: Annotated[str, StringConstraints(max_length=SUBTYPE_CHARS)] | None = None
    is_error: bool | None = None
    result: Any = None
    total_cost_usd: Cost | None = None
    usage: Usage | None = None
    num_turns: Count | None = None
    duration_ms: Millis | None = None
    session_id: SessionId | None = None
    api_error_status: int | Annotated[str, StringConstraints(max_length=100)] | None = None
    errors: Annotated[list[Annotated[str, StringConstraints(max_length=500)]],
                      Field(max_length=20)] | None = None


def validate_report(obj: dict[str, Any], max_chars: int) -> tuple[ResultReport, dict[str, str]]:
    """The report with every invalid field dropped, and why each was dropped.

    `result` is free-form (text or any JSON): it is not type-checked but
    bounded (`bound_json`), so it is always storable.
    """
    data = {k: obj[k] for k in ResultReport.model_fields if k in obj}
    data.pop("result", None)  # free-form; bounded below with the rest
    _, dropped = validate_fields(ResultReport, data)
    # The survivors once more, with their text cleaned (lone surrogates) and
    # `result` bounded: what is stored must always encode.
    kept = {k: v for k, v in data.items() if k not in dropped}
    clean = bound_json(kept, max_chars)
    clean["result"] = bound_json(obj.get("result"), max_chars)
    report, _ = validate_fields(ResultReport, clean)
    return report, dropped


M = TypeVar("M", bound=BaseModel)


def validate_fields(
    model: type[M], data: dict[str, Any]
) -> tuple[M, dict[str, str]]:
    """`model` from `data`, dropping each top-level field that fails validation.

    A field that fails is left out (so it takes its default) and its reason
    is returned; the rest of the data is kept. The model's fields must all
    have defaults.
    """
    dropped: dict[str, str] = {}
    for _ in range(len(data) + 1):
        try:
            return model.model_validate(data), dropped
        except ValidationError as exc:
            for error in exc.errors(include_url=False, include_input=False):
                field = str(error["loc"][0]) if error["loc"] else ""
                if field in data:
                    data.pop(field)
                    dropped[field] = clip(clean_text(error["msg"]), REASON_CHARS)
    return model(), dropped


def session_id_or_none(value: Any) -> str | None:
    """A session id from any line: kept only if it is one (see `SESSION_ID_PATTERN`)."""
    report, _ = validate_fields(ResultReport, {"session_id": value})
    return report.session_id
