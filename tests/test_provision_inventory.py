"""The inventory CSV: the template is valid, and every problem names its line, column and fix."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from edge.config import from_dict
from provisioning.boot import template
from provisioning.inventory import (
    BAUD_RATES,
    Detector,
    InventoryError,
    Network,
    SensorPort,
    load,
    parse,
    parse_sensors,
)

HEADER = "id,district,ward,site_type,hw_serial,cameras,sensors,network\n"


def problems(text: str) -> list[str]:
    with pytest.raises(InventoryError) as info:
        parse(text, "inv.csv")
    return info.value.problems


def test_template_parses_and_documents_every_column():
    inv = parse(template("inventory.csv"), "template")
    assert [r.id for r in inv.rows] == ["pp-d03-001", "fp-d03-002", "fp-d04-001"]
    fire = inv.rows[1]
    assert fire.sensors == (
        SensorPort("nodes1", "usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0", "node", nodes=(7, 8)),
        SensorPort(
            "modbus1",
            "/dev/ttyUSB1",
            "modbus",
            devices=(Detector(1, "smoke_heat"), Detector(12, "gas_lel", "kitchen")),
            baud=9600,
            parity="E",
        ),
    )
    assert inv.rows[2].sensors == (SensorPort("nodes1", "/dev/ttyAMA0", "node", nodes=(1,)),)
    assert fire.network == Network(None, "10.3.14.5/24", "10.3.14.1", ("10.3.14.1",))
    assert inv.rows[2].network.wifi_ssid == "Ward2-IoT"
    assert [c.name for c in inv.rows[0].cameras] == ["gate", "yard"]
    assert inv.districts == ["d03", "d04"]


def test_every_problem_is_reported_with_line_and_column():
    text = (
        HEADER
        + "gw-1,d 03,w1,fire_point,10000000aaaa0001,,,\n"  # line 2: bad district (col 2)
        + "gw-2,d03,w1,fire_station,10000000aaaa0002,,,\n"  # line 3: bad site type (col 4)
        + "gw-1,d03,w1,fire_point,10000000aaaa0003,,,\n"  # line 4: duplicate id
        + "gw-4,d03,w1,fire_point,10000000AAAA0003,,,\n"  # line 5: duplicate serial (any case)
        + "gw-5,d03,,fire_point,10000000aaaa0005,,,\n"  # line 6: empty ward (col 3)
    )
    found = problems(text)
    assert found[0].startswith("inv.csv:2:2: district: 'd 03' is not a valid topic segment")
    assert found[1].startswith("inv.csv:3:4: site_type: 'fire_station' is not a site type")
    assert "inv.csv:4:1: id: 'gw-1' is already used on line 2" in found[2]
    assert "inv.csv:5:5: hw_serial: '10000000aaaa0003' is already used on line 4" in found[3]
    assert found[4] == "inv.csv:6:3: ward: required, but empty"
    assert len(found) == 5


@pytest.mark.parametrize(
    ("cell_col", "cell", "expected"),
    [
        (6, "gate", "write cameras as NAME=SOURCE"),
        (6, "gate=ftp://x/y", "source must be an rtsp://"),
        (6, "a=/dev/video0;a=/dev/video1", "camera name 'a' is used twice"),
        (8, "ip=10.0.0.5", "add the prefix length"),
        (8, "gw=10.0.0.1", "gw= needs ip="),
        (8, "ip=10.0.0.5/24;dns=10.0.0.999", "dns='10.0.0.999' is not an IP address"),
        (8, "wifi=" + "x" * 33, "SSID must be 1-32 bytes"),
        (8, "vlan=3", "use dhcp, or wifi=SSID"),
    ],
)
def test_list_cells_explain_their_syntax(cell_col, cell, expected):
    cells = ["gw-1", "d01", "w1", "fire_point", "10000000aaaa0001", "", "", ""]
    cells[cell_col - 1] = f'"{cell}"'
    (found,) = problems(HEADER + ",".join(cells) + "\n")
    assert found.startswith(f"inv.csv:2:{cell_col}: ")
    assert expected in found


def test_header_problems():
    assert problems("id,district,ward,site,hw_serial\n") == [
        "inv.csv:1:4: unknown column 'site' (columns: id, district, ward, site_type, hw_serial, "
        "cameras, sensors, network, notes, site_name, address, latitude, longitude, "
        "contact_name, contact_phone, access, site_notes, labels)",
        "inv.csv:1: header lacks required column(s): site_type",
    ]
    assert "no header row" in problems("# only a comment\n\n")[0]


def test_stray_comma_and_short_rows():
    found = problems(HEADER + "gw-1,d01,w1,fire_point,10000000aaaa0001,,,,extra\n")
    assert found == [
        "inv.csv:2:9: 9 cells but the header names 8 columns (a stray comma? quote cells that "
        "contain commas)"
    ]
    # Missing trailing optional cells are fine; comments, blank lines and a BOM are ignored.
    inv = parse("# c\n" + HEADER + "\n" + "gw-1,d01,w1,fire_point,10000000aaaa0001\n")
    assert inv.rows[0].line == 4 and inv.rows[0].network.dhcp


def test_columns_in_any_order_and_bom(tmp_path):
    path = tmp_path / "inv.csv"
    path.write_text(
        "\ufeffhw_serial,site_type,ward,district,id\n10000000aaaa0001,police_post,w,d,g\n"
    )
    (row,) = load(path).rows
    assert (row.id, row.district, row.ward, row.site_type) == ("g", "d", "w", "police_post")


def test_fingerprint_follows_what_goes_onto_the_gateway():
    base = "gw-1,d01,w1,fire_point,10000000aaaa0001,,,"
    (a,) = parse(HEADER + base + "\n").rows
    (b,) = parse("# moved down a line\n" + HEADER + base + "\n").rows
    (c,) = parse(HEADER + base.replace("w1", "w2") + "\n").rows
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_unreadable_file(tmp_path):
    with pytest.raises(InventoryError, match="file not found"):
        load(tmp_path / "nope.csv")
    (tmp_path / "latin1.csv").write_bytes(
        HEADER.encode() + "gw,d,w,fire_point,S\xe9rie1\n".encode("latin-1")
    )
    with pytest.raises(InventoryError, match="save it as UTF-8 CSV"):
        load(tmp_path / "latin1.csv")


# --- the sensors column -----------------------------------------------------------------------

SENSOR_PROBLEMS = [
    # ports
    ("ttyUSB0=wardnode", "'ttyUSB0=wardnode': the port must be a device path such as /dev/ttyUSB0"),
    ("/dev/tty USB0=node 1", "the port must be a device path"),
    ("/dev/ttyUSB0", "write PORT=node ID ID... or PORT=modbus"),
    ("/dev/ttyUSB0=", "write PORT=node ID ID... or PORT=modbus"),
    ("/dev/ttyUSB0=canbus 1", "'canbus' is not a protocol; use node"),
    ("/dev/ttyUSB0=node 7;/dev/ttyUSB0=node 8",
     "'/dev/ttyUSB0=node 8': port /dev/ttyUSB0 is already used by '/dev/ttyUSB0=node 7'"),
    ("usb-X_1-if00-port0=node 7;/dev/serial/by-id/usb-X_1-if00-port0=node 8",
     "port /dev/serial/by-id/usb-X_1-if00-port0 is already used by 'usb-X_1-if00-port0=node 7'"),
    # node lines
    ("/dev/ttyUSB0=node 255", "node id '255' is not 0..254"),
    ("/dev/ttyUSB0=node seven", "node id 'seven' is not 0..254"),
    ("/dev/ttyUSB0=node 7 7", "node 7 is listed twice"),
    ("/dev/ttyUSB0=node 1:smoke_heat", "'1:smoke_heat' is a Modbus detector, but this is a node"),
    ("/dev/ttyUSB0=node parity=E", "a node line takes baud= only (nodes talk 8N1)"),
    ("/dev/ttyUSB0=node 7;/dev/ttyUSB1=node 7",
     "'/dev/ttyUSB1=node 7': node 7 is already used by '/dev/ttyUSB0=node 7'; node ids must"),
    # Modbus buses
    ("/dev/ttyUSB1=modbus 1:smoke_heta",
     "'1:smoke_heta': unknown Modbus profile 'smoke_heta'; built in: gas_lel, smoke_heat"),
    ("/dev/ttyUSB1=modbus 1:/etc/wardgate/x.toml", "unknown Modbus profile '/etc/wardgate/x.toml'"),
    ("/dev/ttyUSB1=modbus 0:gas_lel", "'0:gas_lel': unit id '0' is not 1..247"),
    ("/dev/ttyUSB1=modbus 248:gas_lel", "unit id '248' is not 1..247"),
    ("/dev/ttyUSB1=modbus x1:gas_lel", "unit id 'x1' is not 1..247"),
    ("/dev/ttyUSB1=modbus 3:gas_lel 3:smoke_heat", "unit id 3 is used twice on this bus"),
    ("/dev/ttyUSB1=modbus 3:gas_lel:", "write a detector as UNIT:PROFILE or UNIT:PROFILE:NAME"),
    ("/dev/ttyUSB1=modbus 1:gas_lel:kitchen-extractor",
     "name 'kitchen-extractor' must be 1-12 letters, digits, '_' or '-'"),
    ("/dev/ttyUSB1=modbus", "a modbus line needs its detectors as UNIT:PROFILE"),
    ("/dev/ttyUSB1=modbus baud=9600", "a modbus line needs its detectors"),
    ("/dev/ttyUSB1=modbus 9600 1:gas_lel", "(a baud rate is written baud=9600)"),
    ("/dev/ttyUSB1=modbus baud=96000 1:gas_lel", "baud=96000 is not a standard rate"),
    ("/dev/ttyUSB1=modbus parity=X 1:gas_lel", "parity=X: use N (none), E (even) or O (odd)"),
    ("/dev/ttyUSB1=modbus stopbits=3 1:gas_lel", "stopbits=3: use 1 or 2"),
    ("/dev/ttyUSB1=modbus speed=9600 1:gas_lel", "unknown line setting 'speed=9600'"),
    ("/dev/ttyUSB1=modbus baud=9600 baud=19200 1:gas_lel", "baud= is given twice"),
    ("/dev/ttyUSB1=modbus 1:gas_lel;/dev/ttyUSB2=modbus 1:smoke_heat",
     "detector source 'd01' is already used by '/dev/ttyUSB1=modbus 1:gas_lel'; name one"),
    ("/dev/ttyUSB1=modbus 1:gas_lel:n07;/dev/ttyUSB0=node 7", "node 7 is already used by"),
    # the PORT=PROFILE@UNIT form of earlier templates
    ("/dev/ttyUSB1=smoke_heat@3",
     "a Modbus detector is UNIT:PROFILE on a modbus line: /dev/ttyUSB1=modbus 3:smoke_heat"),
]  # fmt: skip


@pytest.mark.parametrize(("cell", "expected"), SENSOR_PROBLEMS)
def test_sensor_problems_name_line_column_and_fix(cell, expected):
    cells = ["gw-1", "d01", "w1", "fire_point", "10000000aaaa0001", "", f'"{cell}"', ""]
    (found,) = problems(HEADER + ",".join(cells) + "\n")
    assert found.startswith("inv.csv:2:7: sensors: '"), found
    assert expected in found


def test_every_bad_row_is_reported_not_only_the_first():
    rows = [
        "gw-1,d01,w1,fire_point,10000000aaaa0001,,/dev/ttyUSB1=modbus 1:nope,",
        "gw-2,d01,w1,fire_point,10000000aaaa0002,,/dev/ttyUSB0=node 7,",
        "gw-3,d01,w1,fire_point,10000000aaaa0003,,/dev/ttyUSB0=node 300,",
    ]
    found = problems(HEADER + "\n".join(rows) + "\n")
    assert [f.split(": ")[0] for f in found] == ["inv.csv:2:7", "inv.csv:4:7"]


@pytest.mark.parametrize(
    ("cell", "ports"),
    [
        ("/dev/ttyUSB0=wardnode", [SensorPort("nodes1", "/dev/ttyUSB0", "node")]),
        (" /dev/ttyUSB0 = Node  7 ; ", [SensorPort("nodes1", "/dev/ttyUSB0", "node", (7,))]),
        (
            "/dev/ttyAMA0=node 0 254 baud=57600;/dev/ttyACM0=wardnode 3",
            [
                SensorPort("nodes1", "/dev/ttyAMA0", "node", (0, 254), baud=57600),
                SensorPort("nodes2", "/dev/ttyACM0", "node", (3,)),
            ],
        ),
        (
            "/dev/ttyUSB1=modbus parity=even stopbits=2 247:gas_lel;"
            "/dev/serial/by-id/usb-B-if00-port0=modbus 247:gas_lel:loft",
            [
                SensorPort(
                    "modbus1",
                    "/dev/ttyUSB1",
                    "modbus",
                    devices=(Detector(247, "gas_lel"),),
                    parity="E",
                    stopbits=2,
                ),
                SensorPort(
                    "modbus2",
                    "/dev/serial/by-id/usb-B-if00-port0",
                    "modbus",
                    devices=(Detector(247, "gas_lel", "loft"),),
                ),
            ],
        ),  # fmt: skip
    ],
)
def test_sensor_cells_that_are_accepted(cell, ports):
    assert list(parse_sensors(cell)) == ports


# Any sensors cell the syntax allows becomes a [serial] section the gateway's loader accepts, with
# exactly the ports, node ids, detectors and line settings the technician wrote.

PATHS = st.one_of(
    st.from_regex(r"/dev/tty(USB|ACM|AMA)[0-9]{1,2}", fullmatch=True),
    st.from_regex(r"usb-[A-Za-z0-9_]{1,24}-if0[0-3]-port0", fullmatch=True),
)
MAYBE = st.none


@st.composite
def serial_lines(draw):
    paths = draw(st.lists(PATHS, min_size=1, max_size=4, unique=True))
    lines = []
    for path in paths:
        if draw(st.booleans()):
            line = {
                "path": path,
                "protocol": "node",
                "nodes": draw(st.lists(st.integers(0, 254), unique=True, max_size=4)),
                "baud": draw(MAYBE() | st.sampled_from(BAUD_RATES)),
            }
        else:
            devices = draw(
                st.lists(
                    st.tuples(
                        st.integers(1, 247),
                        st.sampled_from(["smoke_heat", "gas_lel"]),
                        MAYBE() | st.from_regex(r"[a-z][a-z0-9_-]{0,11}", fullmatch=True),
                    ),
                    min_size=1,
                    max_size=4,
                    unique_by=lambda d: d[0],
                )
            )
            line = {
                "path": path,
                "protocol": "modbus",
                "devices": devices,
                "baud": draw(MAYBE() | st.sampled_from(BAUD_RATES)),
                "parity": draw(MAYBE() | st.sampled_from("NEO")),
                "stopbits": draw(MAYBE() | st.sampled_from([1, 2])),
            }
        lines.append(line)
    sources = [f"n{n:02d}" for line in lines for n in line.get("nodes", [])]
    sources += [
        name or f"d{unit:02d}" for line in lines for unit, _, name in line.get("devices", [])
    ]
    assume(len(set(sources)) == len(sources))
    return lines


def cell_text(lines) -> str:
    items = []
    for line in lines:
        words = [line["path"] + "=" + line["protocol"]]
        words += [f"{key}={line[key]}" for key in ("baud", "parity", "stopbits") if line.get(key)]
        words += [str(n) for n in line.get("nodes", [])]
        words += [":".join(str(p) for p in d if p is not None) for d in line.get("devices", [])]
        items.append(" ".join(words))
    return ";".join(items)


@settings(max_examples=60, deadline=None)
@given(serial_lines())
def test_any_valid_cell_becomes_the_serial_section_it_says(lines):
    cell = cell_text(lines)
    ports = parse_sensors(cell)
    config = from_dict(
        {
            "gateway": {"id": "gw-1", "district": "d01", "ward": "w1"},
            "serial": {"ports": [p.config_entry() for p in ports]},
        }
    )
    counts = {"node": 0, "modbus": 0}
    assert len(config.serial.ports) == len(lines)
    for line, port in zip(lines, config.serial.ports, strict=True):
        counts[line["protocol"]] += 1
        prefix = "nodes" if line["protocol"] == "node" else "modbus"
        assert port.name == f"{prefix}{counts[line['protocol']]}"
        assert (port.path, port.protocol) == (line["path"], line["protocol"])
        assert port.nodes == line.get("nodes", [])
        assert [(d.unit, d.profile, d.name) for d in port.devices] == line.get("devices", [])
        modbus = line["protocol"] == "modbus"  # Modbus RTU defaults 19200 8E1, nodes 115200 8N1
        assert port.baud == (line["baud"] or (19200 if modbus else 115200))
        assert port.parity == (line.get("parity") or ("E" if modbus else "N"))
        assert port.stopbits == (line.get("stopbits") or 1)
    assert parse_sensors(cell) == ports  # the same cell, the same ports
