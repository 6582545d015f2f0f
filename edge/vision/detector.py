"""Person detection with TFLite models shipped in edge/models/ (see docs/models.md).

Two model families are supported, told apart by their output tensors, so a profile is just a file:
- NanoDet (GFL head): `scores` [1, N, 2] (person, best other COCO class) and `boxes` [1, N, 44]
  distance distributions; decoded and NMS-ed here.
- SSD with TFLite's built-in `TFLite_Detection_PostProcess` op: decoded boxes, classes, scores and
  count come out of the model.
Both take a BGR frame resized to the model input (normalisation is inside the model).
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"

# Profile name -> (model file, default score threshold). Thresholds were chosen on held-out
# frames of the pedestrian clip; docs/models.md gives the measurements behind them.
PROFILES: dict[str, tuple[str, float]] = {
    "default": ("nanodet_g416_person_int8.tflite", 0.5),
    "fast": ("ssdlite_mnv2_person_int8.tflite", 0.4),
}
# Threshold for a model chosen by file name rather than by profile.
FALLBACK_THRESHOLD = 0.5
NMS_IOU = 0.5
POSTPROCESS_OP = "TFLite_Detection_PostProcess"


class ModelError(RuntimeError):
    """A model cannot be loaded or run; the message names the file and what to do."""


class NotADetectorModel(ModelError):
    """A valid TFLite model whose outputs are not a person detector's (e.g. a classifier)."""


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


def available_models() -> dict[str, Path]:
    """Profile names and model file stems that exist in edge/models/, mapped to their files."""
    found: dict[str, Path] = {}
    for name, (filename, _) in PROFILES.items():
        path = MODELS_DIR / filename
        if path.exists():
            found[name] = path
    for path in sorted(MODELS_DIR.glob("*.tflite")):
        found.setdefault(path.stem, path)
    return found


def resolve_model(model: str) -> tuple[Path, float]:
    """A profile name, a model stem in edge/models/ or a path -> (file, default threshold)."""
    if model in PROFILES:
        filename, threshold = PROFILES[model]
        return MODELS_DIR / filename, threshold
    for filename, threshold in PROFILES.values():
        if Path(filename).stem == model:
            return MODELS_DIR / filename, threshold
    candidate = MODELS_DIR / f"{model}.tflite"
    if candidate.exists():
        return candidate, FALLBACK_THRESHOLD
    path = Path(model)
    if path.suffix == ".tflite" or path.exists():
        return path, FALLBACK_THRESHOLD
    names = ", ".join(sorted(available_models())) or "none installed"
    raise ModelError(f"unknown model {model!r}; known: {names}; or give a path to a .tflite file")


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
    ):
        self.path, default_threshold = resolve_model(model)
        self.name = model if model in PROFILES else self.path.stem
        self.threshold = default_threshold if threshold is None else float(threshold)
        self.interpreter = load_interpreter(self.path, threads, delegate)
        self.last_timings: dict[str, float] = {}
        inp = self.interpreter.get_input_details()
        if len(inp) != 1 or len(inp[0]["shape"]) != 4 or inp[0]["shape"][3] != 3:
            raise ModelError(f"{self.path}: expected one NHWC image input, got {inp}")
        self._input = inp[0]
        _, height, width, _ = (int(v) for v in inp[0]["shape"])
        self.input_size = (width, height)
        self._family = self._detect_family()

    def _detect_family(self) -> str:
        ops = getattr(self.interpreter, "_get_ops_details", lambda: [])()
        post = [op for op in ops if op["op_name"] == POSTPROCESS_OP]
        if post:
            boxes, classes, scores, count = (int(i) for i in post[-1]["outputs"])
            self._ssd_outputs = (boxes, classes, scores, count)
            return "ssd"
        outputs = self.interpreter.get_output_details()
        by_depth = {int(o["shape"][-1]): o["index"] for o in outputs if len(o["shape"]) == 3}
        if set(by_depth) == {2, 44}:
            self._nano_scores, self._nano_boxes = by_depth[2], by_depth[44]
            if self.input_size[0] != self.input_size[1]:
                raise ModelError(f"{self.path}: NanoDet models must have a square input")
            self._centers, self._strides = _nanodet_centers(self.input_size[0])
            n = int(next(o["shape"][1] for o in outputs if o["index"] == self._nano_scores))
            if n != len(self._strides):
                raise ModelError(f"{self.path}: {n} anchors, expected {len(self._strides)}")
            self._bins = np.arange(11, dtype=np.float32)
            return "nanodet"
        shapes = [tuple(int(v) for v in o["shape"]) for o in outputs]
        raise NotADetectorModel(
            f"{self.path}: unknown detector outputs {shapes}; expected a NanoDet head "
            f"(scores [1,N,2], boxes [1,N,44]) or {POSTPROCESS_OP}"
        )

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
        if self._family == "ssd":
            found = self._decode_ssd(width, height)
        else:
            found = self._decode_nanodet(width, height)
        t3 = time.perf_counter()
        self.last_timings = {
            "preprocess_ms": (t1 - t0) * 1e3,
            "invoke_ms": (t2 - t1) * 1e3,
            "postprocess_ms": (t3 - t2) * 1e3,
        }
        return found

    def _decode_ssd(self, width: int, height: int) -> list[Detection]:
        boxes_i, _, scores_i, count_i = self._ssd_outputs
        get = self.interpreter.get_tensor
        count = int(get(count_i).reshape(-1)[0])
        boxes = get(boxes_i)[0][:count]
        scores = get(scores_i)[0][:count]
        found = []
        for (ymin, xmin, ymax, xmax), score in zip(boxes, scores, strict=True):
            if score < self.threshold:
                continue
            box = (
                float(np.clip(xmin, 0, 1) * width),
                float(np.clip(ymin, 0, 1) * height),
                float(np.clip(xmax, 0, 1) * width),
                float(np.clip(ymax, 0, 1) * height),
            )
            if box[2] > box[0] and box[3] > box[1]:
                found.append(Detection(self.label, float(score), box))
        found.sort(key=lambda d: -d.score)
        return found

    def _decode_nanodet(self, width: int, height: int) -> list[Detection]:
        import cv2

        scores = self.interpreter.get_tensor(self._nano_scores)[0]
        person = scores[:, 0]
        keep = np.flatnonzero(person >= self.threshold)
        if keep.size == 0:
            return []
        dist = self.interpreter.get_tensor(self._nano_boxes)[0][keep].reshape(-1, 4, 11)
        dist = np.exp(dist - dist.max(axis=2, keepdims=True))
        dist /= dist.sum(axis=2, keepdims=True)
        ltrb = (dist @ self._bins) * self._strides[keep, None]  # left, top, right, bottom
        cx, cy = self._centers[keep, 0], self._centers[keep, 1]
        sx, sy = width / self.input_size[0], height / self.input_size[1]
        x1 = np.clip((cx - ltrb[:, 0]) * sx, 0, width)
        y1 = np.clip((cy - ltrb[:, 1]) * sy, 0, height)
        x2 = np.clip((cx + ltrb[:, 2]) * sx, 0, width)
        y2 = np.clip((cy + ltrb[:, 3]) * sy, 0, height)
        kept_scores = person[keep]
        rects = np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)
        chosen = cv2.dnn.NMSBoxes(
            rects.tolist(), kept_scores.tolist(), float(self.threshold), NMS_IOU
        )
        found = [
            Detection(
                self.label,
                float(kept_scores[i]),
                (float(x1[i]), float(y1[i]), float(x2[i]), float(y2[i])),
            )
            for i in np.asarray(chosen).reshape(-1)
            if x2[i] > x1[i] and y2[i] > y1[i]
        ]
        found.sort(key=lambda d: -d.score)
        return found
