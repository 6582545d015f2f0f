"""Shared base for config sections: strict (unknown keys are errors), typed, bounded, documented.

Strict means a value must already have the TOML type its key expects: `port = "1883"` is an error,
not a silently converted 1883. The conversions TOML itself implies are kept: an integer is a
valid float (`heartbeat_s = 30`), and a path is written as a string. Floats must be finite (no
`inf`, `nan`); every number has a range (docs/config.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

from edge.topics import check_segment

#: what `cmd/reload` does with a changed value: apply it to the running gateway, or refuse it
#: (keep the running value, list it in `restart_required_for`) until the service restarts
Reload = Literal["live", "restart"]


class Section(BaseModel):
    """A config table. Unknown keys are rejected so that a typo never silently does nothing.

    `on_reload` is the section's reload metadata (docs/config.md, "Reloading", is generated
    from it); a field overrides it with `Field(..., json_schema_extra={"on_reload": ...})`.
    `reload_note` says how a live change is applied.
    """

    on_reload: ClassVar[Reload] = "live"
    reload_note: ClassVar[str] = "applied: the affected pipelines restart with the new settings"

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        str_strip_whitespace=True,
        strict=True,  # no "1883" -> 1883, no 1 -> true
        allow_inf_nan=False,  # inf and nan are never a sane interval, bound or threshold
    )


TopicSegment = Annotated[str, AfterValidator(check_segment)]


def _to_path(value: Any) -> Any:
    """A path is a string in TOML; a Path object (from Python callers) is taken as it is."""
    if isinstance(value, Path):
        return value
    if not isinstance(value, str):
        raise ValueError('must be a path written as a string, e.g. "/etc/wardgate/ca.crt"')
    if not value.strip():
        raise ValueError("is empty: give a path")
    if "\x00" in value:
        raise ValueError("a path cannot contain a NUL character")
    return Path(value)


def _absolute(path: Path) -> Path:
    if not path.is_absolute():
        raise ValueError(
            "must be an absolute path (starting with /): a relative path would depend on the "
            "directory the service happens to start in"
        )
    return path


#: A filesystem path that must be absolute (docs/config.md: "Paths are absolute").
AbsPath = Annotated[Path, BeforeValidator(_to_path), AfterValidator(_absolute)]
#: A path that may be relative (development and test inputs only, e.g. a camera's video file).
AnyPath = Annotated[Path, BeforeValidator(_to_path)]


def _list_to_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


#: [x, y] in TOML, a tuple in Python; the items stay strictly typed.
Pair = BeforeValidator(_list_to_tuple)


def field_reload(model: type[Section], name: str) -> Reload:
    """A field's reload metadata: its own `on_reload`, else its section's."""
    extra = model.model_fields[name].json_schema_extra
    if isinstance(extra, dict) and extra.get("on_reload") in ("live", "restart"):
        return extra["on_reload"]  # type: ignore[return-value]
    return model.on_reload
