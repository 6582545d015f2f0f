"""The cameras page's server side: preview JPEGs from the pipeline's own frames, and zones/masks
saved to a conf.d drop-in.

The preview never opens the camera: it encodes the newest frame the camera pipeline already
decoded (`CameraPipeline.latest_frame`), only when the page asks, at most `PREVIEW_FPS` times a
second per camera (a faster poll gets the cached JPEG), with the last detections drawn in.

Zones and masks go to `conf.d/50-localweb-zones.toml` (`ZONES_FILE`): a re-flash never writes
conf.d (docs/config.md, "Layers"), so what the technician drew stays. The file is written only
after the merged result (config.toml plus every drop-in with the new file in place) passed
`edge.config.load`; then the runtime's reload applies it.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2

from edge import config as config_mod
from edge.confbase import ConfigError
from edge.layering import CURRENT_VERSION

if TYPE_CHECKING:
    from edge.runtime import Gateway

ZONES_FILE = "50-localweb-zones.toml"
PREVIEW_FPS = 2.0
PREVIEW_WIDTH = 640
PREVIEW_QUALITY = 70
#: detections older than this are not drawn (the detector runs only on motion)
BOX_MAX_AGE_S = 2.0
#: decimals kept of a point's fractions (1/10000 of the width: finer than any camera's pixel)
DECIMALS = 4
MAX_SHAPES = 32
#: points of all shapes of a camera: keeps the upstream report well under an event's 64 KiB
MAX_POINTS = 1000


class SaveError(ValueError):
    """What is wrong with the zones the page sent; `problems` are shown on the page."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class Cameras:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self._cache: dict[str, tuple[float, int, bytes]] = {}  # name -> (at, frame seq, jpeg)
        self._locks: dict[str, threading.Lock] = {}
        self._save_lock = threading.Lock()
        self.encoded = 0  # JPEGs encoded (the CPU the preview costs is in these)

    # --- preview ---------------------------------------------------------------------------
    def _pipeline(self, name: str) -> Any:
        for p in self.gw.pipelines:
            if getattr(p, "cam", None) is not None and p.cam.name == name:
                return p
        return None

    def configured(self) -> list[Any]:
        vision = getattr(self.gw.config, "vision", None)
        return list(vision.cameras) if vision is not None else []

    def info(self) -> dict[str, Any]:
        """Every configured camera with its zones and masks as the gateway runs them."""
        out = []
        for cam in self.configured():
            p = self._pipeline(cam.name)
            frame = getattr(p, "latest_frame", None)
            size = [int(frame.image.shape[1]), int(frame.image.shape[0])] if frame else None
            out.append(
                {
                    "name": cam.name,
                    "label": cam.label or "",
                    "enabled": cam.enabled,
                    "state": p.state if p is not None else "not running",
                    "detail": p.status().get("detail", "") if p is not None else "",
                    "size": size,
                    "zones": [{"name": z.name, "polygon": z.polygon} for z in cam.zones],
                    "masks": [list(m) for m in cam.masks],
                }
            )
        return {"cameras": out, "file": str(self.zones_path()), "preview_fps": PREVIEW_FPS}

    def jpeg(self, name: str) -> bytes | None:
        """The newest frame of camera `name` as JPEG, boxes drawn; None without a frame."""
        p = self._pipeline(name)
        frame = getattr(p, "latest_frame", None)
        if frame is None:
            return None
        lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            now = time.monotonic()
            cached = self._cache.get(name)
            if cached and (now - cached[0] < 1.0 / PREVIEW_FPS or cached[1] == frame.seq):
                return cached[2]
            image = frame.image
            h, w = image.shape[:2]
            scale = min(1.0, PREVIEW_WIDTH / w)
            # a new array either way: the pipeline's frame is never drawn on
            shown = (
                cv2.resize(
                    image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA
                )
                if scale < 1.0
                else image.copy()
            )
            at, boxes = p.last_detections
            if now - at <= BOX_MAX_AGE_S:
                for (x1, y1, x2, y2), score in boxes:
                    pt1 = (round(x1 * scale), round(y1 * scale))
                    pt2 = (round(x2 * scale), round(y2 * scale))
                    cv2.rectangle(shown, pt1, pt2, (0, 0, 255), 2)
                    cv2.putText(shown, f"{score:.2f}", (pt1[0], max(12, pt1[1] - 4)),
                                cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 255), 1)  # fmt: skip
            ok, buf = cv2.imencode(".jpg", shown, [cv2.IMWRITE_JPEG_QUALITY, PREVIEW_QUALITY])
            if not ok:
                return None
            data = buf.tobytes()
            self._cache[name] = (now, frame.seq, data)
            self.encoded += 1
            return data

    # --- zones and masks -------------------------------------------------------------------
    def zones_path(self) -> Path:
        path = self.gw.config_path
        if path is None:
            raise SaveError(["this gateway runs on built-in defaults: there is no conf.d"])
        return config_mod.drop_in_dir(path) / ZONES_FILE

    def save(self, camera: str, body: dict[str, Any]) -> dict[str, Any]:
        """Validate, write the drop-in, reload. Returns what was saved (for the report)."""
        zones, masks = _shapes(body)
        if camera not in {c.name for c in self.configured()}:
            raise SaveError([f"no camera {camera!r} in this gateway's config"])
        with self._save_lock:
            target = self.zones_path()
            entries = _read_entries(target)
            entries[camera] = {"zones": zones, "masks": masks}
            text = render(entries)
            checked = self._validate(text)
            cam = next(c for c in checked.vision.cameras if c.name == camera)
            kept = sorted({z.name for z in cam.zones} - {z["name"] for z in zones})
            if kept:
                raise SaveError(
                    [
                        f"zone {name!r} of camera {camera!r} is set in config.toml or another "
                        f"drop-in, and a drop-in cannot remove it: redraw it here to change it, or "
                        f"remove it there"
                        for name in kept
                    ]
                )
            _write_atomic(target, text)
        result = self.gw.run_command("reload", {})
        return {"file": str(target), "reload": result, "zones": zones, "masks": masks}

    def _validate(self, text: str) -> Any:
        """`edge.config.load` of config.toml and every drop-in, with `text` as ZONES_FILE, in a
        copy of the directory: the real conf.d holds only a file that passed."""
        real = Path(self.gw.config_path or "")
        real_dir = config_mod.drop_in_dir(real)
        files, problems = config_mod.drop_ins(real)
        if problems:
            raise SaveError(problems)
        with tempfile.TemporaryDirectory(prefix="wg-localweb-") as tmp:
            main = Path(tmp) / real.name
            shutil.copyfile(real, main)
            conf_d = config_mod.drop_in_dir(main)
            conf_d.mkdir()
            for f in files:
                if f.name != ZONES_FILE:
                    shutil.copyfile(f, conf_d / f.name)
            (conf_d / ZONES_FILE).write_text(text, encoding="utf-8")
            try:
                return config_mod.load(main)
            except ConfigError as exc:
                raise SaveError(
                    [
                        p.replace(str(conf_d), str(real_dir)).replace(str(main), str(real))
                        for p in exc.problems
                    ]
                ) from None


def _shapes(body: dict[str, Any]) -> tuple[list[dict[str, Any]], list[list[list[float]]]]:
    """The page's JSON, shaped (types and sizes only: the config model judges the values)."""

    def poly(raw: Any, what: str) -> list[list[float]]:
        if not isinstance(raw, list) or len(raw) > 256:
            raise SaveError([f"{what}: a list of at most 256 [x, y] points"])
        out = []
        for pt in raw:
            if (
                not isinstance(pt, list)
                or len(pt) != 2
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in pt)
            ):
                raise SaveError([f"{what}: each point is [x, y] (fractions of width, height)"])
            out.append([round(float(v), DECIMALS) for v in pt])
        return out

    zones_raw, masks_raw = body.get("zones", []), body.get("masks", [])
    if not isinstance(zones_raw, list) or not isinstance(masks_raw, list):
        raise SaveError(["`zones` and `masks` must be lists"])
    if len(zones_raw) + len(masks_raw) > MAX_SHAPES:
        raise SaveError([f"at most {MAX_SHAPES} zones and masks per camera"])
    zones = []
    for i, z in enumerate(zones_raw):
        if not isinstance(z, dict) or not isinstance(z.get("name"), str):
            raise SaveError([f"zone {i + 1}: needs a name"])
        zones.append({"name": z["name"], "polygon": poly(z.get("polygon"), f"zone {z['name']!r}")})
    masks = [poly(m, f"mask {i + 1}") for i, m in enumerate(masks_raw)]
    if sum(len(z["polygon"]) for z in zones) + sum(map(len, masks)) > MAX_POINTS:
        raise SaveError([f"at most {MAX_POINTS} points in all zones and masks of a camera"])
    return zones, masks


def _read_entries(path: Path) -> dict[str, dict[str, Any]]:
    """The cameras the drop-in already holds (name -> zones, masks). The file is the page's own:
    other keys a hand edit added are not kept (docs/localweb.md says so)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SaveError(
            [f"{path}: cannot be read ({exc}): fix or delete it, then save again"]
        ) from None
    out: dict[str, dict[str, Any]] = {}
    for cam in data.get("vision", {}).get("cameras", []):
        if isinstance(cam, dict) and isinstance(cam.get("name"), str):
            out[cam["name"]] = {"zones": cam.get("zones", []), "masks": cam.get("masks", [])}
    return out


def render(entries: dict[str, dict[str, Any]]) -> str:
    """The drop-in's TOML (names and numbers only: json.dumps writes valid TOML strings)."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    lines = [
        "# Zones and masks drawn on the technician's page (edge/localweb), " + stamp + ".",
        "# Written by the page; kept across re-flash (conf.d). Merged over config.toml by",
        "# camera name (zones by name; masks replace the camera's list).",
        f"config_version = {CURRENT_VERSION}",
    ]

    def points(poly: list[list[float]]) -> str:
        return "[" + ", ".join(f"[{float(x)!r}, {float(y)!r}]" for x, y in poly) + "]"

    for name in sorted(entries):
        entry = entries[name]
        lines += ["", "[[vision.cameras]]", f"name = {json.dumps(name)}"]
        lines.append("masks = [" + ", ".join(points(m) for m in entry["masks"]) + "]")
        for z in entry["zones"]:
            lines += [
                "",
                "[[vision.cameras.zones]]",
                f"name = {json.dumps(z['name'])}",
                f"polygon = {points(z['polygon'])}",
            ]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    """A hidden temporary file (the loader skips names starting with '.'), then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
