"""The inventory: one CSV row per gateway, checked with line- and column-numbered errors.

Format reference: docs/provisioning.md and provisioning/templates/inventory.csv. Every problem in
the file is reported at once, as `file:line:column: column-name: what is wrong`, so that a
technician fixes the sheet in one pass.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import ipaddress
import json
import re
from pathlib import Path

from edge.topics import check_segment

SITE_TYPES = ("police_post", "fire_point")
REQUIRED = ("id", "district", "ward", "site_type", "hw_serial")
OPTIONAL = ("cameras", "sensors", "network", "notes")
COLUMNS = REQUIRED + OPTIONAL

_HW_SERIAL = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.:-]{3,63}$")
_PROFILE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_CAMERA_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "file://")


class InventoryError(Exception):
    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclasses.dataclass(frozen=True)
class Camera:
    name: str
    source: str


@dataclasses.dataclass(frozen=True)
class SensorLink:
    """A serial port and the profile of what is on it (sensor_drivers/profiles)."""

    port: str
    profile: str
    address: int | None = None


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
    sensors: tuple[SensorLink, ...] = ()
    network: Network = Network()
    notes: str = ""

    def fingerprint(self) -> str:
        """Changes exactly when what goes onto the gateway changes (not for notes or line)."""
        data = dataclasses.asdict(self)
        data.pop("line")
        data.pop("notes")
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
    if not ok:
        return None
    return GatewayRow(
        line=line,
        id=values["id"],
        district=values["district"],
        ward=values["ward"],
        site_type=values["site_type"],
        hw_serial=values["hw_serial"],
        notes=values.get("notes", ""),
        **parsed,
    )


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


def parse_cameras(cell: str) -> tuple[Camera, ...]:
    """`name=source;...` with source an rtsp/http URL, a /dev/video* device or a file."""
    cameras = []
    for item in _items(cell):
        name, sep, source = (part.strip() for part in item.partition("="))
        if not sep or not source:
            raise ValueError(
                f"{item!r}: write cameras as name=source, e.g. gate=rtsp://10.0.0.9/s1"
            )
        check_segment(name)
        if not (source.startswith(_CAMERA_SCHEMES) or source.startswith("/")):
            raise ValueError(
                f"{item!r}: source must be an rtsp://, http(s):// or file:// URL, or a device "
                "path such as /dev/video0"
            )
        if any(c.name == name for c in cameras):
            raise ValueError(f"camera name {name!r} is used twice")
        cameras.append(Camera(name, source))
    return tuple(cameras)


def parse_sensors(cell: str) -> tuple[SensorLink, ...]:
    """`port=profile[@address];...`, e.g. /dev/ttyUSB0=wardnode;/dev/ttyUSB1=modbus-panel@3."""
    links = []
    for item in _items(cell):
        port, sep, rest = (part.strip() for part in item.partition("="))
        if not sep or not rest:
            raise ValueError(f"{item!r}: write sensors as port=profile, e.g. /dev/ttyUSB0=wardnode")
        if not port.startswith("/dev/"):
            raise ValueError(f"{item!r}: the port must be a device path such as /dev/ttyUSB0")
        profile, at, address_text = rest.partition("@")
        if not _PROFILE.match(profile):
            raise ValueError(f"{item!r}: profile {profile!r} must be lower-case letters/digits/_.-")
        address = None
        if at:
            if not address_text.isdigit() or not 1 <= int(address_text) <= 247:
                raise ValueError(f"{item!r}: bus address must be 1..247, got {address_text!r}")
            address = int(address_text)
        link = SensorLink(port, profile, address)
        if link in links:
            raise ValueError(f"{item!r} is listed twice")
        links.append(link)
    return tuple(links)


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
