"""The inventory: one CSV row per gateway, checked with line- and column-numbered errors.

Format reference: docs/provisioning.md and provisioning/templates/inventory.csv. Every problem in
the file is reported at once, as `file:line:column: column-name: what is wrong`, so that a
technician fixes the sheet in one pass.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import ipaddress
import json
import re
from pathlib import Path
from typing import Any

from protocol.names import SHORT_NAME_RULE, node_label
from protocol.topics import check_segment

SITE_TYPES = ("police_post", "fire_point")
REQUIRED = ("id", "district", "ward", "site_type", "hw_serial")
#: inventory column -> key of the gateway's `[site]` (edge/config.py SiteSection, its rules)
SITE_COLUMNS = {
    "site_name": "name",
    "address": "address",
    "latitude": "latitude",
    "longitude": "longitude",
    "contact_name": "contact_name",
    "contact_phone": "contact_phone",
    "access": "access",
    "site_notes": "notes",
}
OPTIONAL = ("cameras", "sensors", "network", "notes", *SITE_COLUMNS, "labels")
COLUMNS = REQUIRED + OPTIONAL

_HW_SERIAL = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.:-]{3,63}$")
_CAMERA_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "file://")


class InventoryError(Exception):
    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclasses.dataclass(frozen=True)
class Camera:
    """One camera of the `cameras` column: `NAME=SOURCE [SETTING=VALUE]...` (None, (): not set,
    the gateway's defaults apply; at a fire point smoke is on by default, docs/vision.md)."""

    name: str
    source: str
    fps: float | None = None
    smoke: bool | None = None
    person: bool | None = None
    zones: tuple[tuple[str, str], ...] = ()  # (zone name, preset)
    masks: tuple[str, ...] = ()  # presets

    def config_entry(self, label: str | None = None) -> dict[str, Any]:
        """The `[[vision.cameras]]` table (edge/vision/config.py), presets made polygons."""
        from edge.vision.config import PRESETS

        source = self.source
        if source.startswith("/dev/"):
            entry: dict[str, Any] = {"name": self.name, "device": source}
        elif source.startswith("file://"):
            entry = {"name": self.name, "file": source[len("file://") :]}
        elif source.startswith("/"):
            entry = {"name": self.name, "file": source}
        else:
            entry = {"name": self.name, "url": source}
        if label:
            entry["label"] = label
        if self.fps is not None:
            entry["fps"] = self.fps
        if self.masks:
            entry["masks"] = [[list(p) for p in PRESETS[m]] for m in self.masks]
        if self.zones:
            entry["zones"] = [
                {"name": z, "polygon": [list(p) for p in PRESETS[preset]]}
                for z, preset in self.zones
            ]
        for key in ("person", "smoke"):
            if getattr(self, key) is not None:
                entry[key] = {"enabled": getattr(self, key)}
        return entry


@dataclasses.dataclass(frozen=True)
class Detector:
    """A Modbus RTU detector on a bus: its unit id and register map (sensor_drivers/profiles)."""

    unit: int
    profile: str
    name: str | None = None


@dataclasses.dataclass(frozen=True)
class SensorPort:
    """One serial line of fire sensors; becomes a `[[serial.ports]]` table of the gateway config
    (sensor_drivers/config.py). Line settings left as None take that table's defaults."""

    name: str
    path: str
    protocol: str  # node | modbus
    nodes: tuple[int, ...] = ()
    devices: tuple[Detector, ...] = ()
    baud: int | None = None
    parity: str | None = None
    stopbits: int | None = None

    def label_problem(self, source: str) -> str | None:
        """Why `source` is not an event source of this line, or None (sensor_drivers' rule)."""
        from sensor_drivers.config import ModbusDevice, label_problem

        devices = [ModbusDevice(unit=d.unit, profile=d.profile, name=d.name) for d in self.devices]
        return label_problem(source, list(self.nodes), devices)

    def config_entry(self, labels: dict[str, str] | None = None) -> dict[str, Any]:
        """The `[[serial.ports]]` table; `labels`: the row's labels, those of this line kept."""
        entry: dict[str, Any] = {"name": self.name, "path": self.path, "protocol": self.protocol}
        for key in ("baud", "parity", "stopbits"):
            if getattr(self, key) is not None:
                entry[key] = getattr(self, key)
        if self.nodes:
            entry["nodes"] = list(self.nodes)
        if self.devices:
            entry["devices"] = [
                {"unit": d.unit, "profile": d.profile, **({"name": d.name} if d.name else {})}
                for d in self.devices
            ]
        mine = {k: v for k, v in (labels or {}).items() if self.label_problem(k) is None}
        if mine:
            entry["labels"] = mine
        return entry


@dataclasses.dataclass(frozen=True)
class Network:
    wifi_ssid: str | None = None
    address: str | None = None  # CIDR, e.g. 10.1.2.3/24; None = DHCP
    gateway: str | None = None
    dns: tuple[str, ...] = ()

    @property
    def dhcp(self) -> bool:
        return self.address is None


@dataclasses.dataclass(frozen=True)
class GatewayRow:
    line: int
    id: str
    district: str
    ward: str
    site_type: str
    hw_serial: str
    cameras: tuple[Camera, ...] = ()
    sensors: tuple[SensorPort, ...] = ()
    network: Network = Network()
    notes: str = ""
    #: the gateway's `[site]` (config keys: name, address, latitude, ...), only those given
    site: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: event source -> human label (`cam/gate`, `n07/smoke`, `d01`)
    labels: dict[str, str] = dataclasses.field(default_factory=dict)

    def fingerprint(self) -> str:
        """Changes exactly when what goes onto the gateway changes (not for notes or line)."""
        data = dataclasses.asdict(self)
        data.pop("line")
        data.pop("notes")
        for key in ("site", "labels"):  # absent: the fingerprint of a row from before them
            if not data[key]:
                data.pop(key)
        data["cameras"] = [  # likewise a camera's settings
            {k: v for k, v in cam.items() if v not in (None, [], ())} for cam in data["cameras"]
        ]
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Inventory:
    path: str
    rows: tuple[GatewayRow, ...]

    def by_id(self) -> dict[str, GatewayRow]:
        return {row.id: row for row in self.rows}

    @property
    def districts(self) -> list[str]:
        return sorted({row.district for row in self.rows})


def load(path: Path | str) -> Inventory:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # spreadsheets like to add a BOM
    except FileNotFoundError:
        raise InventoryError(path, [f"{path}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(path, [f"{path}: cannot read ({exc}); save it as UTF-8 CSV"]) from None
    return parse(text, path)


def parse(text: str, path: Path | str = "<inventory>") -> Inventory:
    problems: list[str] = []
    reader = csv.reader(text.splitlines(keepends=True))
    header: list[str] | None = None
    positions: dict[str, int] = {}
    rows: list[GatewayRow] = []
    seen_ids: dict[str, int] = {}
    seen_serials: dict[str, int] = {}
    end = 0
    try:
        for cells in reader:
            line, end = end + 1, reader.line_num
            if not cells or all(not c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
                continue
            if header is None:
                header, positions = _read_header(cells, path, line, problems)
                if header is None:
                    break
                continue
            for what, seen in (("id", seen_ids), ("hw_serial", seen_serials)):
                col = positions[what]
                value = cells[col].strip().lower() if col < len(cells) else ""
                if not value:
                    continue
                if value in seen:
                    problems.append(
                        f"{path}:{line}:{col + 1}: {what}: {value!r} is already used on line "
                        f"{seen[value]}; each gateway needs its own"
                    )
                else:
                    seen[value] = line
            row = _read_row(cells, header, positions, path, line, problems)
            if row is not None:
                rows.append(row)
    except csv.Error as exc:
        problems.append(f"{path}:{reader.line_num}: not valid CSV: {exc}")
    if header is None and not problems:
        problems.append(
            f"{path}: no header row; the first row must name the columns: {', '.join(REQUIRED)}"
        )
    if problems:
        raise InventoryError(path, problems)
    return Inventory(str(path), tuple(rows))


def _read_header(
    cells: list[str], path: Path | str, line: int, problems: list[str]
) -> tuple[list[str] | None, dict[str, int]]:
    names = [c.strip().lower() for c in cells]
    positions: dict[str, int] = {}
    for col, name in enumerate(names, start=1):
        if name not in COLUMNS:
            problems.append(
                f"{path}:{line}:{col}: unknown column {name!r} (columns: {', '.join(COLUMNS)})"
            )
        elif name in positions:
            problems.append(f"{path}:{line}:{col}: column {name!r} appears twice")
        else:
            positions[name] = col - 1
    missing = [name for name in REQUIRED if name not in positions]
    if missing:
        problems.append(f"{path}:{line}: header lacks required column(s): {', '.join(missing)}")
    if problems:
        return None, positions
    return names, positions


def _read_row(
    cells: list[str],
    header: list[str],
    positions: dict[str, int],
    path: Path | str,
    line: int,
    problems: list[str],
) -> GatewayRow | None:
    if len(cells) > len(header) and any(c.strip() for c in cells[len(header) :]):
        problems.append(
            f"{path}:{line}:{len(header) + 1}: {len(cells)} cells but the header names "
            f"{len(header)} columns (a stray comma? quote cells that contain commas)"
        )
        return None
    values: dict[str, str] = {}
    ok = True
    for name in COLUMNS:
        if name not in positions:
            continue
        col = positions[name]
        raw = cells[col].strip() if col < len(cells) else ""
        values[name] = raw
        where = f"{path}:{line}:{col + 1}: {name}"
        if name in REQUIRED and not raw:
            problems.append(f"{where}: required, but empty")
            ok = False
            continue
        try:
            _check_simple(name, raw)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            ok = False
    parsed = {}
    for name, parser in (
        ("cameras", parse_cameras),
        ("sensors", parse_sensors),
        ("network", parse_network),
    ):
        if name not in positions:
            continue
        try:
            parsed[name] = parser(values.get(name, ""))
        except ValueError as exc:
            problems.append(f"{path}:{line}:{positions[name] + 1}: {name}: {exc}")
            ok = False
    for camera in parsed.get("cameras", ()):
        problem = smoke_fps_problem(camera, values.get("site_type", ""))
        if problem:
            problems.append(f"{path}:{line}:{positions['cameras'] + 1}: cameras: {problem}")
            ok = False
    site, site_problems = _read_site(values, positions, f"{path}:{line}")
    problems += site_problems
    labels: dict[str, str] = {}
    parsed_all = all(name in parsed for name in ("cameras", "sensors") if name in positions)
    if "labels" in positions and parsed_all:  # else: labels are checked once those are right
        try:
            labels = parse_labels(
                values.get("labels", ""), parsed.get("cameras", ()), parsed.get("sensors", ())
            )
        except LabelError as exc:
            at = f"{path}:{line}:{positions['labels'] + 1}: labels"
            problems += [f"{at}: {problem}" for problem in exc.problems]
            ok = False
    if not ok or site_problems:
        return None
    return GatewayRow(
        line=line,
        id=values["id"],
        district=values["district"],
        ward=values["ward"],
        site_type=values["site_type"],
        hw_serial=values["hw_serial"],
        notes=values.get("notes", ""),
        site=site,
        labels=labels,
        **parsed,
    )


def _read_site(
    values: dict[str, str], positions: dict[str, int], where: str
) -> tuple[dict[str, Any], list[str]]:
    """The row's site columns as a `[site]` table, checked by the gateway's own SiteSection
    (one rule for both): each problem at its column."""
    from pydantic import ValidationError

    from edge.config import SiteSection

    site: dict[str, Any] = {}
    problems: list[str] = []
    column_of = {key: column for column, key in SITE_COLUMNS.items()}

    def at(column: str) -> str:
        return f"{where}:{positions[column] + 1}: {column}"

    for column, key in SITE_COLUMNS.items():
        raw = values.get(column, "")
        if not raw:
            continue
        if key in ("latitude", "longitude"):
            try:
                site[key] = float(raw)
            except ValueError:
                problems.append(
                    f"{at(column)}: {raw!r} is not a number: write decimal degrees with a point, "
                    f"e.g. {'52.5200' if key == 'latitude' else '13.4050'}"
                )
                continue
        else:
            site[key] = raw
    unreadable = bool(problems)
    coordinates = {k: v for k, v in site.items() if k in ("latitude", "longitude")}
    others = {k: v for k, v in site.items() if k not in coordinates}
    errors = []
    for part in (others, coordinates):  # apart: the pair rule is checked even when a text fails
        try:
            SiteSection.model_validate(part)
        except ValidationError as exc:
            errors += exc.errors(include_url=False)
    if errors:
        for err in errors:
            msg = err["msg"].removeprefix("Value error, ")
            key = next((str(p) for p in err["loc"] if str(p) in column_of), None)
            if key is None:  # the pair rule: at the coordinate that was given
                if unreadable:
                    continue  # one coordinate is not a number: said already
                key = "latitude" if "latitude" in site else "longitude"
                msg = msg.replace("latitude = ", "").replace("longitude = ", "")
            elif err["type"] in ("less_than_equal", "greater_than_equal"):
                bound = 90 if key == "latitude" else 180
                swapped = key == "latitude" and abs(site[key]) <= 180
                msg = f"{site[key]:g} is outside -{bound}..{bound} degrees" + (
                    " (latitude and longitude swapped?)" if swapped else ""
                )
            problems.append(f"{at(column_of[key])}: {msg}")
    problems.sort(key=lambda problem: int(problem[len(where) + 1 :].split(":", 1)[0]))
    return ({} if problems else site), problems


def _check_simple(name: str, raw: str) -> None:
    if name in ("id", "district", "ward"):
        check_segment(raw)
    elif name == "site_type" and raw not in SITE_TYPES:
        raise ValueError(f"{raw!r} is not a site type; use one of: {', '.join(SITE_TYPES)}")
    elif name == "hw_serial" and not _HW_SERIAL.match(raw):
        raise ValueError(
            f"{raw!r} does not look like a hardware serial (4-64 letters, digits, '_.:-'; "
            "a Raspberry Pi's is in /proc/cpuinfo, e.g. 10000000a1b2c3d4)"
        )


def _items(cell: str) -> list[str]:
    return [item.strip() for item in cell.split(";") if item.strip()]


def parse_labels(
    cell: str, cameras: tuple[Camera, ...], sensors: tuple[SensorPort, ...]
) -> dict[str, str]:
    """`SOURCE=LABEL;...`: a human label per event source of this gateway's cameras and sensors,
    e.g. `n07/smoke=kitchen smoke, 2nd floor; cam/gate=street north; d01=boiler room`."""
    from edge.confbase import LABEL_MAX, check_text

    labels: dict[str, str] = {}
    problems: list[str] = []
    names = {c.name for c in cameras}
    for item in _items(cell):
        source, sep, label = (part.strip() for part in item.partition("="))
        if not sep or not source or not label:
            problems.append(
                f"{item!r}: write SOURCE=LABEL, e.g. n07/smoke=kitchen smoke 2nd floor; "
                "separate labels with ';'"
            )
            continue
        if source in labels:
            problems.append(f"{source!r} is labelled twice")
            continue
        try:
            check_text(label, LABEL_MAX)
        except ValueError as exc:
            problems.append(f"{source}: the label {exc}")
            continue
        problem = _label_source_problem(source, names, sensors)
        if problem:
            problems.append(f"{source!r}: {problem}")
            continue
        labels[source] = label
    if problems:
        raise LabelError(problems)
    return labels


class LabelError(ValueError):
    """Every wrong item of one `labels` cell (each becomes its own `file:line:col` line)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def _label_source_problem(
    source: str, cameras: set[str], sensors: tuple[SensorPort, ...]
) -> str | None:
    if source.startswith("cam/"):
        if source[4:] in cameras:
            return None
        have = ", ".join(f"cam/{n}" for n in sorted(cameras)) or "none"
        return f"no camera {source[4:]!r} in this row's cameras column (cameras: {have})"
    if source in cameras:
        return f"a camera's events come from cam/{source}: write cam/{source}=..."
    problems = [port.label_problem(source) for port in sensors]
    if any(problem is None for problem in problems):
        return None
    detail = next((p for p in problems if p and not p.startswith("no node or detector")), None)
    if detail:
        return detail
    known = sorted({f"cam/{n}" for n in cameras} | {s for port in sensors for s in _prefixes(port)})
    return (
        "no camera or sensor of this row sends events from it "
        f"(this row has: {', '.join(known) or 'no cameras or sensors'}; a node's sensors are "
        "nNN/NAME, e.g. n07/smoke)"
    )


def _prefixes(port: SensorPort) -> list[str]:
    return [source for source, _, _ in _sources(port)]


CAMERA_SYNTAX = (
    "write cameras as NAME=SOURCE [fps=N] [smoke=on|off] [person=on|off] [zone=PRESET] "
    "[mask=PRESET], e.g. gate=rtsp://10.0.0.9/s1 fps=5 smoke=on zone=door mask=top-strip"
)
CAMERA_SETTINGS = ("fps", "smoke", "person", "zone", "mask")
_SWITCH = {"on": True, "yes": True, "true": True, "off": False, "no": False, "false": False}
#: the smoke cues are tuned at 1.5-3 analysed frames per second (edge/vision/config.py)
SMOKE_MIN_FPS = 1.5


def parse_cameras(cell: str) -> tuple[Camera, ...]:
    """`NAME=SOURCE [SETTING=VALUE]...;...` with SOURCE an rtsp/http URL, a /dev/video* device
    or a file, and settings fps, smoke, person, zone, mask (reference: docs/provisioning.md)."""
    from pydantic import ValidationError

    from edge.vision.config import CameraConfig

    cameras = []
    for item in _items(cell):
        name, sep, rest = (part.strip() for part in item.partition("="))
        if not sep or not rest:
            raise ValueError(f"{item!r}: {CAMERA_SYNTAX}")
        check_segment(name)
        source, *words = rest.split()
        if not (source.startswith(_CAMERA_SCHEMES) or source.startswith("/")):
            raise ValueError(
                f"{item!r}: source must be an rtsp://, http(s):// or file:// URL, or a device "
                "path such as /dev/video0"
            )
        if any(c.name == name for c in cameras):
            raise ValueError(f"camera name {name!r} is used twice")
        camera = Camera(name, source, **_camera_settings(item, words))
        try:  # the gateway's own rules have the last word
            CameraConfig.model_validate(camera.config_entry())
        except ValidationError as exc:
            raise ValueError(f"{item!r}: not accepted as a gateway camera: {exc}") from None
        cameras.append(camera)
    return tuple(cameras)


def _camera_settings(item: str, words: list[str]) -> dict[str, Any]:
    from edge.vision.config import PRESETS

    presets = ", ".join(PRESETS)
    settings: dict[str, Any] = {}
    zones: list[tuple[str, str]] = []
    masks: list[str] = []
    for word in words:
        key, eq, value = word.partition("=")
        key = key.lower()
        if not eq or key not in CAMERA_SETTINGS or not value:
            also = " (a space in the source? write it as %20)" if not eq else ""
            raise ValueError(f"{item!r}: {word!r} is not a camera setting{also}; {CAMERA_SYNTAX}")
        if key in ("fps", "smoke", "person") and key in settings:
            raise ValueError(f"{item!r}: {key}= is given twice")
        if key == "fps":
            try:
                fps = float(value)
            except ValueError:
                fps = float("nan")
            if not 0.1 <= fps <= 60:
                raise ValueError(
                    f"{item!r}: fps={value}: write the analysed frames per second as a number "
                    "from 0.1 to 60, e.g. fps=5 (not the camera's stream rate: 2 to 5 is usual)"
                )
            settings["fps"] = fps
        elif key in ("smoke", "person"):
            if value.lower() not in _SWITCH:
                raise ValueError(f"{item!r}: {key}={value}: write {key}=on or {key}=off")
            settings[key] = _SWITCH[value.lower()]
        else:
            zone, _, preset = value.rpartition(":") if key == "zone" else ("", "", value)
            preset = preset.lower()
            if preset not in PRESETS:
                raise ValueError(
                    f"{item!r}: {key}={value}: unknown preset {preset!r}; presets: {presets} "
                    '(docs/vision.md, "Presets"; draw exact ones on the technician\'s page)'
                )
            if key == "mask":
                if preset == "full":
                    raise ValueError(
                        f"{item!r}: mask=full hides the whole picture; to switch detection off "
                        "write person=off or smoke=off"
                    )
                if preset in masks:
                    raise ValueError(f"{item!r}: mask={preset} is given twice")
                masks.append(preset)
                continue
            zone = zone or preset
            try:
                check_segment(zone)
            except ValueError as exc:
                raise ValueError(f"{item!r}: zone={value}: the zone name {exc}") from None
            if any(z == zone for z, _ in zones):
                raise ValueError(
                    f"{item!r}: zone {zone!r} is given twice; name a second zone on the same "
                    f"preset: zone=NAME:{preset}"
                )
            zones.append((zone, preset))
    return {**settings, "zones": tuple(zones), "masks": tuple(masks)}


def smoke_fps_problem(camera: Camera, site_type: str) -> str | None:
    """Why `camera` cannot run the smoke cues it runs at `site_type`, or None."""
    from edge.vision.config import SMOKE_BY_DEFAULT

    smoke = camera.smoke if camera.smoke is not None else site_type in SMOKE_BY_DEFAULT
    if not smoke or camera.fps is None or camera.fps >= SMOKE_MIN_FPS:
        return None
    why = "smoke=on" if camera.smoke else f"at a {site_type} smoke is on by default"
    return (
        f"camera {camera.name!r}: fps={camera.fps:g} is too slow for the smoke cues ({why}; they "
        f"need {SMOKE_MIN_FPS:g} to 3 frames per second): write fps=2 or more, or smoke=off"
    )


def parse_sensors(cell: str) -> tuple[SensorPort, ...]:
    """`PORT=PROTOCOL WORD...;...`, one item per serial line (reference: docs/provisioning.md).

    /dev/ttyUSB0=node 7 8                                    sensor nodes 7 and 8
    usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0=node 7      the same, by /dev/serial/by-id name
    /dev/ttyUSB1=modbus baud=9600 parity=E 1:smoke_heat 12:gas_lel:kitchen
    /dev/ttyAMA0=wardnode                                    older spelling of `node`
    """
    items = _items(cell)
    if not items:
        return ()
    from pydantic import ValidationError

    from sensor_drivers.config import SerialConfig, resolve

    ports: list[SensorPort] = []
    counts = dict.fromkeys(PORT_NAMES, 0)
    paths: dict[Path, str] = {}
    sources: dict[str, str] = {}
    for item in items:
        port = _parse_port(item, counts)
        where = resolve(port.path)
        if where in paths:
            raise ValueError(
                f"{item!r}: port {port.path} is already used by {paths[where]!r}; one item per "
                "port, with all nodes or detectors of that line in it"
            )
        paths[where] = item
        for source, what, fix in _sources(port):
            if source in sources:
                raise ValueError(f"{item!r}: {what} is already used by {sources[source]!r}; {fix}")
            sources[source] = item
        ports.append(port)
    try:  # the gateway's own rules have the last word (never hit while the checks above agree)
        SerialConfig.model_validate({"ports": [p.config_entry() for p in ports]})
    except ValidationError as exc:
        raise ValueError(f"not accepted as a gateway [serial] section: {exc}") from None
    return tuple(ports)


SENSORS_SYNTAX = (
    "write PORT=node ID ID... or PORT=modbus [baud=N] [parity=N|E|O] UNIT:PROFILE[:NAME]..., "
    "e.g. /dev/ttyUSB0=node 7 8 or /dev/ttyUSB1=modbus baud=9600 1:smoke_heat"
)
PROTOCOLS = {"node": "node", "wardnode": "node", "modbus": "modbus"}
PORT_NAMES = {"node": "nodes", "modbus": "modbus"}  # nodes1, nodes2, modbus1, ...
LINE_SETTINGS = {"node": ("baud",), "modbus": ("baud", "parity", "stopbits")}
BAUD_RATES = (1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
_BY_ID_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]*$")


def _parse_port(item: str, counts: dict[str, int]) -> SensorPort:
    path, sep, spec = (part.strip() for part in item.partition("="))
    if not sep or not spec.split():
        raise ValueError(f"{item!r}: {SENSORS_SYNTAX}")
    device_path = path.startswith("/dev/") and not any(c.isspace() for c in path)
    by_id_name = _BY_ID_NAME.match(path) and not path.startswith("tty")
    if not (device_path or by_id_name):
        raise ValueError(
            f"{item!r}: the port must be a device path such as /dev/ttyUSB0, or a name from "
            "/dev/serial/by-id such as usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0"
        )
    first, *words = spec.split()
    if "@" in first:
        profile, _, unit = first.partition("@")
        raise ValueError(
            f"{item!r}: the PORT=PROFILE@UNIT form is gone; a Modbus detector is UNIT:PROFILE "
            f"on a modbus line: {path}=modbus {unit}:{profile}"
        )
    protocol = PROTOCOLS.get(first.lower())
    if protocol is None:
        raise ValueError(
            f"{item!r}: {first!r} is not a protocol; use node (wardgate sensor nodes) or modbus "
            "(Modbus RTU detectors on RS-485)"
        )
    settings: dict[str, Any] = {}
    nodes: list[int] = []
    devices: list[Detector] = []
    for word in words:
        key, eq, value = word.partition("=")
        if eq:
            settings.update(_line_setting(item, protocol, key.lower(), value, settings))
        elif protocol == "node":
            nodes.append(_node_id(item, word, nodes))
        else:
            devices.append(_detector(item, word, devices))
    if protocol == "modbus" and not devices:
        raise ValueError(
            f"{item!r}: a modbus line needs its detectors as UNIT:PROFILE, e.g. "
            f"{path}=modbus 1:smoke_heat (profiles: {', '.join(_known_profiles())})"
        )
    counts[protocol] += 1
    return SensorPort(
        name=f"{PORT_NAMES[protocol]}{counts[protocol]}",
        path=path,
        protocol=protocol,
        nodes=tuple(nodes),
        devices=tuple(devices),
        **settings,
    )


def _line_setting(
    item: str, protocol: str, key: str, value: str, given: dict[str, Any]
) -> dict[str, Any]:
    allowed = LINE_SETTINGS[protocol]
    if key not in allowed:
        also = " only (nodes talk 8N1)" if protocol == "node" else ""
        raise ValueError(
            f"{item!r}: unknown line setting {key + '=' + value!r}; a {protocol} line takes "
            f"{', '.join(k + '=' for k in allowed)}{also}"
        )
    if key in given:
        raise ValueError(f"{item!r}: {key}= is given twice")
    if key == "baud":
        if not value.isdigit() or int(value) not in BAUD_RATES:
            raise ValueError(
                f"{item!r}: baud={value} is not a standard rate; use one of "
                f"{', '.join(map(str, BAUD_RATES))} (as set on the device)"
            )
        return {"baud": int(value)}
    if key == "parity":
        parity = {"n": "N", "none": "N", "e": "E", "even": "E", "o": "O", "odd": "O"}
        if value.lower() not in parity:
            raise ValueError(f"{item!r}: parity={value}: use N (none), E (even) or O (odd)")
        return {"parity": parity[value.lower()]}
    if value not in ("1", "2"):
        raise ValueError(f"{item!r}: stopbits={value}: use 1 or 2")
    return {"stopbits": int(value)}


def _node_id(item: str, word: str, nodes: list[int]) -> int:
    if ":" in word:
        raise ValueError(
            f"{item!r}: {word!r} is a Modbus detector, but this is a node line; write "
            "PORT=modbus UNIT:PROFILE for a Modbus bus"
        )
    if not word.isdigit() or not 0 <= int(word) <= 254:
        raise ValueError(
            f"{item!r}: node id {word!r} is not 0..254 (the `node` number in the node's node.json)"
        )
    if int(word) in nodes:
        raise ValueError(f"{item!r}: node {int(word)} is listed twice")
    return int(word)


def _detector(item: str, word: str, devices: list[Detector]) -> Detector:
    from pydantic import ValidationError

    from sensor_drivers.config import ModbusDevice

    parts = word.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        also = f" (a baud rate is written baud={word})" if word.isdigit() else ""
        raise ValueError(
            f"{item!r}: {word!r}: write a detector as UNIT:PROFILE or UNIT:PROFILE:NAME, e.g. "
            f"1:smoke_heat or 12:gas_lel:kitchen{also}"
        )
    unit_text, profile, *named = parts
    name = named[0] if named else None
    if not unit_text.isdigit() or not 1 <= int(unit_text) <= 247:
        raise ValueError(
            f"{item!r}: {word!r}: unit id {unit_text!r} is not 1..247 (the detector's Modbus "
            "address, as set on the detector)"
        )
    unit = int(unit_text)
    if profile not in _known_profiles():
        raise ValueError(
            f"{item!r}: {word!r}: unknown Modbus profile {profile!r}; built in: "
            f"{', '.join(_known_profiles())} (another detector model needs a profile of its own "
            "in sensor_drivers/profiles, see docs/sensors.md)"
        )
    if any(d.unit == unit for d in devices):
        raise ValueError(f"{item!r}: unit id {unit} is used twice on this bus")
    try:
        ModbusDevice(unit=unit, profile=profile, name=name)
    except ValidationError as exc:
        fields = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
        if fields == {"name"}:
            raise ValueError(
                f"{item!r}: {word!r}: name {name!r} must be {SHORT_NAME_RULE} "
                "(it starts the detector's event sources)"
            ) from None
        raise ValueError(f"{item!r}: {word!r}: {exc}") from None
    return Detector(unit, profile, name)


def _sources(port: SensorPort) -> list[tuple[str, str, str]]:
    """The event source prefixes a port's devices take, which must differ on one gateway."""
    from sensor_drivers.config import ModbusDevice

    out = [(node_label(n), f"node {n}", "node ids must differ on one gateway") for n in port.nodes]
    for d in port.devices:
        source = ModbusDevice(unit=d.unit, profile=d.profile, name=d.name).source
        out.append((source, f"detector source {source!r}", "name one: UNIT:PROFILE:NAME"))
    return out


@functools.cache
def _known_profiles() -> tuple[str, ...]:
    from sensor_drivers.modbus_profile import PROFILE_DIR

    return tuple(sorted(p.stem for p in PROFILE_DIR.glob("*.toml")))


def parse_network(cell: str) -> Network:
    """`dhcp` (the default) or `key=value;...` with wifi=SSID, ip=CIDR, gw=IP, dns=IP IP."""
    if cell.strip().lower() in ("", "dhcp", "eth", "ethernet"):
        return Network()
    values: dict[str, str] = {}
    for item in _items(cell):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or key not in ("wifi", "ip", "gw", "dns"):
            raise ValueError(
                f"{item!r}: use dhcp, or wifi=SSID, ip=10.1.2.3/24, gw=10.1.2.1, dns=10.1.2.1 "
                "separated by ';'"
            )
        if key in values:
            raise ValueError(f"{key} is given twice")
        values[key] = value
    ssid = values.get("wifi")
    if ssid is not None and not 1 <= len(ssid.encode()) <= 32:
        raise ValueError(f"wifi SSID must be 1-32 bytes, got {ssid!r}")
    address = values.get("ip")
    if address is not None:
        try:
            iface = ipaddress.ip_interface(address)
        except ValueError:
            raise ValueError(
                f"ip={address!r}: write an address with prefix, e.g. 10.1.2.3/24"
            ) from None
        if "/" not in address:
            raise ValueError(f"ip={address!r}: add the prefix length, e.g. {address}/24")
        address = str(iface)
    gateway = values.get("gw")
    if gateway is not None:
        if address is None:
            raise ValueError("gw= needs ip= (with DHCP the router comes from DHCP)")
        gateway = _ip(gateway, "gw")
    dns = tuple(_ip(d, "dns") for d in values.get("dns", "").split())
    return Network(wifi_ssid=ssid, address=address, gateway=gateway, dns=dns)


def _ip(text: str, key: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"{key}={text!r} is not an IP address") from None
