"""Site metadata end to end (issue 9): `[site]` and per-source labels in the gateway config, the
inventory columns that fill them, the bundle, the registry's `export-sites`, and the retained
`state` (birth) of a real `wardgate run` gateway on a private Mosquitto.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge import config
from provisioning import bundle
from provisioning.boot import template
from provisioning.inventory import SITE_COLUMNS, InventoryError, parse
from tests.harness import REPO, GatewayProcess, Watcher, gateway_config_text, write_config
from tests.test_provision_support import PASSPHRASE, make_fleet

GATEWAY = """\
config_version = 2

[gateway]
id = "fp-0012"
district = "d03"
ward = "w12"
site_type = "fire_point"
"""

SITE = """
[site]
name = "Fire point 12, Hauptstraße school"
address = "Hauptstraße 12, 10115 Berlin"
latitude = 52.52
longitude = 13.405
contact_name = "Caretaker J. Weber"
contact_phone = "+49 (30) 1234-567"
access = \"\"\"Key box left of the main gate.
Code from the caretaker.\"\"\"
notes = "Gas cylinders in the kitchen store"
"""

SENSORS = """
[[serial.ports]]
name = "nodes1"
path = "/dev/ttyUSB0"
protocol = "node"
nodes = [7, 8]
labels = { n07 = "kitchen node", "n07/smoke" = "kitchen smoke, 2nd floor" }

[[serial.ports]]
name = "rs485"
path = "/dev/ttyUSB1"
protocol = "modbus"
[[serial.ports.devices]]
unit = 1
profile = "smoke_heat"
[serial.ports.labels]
d01 = "boiler room detector"
"d01/heat" = "boiler room heat"

[[vision.cameras]]
name = "gate"
url = "rtsp://192.0.2.10/s1"
enabled = false
label = "street north"
"""

LABELS = {
    "cam/gate": "street north",
    "d01": "boiler room detector",
    "d01/heat": "boiler room heat",
    "n07": "kitchen node",
    "n07/smoke": "kitchen smoke, 2nd floor",
}


def wardgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def problems_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "config.toml"
    path.write_text(text)
    result = config.check(path, files=False)
    assert result.config is None, "expected problems"
    return result.problems


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# --- config --------------------------------------------------------------------------------


def test_site_and_labels_load_and_form_the_birth(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(GATEWAY + SITE + SENSORS)
    result = config.check(path, files=False)
    assert result.problems == [] and result.warnings == []
    cfg = result.config
    assert cfg.site.birth() == {
        "name": "Fire point 12, Hauptstraße school",
        "address": "Hauptstraße 12, 10115 Berlin",
        "latitude": 52.52,
        "longitude": 13.405,
        "contact_name": "Caretaker J. Weber",
        "contact_phone": "+49 (30) 1234-567",
        "access": "Key box left of the main gate.\nCode from the caretaker.",
        "notes": "Gas cylinders in the kitchen store",
    }
    assert {**cfg.serial.source_labels(), **cfg.vision.source_labels()} == LABELS


@pytest.mark.parametrize(
    ("snippet", "needle", "expected"),
    [
        ("latitude = 95.0\nlongitude = 13.4", "latitude", "site.latitude: Input should be less"),
        ("longitude = -181\nlatitude = 1", "longitude", "site.longitude: Input should be greater"),
        ('contact_phone = "call the caretaker"', "contact_phone", "is not a phone number"),
        ('contact_phone = "12"', "contact_phone", "is not a phone number"),
        (f'name = "{"x" * 201}"', "name", "is 201 characters long; at most 200"),
        ('address = "Hauptstr.\\n12"', "address", "must be one line"),
        ('contact_name = "   "', "contact_name", "is empty"),
        (f'notes = "{"n" * 1001}"', "notes", "at most 1000"),
        ("latitude = 52.5", "[site]", "latitude is given without longitude: give both"),
        ("longitude = 13.4", "[site]", "longitude is given without latitude: give both"),
        ('latitude = "52.5"\nlongitude = 13.4', "latitude", "must be a number, not a string"),
        ('phone = "110"', "phone", "unknown key"),
    ],
)
def test_bad_site_values_name_their_file_and_line(tmp_path, snippet, needle, expected):
    text = GATEWAY + "\n[site]\n" + snippet + "\n"
    [problem] = problems_of(tmp_path, text)
    assert problem.startswith(f"{tmp_path / 'config.toml'}:{line_of(text, needle)}: "), problem
    assert expected in problem, problem


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ('n09 = "x"', "'n09': no node or detector 'n09' on this line (it has: n07, n08)"),
        ('"n07/Bad Name" = "x"', "'Bad Name' is not a sensor name"),
        ('"cam/gate" = "x"', "'cam/gate': no node or detector 'cam'"),
        (f'n07 = "{"x" * 81}"', "is 81 characters long; at most 80"),
        ('n07 = "a\\tb"', "contains a control character"),
    ],
)
def test_bad_port_labels_name_the_labels_line(tmp_path, labels, expected):
    text = (
        GATEWAY + '\n[[serial.ports]]\nname = "n"\npath = "/dev/ttyUSB0"\nprotocol = "node"\n'
        "nodes = [7, 8]\n[serial.ports.labels]\n" + labels + "\n"
    )
    [problem] = problems_of(tmp_path, text)
    needle = labels.split(" =")[0]
    wanted = line_of(text, needle) if "characters" in expected or "control" in expected else None
    wanted = wanted or line_of(text, "[serial.ports.labels]")
    assert problem.startswith(f"{tmp_path / 'config.toml'}:{wanted}: serial.ports[0].labels"), (
        problem
    )
    assert expected in problem, problem


def test_modbus_labels_follow_the_profile_and_every_wrong_one_is_listed(tmp_path):
    text = (
        GATEWAY + '\n[[serial.ports]]\nname = "bus"\npath = "/dev/ttyUSB1"\nprotocol = "modbus"\n'
        '[[serial.ports.devices]]\nunit = 1\nprofile = "smoke_heat"\n'
        '[serial.ports.labels]\n"d01/gas" = "x"\nd02 = "y"\n'
    )
    [problem] = problems_of(tmp_path, text)
    assert f":{line_of(text, '[serial.ports.labels]')}: serial.ports[0].labels: " in problem
    assert "'d01/gas': detector d01 (profile smoke_heat) has no sensor 'gas'" in problem
    assert "'d02': no node or detector 'd02' on this line (it has: d01)" in problem


def test_camera_label_is_bounded_and_not_inherited_from_vision(tmp_path):
    camera = '[[vision.cameras]]\nname = "gate"\nurl = "rtsp://h/s"\n'
    text = GATEWAY + "\n" + camera + f'label = "{"y" * 81}"\n'
    [problem] = problems_of(tmp_path, text)
    assert f":{line_of(text, 'label =')}: vision.cameras[0].label: is 81 characters" in problem
    text = GATEWAY + '\n[vision]\nlabel = "everywhere"\n'
    [problem] = problems_of(tmp_path, text)
    assert "vision.label: unknown key" in problem


def test_check_config_warns_a_fire_point_without_a_site_but_not_a_demo(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(GATEWAY)
    out = wardgate("check-config", "--no-files", str(path))
    assert out.returncode == 0, out.stderr
    assert f"{path}: site: warning: no [site] name, address or coordinates" in out.stderr
    assert "'fp-0012'" in out.stderr
    path.write_text(GATEWAY.replace("fire_point", "demo"))
    out = wardgate("check-config", "--no-files", str(path))
    assert out.returncode == 0 and "site" not in out.stderr, out.stderr
    path.write_text(GATEWAY + '\n[site]\naddress = "Hauptstraße 12"\n')
    out = wardgate("check-config", "--no-files", str(path))
    assert out.returncode == 0 and "warning" not in out.stderr, out.stderr


def test_drop_ins_add_labels_by_the_keyed_merge(tmp_path):
    """A site's conf.d adds a label to a port (merged by name) and to a camera (by name), and
    overrides one key of [site]; the rest of each layer stays."""
    path = tmp_path / "config.toml"
    path.write_text(GATEWAY + SITE + SENSORS)
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "10-labels.toml").write_text(
        '[site]\ncontact_phone = "+49 30 999"\n'
        '[[serial.ports]]\nname = "nodes1"\n[serial.ports.labels]\n"n08/heat" = "hall heat"\n'
        '[[vision.cameras]]\nname = "gate"\nlabel = "gate, street side"\n'
    )
    cfg = config.load(path)
    assert cfg.site.contact_phone == "+49 30 999" and cfg.site.name.startswith("Fire point 12")
    assert cfg.serial.source_labels() == {
        "n07": "kitchen node",
        "n07/smoke": "kitchen smoke, 2nd floor",
        "n08/heat": "hall heat",
        "d01": "boiler room detector",
        "d01/heat": "boiler room heat",
    }
    assert cfg.vision.source_labels() == {"cam/gate": "gate, street side"}
    assert [p.name for p in cfg.serial.ports] == ["nodes1", "rs485"]


# --- inventory -> bundle -> config ---------------------------------------------------------

HEADER = (
    "id,district,ward,site_type,hw_serial,cameras,sensors,"
    "site_name,address,latitude,longitude,contact_name,contact_phone,access,site_notes,labels\n"
)
CAMERAS = "gate=rtsp://10.0.0.9/s1"
LINES = "/dev/ttyUSB0=node 7 8;/dev/ttyUSB1=modbus 1:smoke_heat 12:gas_lel:kitchen"
GOOD_ROW = (
    f"fp-a,d03,w12,fire_point,10000000000000a1,{CAMERAS},{LINES},"
    '"Fire point 12, Hauptstraße school",Hauptstraße 12,52.5200,13.4050,J. Weber,'
    '+49 30 1234-567,"Key box left of the gate\nCode from the caretaker",Gas store,'
    '"n07/smoke=kitchen smoke, 2nd floor; cam/gate=street north; d01=boiler room; '
    'kitchen/gas=kitchen gas"\n'
)


def inventory_problems(text: str) -> list[str]:
    with pytest.raises(InventoryError) as info:
        parse(text, "inv.csv")
    return info.value.problems


def test_check_inventory_names_each_bad_site_cell_with_line_column_and_fix(tmp_path):
    rows = [
        # line 2: latitude out of range (a swap), a phone that is not one
        "fp-b,d03,w12,fire_point,10000000000000b1,,,,,95,52,,call me,,,\n",
        # line 3: half a coordinate pair; an over-long site name
        f"fp-c,d03,w12,fire_point,10000000000000c1,,,{'s' * 201},,,13.4,,,,,\n",
        # line 4: labels for sources no configured sensor or camera has, a camera by bare name
        f"fp-d,d03,w12,fire_point,10000000000000d1,{CAMERAS},{LINES},,,,,,,,,"
        '"n09/smoke=x; gate=y; cam/yard=z; d01/gas=w; n07=' + "l" * 81 + '"\n',
        # line 5: not a number
        "fp-e,d03,w12,fire_point,10000000000000e1,,,,,52;5,13.4,,,,,\n",
    ]
    path = tmp_path / "inv.csv"
    path.write_text(HEADER + "".join(rows))
    out = wardgate("provision", "check-inventory", str(path))
    assert out.returncode == 1
    p = str(path)
    assert out.stderr.splitlines() == [
        f"{p}:2:10: latitude: 95 is outside -90..90 degrees (latitude and longitude swapped?)",
        f"{p}:2:13: contact_phone: is not a phone number: digits, spaces and + - ( ) / . only, "
        "3 to 40 characters, e.g. +49 30 1234-567",
        f"{p}:3:8: site_name: is 201 characters long; at most 200",
        f"{p}:3:11: longitude: longitude is given without latitude: give both coordinates "
        "(WGS 84 degrees, e.g. 52.5200, 13.4050) or neither",
        f"{p}:4:16: labels: 'n09/smoke': no camera or sensor of this row sends events from it "
        "(this row has: cam/gate, d01, kitchen, n07, n08; a node's sensors are nNN/NAME, "
        "e.g. n07/smoke)",
        f"{p}:4:16: labels: 'gate': a camera's events come from cam/gate: write cam/gate=...",
        f"{p}:4:16: labels: 'cam/yard': no camera 'yard' in this row's cameras column "
        "(cameras: cam/gate)",
        f"{p}:4:16: labels: 'd01/gas': detector d01 (profile smoke_heat) has no sensor 'gas'; "
        "it has: heat, smoke",
        f"{p}:4:16: labels: n07: the label is 81 characters long; at most 80",
        f"{p}:5:10: latitude: '52;5' is not a number: write decimal degrees with a point, "
        "e.g. 52.5200",
    ]


def test_template_documents_and_fills_the_site_columns():
    inv = parse(template("inventory.csv"), "template")
    fire = inv.by_id()["fp-d03-002"]
    assert fire.site["name"] == "Fire point 12, Hauptstraße school"
    assert (fire.site["latitude"], fire.site["longitude"]) == (52.52, 13.405)
    assert fire.labels["n07/smoke"] == "kitchen smoke, 2nd floor"
    assert inv.by_id()["fp-d04-001"].site == {}
    text = template("inventory.csv")
    for column in [*SITE_COLUMNS, "labels"]:
        assert f"#   {column}" in text, column


def test_fingerprint_is_unchanged_for_a_row_without_site_columns():
    """Upgrading wardgate must not rebuild every bundle: a row without site data keeps the
    fingerprint it had before the site columns existed."""
    plain = "id,district,ward,site_type,hw_serial\nfp-a,d03,w12,fire_point,10000000000000a1\n"
    with_cols = HEADER + "fp-a,d03,w12,fire_point,10000000000000a1,,,,,,,,,,,\n"
    [a], [b] = parse(plain).rows, parse(with_cols).rows
    assert a.fingerprint() == b.fingerprint()
    [c] = parse(HEADER + GOOD_ROW).rows
    assert c.fingerprint() != a.fingerprint()


def test_inventory_to_bundle_to_config_round_trip_and_export_sites(tmp_path):
    fleet = make_fleet(tmp_path / "fleet", inventory=HEADER + GOOD_ROW)
    env = {"WARDGATE_CA_PASSPHRASE": PASSPHRASE.decode()}
    inventory = str(fleet.root / "inventory.csv")
    out = wardgate("provision", "run", str(fleet.root), "-i", inventory, "--no-progress", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    path = fleet.bundle("fp-a") / bundle.CONFIG
    out = wardgate("check-config", "--no-files", str(path))
    assert out.returncode == 0 and "warning" not in out.stderr, out.stderr
    cfg = config.load(path)
    assert cfg.site.birth() == {
        "name": "Fire point 12, Hauptstraße school",
        "address": "Hauptstraße 12",
        "latitude": 52.52,
        "longitude": 13.405,
        "contact_name": "J. Weber",
        "contact_phone": "+49 30 1234-567",
        "access": "Key box left of the gate\nCode from the caretaker",
        "notes": "Gas store",
    }
    labels = {
        "cam/gate": "street north",
        "d01": "boiler room",
        "kitchen/gas": "kitchen gas",
        "n07/smoke": "kitchen smoke, 2nd floor",
    }
    assert {**cfg.serial.source_labels(), **cfg.vision.source_labels()} == labels
    nodes, bus = cfg.serial.ports
    assert nodes.labels == {"n07/smoke": "kitchen smoke, 2nd floor"}
    assert bus.labels == {"d01": "boiler room", "kitchen/gas": "kitchen gas"}

    exported = tmp_path / "sites.json"
    out = wardgate("provision", "export-sites", str(fleet.root), "--out", str(exported))
    assert out.returncode == 0, out.stderr
    doc = json.loads(exported.read_text(encoding="utf-8"))
    assert doc["format"] == "wardgate-sites/1"
    [gw] = doc["gateways"]
    assert {k: gw[k] for k in ("id", "district", "ward", "site_type", "topic")} == {
        "id": "fp-a",
        "district": "d03",
        "ward": "w12",
        "site_type": "fire_point",
        "topic": "wg/v1/d03/w12/fp-a",
    }
    assert gw["site"] == cfg.site.birth() and gw["labels"] == labels

    # a changed address reaches the bundle and the export on the next run
    (fleet.root / "inventory.csv").write_text(
        HEADER + GOOD_ROW.replace("Hauptstraße 12,", "Hauptstraße 14,")
    )
    out = wardgate("provision", "run", str(fleet.root), "-i", inventory, "--no-progress", env=env)
    assert out.returncode == 0 and "~ fp-a: config updated" in out.stdout, out.stdout
    assert config.load(path).site.address == "Hauptstraße 14"
    out = wardgate("provision", "export-sites", str(fleet.root))
    assert json.loads(out.stdout)["gateways"][0]["site"]["address"] == "Hauptstraße 14"


# --- a real gateway's retained state -------------------------------------------------------


def test_real_gateway_birth_carries_site_and_labels_and_a_reload_republishes(broker, tmp_path):
    """`wardgate run` on a private Mosquitto: the retained `state` carries `site` and `labels`;
    a conf.d change to [site] is applied by `reload` without restarting pipelines and the
    retained state follows at once; the offline state after a clean stop still says where."""
    extra = SITE + (
        '\n[[vision.cameras]]\nname = "gate"\nurl = "rtsp://192.0.2.10/s1"\nenabled = false\n'
        'label = "street north"\n'
    )
    path = write_config(tmp_path, gateway_config_text(broker, tmp_path, extra=extra))
    # what install.sh writes next to the config once the first-boot install succeeded
    installed = {"installed_at": "2026-11-30T03:00:00+00:00", "version": "0.1.0", "result": "ok"}
    (path.parent / "installed.json").write_text(json.dumps(installed))
    gw = GatewayProcess(path).start()
    watcher = Watcher(broker, topic="wg/v1/d01/w01/+/state", client_id="site-watcher")
    try:
        watcher.wait_for(lambda: watcher.on("/state"), what="the gateway's birth")
        birth = json.loads(watcher.on("/state")[-1].payload.decode("utf-8"))
        assert birth["online"] is True and birth["site_type"] == "fire_point"
        assert birth["install"] == installed  # the fleet sees each gateway's install
        assert birth["site"]["name"] == "Fire point 12, Hauptstraße school"
        assert (birth["site"]["latitude"], birth["site"]["longitude"]) == (52.52, 13.405)
        assert birth["site"]["access"] == "Key box left of the main gate.\nCode from the caretaker."
        assert birth["labels"] == {"cam/gate": "street north"}

        (tmp_path / "conf.d").mkdir()
        (tmp_path / "conf.d" / "10-site.toml").write_text('[site]\nname = "Fire point 12a"\n')
        base = "wg/v1/d01/w01/" + birth["gateway"]
        operator = Watcher(broker, topic=f"{base}/cmd/res", client_id="site-cmd")
        operator.publish(f"{base}/cmd/reload", b'{"id": 1}')
        operator.wait_for(lambda: operator.on("/cmd/res"), what="the reload reply")
        reply = json.loads(operator.on("/cmd/res")[-1].payload)
        operator.stop()
        assert reply["ok"], reply
        result = reply["result"]
        assert result["applied"] == ["site"] and result["restarted"] is False, result
        assert result["state_published"] is True, result
        watcher.wait_for(
            lambda: (
                json.loads(watcher.on("/state")[-1].payload)["site"]["name"] == "Fire point 12a"
            ),
            what="the birth re-published with the new site name",
        )
        # retained: a console that subscribes now gets the new one
        fresh = Watcher(broker, topic=f"{base}/state", client_id="site-fresh")
        fresh.wait_for(lambda: fresh.on("/state"), what="the retained state")
        state = json.loads(fresh.on("/state")[-1].payload)
        fresh.stop()
        assert state["site"]["name"] == "Fire point 12a" and state["labels"] == birth["labels"]

        assert gw.terminate() == 0
        watcher.wait_for(
            lambda: json.loads(watcher.on("/state")[-1].payload)["online"] is False,
            what="the offline state",
        )
        gone = json.loads(watcher.on("/state")[-1].payload)
        assert gone["site"]["name"] == "Fire point 12a" and gone["labels"] == birth["labels"]
    finally:
        watcher.stop()
        if gw.proc is not None and gw.proc.poll() is None:
            gw.terminate()
