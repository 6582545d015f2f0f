"""The inventory CSV: the template is valid, and every problem names its line, column and fix."""

from __future__ import annotations

import pytest

from provisioning.boot import template
from provisioning.inventory import InventoryError, Network, SensorLink, load, parse

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
        SensorLink("/dev/ttyUSB0", "wardnode"),
        SensorLink("/dev/ttyUSB1", "modbus-panel", 3),
    )
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
        (6, "gate", "write cameras as name=source"),
        (6, "gate=ftp://x/y", "source must be an rtsp://"),
        (6, "a=/dev/video0;a=/dev/video1", "camera name 'a' is used twice"),
        (7, "ttyUSB0=wardnode", "the port must be a device path"),
        (7, "/dev/ttyUSB0=modbus@300", "bus address must be 1..247"),
        (7, "/dev/ttyUSB0=Ward Node", "must be lower-case"),
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
        "cameras, sensors, network, notes)",
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
