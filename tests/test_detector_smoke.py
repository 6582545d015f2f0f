"""The smoke classifier slot: shipped model at runtime (TFLite only), data set reading, and the
`wardgate train-smoke` tool."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from devtools.train_smoke import TrainingError, find_examples
from edge.vision.detector import ModelError
from edge.vision.smoke_classifier import SmokeClassifier, tiles

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"


def synthetic_smoke_module():
    """tools/models/make_synthetic_smoke.py: the renderer the shipped model was trained on."""
    sys.path.insert(0, str(ROOT / "tools" / "models"))
    try:
        spec = importlib.util.spec_from_file_location(
            "make_synthetic_smoke", ROOT / "tools" / "models" / "make_synthetic_smoke.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.pop(0)


@pytest.fixture(scope="module")
def classifier() -> SmokeClassifier:
    return SmokeClassifier("smoke")


def test_shipped_model_runs_with_tflite_only(classifier):
    assert "tensorflow" not in sys.modules
    assert classifier.input_size == (96, 96)
    assert classifier.threshold == pytest.approx(0.8)  # from smoke_synthetic_int8.json


def test_tiles_cover_the_frame_without_near_duplicates():
    boxes = tiles(640, 360)
    assert len(boxes) == 18
    assert max(b[2] for b in boxes) == 640 and max(b[3] for b in boxes) == 360
    xs = sorted({b[0] for b in boxes})
    assert min(b - a for a, b in zip(xs[:-1], xs[1:], strict=True)) >= 45


def test_no_smoke_on_the_pedestrian_frames(classifier):
    for path in sorted((DATA / "vtest_frames").glob("*.jpg")):
        assert classifier.detect(cv2.imread(str(path))) == [], path.name


def test_rendered_smoke_on_unseen_backgrounds(classifier):
    """Smoke drawn by the training renderer over held-out frames is found; the plain tiles are
    not. This shows the slot works end to end; it says nothing about real smoke."""
    render = synthetic_smoke_module()
    rng = np.random.default_rng(2024)
    frames = [cv2.imread(str(p)) for p in sorted((DATA / "vtest_frames").glob("*.jpg"))]
    hits = plain_hits = 0
    for i in range(40):
        tile = render.random_crop(rng, frames[i % len(frames)])
        hits += classifier.score(render.add_smoke(rng, tile)) >= classifier.threshold
        plain_hits += classifier.score(tile) >= classifier.threshold
    assert hits >= 32, f"{hits}/40 smoke tiles found"
    assert plain_hits <= 1, f"{plain_hits}/40 plain tiles called smoke"


def write_image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((24, 24, 3), value, np.uint8))


def test_class_folder_data_set(tmp_path):
    for i in range(4):
        write_image(tmp_path / "smoke" / f"s{i}.png", 200)
        write_image(tmp_path / "no_smoke" / "deep" / f"n{i}.jpg", 50)
    examples = find_examples(tmp_path)
    assert sorted((e.path.name, e.smoke) for e in examples) == sorted(
        [(f"s{i}.png", True) for i in range(4)] + [(f"n{i}.jpg", False) for i in range(4)]
    )


def test_yolo_data_set_like_d_fire(tmp_path):
    for i in range(5):
        write_image(tmp_path / "images" / f"a{i}.jpg", 100)
        (tmp_path / "labels").mkdir(exist_ok=True)
    (tmp_path / "labels" / "a0.txt").write_text("0 0.5 0.5 0.2 0.3\n")
    (tmp_path / "labels" / "a1.txt").write_text("1 0.5 0.5 0.2 0.3\n0 0.1 0.1 0.1 0.1\n")
    (tmp_path / "labels" / "a2.txt").write_text("1 0.5 0.5 0.2 0.3\n")  # fire only
    (tmp_path / "labels" / "a3.txt").write_text("")
    # a4 has no label file: no object
    with pytest.raises(TrainingError, match="2 smoke and 3 non-smoke"):
        find_examples(tmp_path)
    for i in range(5, 9):
        write_image(tmp_path / "images" / f"a{i}.jpg", 100)
        (tmp_path / "labels" / f"a{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    write_image(tmp_path / "images" / "a9.jpg", 100)  # no label file: no object
    examples = {e.path.name: e.smoke for e in find_examples(tmp_path)}
    assert examples["a0.jpg"] and examples["a1.jpg"] and not examples["a2.jpg"]
    assert sum(examples.values()) == 6 and len(examples) == 10
    (tmp_path / "labels" / "a3.txt").write_text("\nsmoke 0.5 0.5 0.1 0.1\n")
    with pytest.raises(TrainingError, match=r"a3.txt:2: expected 'class x y w h'"):
        find_examples(tmp_path)


def test_unknown_layout_says_what_is_expected(tmp_path):
    (tmp_path / "pictures").mkdir()
    with pytest.raises(TrainingError, match="smoke/ and none/"):
        find_examples(tmp_path)


def test_corrupt_smoke_model_is_a_clear_error(tmp_path):
    bad = tmp_path / "smoke-bad.tflite"
    bad.write_bytes(b"nope" * 50)
    with pytest.raises(ModelError, match="smoke-bad.tflite"):
        SmokeClassifier(str(bad))


def test_train_smoke_command(tmp_path):
    """With TensorFlow (the dev extra) it trains; without, it says how to get it."""
    rng = np.random.default_rng(3)
    render = synthetic_smoke_module()
    background = cv2.imread(str(DATA / "vtest_frames" / "0505.jpg"))
    for name in ("smoke", "none"):
        (tmp_path / "data" / name).mkdir(parents=True)
    for i in range(24):
        tile = render.random_crop(rng, background)
        cv2.imwrite(str(tmp_path / "data" / "smoke" / f"{i}.png"), render.add_smoke(rng, tile))
        cv2.imwrite(str(tmp_path / "data" / "none" / f"{i}.png"), tile)
    out = tmp_path / "model" / "smoke.tflite"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge.cli",
            "train-smoke",
            str(tmp_path / "data"),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--image-size",
            "48",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "Traceback" not in result.stderr
    if importlib.util.find_spec("tensorflow") is None:
        assert result.returncode == 1
        assert "TensorFlow is not installed" in result.stderr
        assert "tools/models/requirements.txt" in result.stderr
        assert not out.exists()
    else:
        assert result.returncode == 0, result.stderr
        assert out.exists() and out.with_suffix(".md").exists()
        model = SmokeClassifier(str(out))
        assert model.input_size == (48, 48)
