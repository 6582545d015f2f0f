"""Camera pipelines built from the `[vision]` config section."""

from __future__ import annotations

from edge.pipeline import Context, Pipeline


def build_pipelines(ctx: Context) -> list[Pipeline]:
    return []
