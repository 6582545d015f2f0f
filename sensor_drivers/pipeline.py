"""Serial fire-sensor pipelines built from the `[serial]` config section: one per port.

The operator commands `sensor_reset` and `sensor_silence` (args: {"sources": ["n07", ...]},
all sensors when omitted) go to every serial pipeline; each answers for its own devices.
"""

from __future__ import annotations

from typing import Any

from edge.pipeline import Context, Pipeline
from sensor_drivers.readings import ReadingGate


def build_pipelines(ctx: Context) -> list[Pipeline]:
    settings = ctx.config.serial
    if not settings.ports:
        return []
    from sensor_drivers.modbus import ModbusPortPipeline
    from sensor_drivers.node_driver import NodePortPipeline

    r = settings.readings
    readings = ReadingGate(r.min_interval_s, r.max_interval_s, r.deadband_pct)
    pipelines: list[Pipeline] = []
    for port in settings.ports:
        if port.protocol == "node":
            pipelines.append(NodePortPipeline(ctx, port, readings))
        else:
            pipelines.append(ModbusPortPipeline(ctx, port, readings))

    def dispatch(name: str):
        def handler(args: dict[str, Any]) -> dict[str, Any]:
            sources = args.get("sources")
            if sources is not None and (
                not isinstance(sources, list) or not all(isinstance(s, str) for s in sources)
            ):
                raise ValueError('`sources` must be a list of names like ["n07", "d01"]')
            out: dict[str, Any] = {}
            for p in pipelines:
                out.update(p.command(name, sources))  # type: ignore[attr-defined]
            if not out:
                raise ValueError(f"no serial device matches {sources}")
            return out

        return handler

    ctx.add_command("sensor_reset", dispatch("reset"))
    ctx.add_command("sensor_silence", dispatch("silence"))
    return pipelines
