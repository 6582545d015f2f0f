"""Config of the serial fire-sensor pipelines (the `[serial]` table)."""

from __future__ import annotations

from edge.confbase import Section


class SerialConfig(Section):
    pass
