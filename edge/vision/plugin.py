"""The camera pipelines as a pipeline plugin (edge/plugins.py): section `[vision]`.

Light on purpose: importing this (and edge/vision/config.py) loads pydantic only. numpy, OpenCV
and the TFLite runtime (30 MB) load with `edge.vision.pipeline`, only when a camera is enabled.
"""

from __future__ import annotations

from edge.plugins import PipelinePlugin

PLUGIN = PipelinePlugin(
    model="edge.vision.config:VisionConfig",
    build="edge.vision.pipeline:build_pipelines",
    active=lambda section: any(camera.enabled for camera in section.cameras),
    labels=lambda section: section.source_labels(),
    site_defaults=lambda section, site_type: section.for_site(site_type),
    summary="IP/USB/file cameras: person detection, tracking, smoke cues (docs/vision.md)",
)
