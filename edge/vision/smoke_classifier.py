"""The smoke classifier slot: a small int8 TFLite image classifier (smoke / no smoke) run on
overlapping tiles of a frame (`wardgate detect --model smoke`). Needs only the TFLite runtime
(ai-edge-litert); the tool that trains one is devtools/train_smoke.py (`wardgate train-smoke`).

The shipped default model is trained on SYNTHETIC smoke (edge/models/smoke_synthetic_int8.md says
what that means). Train your own on real footage, e.g. the D-Fire data set:
`wardgate train-smoke DFIRE_DIR --out smoke.tflite`, then `--model path/to/smoke.tflite`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from edge.vision.detector import MODELS_DIR, Detection, ModelError, load_interpreter
from edge.vision.families import family, read_metadata

DEFAULT_MODEL = "smoke_synthetic_int8.tflite"
DEFAULT_THRESHOLD = 0.6


def _resolve(model: str) -> Path:
    if model in ("smoke", "default"):
        return MODELS_DIR / DEFAULT_MODEL
    path = Path(model)
    if path.suffix == ".tflite" or path.exists():
        return path
    candidate = MODELS_DIR / f"{model}.tflite"
    if candidate.exists():
        return candidate
    raise ModelError(f"unknown smoke model {model!r}; use 'smoke' or a path to a .tflite file")


def tiles(width: int, height: int, per_short_side: int = 2) -> list[tuple[int, int, int, int]]:
    """Square tiles (x1, y1, x2, y2) covering the frame, overlapping by half a tile."""
    side = max(1, min(width, height) // per_short_side)
    step = max(1, side // 2)

    def starts(extent: int) -> list[int]:
        out = list(range(0, max(1, extent - side + 1), step))
        if out[-1] + side < extent:  # cover the far edge; move the last tile if nearly there
            if extent - side - out[-1] < step // 2 and len(out) > 1:
                out[-1] = extent - side
            else:
                out.append(extent - side)
        return out

    return [(x, y, x + side, y + side) for y in starts(height) for x in starts(width)]


class SmokeClassifier:
    """Scores tiles of a frame for smoke; `detect` returns the tiles at or above the threshold.

    Same shape as PersonDetector (detect, input_size, name, last_timings), label "smoke".
    """

    label = "smoke"

    def __init__(
        self,
        model: str = "smoke",
        threads: int = 1,
        threshold: float | None = None,
        delegate: str | None = None,
        tiles_per_short_side: int = 2,
    ):
        self.path = _resolve(model)
        self.name = model if model == "smoke" else self.path.stem
        declared = read_metadata(self.path).family
        if declared is not None and family(declared).kind != "classifier":
            raise ModelError(
                f"{self.path}: its metadata declares family {declared!r}, not a classifier"
            )
        self.interpreter = load_interpreter(self.path, threads, delegate)
        self.threshold = self._card_threshold() if threshold is None else float(threshold)
        self.tiles_per_short_side = tiles_per_short_side
        self.last_timings: dict[str, float] = {}
        inp = self.interpreter.get_input_details()
        out = self.interpreter.get_output_details()
        if len(inp) != 1 or len(inp[0]["shape"]) != 4 or len(out) != 1:
            raise ModelError(f"{self.path}: not a smoke classifier (one image in, one score out)")
        self._input, self._output = inp[0], out[0]
        _, height, width, _ = (int(v) for v in inp[0]["shape"])
        self.input_size = (width, height)

    def _card_threshold(self) -> float:
        meta = self.path.with_suffix(".json")
        if meta.exists():
            try:
                return float(json.loads(meta.read_text())["threshold"])
            except (ValueError, KeyError, TypeError):
                pass
        return DEFAULT_THRESHOLD

    def _tensor(self, patch_bgr: np.ndarray) -> np.ndarray:
        import cv2

        resized = cv2.resize(patch_bgr, self.input_size, interpolation=cv2.INTER_AREA)
        dtype = self._input["dtype"]
        if dtype == np.float32:
            return resized[None].astype(np.float32)
        scale, zero = self._input["quantization"]
        info = np.iinfo(dtype)
        q = np.round(resized.astype(np.float32) / scale + zero)
        return np.clip(q, info.min, info.max).astype(dtype)[None]

    def score(self, patch_bgr: np.ndarray) -> float:
        """Smoke probability of one image patch (any size, BGR uint8)."""
        self.interpreter.set_tensor(self._input["index"], self._tensor(patch_bgr))
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self._output["index"]).reshape(-1)
        if self._output["dtype"] != np.float32:
            scale, zero = self._output["quantization"]
            raw = (raw.astype(np.float32) - zero) * scale
        return float(raw[-1])

    def detect(self, frame_bgr: np.ndarray) -> list[Detection]:
        t0 = time.perf_counter()
        height, width = frame_bgr.shape[:2]
        found = []
        for x1, y1, x2, y2 in tiles(width, height, self.tiles_per_short_side):
            s = self.score(frame_bgr[y1:y2, x1:x2])
            if s >= self.threshold:
                found.append(Detection(self.label, s, (float(x1), float(y1), float(x2), float(y2))))
        found.sort(key=lambda d: -d.score)
        self.last_timings = {"classify_ms": (time.perf_counter() - t0) * 1e3}
        return found


# --- training (TensorFlow, dev/installer time only) ------------------------------------------
