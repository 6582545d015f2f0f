"""Shared base for config sections: strict (unknown keys are errors), typed, bounded, documented.

Strict means a value must already have the TOML type its key expects: `port = "1883"` is an error,
not a silently converted 1883. The conversions TOML itself implies are kept: an integer is a
valid float (`heartbeat_s = 30`), and a path is written as a string. Floats must be finite (no
`inf`, `nan`); every number has a range (docs/config.md).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

from edge.layering import Origins
from protocol.topics import check_segment

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
    #: false for a section no pipeline reads ([site]): a live change to it alone restarts none
    restarts_pipelines: ClassVar[bool] = True
    #: arrays of tables whose entries inherit keys of this section when they do not set them
    #: ([vision] cameras): `check-config --show` names the section's key as their source
    inherited_by_entries: ClassVar[dict[str, tuple[str, ...]]] = {}

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

# --- human text shown to dispatchers (site, labels): bounded, no control characters ---------

#: a human label of one event source ("kitchen smoke, 2nd floor"): short enough for one row
LABEL_MAX = 80
#: one line of site metadata (name, address, contact)
LINE_MAX = 200
#: free text of a run card (access, hazards): a few lines
NOTE_MAX = 1000
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # tab and newline are checked apart


def check_text(value: str, limit: int, *, lines: bool = False) -> str:
    """A human text: not empty, at most `limit` characters, printable; newlines only if `lines`.

    The one rule for text a dispatcher reads (config `[site]`, labels, the inventory's columns)."""
    if not value.strip():
        raise ValueError("is empty: give the text, or leave the key out")
    if len(value) > limit:
        raise ValueError(f"is {len(value)} characters long; at most {limit}")
    if not lines and ("\n" in value or "\r" in value):
        raise ValueError("must be one line (no line breaks)")
    if "\t" in value or _CONTROL.search(value.replace("\r\n", "\n").replace("\n", "")):
        raise ValueError("contains a control character (a tab, or an invisible one): remove it")
    return value


def _text(limit: int, lines: bool = False) -> Any:
    return Annotated[str, AfterValidator(lambda value: check_text(value, limit, lines=lines))]


#: a label of an event source (cameras, serial ports' `labels`)
Label = _text(LABEL_MAX)
#: one line of human text (site name, address, contact name)
TextLine = _text(LINE_MAX)
#: a few lines of human text (run card: access, notes)
Note = _text(NOTE_MAX, lines=True)


M = TypeVar("M", bound=Section)

# --- loading a TOML file into a Section: every problem as `file:line: key: reason` --------


class ConfigError(Exception):
    """Every problem found in one config file, each as `file:line: key: what is wrong`."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__("\n".join(problems))


#: A config file is a few KB; anything past this is the wrong file (or /dev/zero).
MAX_BYTES = 1 << 20
#: Arrays and tables nested deeper than this are no wardgate config (ours reach about 8).
MAX_DEPTH = 32
#: Values echoed in a problem are cut to about this many characters.
ECHO_CHARS = 60


def parse_model(model: type[M], text: str, path: Path | str) -> M:
    """TOML text into any Section model (the gateway config, the fleet settings, ...)."""
    return validate_model(model, _toml(text, path), path, text)


def _toml(text: str, path: Path | str) -> dict[str, Any]:
    text = text.removeprefix(BOM)  # a UTF-8 byte-order mark (Windows editors) is ignored
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        where = f"{path}:{match.group(1)}" if match else str(path)
        raise ConfigError(path, [f"{where}: not valid TOML: {_clip(str(exc), 200)}"]) from None
    except RecursionError:
        line = _deep_line(text)
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(path, [f"{where}: {_TOO_DEEP}"]) from None


BOM = "\ufeff"
_TOO_DEEP = f"arrays or tables nested more than {MAX_DEPTH} levels deep: not a wardgate config"


def validate_model(
    model: type[M],
    data: dict[str, Any],
    path: Path | str,
    text: str = "",
    *,
    origins: Origins | None = None,
) -> M:
    """Validate; on failure a ConfigError with every problem as `file:line: key: reason`.

    The file and line are those of the layer whose value won (`origins`, from a merge of
    several files, edge/layering.py); without `origins`, lines are looked up in `text`, the one
    file at `path`."""
    if origins is None:
        origins = _origins_of(text, path)
    deep = _too_deep(data)
    if deep is not None:
        raise ConfigError(
            path, [f"{_where(origins, deep, path)}: {_dotted(deep[:6])}: {_TOO_DEEP}"]
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = [p for p in err["loc"] if not _is_union_tag(p)]
            key = _dotted(loc)
            where = _where(origins, loc, path)
            problems.append(f"{where}: {key or '(top level)'}: {_explain(err)}")
        raise ConfigError(path, problems) from None
    except RecursionError:  # _too_deep keeps this away; never a 3,000-line traceback
        raise ConfigError(path, [f"{path}: {_TOO_DEEP}"]) from None


def _origins_of(text: str, path: Path | str) -> Origins:
    """The one file at `path` as Origins: each key path of `text` with its line."""
    origins = Origins()
    file = str(path)
    for key, line in _KeyLines(text.removeprefix(BOM)).where.items():
        origins.at[key] = (file, line)
    return origins


def _where(origins: Origins, loc: list[Any], path: Path | str) -> str:
    """`file:line` of the layer that set `loc` (or its nearest table); else the main file."""
    found = origins.find(loc)
    return f"{found[0]}:{found[1]}" if found else str(path)


def _too_deep(data: Any) -> list[Any] | None:
    """The key path of the first value nested deeper than MAX_DEPTH, or None (no recursion)."""
    stack: list[tuple[Any, list[Any]]] = [(data, [])]
    while stack:
        value, loc = stack.pop()
        if len(loc) > MAX_DEPTH:
            return loc
        if isinstance(value, dict):
            stack.extend((v, [*loc, k]) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, [*loc, i]) for i, v in enumerate(value))
    return None


def _deep_line(text: str) -> int | None:
    """Where brackets first nest deeper than MAX_DEPTH (strings are not skipped: a hint only)."""
    depth = 0
    for number, line in enumerate(text.splitlines(), start=1):
        for char in line:
            depth += 1 if char in "[{" else -1 if char in "]}" else 0
            if depth > MAX_DEPTH:
                return number
    return None


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and ("[" in part or part in ("function-after",))


def _dotted(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        part = part if isinstance(part, int) else _clip(str(part), 40)
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _clip(text: str, limit: int = ECHO_CHARS) -> str:
    if len(text) <= limit:
        return text
    return f"{text[: limit - 1]}… ({len(text):,} characters)"


def _echo(value: Any) -> str:
    """A value as the user wrote it, cut to about ECHO_CHARS characters."""
    return _clip(repr(value))


#: strict types: what a key wanted, for inputs of another TOML type
_WANTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string (in quotes)",
}


def _explain(err: dict[str, Any]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key (check its spelling against docs/config.md)"
    if kind == "missing":
        return "required key is missing"
    given = err.get("input")
    scalar = given is not None and not isinstance(given, dict | list)
    if kind in _WANTED and scalar:
        hint = ": write it without quotes" if isinstance(given, str) else ""
        return f"must be {_WANTED[kind]}, not {_toml_type(given)}{hint} (got {_echo(given)})"
    if kind == "finite_number":
        return f"must be a finite number (got {_echo(given)})"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if scalar:
        full = repr(given)
        if full in msg:  # the message already quotes the value: once, cut short
            return _clip(msg.replace(full, _echo(given)), 300)
        return f"{_clip(msg, 300)} (got {_echo(given)})"
    return _clip(msg, 300)


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"


class _KeyLines:
    """Maps a key path to the line that sets it, by reading the TOML text itself.

    tomllib keeps no positions; this covers what people write in config files: [tables],
    [[arrays of tables]], `key = value` and dotted keys. It falls back to the nearest table.
    """

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    _PART = r"""(?:"[^"\n]*"|'[^'\n]*'|[A-Za-z0-9_\-]+)"""
    #: `key =`, `a.b =`, `"n07/smoke" =` (quoted parts may hold any character)
    _KEY = re.compile(rf"^\s*({_PART}(?:\s*\.\s*{_PART})*)\s*=")

    def __init__(self, text: str) -> None:
        self.where: dict[tuple[Any, ...], int] = {}
        counters: dict[tuple[Any, ...], int] = {}
        table: tuple[Any, ...] = ()
        for number, line in enumerate(text.splitlines(), start=1):
            header = self._HEADER.match(line)
            if header:
                names = tuple(_split_key(header.group(2)))
                if header.group(1) == "[[":
                    index = counters.get(names, -1) + 1
                    counters[names] = index
                    table = self._resolve(names, counters) + (index,)
                else:
                    table = self._resolve(names, counters)
                self.where.setdefault(table, number)
                continue
            key = self._KEY.match(line)
            if key:
                full = table + tuple(_split_key(key.group(1)))
                self.where.setdefault(full, number)

    @staticmethod
    def _resolve(names: tuple[str, ...], counters: dict[tuple[Any, ...], int]) -> tuple[Any, ...]:
        """[a.b] inside the latest [[a]] element becomes (a, i, b)."""
        out: list[Any] = []
        for i, name in enumerate(names):
            out.append(name)
            prefix = names[: i + 1]
            if prefix in counters and i < len(names) - 1:
                out.append(counters[prefix])
        return tuple(out)

    def find(self, loc: list[Any]) -> int | None:
        path = tuple(loc)
        while path:
            if path in self.where:
                return self.where[path]
            path = path[:-1]
        return None


_KEY_PART = re.compile(r"""\s*("([^"]*)"|'([^']*)'|[^."']+)\s*(?:\.|$)""")


def _split_key(key: str) -> list[str]:
    """`a."b.c".d` -> ["a", "b.c", "d"] (a dot inside quotes is part of the key)."""
    parts = []
    for match in _KEY_PART.finditer(key):
        quoted = match.group(2) if match.group(2) is not None else match.group(3)
        parts.append(quoted if quoted is not None else match.group(1).strip())
    return parts


def field_reload(model: type[Section], name: str) -> Reload:
    """A field's reload metadata: its own `on_reload`, else its section's."""
    extra = model.model_fields[name].json_schema_extra
    if isinstance(extra, dict) and extra.get("on_reload") in ("live", "restart"):
        return extra["on_reload"]  # type: ignore[return-value]
    return model.on_reload
