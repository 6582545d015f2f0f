"""Config layering: one deep-merge rule, config versions and migrations, where each key came from.

The gateway's config is built from layers, each a TOML table (docs/config.md, "Layers"):

    built-in defaults (the models)  <-  fleet.toml [config.*]  (merged into config.toml by
    `wardgate provision`)  <-  config.toml  <-  conf.d/*.toml (sorted by name)

`merge` is the one rule for all of them: tables merge key by key; arrays of tables that have a
key (`KEYED`: cameras and serial ports by `name`, zones by `name`, Modbus devices by `unit`)
merge element by element on that key, new keys appended; every other value, arrays included,
is replaced by the later layer.

Each file carries its own `config_version` (absent: 1) and is migrated to `CURRENT_VERSION` in
memory before the merge, with a note naming each change (`MIGRATIONS`). No pydantic here: the
provisioning tool and the gateway share it.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

KeyPath = tuple[Any, ...]

#: arrays of tables merged element by element on a key (path with "*" for any array index)
KEYED: dict[KeyPath, str] = {
    ("vision", "cameras"): "name",
    ("vision", "cameras", "*", "zones"): "name",
    ("serial", "ports"): "name",
    ("serial", "ports", "*", "devices"): "unit",
}

#: the config format this wardgate reads; older files are migrated in memory
CURRENT_VERSION = 2
VERSION_KEY = "config_version"

#: (merged path, path in the layer, replaced): the later layer set this value (replaced=True: the
#: whole value, subkeys included, comes from it; False: a table or keyed element merged into)
Note = Callable[[KeyPath, KeyPath, bool], None]


def merge(base: dict[str, Any], over: dict[str, Any], note: Note | None = None) -> dict[str, Any]:
    """`over` deep-merged onto `base` (neither is changed): the one rule for every layer."""
    return _merge_tables(base, over, (), (), note or _ignore)


def _ignore(merged: KeyPath, layer: KeyPath, replaced: bool) -> None:
    pass


def _merge_tables(
    base: dict[str, Any], over: dict[str, Any], mpath: KeyPath, opath: KeyPath, note: Note
) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        m, o = (*mpath, key), (*opath, key)
        old = out.get(key)
        field = KEYED.get(_pattern(m))
        if isinstance(value, dict) and isinstance(old, dict):
            note(m, o, False)
            out[key] = _merge_tables(old, value, m, o, note)
        elif field and _tables(old) and _tables(value):
            note(m, o, False)
            out[key] = _merge_keyed(old, value, field, m, o, note)
        else:
            note(m, o, True)
            out[key] = copy.deepcopy(value)
    return out


def _merge_keyed(
    old: list[dict[str, Any]],
    new: list[dict[str, Any]],
    field: str,
    mpath: KeyPath,
    opath: KeyPath,
    note: Note,
) -> list[dict[str, Any]]:
    out = list(old)
    index = {item.get(field): i for i, item in enumerate(out) if _usable_key(item.get(field))}
    for j, item in enumerate(new):
        key = item.get(field)
        i = index.get(key) if _usable_key(key) else None
        if i is None:  # a new element (or one without its key: validation names the problem)
            i = len(out)
            if _usable_key(key):
                index[key] = i
            note((*mpath, i), (*opath, j), True)
            out.append(copy.deepcopy(item))
        else:
            note((*mpath, i), (*opath, j), False)
            out[i] = _merge_tables(out[i], item, (*mpath, i), (*opath, j), note)
    return out


def _usable_key(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


def _tables(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def _pattern(path: KeyPath) -> KeyPath:
    return tuple("*" if isinstance(p, int) else p for p in path)


# --- where each value came from ------------------------------------------------------------


@dataclasses.dataclass
class Layer:
    """One file's table, its lines (key path -> line, from edge.confbase._KeyLines) and version."""

    file: str
    data: dict[str, Any]
    lines: dict[KeyPath, int]
    version: int = CURRENT_VERSION

    def where(self, path: KeyPath) -> str:
        line = _nearest(self.lines, path)
        return f"{self.file}:{line}" if line else self.file

    def rename(self, old: KeyPath, new: KeyPath, since: int) -> list[str]:
        """Migration step: the key `old` is now `new` (same table). Returns the note, if any."""
        table = self.data
        for part in old[:-1]:
            table = table.get(part) if isinstance(table, dict) else None
        if not isinstance(table, dict) or old[-1] not in table:
            return []
        where = self.where(old)
        if new[-1] in table:  # both given: the old one stays and fails as an unknown key
            return [
                f"{where}: {'.'.join(old)}: warning: config_version {since} renamed it "
                f"`{'.'.join(new)}`, which is also given: delete this line"
            ]
        table[new[-1]] = table.pop(old[-1])
        for path in [p for p in self.lines if p[: len(old)] == old]:
            self.lines[new + path[len(old) :]] = self.lines.pop(path)
        return [
            f"{where}: {'.'.join(old)}: warning: read as `{'.'.join(new)}` (renamed in "
            f"config_version {since}); rename it and set config_version = {CURRENT_VERSION}"
        ]


class Origins:
    """Key path in the merged config -> (file, line) of the layer whose value won."""

    def __init__(self) -> None:
        self.at: dict[KeyPath, tuple[str, int]] = {}

    @classmethod
    def of(cls, layers: list[Layer]) -> tuple[dict[str, Any], Origins]:
        """Merge `layers` in order; returns the merged table and where each value came from."""
        origins = cls()
        merged: dict[str, Any] = {}
        for layer in layers:
            merged = merge(merged, layer.data, origins._noter(layer))
        return merged, origins

    def _noter(self, layer: Layer) -> Note:
        def note(merged: KeyPath, path: KeyPath, replaced: bool) -> None:
            if replaced:
                for old in [p for p in self.at if p[: len(merged)] == merged]:
                    del self.at[old]
                n = len(path)
                for p, line in layer.lines.items():
                    if p[:n] == path:
                        self.at[merged + p[n:]] = (layer.file, line)
            elif path in layer.lines and merged not in self.at:
                self.at[merged] = (layer.file, layer.lines[path])

        return note

    def find(self, loc: list[Any] | KeyPath) -> tuple[str, int] | None:
        """The file and line that set `loc`, or else its nearest enclosing table."""
        path = tuple(loc)
        while path:
            if path in self.at:
                return self.at[path]
            path = path[:-1]
        return None

    def exact(self, loc: KeyPath) -> tuple[str, int] | None:
        return self.at.get(tuple(loc))


def _nearest(lines: dict[KeyPath, int], path: KeyPath) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


# --- versions and migrations ----------------------------------------------------------------


def _v1_to_v2(layer: Layer) -> list[str]:
    """Version 2 (config layering, issue 14): `[vision]` also holds the defaults every camera
    inherits, `decode_threads` among them; its detector's `threads` became `detector_threads`
    so the two are not confused."""
    return layer.rename(("vision", "threads"), ("vision", "detector_threads"), 2)


#: version N -> the step that turns a version-N table into version N+1 (in place; returns notes)
MIGRATIONS: dict[int, Callable[[Layer], list[str]]] = {1: _v1_to_v2}


class VersionError(ValueError):
    """A `config_version` this wardgate cannot read; the message is one `file:line: ...` line."""


def migrate(
    layer: Layer, migrations: dict[int, Callable[[Layer], list[str]]] | None = None
) -> list[str]:
    """Bring `layer` to CURRENT_VERSION in place; returns a warning per change made."""
    steps = MIGRATIONS if migrations is None else migrations
    raw = layer.data.get(VERSION_KEY, 1)
    where = layer.where((VERSION_KEY,))
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise VersionError(
            f"{where}: {VERSION_KEY}: must be an integer, e.g. {VERSION_KEY} = {CURRENT_VERSION}"
            f" (got {raw!r:.60})"
        )
    if raw > CURRENT_VERSION:
        raise VersionError(
            f"{where}: {VERSION_KEY}: {raw} is newer than this wardgate reads (1 to "
            f"{CURRENT_VERSION}): upgrade wardgate, or write the file for version "
            f"{CURRENT_VERSION} (docs/config.md, 'Versions')"
        )
    if raw < 1:
        raise VersionError(f"{where}: {VERSION_KEY}: versions start at 1 (got {raw})")
    notes: list[str] = []
    for version in range(raw, CURRENT_VERSION):
        notes += steps[version](layer)
    layer.version = raw
    if VERSION_KEY in layer.data:
        layer.data[VERSION_KEY] = CURRENT_VERSION
    return notes
