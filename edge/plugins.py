"""The pipeline plugin registry: who owns which config section and builds which pipelines.

A plugin is a `PipelinePlugin` object registered under the entry-point group `wardgate.pipelines`;
the entry point's *name* is the config section the plugin owns (`[vision]`, `[serial]`), its value
points at the plugin object in a light module (docs/plugins.md):

    [options.entry_points]
    wardgate.pipelines =
        vision = edge.vision.plugin:PLUGIN

Three costs are kept apart, because the vision stack alone is 30 MB (numpy, OpenCV, LiteRT):
- discovering plugins reads entry-point metadata only (nothing of the plugin is imported);
- validating a config imports each plugin's object and its section model (pydantic only);
- `build` is imported only when the plugin's section configures something (`active`).

The project's own plugins (serial, vision) are also listed in `BUILTIN`, so the registry works
from a source tree whose installed metadata lacks the entry points (a checkout run from another
install, an editable install made before the entry points existed). An entry point with a
built-in's name and the same value is the same plugin; with another value it is a conflict.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Callable
from functools import cache, lru_cache
from importlib import metadata
from typing import Any

log = logging.getLogger("wardgate.plugins")

GROUP = "wardgate.pipelines"

#: sections of the gateway itself: no plugin may claim them
CORE_SECTIONS = frozenset(
    {"gateway", "uplink", "outbox", "health", "test_source", "alarm_ack", "logging", "site"}
)

#: the project's own plugins: section -> "module:attribute" of their PipelinePlugin
BUILTIN: dict[str, str] = {
    "serial": "sensor_drivers.plugin:PLUGIN",
    "vision": "edge.vision.plugin:PLUGIN",
}


class PluginError(RuntimeError):
    """A plugin cannot be loaded or is declared wrongly; the message says what to install/fix."""


def import_target(target: str) -> Any:
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


@dataclasses.dataclass(frozen=True)
class PipelinePlugin:
    """What a plugin declares. Strings are "module:attribute" paths, imported when needed.

    model: the pydantic model of the plugin's section (a subclass of edge.confbase.Section; its
        module must stay light: no numpy, OpenCV, pymodbus). Its default instance is the
        section's value when the config does not have it.
    build: `build(ctx) -> list[Pipeline]` (ctx: edge.pipeline.Context; the section is
        `ctx.config.<section>`); imported only when `active(section)` is true.
    active: whether the section configures anything (default: always). Cheap: called on every
        start and reload.
    labels: optional, `labels(section) -> {event source: human label}` of what the section
        declares ("cam/gate" -> "street north"); the gateway carries them in its retained `state`
        (birth) message so a console can name each event's source (docs/topics.md). Cheap.
    site_defaults: optional, `site_defaults(section, site_type) -> section`: the section as it
        runs at that site type (`[gateway] site_type`), for defaults that depend on where the
        gateway is (cameras at a fire point run the smoke cues). Applied to every validated
        config, hand-written or generated; it must not override what the config sets.
    reload_state / reload_forget: optional, for sections that depend on files outside the config
        (the Modbus profile files of [serial]): `reload_state(section)` returns something
        comparable that a reload compares before and after; `reload_forget()` drops caches so
        the new config re-reads those files.
    """

    model: str
    build: str
    active: Callable[[Any], bool] | None = None
    labels: Callable[[Any], dict[str, str]] | None = None
    site_defaults: Callable[[Any, str], Any] | None = None
    reload_state: str | None = None
    reload_forget: str | None = None
    summary: str = ""

    def section_model(self) -> type:
        return import_target(self.model)

    def is_active(self, section: Any) -> bool:
        return True if self.active is None else bool(self.active(section))

    def source_labels(self, section: Any) -> dict[str, str]:
        return {} if self.labels is None else dict(self.labels(section))

    def build_pipelines(self, ctx: Any) -> list[Any]:
        return list(import_target(self.build)(ctx))


@dataclasses.dataclass(frozen=True)
class Registered:
    """One registry entry: a section name, where its plugin object is and which package has it."""

    section: str
    target: str
    package: str

    def load(self) -> PipelinePlugin:
        return _load(self.section, self.target, self.package)


@cache
def _load(section: str, target: str, package: str) -> PipelinePlugin:
    try:
        plugin = import_target(target)
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        what = f"the package that provides the module {missing!r}" if missing else package
        raise PluginError(
            f"pipeline plugin [{section}] ({target}, from the package {package!r}) cannot be "
            f"imported: {exc}; install {what} (or reinstall {package!r}), or remove the "
            f"[{section}] section"
        ) from exc
    except Exception as exc:
        raise PluginError(
            f"pipeline plugin [{section}] ({target}, from the package {package!r}) failed while "
            f"importing: {type(exc).__name__}: {exc}; reinstall or update {package!r}"
        ) from exc
    if not isinstance(plugin, PipelinePlugin):
        raise PluginError(
            f"pipeline plugin [{section}]: {target} (package {package!r}) is a "
            f"{type(plugin).__name__}, not an edge.plugins.PipelinePlugin"
        )
    return plugin


def _entry_points() -> list[metadata.EntryPoint]:
    try:
        return list(metadata.entry_points(group=GROUP))
    except Exception as exc:  # broken metadata of some unrelated distribution
        log.warning("cannot read the %s entry points: %s", GROUP, exc)
        return []


@lru_cache(maxsize=1)
def registry() -> dict[str, Registered]:
    """Every registered plugin by section name: the built-ins, then the entry points."""
    found = {name: Registered(name, target, "wardgate") for name, target in BUILTIN.items()}
    for ep in _entry_points():
        package = ep.dist.name if ep.dist is not None else "(unknown package)"
        if ep.name in CORE_SECTIONS:
            raise PluginError(
                f"the package {package!r} registers a pipeline plugin for [{ep.name}], a section "
                "of the gateway itself; uninstall it or rename its entry point"
            )
        known = found.get(ep.name)
        if known is not None:
            if known.target == ep.value:
                continue  # the project's own plugin, also declared in its metadata
            raise PluginError(
                f"two pipeline plugins claim the section [{ep.name}]: {known.target} "
                f"({known.package!r}) and {ep.value} ({package!r}); uninstall one of them"
            )
        found[ep.name] = Registered(ep.name, ep.value, package)
    return dict(sorted(found.items()))


def plugins() -> dict[str, PipelinePlugin]:
    """The loaded plugin objects by section (PluginError for one that cannot be imported)."""
    return {name: entry.load() for name, entry in registry().items()}


def reset() -> None:
    """Forget what was discovered (tests that install a plugin in the running process)."""
    registry.cache_clear()
    _load.cache_clear()
