"""Config of the camera pipelines: the `[vision]` table and its `[[vision.cameras]]`.

Reference: docs/vision.md. Polygons (masks, zones) are lists of [x, y] points given as fractions of
the frame's width and height (0..1), so they survive a change of stream resolution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from edge.confbase import AnyPath, Label, Pair, Section, TopicSegment

Fraction = Annotated[float, Field(ge=0, le=1)]
Point = Annotated[tuple[Fraction, Fraction], Pair]
#: durations in seconds: finite (every Section), at least 10 ms, at most the given bound
HOUR = 3600.0
DAY = 86400.0


def _check_polygon(points: list[Point]) -> list[Point]:
    if len(points) < 3:
        raise ValueError("a polygon needs at least 3 [x, y] points (fractions of width, height)")
    if len(points) > 256:
        raise ValueError(f"a polygon has at most 256 points (got {len(points)})")
    return points


Polygon = Annotated[list[Point], AfterValidator(_check_polygon)]


class MotionSettings(Section):
    """The cheap gate in front of the detector."""

    enabled: bool = Field(True, description="false: run the detector on every analysed frame")
    width: int = Field(160, ge=32, le=640, description="width of the downscaled motion frame")
    threshold: int = Field(25, ge=1, le=255, description="MOG2 variance threshold")
    min_area: Fraction = Field(
        0.002, description="changed fraction of the (unmasked) frame that counts as motion"
    )
    check_every_s: float = Field(
        10.0, ge=0.01, le=HOUR, description="run the detector at least this often without motion"
    )
    busy_every_s: float = Field(
        0.4,
        ge=0,
        le=HOUR,
        description="while motion goes on or people are tracked, detect this often",
    )
    warmup_frames: int = Field(
        10, ge=0, le=10_000, description="frames to learn the background first"
    )


class PersonSettings(Section):
    """Turning detections into person events (tracker)."""

    enabled: bool = True
    threshold: float | None = Field(
        None, gt=0, lt=1, description="minimum detector score; default: the model's own"
    )
    min_box_area: Fraction = Field(0.0008, description="ignore boxes smaller than this fraction")
    confirm_frames: int = Field(3, ge=1, le=50, description="hits before a track is reported")
    end_after_s: float = Field(
        4.0, ge=0.01, le=HOUR, description="unseen this long: the track ends"
    )
    update_every_s: float = Field(
        30.0, ge=0.01, le=DAY, description="minimum gap between update events"
    )
    cooldown_s: float = Field(
        2.0, ge=0, le=DAY, description="new-person events refill one per cooldown (token bucket)"
    )
    burst: int = Field(5, ge=1, le=1000, description="new-person events allowed back to back")
    iou_match: Fraction = Field(0.25, description="IoU that continues a track")


class SmokeSettings(Section):
    """The classical video smoke cue detector (docs/vision.md says how it works and its limits)."""

    enabled: bool = False
    fps: float = Field(
        2.0, ge=1.5, le=3.0, description="analysed frames per second (cues tuned at 1.5-3)"
    )
    width: int = Field(160, ge=64, le=640)
    confirm_s: float = Field(4.0, ge=0.01, le=HOUR, description="cues must persist this long")
    min_area: Fraction = Field(0.03, description="fraction of the frame that must show cues")
    cooldown_s: float = Field(120.0, ge=0, le=DAY, description="minimum gap between smoke events")
    clear_after_s: float = Field(
        30.0, ge=0.01, le=DAY, description="no cues this long: smoke cleared"
    )


class SnapshotSettings(Section):
    enabled: bool = True
    max_bytes: int = Field(40_000, ge=4_000, le=1_000_000)
    max_width: int = Field(640, ge=64, le=4096)
    quality: int = Field(80, ge=20, le=100, description="first JPEG quality tried")
    draw_boxes: bool = True


class Zone(Section):
    name: TopicSegment
    polygon: Polygon


class CameraConfig(Section):
    name: TopicSegment = Field(description="topic segment: events come from cam/<name>")
    url: str | None = Field(None, description="rtsp://... (or any FFmpeg URL)")
    device: str | Annotated[int, Field(ge=0, le=255)] | None = Field(
        None, description="/dev/videoN or N"
    )
    file: AnyPath | None = Field(
        None, description="a video file (demo, testing; relative: from the working directory)"
    )
    loop: bool = Field(False, description="file: start again at the end")
    realtime: bool = Field(
        True, description="file: play at its own speed; false: analyse every frame in order"
    )
    enabled: bool = True
    label: Label | None = Field(
        None,
        description='human label, e.g. "street north"; carried in the birth message for the '
        "source cam/<name> (docs/topics.md), never in events",
    )
    fps: float = Field(5.0, ge=0.1, le=60.0, description="analysed frames per second at most")
    transport: Literal["tcp", "udp"] = "tcp"
    probe_s: float = Field(
        1.0, ge=0.01, le=60.0, description="how long FFmpeg studies a new stream first"
    )
    decode_threads: int = Field(
        1, ge=0, le=16, description="FFmpeg decoder threads (0: one per core)"
    )
    open_timeout_s: float = Field(10.0, ge=0.1, le=300.0)
    read_timeout_s: float = Field(5.0, ge=0.1, le=300.0)
    stall_timeout_s: float = Field(
        10.0,
        ge=0.1,
        le=HOUR,
        description="no frame this long: reconnect and raise a camera_offline fault",
    )
    reconnect_initial_s: float = Field(1.0, ge=0.01, le=600.0)
    reconnect_max_s: float = Field(30.0, ge=0.01, le=HOUR)
    model: str | None = Field(None, description="detector profile; default: [vision].model")
    model_family: str | None = Field(
        None, description="family of a model without metadata; default: [vision].model_family"
    )
    masks: list[Polygon] = Field(default_factory=list, description="polygons to ignore")
    zones: list[Zone] = Field(default_factory=list)
    motion: MotionSettings = MotionSettings()
    person: PersonSettings = PersonSettings()
    smoke: SmokeSettings = SmokeSettings()
    snapshot: SnapshotSettings = SnapshotSettings()

    @model_validator(mode="after")
    def _one_source(self) -> CameraConfig:
        given = [k for k in ("url", "device", "file") if getattr(self, k) not in (None, "")]
        if len(given) != 1:
            raise ValueError(
                f"camera {self.name!r}: give exactly one of `url`, `device`, `file`"
                + (f" (got {', '.join(given)})" if given else "")
            )
        names = [z.name for z in self.zones]
        if len(names) != len(set(names)):
            raise ValueError(f"camera {self.name!r}: zone names must be unique")
        return self

    @property
    def kind(self) -> Literal["rtsp", "device", "file"]:
        if self.url:
            return "rtsp"
        return "device" if self.device is not None else "file"


#: camera keys that `[vision]` may set for every camera (docs/vision.md, "Defaults for every
#: camera"): a camera that does not set one inherits it; the tables inherit key by key. Not
#: inherited: what is one camera's own (name, url/device/file, loop, realtime, enabled, masks,
#: zones). `model` was inherited already (`[vision].model`; the pipeline resolves it).
INHERITED = (
    "fps",
    "transport",
    "probe_s",
    "decode_threads",
    "open_timeout_s",
    "read_timeout_s",
    "stall_timeout_s",
    "reconnect_initial_s",
    "reconnect_max_s",
    "motion",
    "person",
    "smoke",
    "snapshot",
)
#: the tables among them, inherited key by key
INHERITED_TABLES = ("motion", "person", "smoke", "snapshot")

_CameraDefaults = create_model(  # the same keys, types, ranges and defaults as on a camera
    "CameraDefaults",
    __base__=Section,
    **{
        name: (CameraConfig.model_fields[name].annotation, CameraConfig.model_fields[name])
        for name in INHERITED
    },  # type: ignore[call-overload]
)


class VisionConfig(_CameraDefaults):  # type: ignore[misc,valid-type]
    model: str = Field("default", description="detector profile (edge/models) for all cameras")
    model_family: str | None = Field(
        None,
        description="family (nanodet, ssd) of a model file without metadata (docs/models.md)",
    )
    detector_threads: int = Field(
        1, ge=1, le=16, description="detector (XNNPACK) threads (`threads` in config_version 1)"
    )
    delegate: str | None = Field(None, description="e.g. an EdgeTPU delegate library")
    cameras: list[CameraConfig] = Field(default_factory=list)

    inherited_by_entries: ClassVar[dict[str, tuple[str, ...]]] = {"cameras": INHERITED}

    @field_validator("cameras")
    @classmethod
    def _inherit(cls, cameras: list[CameraConfig], info: ValidationInfo) -> list[CameraConfig]:
        """Each camera takes `[vision]`'s value of every INHERITED key it does not set itself.
        A `[vision]` value that failed validation is absent here: reported once, at its line."""
        return [inherit(camera, info.data) for camera in cameras]

    def source_labels(self) -> dict[str, str]:
        """Event source (`cam/<name>`) -> label of every camera that has one (birth `labels`)."""
        return {f"cam/{cam.name}": cam.label for cam in self.cameras if cam.label}

    @model_validator(mode="after")
    def _unique_names(self) -> VisionConfig:
        names = [c.name for c in self.cameras]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"camera names must be unique: {', '.join(dup)}")
        from edge.vision.families import config_problem

        # cameras hold their inherited values already (`_inherit`: person.enabled among them);
        # model and model_family fall back to [vision]'s as the pipeline resolves them
        checked: set[tuple[str, str | None]] = set()
        for cam in self.cameras:
            if not (cam.enabled and cam.person.enabled):
                continue
            choice = (cam.model or self.model, cam.model_family or self.model_family)
            if choice in checked:
                continue
            checked.add(choice)
            problem = config_problem(*choice)
            if problem:
                shown = Path(choice[0]).name if "/" in choice[0] else choice[0]
                raise ValueError(f"camera {cam.name!r}: model {shown}: {problem}")
        return self

    def for_site(self, site_type: str) -> VisionConfig:
        """The section as it runs at a `site_type` (docs/vision.md, "Site defaults"): at a fire
        point every camera runs the smoke cues unless `smoke.enabled` is set, on the camera or in
        `[vision]`. Applied when the whole config is validated, so a hand-written config and a
        bundle's behave the same."""
        if site_type not in SMOKE_BY_DEFAULT:
            return self
        cameras = [
            cam.model_copy(update={"smoke": cam.smoke.model_copy(update={"enabled": True})})
            if "enabled" not in cam.smoke.model_fields_set
            else cam
            for cam in self.cameras
        ]
        return self.model_copy(update={"cameras": cameras}) if cameras != self.cameras else self


#: site types at which cameras run the smoke cues unless told otherwise
SMOKE_BY_DEFAULT = frozenset({"fire_point"})

#: named polygons (fractions of width, height) for zones and masks, e.g. the inventory's
#: `zone=door` and `mask=top-strip` (docs/vision.md, "Presets"): a start a technician refines
#: on site, not a measurement
PRESETS: dict[str, list[tuple[float, float]]] = {
    "full": [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)],
    "left-half": [(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)],
    "right-half": [(0.5, 0.0), (1.0, 0.0), (1.0, 1.0), (0.5, 1.0)],
    "top-half": [(0.0, 0.0), (1.0, 0.0), (1.0, 0.5), (0.0, 0.5)],
    "bottom-half": [(0.0, 0.5), (1.0, 0.5), (1.0, 1.0), (0.0, 1.0)],
    "centre": [(0.25, 0.25), (0.75, 0.25), (0.75, 0.75), (0.25, 0.75)],
    "door": [(0.35, 0.2), (0.65, 0.2), (0.65, 1.0), (0.35, 1.0)],
    "top-strip": [(0.0, 0.0), (1.0, 0.0), (1.0, 0.12), (0.0, 0.12)],
    "bottom-strip": [(0.0, 0.88), (1.0, 0.88), (1.0, 1.0), (0.0, 1.0)],
}
PRESET_NOTES = {
    "full": "the whole picture",
    "left-half": "left half",
    "right-half": "right half",
    "top-half": "upper half",
    "bottom-half": "lower half",
    "centre": "middle half of width and height",
    "door": "middle 30 % of the width, below the top fifth: a camera aimed at an entrance",
    "top-strip": "top 12 %: a timestamp banner, sky, swaying treetops",
    "bottom-strip": "bottom 12 %: a caption banner",
}


def inherit(camera: CameraConfig, defaults: dict[str, Any]) -> CameraConfig:
    """`camera` with the `[vision]` defaults it does not set itself (tables: key by key)."""
    update: dict[str, Any] = {}
    for name in INHERITED:
        if name not in defaults:
            continue
        given = defaults[name]
        if name not in camera.model_fields_set:
            update[name] = given
        elif name in INHERITED_TABLES:
            own = getattr(camera, name)
            update[name] = given.model_copy(
                update={key: getattr(own, key) for key in own.model_fields_set}
            )
    return camera.model_copy(update=update) if update else camera
