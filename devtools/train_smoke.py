"""`wardgate train-smoke`: train the smoke classifier slot's model (edge/vision/smoke_classifier.py)
from a folder of labelled images. A development step, never run on a gateway: it needs
TensorFlow, imported only inside `train()` (pip install -r tools/models/requirements.txt).

The shipped default model is trained on SYNTHETIC smoke (edge/models/smoke_synthetic_int8.md says
what that means). Train your own on real footage, e.g. the D-Fire data set:
`wardgate train-smoke DFIRE_DIR --out smoke.tflite`, then `--model path/to/smoke.tflite`.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.vision.smoke_classifier import SmokeClassifier

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
SMOKE_DIRS = ("smoke",)
NONE_DIRS = ("none", "no_smoke", "nosmoke", "negative", "background")


class TrainingError(RuntimeError):
    """The data set or environment cannot produce a model; the message says what to fix."""


@dataclass
class Example:
    path: Path
    smoke: bool


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def find_examples(dataset: Path, smoke_class: int = 0) -> list[Example]:
    """Labelled images of a class-folder or YOLO-style (images/ + labels/) data set."""
    if not dataset.is_dir():
        raise TrainingError(f"{dataset}: not a directory")
    subdirs = {p.name.lower(): p for p in dataset.iterdir() if p.is_dir()}
    smoke_dir = next((subdirs[n] for n in SMOKE_DIRS if n in subdirs), None)
    none_dir = next((subdirs[n] for n in NONE_DIRS if n in subdirs), None)
    if smoke_dir and none_dir:
        examples = [Example(p, True) for p in _images_in(smoke_dir)]
        examples += [Example(p, False) for p in _images_in(none_dir)]
    elif "images" in subdirs and "labels" in subdirs:
        images, labels = subdirs["images"], subdirs["labels"]
        examples = []
        for image in _images_in(images):
            label = labels / image.relative_to(images).with_suffix(".txt")
            classes = set()
            if label.exists():
                for number, line in enumerate(label.read_text().splitlines(), 1):
                    fields = line.split()
                    if not fields:
                        continue
                    try:
                        classes.add(int(float(fields[0])))
                    except ValueError:
                        raise TrainingError(
                            f"{label}:{number}: expected 'class x y w h', got {line!r}"
                        ) from None
            examples.append(Example(image, smoke_class in classes))
    else:
        raise TrainingError(
            f"{dataset}: expected class folders smoke/ and none/ (or no_smoke/), or images/ "
            "and labels/ (YOLO format, e.g. D-Fire)"
        )
    counts = sum(e.smoke for e in examples), sum(not e.smoke for e in examples)
    if min(counts) < 4:
        raise TrainingError(
            f"{dataset}: {counts[0]} smoke and {counts[1]} non-smoke images; need at least 4 "
            "of each (hundreds for a useful model)"
        )
    return examples


def _load(example: Example, size: int) -> np.ndarray:
    import cv2

    image = cv2.imread(str(example.path), cv2.IMREAD_COLOR)
    if image is None:
        raise TrainingError(f"{example.path}: not an image OpenCV can read")
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def _build_model(tf, size: int):
    keras = tf.keras
    inputs = keras.Input((size, size, 3), name="image_bgr")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    for filters in (32, 64, 96, 128):
        x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU(6.0)(x)
        x = keras.layers.Conv2D(filters, 1, use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="smoke")(x)
    return keras.Model(inputs, outputs)


def _augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = batch.astype(np.float32)
    flip = rng.random(len(out)) < 0.5
    out[flip] = out[flip, :, ::-1]
    gain = rng.uniform(0.75, 1.25, (len(out), 1, 1, 1))
    bias = rng.uniform(-20, 20, (len(out), 1, 1, 1))
    return np.clip(out * gain + bias, 0, 255)


def _metrics(scores: np.ndarray, truth: np.ndarray, threshold: float) -> dict:
    predicted = scores >= threshold
    tp = int(np.sum(predicted & truth))
    fp = int(np.sum(predicted & ~truth))
    fn = int(np.sum(~predicted & truth))
    tn = int(np.sum(~predicted & ~truth))
    return {
        "threshold": threshold,
        "recall": round(tp / max(1, tp + fn), 3),
        "precision": round(tp / max(1, tp + fp), 3),
        "false_positive_rate": round(fp / max(1, fp + tn), 3),
        "counts": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
    }


def train(
    dataset: Path,
    out: Path,
    *,
    epochs: int = 12,
    image_size: int = 96,
    val_split: float = 0.2,
    smoke_class: int = 0,
    seed: int = 1,
    note: str = "",
) -> Path:
    """Train, quantise to int8 and write `out` plus its card (`.md`) and metadata (`.json`)."""
    if out.suffix != ".tflite":
        raise TrainingError(f"{out}: the output file must end in .tflite")
    if not 0.05 <= val_split <= 0.5:
        raise TrainingError(f"--val-split {val_split}: must be between 0.05 and 0.5")
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise TrainingError(
            "TensorFlow is not installed in this Python; training is a dev-time step: "
            "pip install -r tools/models/requirements.txt (tensorflow-cpu 2.21)"
        ) from exc

    examples = find_examples(dataset, smoke_class)
    random.Random(seed).shuffle(examples)
    n_val = max(2, int(len(examples) * val_split))
    val, fit = examples[:n_val], examples[n_val:]
    x_fit = np.stack([_load(e, image_size) for e in fit])
    y_fit = np.array([e.smoke for e in fit], np.float32)
    x_val = np.stack([_load(e, image_size) for e in val])
    y_val = np.array([e.smoke for e in val], bool)

    tf.keras.utils.set_random_seed(seed)
    model = _build_model(tf, image_size)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(2e-3),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    rng = np.random.default_rng(seed)
    batch = 32
    steps = max(1, len(x_fit) // batch)

    positives = float(y_fit.mean())
    # Balance the classes: each weighs half of the loss whatever their counts.
    sample_weight = np.where(y_fit > 0.5, 0.5 / positives, 0.5 / (1 - positives)).astype(np.float32)

    def batches():
        while True:
            order = rng.permutation(len(x_fit))
            for i in range(steps):
                idx = order[i * batch : (i + 1) * batch]
                yield _augment(x_fit[idx], rng), y_fit[idx], sample_weight[idx]

    history = model.fit(
        batches(),
        steps_per_epoch=steps,
        epochs=epochs,
        validation_data=(x_val.astype(np.float32), y_val.astype(np.float32)),
        verbose=2,
    )

    def representative():
        for image in x_fit[: min(200, len(x_fit))]:
            yield [image[None].astype(np.float32)]

    # Through a SavedModel: converting a Keras 3 model's concrete function leaves its variables
    # unfrozen (READ_VARIABLE fails at calibration).
    saved = Path(tempfile.mkdtemp(prefix="wardgate-smoke-"))
    model.export(str(saved), format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.float32
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        out.write_bytes(converter.convert())
    finally:
        shutil.rmtree(saved, ignore_errors=True)

    # Validation numbers come from the int8 model, as it will run on the gateway.
    classifier = SmokeClassifier(str(out), threshold=0.5)
    scores = np.array([classifier.score(image) for image in x_val])
    candidates = [round(t, 2) for t in np.arange(0.3, 0.96, 0.05)]
    table = [_metrics(scores, y_val, t) for t in candidates]
    # Default threshold: the lowest from 0.5 up whose false-positive rate on validation is at
    # most 1 % (a frame has about twenty tiles, so a per-tile rate multiplies).
    chosen = next(
        (m for m in table if m["threshold"] >= 0.5 and m["false_positive_rate"] <= 0.01),
        table[-1],
    )
    meta = {
        "family": "smoke-classifier",
        "labels": ["smoke"],
        "input": [image_size, image_size, 3],
        "input_format": "BGR uint8 0..255 (normalisation inside the model)",
        "threshold": chosen["threshold"],
        "dataset": str(dataset),
        "examples": {
            "fit": len(fit),
            "validation": len(val),
            "smoke": int(sum(e.smoke for e in examples)),
            "none": int(sum(not e.smoke for e in examples)),
        },
        "epochs": epochs,
        "seed": seed,
        "final_train_accuracy": round(float(history.history["accuracy"][-1]), 3),
        "validation_int8": table,
        "tools": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "numpy": np.__version__,
        },
        "trained": _dt.date.today().isoformat(),
        "note": note,
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    card = out.with_suffix(".md")
    card.write_text(_card(out, meta, chosen))
    return card


def _card(out: Path, meta: dict, chosen: dict) -> str:
    rows = "\n".join(
        f"| {m['threshold']:.2f} | {m['recall']:.3f} | {m['precision']:.3f} | "
        f"{m['false_positive_rate']:.3f} |"
        for m in meta["validation_int8"]
    )
    note = f"\n## Note\n{meta['note']}\n" if meta["note"] else ""
    return f"""# Smoke classifier `{out.name}`

Made by `wardgate train-smoke` on {meta["trained"]}.

- Task: does a square image tile show smoke? One sigmoid output (1 = smoke).
- Input: {meta["input"][0]}x{meta["input"][1]} {meta["input_format"]}; the runtime
  (`edge/vision/smoke_classifier.py`) scores overlapping square tiles of each frame.
- Quantisation: full int8 (uint8 input, float32 output), calibrated on training images.
- Data: `{meta["dataset"]}`: {meta["examples"]["smoke"]} smoke and {meta["examples"]["none"]}
  other images; {meta["examples"]["validation"]} held out for validation.
- Training: {meta["epochs"]} epochs, seed {meta["seed"]}; TensorFlow {meta["tools"]["tensorflow"]},
  Python {meta["tools"]["python"]}.
- Default threshold: **{chosen["threshold"]:.2f}** (lowest from 0.50 with <= 1 % false positives
  on validation); stored in `{out.with_suffix(".json").name}`.

## Validation (int8 model, held-out images)

| threshold | recall | precision | false-positive rate |
| --- | --- | --- | --- |
{rows}

Validation images come from the same data set as the training images, so these numbers say how
well the model learned that data, not how it will do on your cameras.
{note}"""
