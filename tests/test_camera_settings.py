"""Per-camera settings in the inventory, the smoke default of a fire point, and a camera's smoke
event reaching the fire brigade's store (issue 10).

The inventory's `cameras` column takes `NAME=SOURCE [fps=N] [smoke=on|off] [person=on|off]
[zone=PRESET]... [mask=PRESET]...`; at run time a fire point's cameras run the smoke cues unless
the camera (or `[vision]`) sets `smoke.enabled`, whether the config came from a bundle or by hand.
"""

from __future__ import annotations

import time
import tomllib

import pytest
import tomli_w

from edge import config as gw_config
from edge.vision.config import PRESETS
from provisioning.boot import template
from provisioning.bundle import config_dict
from provisioning.fleet import load_settings
from provisioning.inventory import InventoryError, parse
from sensor_drivers.config import PortSettings
from tests.central_support import CentralProcess
from tests.harness import GatewayProcess
from tests.test_provision_support import bundle_file, fleet_broker, make_fleet, run
from tests.vision_context import DATA

HEADER = "id,district,ward,site_type,hw_serial,cameras\n"
SMOKE_CLIP = DATA / "smoke_synthetic.mp4"


def row(cameras: str, site_type: str = "fire_point", gid: str = "fp-1") -> str:
    serial = "10000000" + gid.encode().hex()[:8]
    return f'{gid},d01,w1,{site_type},{serial},"{cameras}"\n'


def problems(text: str) -> list[str]:
    with pytest.raises(InventoryError) as exc:
        parse(text, "inv.csv")
    return exc.value.problems


def gateway_toml(site_type: str, cameras: str, vision: str = "") -> str:
    return f"""
[gateway]
id = "g1"
district = "d01"
ward = "w01"
site_type = "{site_type}"
{vision}
{cameras}
"""


CAMS = """
[[vision.cameras]]
name = "plain"
url = "rtsp://10.0.0.9/1"

[[vision.cameras]]
name = "off"
url = "rtsp://10.0.0.9/2"
smoke = {enabled = false}

[[vision.cameras]]
name = "tuned"
url = "rtsp://10.0.0.9/3"
smoke = {fps = 3.0}
"""


def smoke_of(cfg) -> dict[str, bool]:
    return {cam.name: cam.smoke.enabled for cam in cfg.vision.cameras}


# --- the inventory's camera settings ------------------------------------------------------------


def test_settings_become_the_camera_tables_of_the_bundle(tmp_path):
    cell = (
        "gate=rtsp://10.0.0.9/cam/realmonitor?channel=1&subtype=1 fps=3 zone=door "
        "zone=yard:left-half mask=top-strip;back=/dev/video0 SMOKE=Off person=no;lab=rtsp://x/s"
    )
    [gw] = parse(HEADER + row(cell), "inv.csv").rows
    fleet = make_fleet(tmp_path / "fleet")
    data = config_dict(gw, load_settings(fleet.settings_path))
    gate, back, lab = data["vision"]["cameras"]
    assert gate == {
        "name": "gate",
        "url": "rtsp://10.0.0.9/cam/realmonitor?channel=1&subtype=1",
        "fps": 3.0,
        "masks": [[list(p) for p in PRESETS["top-strip"]]],
        "zones": [
            {"name": "door", "polygon": [list(p) for p in PRESETS["door"]]},
            {"name": "yard", "polygon": [list(p) for p in PRESETS["left-half"]]},
        ],
    }
    assert back == {
        "name": "back",
        "device": "/dev/video0",
        "person": {"enabled": False},
        "smoke": {"enabled": False},
    }
    assert lab == {"name": "lab", "url": "rtsp://x/s"}  # nothing set: nothing written
    # the gateway's loader takes it; the fire point's default turns smoke on where not set
    cfg = gw_config.from_dict(data, "config.toml", tomli_w.dumps(data))
    assert smoke_of(cfg) == {"gate": True, "back": False, "lab": True}
    assert [z.name for z in cfg.vision.cameras[0].zones] == ["door", "yard"]
    assert cfg.vision.cameras[1].person.enabled is False


def test_a_row_without_settings_keeps_its_fingerprint():
    """Bundles of existing camera rows are not rebuilt: the hash is the one from before."""
    text = "id,district,ward,site_type,hw_serial,cameras,labels\n" + (
        "fp-1,d01,w1,fire_point,10000000a1b2c3d4,gate=rtsp://10.0.0.9/s1;yard=/dev/video0,"
        "cam/gate=street\n"
    )
    [gw] = parse(text).rows
    assert gw.fingerprint() == "33e8a6d67ac92bc75d63ea19bcd3c4d669064b646f3438359fbf18121bd687ea"
    [tuned] = parse(text.replace("/s1;", "/s1 fps=2;")).rows
    assert tuned.fingerprint() != gw.fingerprint()


@pytest.mark.parametrize(
    ("site_type", "cell", "expected"),
    [
        ("fire_point", "gate=rtsp://x/1 fps=1",
         "camera 'gate': fps=1 is too slow for the smoke cues (at a fire_point smoke is on by "
         "default; they need 1.5 to 3 frames per second): write fps=2 or more, or smoke=off"),
        ("police_post", "gate=rtsp://x/1 fps=1 smoke=on", "(smoke=on; they need 1.5 to 3"),
        ("police_post", "gate=rtsp://x/1 fps=fast", "fps=fast: write the analysed frames per"),
        ("police_post", "gate=rtsp://x/1 fps=90", "a number from 0.1 to 60"),
        ("police_post", "gate=rtsp://x/1 zone=dor",
         "zone=dor: unknown preset 'dor'; presets: full, left-half, right-half, top-half, "
         "bottom-half, centre, door, top-strip, bottom-strip"),
        ("police_post", "gate=rtsp://x/1 mask=full", "mask=full hides the whole picture"),
        ("police_post", "gate=rtsp://x/1 mask=door mask=door", "mask=door is given twice"),
        ("police_post", "gate=rtsp://x/1 smoke=maybe", "smoke=maybe: write smoke=on or smoke=off"),
        ("police_post", "gate=rtsp://x/1 colour=on", "'colour=on' is not a camera setting"),
        ("police_post", "gate=rtsp://x/my stream", "(a space in the source? write it as %20)"),
        ("police_post", "gate=rtsp://x/1 zone=door zone=door",
         "zone 'door' is given twice; name a second zone on the same preset: zone=NAME:door"),
        ("police_post", "gate=rtsp://x/1 zone=a/b:door", "zone=a/b:door: the zone name"),
        ("police_post", "gate=rtsp://x/1 fps=5 fps=2", "fps= is given twice"),
    ],
)  # fmt: skip
def test_wrong_settings_name_line_column_and_fix(site_type, cell, expected):
    text = HEADER + row("ok=rtsp://x/0", gid="fp-0") + row(cell, site_type)
    [found] = problems(text)
    assert found.startswith("inv.csv:3:6: cameras: "), found
    assert expected in found


def test_every_wrong_row_is_reported_in_one_pass():
    text = HEADER + row("a=rtsp://x/1 fps=1", gid="fp-1") + row("a=rtsp://x/1 zone=x", gid="fp-2")
    found = problems(text)
    assert [p.split(": ")[0] for p in found] == ["inv.csv:2:6", "inv.csv:3:6"]


def test_slow_camera_without_smoke_at_a_fire_point_is_fine():
    [gw] = parse(HEADER + row("gate=rtsp://x/1 fps=1 smoke=off")).rows
    assert gw.cameras[0].fps == 1.0 and gw.cameras[0].smoke is False


def test_template_uses_camera_settings_and_says_the_right_line_defaults():
    text = template("inventory.csv")
    inv = parse(text, "template")
    gate = inv.by_id()["pp-d03-001"].cameras[0]
    assert gate.zones == (("door", "door"),) and gate.masks == ("top-strip",)
    # what the defaults line says is what the gateway does with a line that sets nothing
    [line] = parse(
        "id,district,ward,site_type,hw_serial,sensors\n"
        "fp-1,d01,w1,fire_point,10000000a1b2c3d4,"
        "/dev/ttyUSB0=node 7;/dev/ttyUSB1=modbus 1:smoke_heat\n"
    ).rows
    node, modbus = (PortSettings.model_validate(p.config_entry()) for p in line.sensors)
    assert (modbus.baud, modbus.parity, modbus.stopbits) == (19200, "E", 1)
    assert (node.baud, node.parity, node.stopbits) == (115200, "N", 1)
    assert "modbus 19200 baud, parity E, 1 stop bit (19200 8E1" in text
    assert "node 115200 baud 8N1" in text
    assert "Defaults: 115200 baud, parity N" not in text


# --- site_type at run time: the same for a hand-written config --------------------------------


@pytest.mark.parametrize(
    ("site_type", "expected"),
    [
        ("fire_point", {"plain": True, "off": False, "tuned": True}),
        ("police_post", {"plain": False, "off": False, "tuned": False}),
        ("demo", {"plain": False, "off": False, "tuned": False}),
    ],
)
def test_site_type_sets_the_smoke_default(site_type, expected):
    cfg = gw_config.parse(gateway_toml(site_type, CAMS))
    assert smoke_of(cfg) == expected
    assert cfg.vision.cameras[2].smoke.fps == 3.0  # the camera's own smoke keys are kept


def test_vision_level_smoke_setting_wins_over_the_site_default():
    off = gw_config.parse(gateway_toml("fire_point", CAMS, "[vision]\nsmoke = {enabled = false}"))
    assert smoke_of(off) == {"plain": False, "off": False, "tuned": False}
    on = gw_config.parse(gateway_toml("police_post", CAMS, "[vision]\nsmoke = {enabled = true}"))
    assert smoke_of(on) == {"plain": True, "off": False, "tuned": True}


def test_a_drop_in_switches_smoke_off_at_a_fire_point(tmp_path):
    main = tmp_path / "config.toml"
    main.write_text(gateway_toml("fire_point", CAMS))
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "10-site.toml").write_text(
        '[[vision.cameras]]\nname = "plain"\n[vision.cameras.smoke]\nenabled = false\n'
    )
    assert smoke_of(gw_config.load(main)) == {"plain": False, "off": False, "tuned": True}
    checked = gw_config.check(main, files=False)
    assert checked.problems == []
    shown = "\n".join(gw_config.effective_lines(checked.config, checked.origins))
    assert "vision.cameras[0].smoke.enabled = false    # " + str(tmp_path / "conf.d") in shown
    assert "vision.cameras[2].smoke.enabled = true    # default" in shown


def test_a_wrong_config_is_still_reported_at_its_line():
    text = gateway_toml("fire_point", CAMS.replace("fps = 3.0", "fps = 9.0"))
    with pytest.raises(gw_config.ConfigError) as exc:
        gw_config.parse(text, "config.toml")
    [problem] = exc.value.problems
    assert problem.startswith(
        "config.toml:21: vision.cameras[2].smoke.fps: Input should be less than or equal to 3"
    ), problem


# --- end to end: a fire point's camera smoke reaches the brigade's store -----------------------


def test_fire_point_camera_smoke_reaches_the_brigade(tmp_path):
    """inventory (no smoke setting) -> provision run -> bundle config.toml -> `wardgate run` at a
    fire point with the synthetic smoke clip -> the fleet's Mosquitto and ACL -> `wardgate
    central run` as the district's receiver rx-d01 -> a "smoke" incident in the store."""
    t0 = time.monotonic()
    inventory = (
        "id,district,ward,site_type,hw_serial,cameras,network\n"
        f"fp-cam,d01,w1,fire_point,10000000000000f1,cam1=file://{SMOKE_CLIP} fps=4 person=off,"
        "dhcp\n"
    )
    fleet = make_fleet(tmp_path / "fleet", inventory)
    run(fleet)
    etc = bundle_file(fleet, "fp-cam", "config.toml").parent
    data = tomllib.loads((etc / "config.toml").read_text())
    assert data["vision"]["cameras"] == [
        {"name": "cam1", "file": str(SMOKE_CLIP), "fps": 4.0, "person": {"enabled": False}}
    ]  # no smoke key: the fire point's default switches it on
    with fleet_broker(fleet, tmp_path / "broker") as broker:
        data["uplink"].update(
            host="127.0.0.1", port=broker.cert_port, keepalive_s=5, backoff_initial_s=0.2,
            backoff_max_s=1.0, password_file=str(etc / "mqtt.password"),
            tls={"ca": str(etc / "tls/ca.crt"), "cert": str(etc / "tls/gateway.crt"),
                 "key": str(etc / "tls/gateway.key")},
        )  # fmt: skip
        data["outbox"] = {"path": str(tmp_path / "outbox.sqlite3")}
        data["health"] = {"heartbeat_s": 30.0}
        config = tmp_path / "gw" / "config.toml"
        config.parent.mkdir()
        config.write_text(tomli_w.dumps(data))
        central = tmp_path / "central.toml"
        central.write_text(
            f"""
[broker]
host = "127.0.0.1"
port = {broker.password_port}
username = "rx-d01"
password_file = "{fleet.accounts_dir / "rx-d01.password"}"
ca = "{fleet.ca_dir / "ca.crt"}"
districts = ["d01"]
client_id = "rx-d01"
keepalive_s = 5

[store]
url = "sqlite:///{tmp_path / "central.db"}"
"""
        )
        rx = CentralProcess(broker, tmp_path, config=central)
        rx.url = f"sqlite:///{tmp_path / 'central.db'}"
        rx.start()
        gateway = GatewayProcess(config).start()
        try:
            deadline = time.monotonic() + 25
            smoke: list[dict] = []
            while time.monotonic() < deadline and not smoke:
                assert gateway.proc.poll() is None, gateway.log()[-3000:]
                smoke = [i for i in rx.store.queue() if i["category"] == "smoke"]
                time.sleep(0.2)
            assert smoke, f"no smoke incident\n{gateway.log()[-3000:]}\n{rx.output()[-2000:]}"
            [incident] = smoke
            assert incident["site"] == "d01/w1/fp-cam" and incident["source"] == "cam/cam1"
            [event] = [e for e in rx.events("smoke") if e["incident_id"] == incident["id"]]
            assert event["data"]["ev"] == "start" and event["data"]["area"] >= 0.03
        finally:
            code = gateway.terminate()
            rx.stop()
    assert code == 0, gateway.log()[-3000:]
    assert "Traceback" not in gateway.log(), gateway.log()[-3000:]
    assert time.monotonic() - t0 < 30
