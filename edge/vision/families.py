"""Model families and model metadata: which code runs a model is declared, never guessed.

Every model in edge/models/ has a metadata file next to it, `<stem>.json` (docs/models.md):

    {"family": "nanodet", "labels": ["person"], "input": [416, 416], "threshold": 0.5,
     "card": "nanodet_g416_person_int8.md", "license": "LICENSE.nanodet_g416_person.txt", ...}

`family` names an entry of the family registry: the built-ins below, plus the entry points of
the group `wardgate.detectors` (name = family, value = a `Family` object), as Frigate registers
its detector types. A model without metadata (your own .tflite given by path) needs its family
from the config (`[vision] model_family`, or per camera) or `wardgate detect --family`.

Light on purpose (config validation imports it): no numpy, OpenCV or TFLite runtime here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("wardgate.vision")

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
GROUP = "wardgate.detectors"

#: person detector profile -> model stem in edge/models (thresholds are in each model's metadata)
PROFILES: dict[str, str] = {
    "default": "nanodet_g416_person_int8",
    "fast": "ssdlite_mnv2_person_int8",
}
#: classifier profiles (`wardgate detect --model smoke`)
CLASSIFIER_PROFILES: dict[str, str] = {"smoke": "smoke_synthetic_int8"}
#: threshold of a model whose metadata gives none (or that has no metadata)
FALLBACK_THRESHOLD = 0.5


class ModelError(RuntimeError):
    """A model cannot be loaded or run; the message names the file and what to do."""


class NotADetectorModel(ModelError):
    """A model that is not a person detector (e.g. a classifier)."""


class FamilyUnknown(ModelError):
    """A model whose family is declared nowhere (no metadata, no family in config)."""


@dataclasses.dataclass(frozen=True)
class Family:
    """A registered model family. `impl` ("module:attribute") is imported only to run a model:
    for a detector, a head class `Head(detector, info)` with `decode(width, height)`; for a
    classifier, the classifier class itself."""

    kind: Literal["detector", "classifier"]
    impl: str
    summary: str = ""


NANODET = Family(
    "detector",
    "edge.vision.detector:NanoDetHead",
    "NanoDet GFL head: scores [1,N,2] and box distributions [1,N,44], decoded and NMS-ed here",
)
SSD = Family(
    "detector",
    "edge.vision.detector:SSDHead",
    "SSD with TFLite_Detection_PostProcess: boxes, classes, scores, count out of the model",
)
SMOKE_CLASSIFIER = Family(
    "classifier",
    "edge.vision.smoke_classifier:SmokeClassifier",
    "image classifier (one score out) run on overlapping tiles of a frame",
)
BUILTIN: dict[str, Family] = {
    "nanodet": NANODET,
    "ssd": SSD,
    "smoke-classifier": SMOKE_CLASSIFIER,
}


@lru_cache(maxsize=1)
def families() -> dict[str, Family]:
    """Every registered family by name: built-ins, then `wardgate.detectors` entry points."""
    found = dict(BUILTIN)
    try:
        eps = list(metadata.entry_points(group=GROUP))
    except Exception as exc:
        log.warning("cannot read the %s entry points: %s", GROUP, exc)
        eps = []
    for ep in eps:
        package = ep.dist.name if ep.dist is not None else "(unknown package)"
        try:
            family = ep.load()
        except Exception as exc:
            log.warning(
                "model family %r (package %r) cannot be imported: %s; reinstall %r",
                ep.name,
                package,
                exc,
                package,
            )
            continue
        if not isinstance(family, Family):
            log.warning("model family %r (package %r) is not a Family object", ep.name, package)
            continue
        if ep.name in found and found[ep.name] != family:
            log.warning("model family %r of package %r ignored: taken", ep.name, package)
            continue
        found[ep.name] = family
    return found


def family(name: str) -> Family:
    known = families()
    if name not in known:
        raise ModelError(f"unknown model family {name!r}; known: {', '.join(sorted(known))}")
    return known[name]


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """A model file and what its metadata (or the config) declares about it."""

    path: Path
    family: str | None
    threshold: float | None = None
    labels: tuple[str, ...] = ()
    input: tuple[int, int] | None = None
    outputs: dict[str, str] = dataclasses.field(default_factory=dict)
    metadata: Path | None = None

    def require_family(self, how: str) -> str:
        if self.family is None:
            raise FamilyUnknown(
                f"{self.path}: no metadata ({self.path.with_suffix('.json').name} next to it) "
                f"declares the model's family; {how} one of: {', '.join(sorted(families()))} "
                "(docs/models.md)"
            )
        return self.family


def metadata_path(model_file: Path) -> Path:
    return model_file.with_suffix(".json")


def read_metadata(model_file: Path, family_given: str | None = None) -> ModelInfo:
    """The model's declared metadata; `family_given` (config, --family) covers a model without.

    A metadata file that declares a family other than `family_given` is an error: one of the
    two is wrong, and running a model with the wrong decoder gives nonsense boxes."""
    meta_file = metadata_path(model_file)
    try:
        raw = meta_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ModelInfo(model_file, family_given)
    except OSError as exc:
        raise ModelError(f"{meta_file}: cannot be read: {exc.strerror or exc}") from None
    try:
        data: Any = json.loads(raw)
    except ValueError as exc:
        raise ModelError(f"{meta_file}: not valid JSON ({exc}); fix or remove it") from None
    if not isinstance(data, dict):
        raise ModelError(f"{meta_file}: must be a JSON object")
    declared = data.get("family", data.get("kind"))  # "kind": train-smoke before families
    if declared is not None and not isinstance(declared, str):
        raise ModelError(f"{meta_file}: `family` must be a string")
    if declared and family_given and declared != family_given:
        raise ModelError(
            f"{model_file}: its metadata declares family {declared!r}, the config says "
            f"{family_given!r}; remove model_family (or fix {meta_file.name})"
        )
    threshold = data.get("threshold")
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, int | float)
    ):
        raise ModelError(f"{meta_file}: `threshold` must be a number")
    size = data.get("input")
    input_size = (int(size[1]), int(size[0])) if isinstance(size, list) and len(size) >= 2 else None
    outputs = data.get("outputs") if isinstance(data.get("outputs"), dict) else {}
    return ModelInfo(
        path=model_file,
        family=declared or family_given,
        threshold=None if threshold is None else float(threshold),
        labels=tuple(str(x) for x in data.get("labels", ())),
        input=input_size,
        outputs={str(k): str(v) for k, v in outputs.items()},
        metadata=meta_file,
    )


def available_models() -> dict[str, Path]:
    """Profile names and model file stems that exist in edge/models/, mapped to their files."""
    found: dict[str, Path] = {}
    for name, stem in PROFILES.items():
        path = MODELS_DIR / f"{stem}.tflite"
        if path.exists():
            found[name] = path
    for path in sorted(MODELS_DIR.glob("*.tflite")):
        found.setdefault(path.stem, path)
    return found


def model_file(model: str) -> Path:
    """A profile name, a model stem in edge/models/ or a path -> the model file."""
    stem = PROFILES.get(model) or CLASSIFIER_PROFILES.get(model)
    if stem is not None:
        return MODELS_DIR / f"{stem}.tflite"
    candidate = MODELS_DIR / f"{model}.tflite"
    if candidate.exists():
        return candidate
    path = Path(model)
    if path.suffix == ".tflite" or path.exists():
        return path
    names = ", ".join(sorted(available_models())) or "none installed"
    raise ModelError(f"unknown model {model!r}; known: {names}; or give a path to a .tflite file")


def resolve(model: str, family_given: str | None = None) -> ModelInfo:
    """A profile, stem or path with what its metadata declares (the family may still be None:
    callers load the file first, so a corrupt file is reported as corrupt)."""
    return read_metadata(model_file(model), family_given)


def config_problem(model: str, family_given: str | None) -> str | None:
    """For config validation: why `model` cannot run as configured, or None. Only what is
    certain now: an existing model file whose family is declared nowhere, or declared twice
    differently, or an unknown family. A missing file is reported when the camera starts."""
    if family_given is not None and family_given not in families():
        return f"unknown model family {family_given!r}; known: {', '.join(sorted(families()))}"
    try:
        info = resolve(model, family_given)
    except ModelError as exc:
        return None if str(exc).startswith("unknown model") else str(exc)
    if info.family is None and info.path.is_file():
        return (
            f"no metadata ({info.path.with_suffix('.json').name}) declares its family; set "
            f"`model_family` (in [vision] or on the camera) to one of: "
            f"{', '.join(sorted(families()))}"
        )
    if info.family is not None and info.family not in families():
        return f"{info.path}: unknown model family {info.family!r} in its metadata"
    return None
