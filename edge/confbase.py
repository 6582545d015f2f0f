"""Shared base for config sections: strict (unknown keys are errors), typed, documented."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from edge.topics import check_segment


class Section(BaseModel):
    """A config table. Unknown keys are rejected so that a typo never silently does nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


TopicSegment = Annotated[str, AfterValidator(check_segment)]
