"""Checking events against the shipped JSON Schema (protocol/schema/events.schema.json).

Used by tests/test_event_schema.py (payloads from a running gateway) and by the recording
Context of the camera and serial pipeline tests (tests/vision_context.py), so every event those
real pipelines emit is checked against the contract too.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import jsonschema

from protocol.events import Event, decode


@functools.cache
def validator() -> jsonschema.Draft202012Validator:
    text = resources.files("protocol").joinpath("schema/events.schema.json").read_text("utf-8")
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def problems(event: Event | bytes) -> list[str]:
    """What is wrong with the JSON form of an event (or of a CBOR/JSON payload, decoded)."""
    if not isinstance(event, Event):
        event = decode(event)
    obj: Any = json.loads(event.to_json())  # bytes in `data` become hex, as on the JSON wire
    return [
        f"{event.kind} {event.source}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator().iter_errors(obj)
    ]


def check(event: Event | bytes) -> None:
    found = problems(event)
    assert not found, found
