"""The `wardgate detect` contract, through a real subprocess (docs/models.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
FRAME = DATA / "vtest_frames" / "0580.jpg"
CLIP = DATA / "vtest_walk_2s.mp4"  # 20 frames, 384x288


def wardgate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def test_json_lines_per_image_and_per_video_frame():
    result = wardgate("detect", "--json", str(FRAME), str(CLIP))
    assert result.returncode == 0, result.stderr
    records = json_lines(result.stdout)
    assert [(r["source"], r["frame"]) for r in records] == [(str(FRAME), 0)] + [
        (str(CLIP), n) for n in range(20)
    ]
    for r in records:
        assert set(r) == {"source", "frame", "detections"}
        for d in r["detections"]:
            assert set(d) == {"label", "score", "box"}
            assert d["label"] == "person"
            assert 0.5 <= d["score"] <= 1.0  # default profile's documented threshold: 0.5
            assert len(d["box"]) == 4
    image_boxes = records[0]["detections"]
    # Frame 580 has six hand-checked people (tests/data/vtest_person_boxes.json).
    assert 5 <= len(image_boxes) <= 7
    assert all(0 <= d["box"][0] < d["box"][2] <= 768 for d in image_boxes)
    # Boxes of the 384x288 clip are in its own pixels; people walk in every frame of it.
    for r in records[1:]:
        assert r["detections"], r
        assert all(d["box"][2] <= 384 and d["box"][3] <= 288 for d in r["detections"])


def test_every_nth_frame_and_fast_model_and_threshold():
    result = wardgate(
        "detect", "--json", "--every", "5", "--model", "fast", "--threshold", "0.3", str(CLIP)
    )
    assert result.returncode == 0, result.stderr
    records = json_lines(result.stdout)
    assert [r["frame"] for r in records] == [0, 5, 10, 15]
    scores = [d["score"] for r in records for d in r["detections"]]
    assert scores and min(scores) >= 0.3


def test_human_readable_output():
    result = wardgate("detect", str(FRAME))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{FRAME} frame 0: person 0.")


def test_smoke_model_through_the_same_contract(tmp_path):
    # A classifier file under any name is recognised by its outputs.
    trained = tmp_path / "my-model.tflite"
    trained.write_bytes((ROOT / "edge" / "models" / "smoke_synthetic_int8.tflite").read_bytes())
    rocket = DATA / "photos" / "rocket.jpg"  # glare at dusk: known false smoke tiles
    for model in ("smoke", str(trained)):
        result = wardgate("detect", "--json", "--model", model, "--threshold", "0.5", str(rocket))
        assert result.returncode == 0, result.stderr
        (record,) = json_lines(result.stdout)
        assert record["frame"] == 0
        assert record["detections"]
        assert all(d["label"] == "smoke" and d["score"] >= 0.5 for d in record["detections"])


@pytest.mark.parametrize(
    "setup,args,message,code",
    [
        (None, ["missing.jpg"], "missing.jpg: no such file", 1),
        ("text", ["notes.jpg"], "notes.jpg: not an image or video", 1),
        ("garbage", ["--model", "{tmp}/broken.tflite", str(FRAME)], "broken.tflite", 2),
        (None, ["--model", "nonesuch", str(FRAME)], "unknown model 'nonesuch'", 2),
        (None, ["--threshold", "7", str(FRAME)], "must be between 0 and 1", 1),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, setup, args, message, code):
    if setup == "text":
        (tmp_path / "notes.jpg").write_text("not a picture\n")
    if setup == "garbage":
        (tmp_path / "broken.tflite").write_bytes(b"\x00garbage" * 64)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    args = [str(tmp_path / a) if a.endswith(".jpg") and "/" not in a else a for a in args]
    result = wardgate("detect", "--json", *args)
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_good_files_still_reported_when_one_is_bad(tmp_path):
    result = wardgate("detect", "--json", str(tmp_path / "gone.png"), str(FRAME))
    assert result.returncode == 1
    assert "gone.png: no such file" in result.stderr
    assert [r["source"] for r in json_lines(result.stdout)] == [str(FRAME)]
