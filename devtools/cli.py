"""`wardgate demo` (the whole system on one machine), `wardgate node simulate` (a sensor node on a
pty) and `wardgate train-smoke` (TensorFlow).

Cheap to import: the demo, the gateway and TensorFlow load inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.cli import EXIT_FAILURE, EXIT_USAGE


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="live demo on built-in defaults: private broker, gateway, live view of what arrives",
    )
    p.add_argument("--duration", type=float, default=0, help="stop after N seconds (0: Ctrl-C)")
    p.add_argument("--workdir", type=Path, default=None, help="keep demo files here")
    p.add_argument("--plain", action="store_true", help="print lines instead of a live table")
    p.add_argument(
        "--without",
        action="append",
        choices=("camera", "node"),
        default=[],
        help="leave a part out on purpose (otherwise a missing part ends the demo with exit 1)",
    )
    p.add_argument(
        "--check", action="store_true", help="only check that every promised part is here"
    )
    p.add_argument(
        "--console-port",
        type=int,
        default=8080,
        help="the fire brigade console's port on 127.0.0.1 (0: any free port)",
    )
    p.set_defaults(func=cmd_demo)

    n = sub.add_parser("node", help="a simulated sensor node for the bench (MicroPython on a pty)")
    nsub = n.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    ns = nsub.add_parser(
        "simulate",
        help="run the node firmware on a pty and drive its sensors with typed commands",
        description=(
            "Run the real node firmware under the MicroPython unix port with its UART on a pty, "
            "for a gateway (serial port path = the link) or `wardgate serial monitor`. Commands, "
            "given as arguments and then typed on standard input: smoke [NAME] PERCENT, heat "
            "[NAME] CELSIUS, press|release [NAME], open|short NAME, restore [NAME], wait SECONDS, "
            "status, help, quit. End of input stops the node (docs/sensors.md)."
        ),
    )
    ns.add_argument("commands", nargs="*", metavar="COMMAND", help='e.g. "smoke 70" "wait 30"')
    ns.add_argument(
        "--config",
        type=Path,
        help="node.json (default: node 7 with smoke, heat, flame and an EOL call point `mcp`)",
    )
    ns.add_argument("--node", type=int, help="the node id (overrides the config's)")
    ns.add_argument(
        "--link", type=Path, help="a stable symlink to the pty (default: <tmp>/wardgate-nodeNN)"
    )
    ns.add_argument(
        "--bundle",
        type=Path,
        help="run a built bundle (wardgate firmware build) instead of the source tree",
    )
    ns.set_defaults(func=cmd_node_simulate)

    t = sub.add_parser(
        "train-smoke",
        help="train an int8 TFLite smoke classifier from a folder of labelled images",
        description=(
            "Train the smoke classifier slot's model (needs TensorFlow: pip install -r "
            "tools/models/requirements.txt). DATASET_DIR holds either class folders smoke/ and "
            "none/ (or no_smoke/), or a YOLO-style detection set (images/ + labels/, e.g. "
            "D-Fire): an image with a box of --smoke-class is smoke, one without is not. Writes "
            "the model and a model card (same name, .md) next to it."
        ),
    )
    t.add_argument("dataset", type=Path, metavar="DATASET_DIR")
    t.add_argument("--out", type=Path, required=True, help="output .tflite file")
    t.add_argument("--epochs", type=int, default=12)
    t.add_argument("--image-size", type=int, default=96, help="square input size in pixels")
    t.add_argument("--val-split", type=float, default=0.2, help="share held out for validation")
    t.add_argument("--smoke-class", type=int, default=0, help="smoke class id in YOLO labels")
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--note", default="", help="text added to the model card (data, caveats)")
    t.set_defaults(func=train_smoke_command)


def cmd_demo(args: argparse.Namespace) -> int:
    from devtools.demo import run_demo

    try:
        return run_demo(
            duration=args.duration,
            workdir=args.workdir,
            plain=args.plain,
            without=frozenset(args.without),
            check_only=args.check,
            console_port=args.console_port,
        )
    except RuntimeError as exc:  # a part that passed the preflight and still did not start
        print(f"wardgate demo: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def cmd_node_simulate(args: argparse.Namespace) -> int:
    import copy

    from devtools.node_sim import DEFAULT_NODE, default_link, load_node_config, simulate
    from devtools.unix_node import micropython_binary
    from firmware.build import BuildError

    try:
        micropython_binary()
        cfg = load_node_config(args.config) if args.config else copy.deepcopy(DEFAULT_NODE)
    except (FileNotFoundError, BuildError) as exc:
        print(f"wardgate node simulate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.node is not None:
        cfg["node"] = args.node
    link = args.link or default_link(int(cfg.get("node", 1)))
    return simulate(cfg, args.commands, sys.stdin, link, args.bundle)


def train_smoke_command(args) -> int:
    from devtools.train_smoke import TrainingError, train

    try:
        card = train(
            args.dataset,
            args.out,
            epochs=args.epochs,
            image_size=args.image_size,
            val_split=args.val_split,
            smoke_class=args.smoke_class,
            seed=args.seed,
            note=args.note,
        )
    except TrainingError as exc:
        print(f"wardgate train-smoke: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"wrote {args.out} and {card}")
    return 0
