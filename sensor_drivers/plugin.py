"""The serial fire-sensor pipelines as a pipeline plugin (edge/plugins.py): section `[serial]`.

Light on purpose: importing this (and sensor_drivers/config.py) loads pydantic only; pyserial and
pymodbus load with `sensor_drivers.pipeline`, only when a port is configured.
"""

from __future__ import annotations

from typing import Any

from edge.plugins import PipelinePlugin


def profiles_in_use(section: Any) -> dict[str, Any]:
    """The Modbus profiles a [serial] section uses, as loaded now (a reload compares them)."""
    names = {d.profile for port in section.ports for d in getattr(port, "devices", ())}
    if not names:
        return {}
    from sensor_drivers.modbus_profile import load_profile

    out: dict[str, Any] = {}
    for name in sorted(names):
        try:
            out[name] = load_profile(name)
        except Exception as exc:  # reported by the config load itself
            out[name] = repr(exc)
    return out


def forget_profiles() -> None:
    """Re-read profile files at the next load: an edited profile is a change."""
    from sensor_drivers.modbus_profile import load_profile

    load_profile.cache_clear()


PLUGIN = PipelinePlugin(
    model="sensor_drivers.config:SerialConfig",
    build="sensor_drivers.pipeline:build_pipelines",
    active=lambda section: bool(section.ports),
    labels=lambda section: section.source_labels(),
    reload_state="sensor_drivers.plugin:profiles_in_use",
    reload_forget="sensor_drivers.plugin:forget_profiles",
    summary="serial fire sensors: node protocol and Modbus RTU (docs/sensors.md)",
)
