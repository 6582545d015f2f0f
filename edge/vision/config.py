"""Config of the camera pipelines (the `[vision]` table and `[[vision.cameras]]`)."""

from __future__ import annotations

from edge.confbase import Section


class VisionConfig(Section):
    pass
