"""Serial fire-sensor pipelines built from the `[serial]` config section."""

from __future__ import annotations

from edge.pipeline import Context, Pipeline


def build_pipelines(ctx: Context) -> list[Pipeline]:
    return []
