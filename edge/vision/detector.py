"""Person detection with TFLite models shipped in edge/models/ (see docs/models.md).

Which decoder runs a model is declared by the model's metadata (`<stem>.json`, key `family`) or
by the config, never guessed from the model (edge/vision/families.py has the registry):
- `nanodet` (GFL head): `scores` [1, N, 2] (person, best other COCO class) and `boxes` [1, N, 44]
  distance distributions; decoded and NMS-ed here.
- `ssd` with TFLite's built-in `TFLite_Detection_PostProcess` op: decoded boxes, classes, scores
  and count come out of the model.
Both take a BGR frame resized to the model input (normalisation is inside the model).
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.plugins import import_target
from edge.vision.families import (
    FALLBACK_THRESHOLD,
    MODELS_DIR,
    PROFILES,
    FamilyUnknown,
    ModelError,
    ModelInfo,
    NotADetectorModel,
    available_models,
    family,
    resolve,
)

__all__ = [
    "FALLBACK_THRESHOLD",
    "MODELS_DIR",
    "PROFILES",
    "Detection",
    "FamilyUnknown",
    "ModelError",
    "NotADetectorModel",
    "PersonDetector",
    "available_models",
    "load_interpreter",
    "resolve_model",
]

NMS_IOU = 0.5


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the input frame

    def to_json(self) -> dict:
        return {
            "label": self.label,
            "score": round(self.score, 4),
            "box": [round(v, 1) for v in self.box],
        }


def resolve_model(model: str, family: str | None = None) -> tuple[Path, float]:
    """A profile name, a model stem in edge/models/ or a path -> (file, default threshold)."""
    info = resolve(model, family)
    return info.path, FALLBACK_THRESHOLD if info.threshold is None else info.threshold


def _runtime():
    try:
        from ai_edge_litert import interpreter as tfl
    except ImportError:
        try:
            from tflite_runtime import interpreter as tfl  # needs numpy < 2
        except ImportError as exc:
            raise ModelError(
                "no TFLite runtime: install ai-edge-litert (pip install ai-edge-litert), "
                "or tflite-runtime with numpy < 2"
            ) from exc
    return tfl


def load_interpreter(path: str | Path, threads: int = 1, delegate: str | None = None):
    """A ready (allocated) TFLite interpreter for `path`; ModelError says what went wrong."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"{path}: model file not found; reinstall wardgate (models ship in edge/models/) "
            "or pass an existing .tflite file"
        )
    tfl = _runtime()
    delegates = None
    if delegate:
        try:
            # Probe the library first: a failed load_delegate leaves a half-built object behind.
            ctypes.CDLL(delegate)
            delegates = [tfl.load_delegate(delegate)]
        except (ValueError, OSError, RuntimeError) as exc:
            raise ModelError(
                f"{delegate}: cannot load TFLite delegate ({exc}); install its library "
                "(e.g. libedgetpu1-std for an EdgeTPU) or remove `delegate` from the config"
            ) from exc
    try:
        interpreter = tfl.Interpreter(
            model_path=str(path), num_threads=max(1, int(threads)), experimental_delegates=delegates
        )
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"{path}: not a usable TFLite model ({first_line}); the file is corrupt or not a "
            "model: reinstall wardgate or regenerate it with tools/models/"
        ) from exc
    return interpreter


def _nanodet_centers(size: int, strides=(8, 16, 32)) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres (x, y) and strides of NanoDet's anchors, in model-input pixels."""
    centers, stride_of = [], []
    for stride in strides:
        cells = int(np.ceil(size / stride))
        ys, xs = np.mgrid[0:cells, 0:cells]
        xy = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
        centers.append((xy + 0.5) * stride)
        stride_of.append(np.full(cells * cells, stride, np.float32))
    return np.concatenate(centers), np.concatenate(stride_of)


class PersonDetector:
    """Runs one person model on BGR frames of any size; boxes come back in frame pixels.

    `last_timings` holds the milliseconds of the last `detect` call per stage (preprocess,
    invoke, postprocess), for benchmarks.
    """

    label = "person"

    def __init__(
        self,
        model: str = "default",
        threads: int = 1,
        threshold: float | None = None,
        delegate: str | None = None,
        family: str | None = None,
    ):
        self.info: ModelInfo = resolve(model, family)
        self.path = self.info.path
        if self.info.family is not None and _family(self.info.family).kind != "detector":
            raise NotADetectorModel(
                f"{self.path}: family {self.info.family!r} is not a person detector"
            )
        self.name = model if model in PROFILES else self.path.stem
        default_threshold = (
            FALLBACK_THRESHOLD if self.info.threshold is None else self.info.threshold
        )
        self.threshold = default_threshold if threshold is None else float(threshold)
        self.interpreter = load_interpreter(self.path, threads, delegate)
        self.last_timings: dict[str, float] = {}
        inp = self.interpreter.get_input_details()
        if len(inp) != 1 or len(inp[0]["shape"]) != 4 or inp[0]["shape"][3] != 3:
            raise ModelError(f"{self.path}: expected one NHWC image input, got {inp}")
        self._input = inp[0]
        _, height, width, _ = (int(v) for v in inp[0]["shape"])
        self.input_size = (width, height)
        # loaded first, so a corrupt file is reported as corrupt; then the declared family
        self._family = self.info.require_family(
            "give it in the config (`model_family`) or with --family:"
        )
        self._head = import_target(_family(self._family).impl)(self)

    def _prepare(self, frame_bgr: np.ndarray) -> np.ndarray:
        import cv2

        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
            raise ValueError(
                f"expected a uint8 HxWx3 BGR frame, got {frame_bgr.dtype} {frame_bgr.shape}"
            )
        resized = cv2.resize(frame_bgr, self.input_size, interpolation=cv2.INTER_LINEAR)
        dtype = self._input["dtype"]
        if dtype == np.float32:
            return resized[None].astype(np.float32)
        scale, zero = self._input["quantization"]
        if dtype == np.uint8 and abs(scale - 1.0) < 1e-6 and zero == 0:
            return resized[None]
        info = np.iinfo(dtype)
        quantised = np.round(resized.astype(np.float32) / scale + zero)
        return np.clip(quantised, info.min, info.max).astype(dtype)[None]

    def detect(self, frame_bgr: np.ndarray) -> list[Detection]:
        t0 = time.perf_counter()
        tensor = self._prepare(frame_bgr)
        t1 = time.perf_counter()
        self.interpreter.set_tensor(self._input["index"], tensor)
        self.interpreter.invoke()
        t2 = time.perf_counter()
        height, width = frame_bgr.shape[:2]
        found = self._head.decode(width, height)
        t3 = time.perf_counter()
        self.last_timings = {
            "preprocess_ms": (t1 - t0) * 1e3,
            "invoke_ms": (t2 - t1) * 1e3,
            "postprocess_ms": (t3 - t2) * 1e3,
        }
        return found


def _family(name: str):
    return family(name)


def _shapes(interpreter) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in o["shape"]) for o in interpreter.get_output_details()]


class SSDHead:
    """Family `ssd`: the model's TFLite_Detection_PostProcess op gives boxes, classes, scores
    and count. The metadata's `outputs` names the four tensors; without it they are taken in
    the op's tensor order (boxes, classes, scores, count), which the TFLite converter keeps."""

    ROLES = ("boxes", "classes", "scores", "count")

    def __init__(self, detector: PersonDetector) -> None:
        self.detector = detector
        self.interpreter = detector.interpreter
        outputs = self.interpreter.get_output_details()
        named = detector.info.outputs
        by_name = {o["name"]: int(o["index"]) for o in outputs}
        if all(r in named for r in self.ROLES):
            missing = [named[r] for r in self.ROLES if named[r] not in by_name]
            if missing:
                raise ModelError(
                    f"{detector.path}: its metadata names outputs {missing} that the model "
                    f"does not have (it has {sorted(by_name)})"
                )
            self.outputs = tuple(by_name[named[r]] for r in self.ROLES)
        else:
            self.outputs = tuple(sorted(by_name.values()))
        shapes = {int(o["index"]): tuple(int(v) for v in o["shape"]) for o in outputs}
        if len(self.outputs) != 4 or shapes[self.outputs[0]][-1:] != (4,):
            raise NotADetectorModel(
                f"{detector.path}: declared family 'ssd', but its outputs "
                f"{_shapes(self.interpreter)} are not TFLite_Detection_PostProcess's "
                "(boxes [1,N,4], classes, scores, count)"
            )

    def decode(self, width: int, height: int) -> list[Detection]:
        boxes_i, _, scores_i, count_i = self.outputs
        threshold, label = self.detector.threshold, self.detector.label
        get = self.interpreter.get_tensor
        count = int(get(count_i).reshape(-1)[0])
        boxes = get(boxes_i)[0][:count]
        scores = get(scores_i)[0][:count]
        found = []
        for (ymin, xmin, ymax, xmax), score in zip(boxes, scores, strict=True):
            if score < threshold:
                continue
            box = (
                float(np.clip(xmin, 0, 1) * width),
                float(np.clip(ymin, 0, 1) * height),
                float(np.clip(xmax, 0, 1) * width),
                float(np.clip(ymax, 0, 1) * height),
            )
            if box[2] > box[0] and box[3] > box[1]:
                found.append(Detection(label, float(score), box))
        found.sort(key=lambda d: -d.score)
        return found


class NanoDetHead:
    """Family `nanodet`: GFL head, `scores` [1,N,2] and box distributions [1,N,44]."""

    def __init__(self, detector: PersonDetector) -> None:
        self.detector = detector
        self.interpreter = detector.interpreter
        path = detector.path
        outputs = self.interpreter.get_output_details()
        by_depth = {int(o["shape"][-1]): o["index"] for o in outputs if len(o["shape"]) == 3}
        if set(by_depth) != {2, 44}:
            raise NotADetectorModel(
                f"{path}: declared family 'nanodet', but its outputs "
                f"{_shapes(self.interpreter)} are not a NanoDet head's "
                "(scores [1,N,2], boxes [1,N,44])"
            )
        self.scores_i, self.boxes_i = by_depth[2], by_depth[44]
        size = detector.input_size
        if size[0] != size[1]:
            raise ModelError(f"{path}: NanoDet models must have a square input")
        self.centers, self.strides = _nanodet_centers(size[0])
        n = int(next(o["shape"][1] for o in outputs if o["index"] == self.scores_i))
        if n != len(self.strides):
            raise ModelError(f"{path}: {n} anchors, expected {len(self.strides)}")
        self.bins = np.arange(11, dtype=np.float32)

    def decode(self, width: int, height: int) -> list[Detection]:
        import cv2

        threshold, label = self.detector.threshold, self.detector.label
        input_w, input_h = self.detector.input_size
        scores = self.interpreter.get_tensor(self.scores_i)[0]
        person = scores[:, 0]
        keep = np.flatnonzero(person >= threshold)
        if keep.size == 0:
            return []
        dist = self.interpreter.get_tensor(self.boxes_i)[0][keep].reshape(-1, 4, 11)
        dist = np.exp(dist - dist.max(axis=2, keepdims=True))
        dist /= dist.sum(axis=2, keepdims=True)
        ltrb = (dist @ self.bins) * self.strides[keep, None]  # left, top, right, bottom
        cx, cy = self.centers[keep, 0], self.centers[keep, 1]
        sx, sy = width / input_w, height / input_h
        x1 = np.clip((cx - ltrb[:, 0]) * sx, 0, width)
        y1 = np.clip((cy - ltrb[:, 1]) * sy, 0, height)
        x2 = np.clip((cx + ltrb[:, 2]) * sx, 0, width)
        y2 = np.clip((cy + ltrb[:, 3]) * sy, 0, height)
        kept_scores = person[keep]
        rects = np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)
        chosen = cv2.dnn.NMSBoxes(rects.tolist(), kept_scores.tolist(), float(threshold), NMS_IOU)
        found = [
            Detection(
                label,
                float(kept_scores[i]),
                (float(x1[i]), float(y1[i]), float(x2[i]), float(y2[i])),
            )
            for i in np.asarray(chosen).reshape(-1)
            if x2[i] > x1[i] and y2[i] > y1[i]
        ]
        found.sort(key=lambda d: -d.score)
        return found
