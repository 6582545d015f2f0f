"""Config layering (issue 14): conf.d drop-ins, keyed merges, camera inheritance, versions and
migrations, fleet [config.*] through a real bundle, reload metadata and a live reload of conf.d.

Real files, the real `wardgate` command as a subprocess, a real gateway process and Mosquitto.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from edge import config
from edge.layering import CURRENT_VERSION, Layer, merge, migrate
from provisioning import bundle
from tests.harness import REPO, GatewayProcess, Watcher, gateway_config_text, write_config
from tests.test_provision_support import PASSPHRASE, make_fleet

MAIN = """\
[gateway]
id = "fp-0007"
district = "d03"
ward = "w112"

[health]
heartbeat_s = 30

[vision]
fps = 2
stall_timeout_s = 20
[vision.smoke]
enabled = true

[[vision.cameras]]
name = "gate"
url = "rtsp://192.0.2.10/s2"

[[vision.cameras]]
name = "yard"
url = "rtsp://192.0.2.11/s2"
fps = 4
[vision.cameras.smoke]
confirm_s = 8
"""


def wardgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def site(tmp_path: Path, main: str = MAIN, **drop_ins: str) -> Path:
    path = tmp_path / "config.toml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text(main)
    if drop_ins:
        (tmp_path / "conf.d").mkdir()
    for name, text in drop_ins.items():
        (tmp_path / "conf.d" / name).write_text(text)
    return path


def test_every_layers_problems_at_once_each_with_its_own_file_and_line(tmp_path):
    path = site(
        tmp_path,
        MAIN.replace("heartbeat_s = 30", 'heartbeat_s = 30\nwatchdog = "yes"'),
        **{
            "10-site.toml": '# commissioning page\n\n[health]\nheartbeat_s = "60"\n',
            "20-cams.toml": '[[vision.cameras]]\nname = "gate"\nfps = 600\n',
            "30-broken.toml": "[uplink\nhost = 1\n",
            "README": "not a drop-in: no .toml suffix",
            ".40-editing.toml": "[health]\nheartbeat_s = -1\n",
        },
    )
    out = wardgate("check-config", "--no-files", str(path))
    assert out.returncode == 3, out.stderr
    d = tmp_path / "conf.d"
    lines = out.stderr.splitlines()
    assert lines == [
        f"{path}:8: health.watchdog: must be true or false, not a string: write it "
        "without quotes (got 'yes')",
        f"{d}/10-site.toml:4: health.heartbeat_s: must be a number, not a string: write it "
        "without quotes (got '60')",
        f"{d}/20-cams.toml:3: vision.cameras[0].fps: Input should be less than or equal to 60 "
        "(got 600)",
        f"{d}/30-broken.toml:1: not valid TOML: Expected ']' at the end of a table declaration "
        "(at line 1, column 8)",
    ], out.stderr


def test_drop_ins_merge_in_name_order_and_cameras_merge_by_name(tmp_path):
    path = site(
        tmp_path,
        **{
            "20-later.toml": "[health]\nheartbeat_s = 90\n",
            "10-site.toml": (
                "[health]\nheartbeat_s = 60\nwatchdog = false\n\n"
                '[[vision.cameras]]\nname = "gate"\nfps = 1\n'
                "[vision.cameras.person]\nthreshold = 0.6\n\n"
                '[[vision.cameras]]\nname = "back"\ndevice = "/dev/video0"\n'
                '[[vision.cameras.zones]]\nname = "door"\n'
                "polygon = [[0, 0], [1, 0], [1, 1]]\n"
            ),
        },
    )
    cfg = config.load(path)
    assert cfg.health.heartbeat_s == 90 and cfg.health.watchdog is False  # 20- wins, key by key
    cams = {c.name: c for c in cfg.vision.cameras}
    assert [c.name for c in cfg.vision.cameras] == ["gate", "yard", "back"]  # merged, appended
    assert cams["gate"].url == "rtsp://192.0.2.10/s2" and cams["gate"].fps == 1
    assert cams["gate"].person.threshold == 0.6
    assert cams["back"].zones[0].name == "door"

    out = wardgate("check-config", "--no-files", "--show", str(path))
    assert out.returncode == 0, out.stderr
    assert "merged with 2 drop-in(s)" in out.stdout
    shown = out.stdout
    d = tmp_path / "conf.d"
    assert f"health.heartbeat_s = 90.0    # {d}/20-later.toml:2" in shown
    assert f"health.watchdog = false    # {d}/10-site.toml:3" in shown
    assert f'vision.cameras[0].url = "rtsp://192.0.2.10/s2"    # {path}:17' in shown
    assert f"vision.cameras[0].fps = 1.0    # {d}/10-site.toml:7" in shown
    assert "uplink.port = 1883    # default" in shown
    assert f"vision.cameras[1].stall_timeout_s = 20.0    # {path}:11 (inherited from " in shown


def test_cameras_inherit_the_vision_defaults_they_do_not_set(tmp_path):
    cfg = config.load(site(tmp_path))
    gate, yard = cfg.vision.cameras
    assert gate.fps == 2 and yard.fps == 4  # [vision] fps = 2; yard sets its own
    assert gate.stall_timeout_s == yard.stall_timeout_s == 20
    assert gate.smoke.enabled and yard.smoke.enabled  # tables: key by key
    assert gate.smoke.confirm_s == 4 and yard.smoke.confirm_s == 8
    assert gate.decode_threads == 1 and gate.person.confirm_frames == 3  # built-in defaults
    # a bad default is reported once, at its own line, not once per camera
    bad = site(tmp_path / "bad", MAIN.replace("fps = 2", "fps = 0"))
    out = wardgate("check-config", "--no-files", str(bad))
    assert out.returncode == 3
    assert out.stderr.splitlines() == [
        f"{bad}:10: vision.fps: Input should be greater than or equal to 0.1"
    ]


def test_a_version_1_file_is_migrated_with_a_warning_and_a_future_one_refused(tmp_path):
    v1 = MAIN.replace("[vision]\n", "[vision]\nthreads = 2\n")
    path = site(tmp_path, v1, **{"10-v1.toml": "[vision]\nthreads = 3\n"})
    out = wardgate("check-config", "--no-files", str(path))
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [
        f"{path}:10: vision.threads: warning: read as `vision.detector_threads` (renamed in "
        f"config_version 2); rename it and set config_version = {CURRENT_VERSION}",
        f"{tmp_path}/conf.d/10-v1.toml:2: vision.threads: warning: read as "
        "`vision.detector_threads` (renamed in config_version 2); rename it and set "
        f"config_version = {CURRENT_VERSION}",
    ]
    cfg = config.load(path)
    assert cfg.vision.detector_threads == 3 and cfg.config_version == CURRENT_VERSION
    # the current format has no `threads`: written as version 2, it is an unknown key
    v2 = site(tmp_path / "v2", "config_version = 2\n" + v1)
    out = wardgate("check-config", "--no-files", str(v2))
    assert out.returncode == 3 and f"{v2}:11: vision.threads: unknown key" in out.stderr
    future = site(tmp_path / "v9", "config_version = 9\n" + MAIN)
    out = wardgate("check-config", "--no-files", str(future))
    assert out.returncode == 3
    assert out.stderr.startswith(
        f"{future}:1: config_version: 9 is newer than this wardgate reads (1 to 2)"
    )


def test_the_migration_framework_runs_each_step_in_order():
    seen = []

    def step(n):
        def run(layer):
            seen.append(n)
            return layer.rename(("a", f"k{n}"), ("a", f"k{n + 1}"), n + 1)

        return run

    layer = Layer("x.toml", {"a": {"k1": 5}}, {("a",): 1, ("a", "k1"): 2})
    notes = migrate(layer, {1: step(1)})
    assert seen == [1] and layer.data == {"a": {"k2": 5}} and len(notes) == 1
    assert layer.lines[("a", "k2")] == 2


def test_merge_rule_tables_key_by_key_keyed_arrays_by_key_other_arrays_replaced():
    base = {
        "serial": {"ports": [{"name": "n1", "path": "/dev/ttyUSB0", "nodes": [1, 2]}]},
        "vision": {"cameras": [{"name": "a", "url": "u", "masks": [[0, 0]]}]},
    }
    over = {
        "serial": {"ports": [{"name": "n1", "nodes": [7]}, {"name": "n2", "path": "/dev/x"}]},
        "vision": {"cameras": [{"name": "a", "fps": 3}]},
    }
    out = merge(base, over)
    assert out["serial"]["ports"] == [
        {"name": "n1", "path": "/dev/ttyUSB0", "nodes": [7]},
        {"name": "n2", "path": "/dev/x"},
    ]
    assert out["vision"]["cameras"] == [{"name": "a", "url": "u", "masks": [[0, 0]], "fps": 3}]
    assert base["serial"]["ports"][0]["nodes"] == [1, 2]  # inputs untouched


def test_fleet_config_lists_merge_into_a_real_bundle(tmp_path):
    """fleet.toml's [config.*] goes through the same merge: a camera entry merges by name into
    the inventory's camera (its url kept), a serial port by name; v1 keys are migrated."""
    inventory = (
        "id,district,ward,site_type,hw_serial,cameras,sensors,network\n"
        "gw-a,d01,w1,fire_point,10000000000000a1,gate=rtsp://10.0.0.8/s1,,dhcp\n"
        "gw-b,d01,w2,police_post,10000000000000b2,gate=rtsp://10.0.0.9/s1;yard=/dev/video0,,dhcp\n"
    )
    fleet = make_fleet(
        tmp_path / "fleet",
        inventory=inventory,
        settings_extra=(
            "\n[config.vision]\nthreads = 2\nfps = 3\n"
            '[[config.vision.cameras]]\nname = "gate"\nstall_timeout_s = 40\n'
        ),
    )
    out = wardgate(
        "provision",
        "run",
        str(fleet.root),
        "-i",
        str(fleet.root / "inventory.csv"),
        "--no-progress",
        env={"WARDGATE_CA_PASSPHRASE": PASSPHRASE},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    path = fleet.bundle("gw-b") / bundle.CONFIG
    text = path.read_text()
    assert "Site overrides go into /etc/wardgate/conf.d/" in text
    assert re.search(r"^config_version = 2$", text, re.M)
    cfg = config.load(path)
    gate, yard = cfg.vision.cameras
    assert gate.url == "rtsp://10.0.0.9/s1" and gate.stall_timeout_s == 40 and gate.fps == 3
    assert yard.device == "/dev/video0" and yard.stall_timeout_s == 10 and yard.fps == 3
    assert cfg.vision.detector_threads == 2
    [gate_a] = config.load(fleet.bundle("gw-a") / bundle.CONFIG).vision.cameras
    assert gate_a.url == "rtsp://10.0.0.8/s1" and gate_a.stall_timeout_s == 40


def test_docs_reload_table_is_generated_from_the_metadata():
    docs = (REPO / "docs/config.md").read_text()
    start = docs.index("<!-- reload-table: generated by edge.config.reload_table() -->\n")
    body = docs[start:].split("\n", 1)[1]
    assert body.startswith(config.reload_table()), config.reload_table()
    assert "| `[uplink]` | refused until a restart" in config.reload_table()
    assert "| `alarm_ack.enabled` | refused until a restart" in config.reload_table()


def test_reload_applies_a_conf_d_change_live_and_refuses_one_to_uplink(broker, tmp_path):
    """A real gateway process: a drop-in written next to its config is read by `reload`."""
    path = write_config(tmp_path, gateway_config_text(broker, tmp_path))
    gw = GatewayProcess(path).start()
    watcher = Watcher(broker, client_id="layers-watcher")
    base = "wg/v1/d01/w01/" + config.load(path).gateway.id
    try:
        watcher.wait_for(lambda: watcher.on("/state"), what="the gateway's birth")

        def reload(request_id: int) -> dict:
            watcher.publish(f"{base}/cmd/reload", json.dumps({"id": request_id}).encode())
            watcher.wait_for(
                lambda: [
                    m for m in watcher.on("/cmd/res") if json.loads(m.payload)["id"] == request_id
                ],
                what=f"reload reply {request_id}",
            )
            [reply] = [
                json.loads(m.payload)
                for m in watcher.on("/cmd/res")
                if json.loads(m.payload)["id"] == request_id
            ]
            assert reply["ok"], reply
            return reply["result"]

        (tmp_path / "conf.d").mkdir()
        (tmp_path / "conf.d" / "50-site.toml").write_text("[health]\nheartbeat_s = 0.5\n")
        result = reload(1)
        assert result["applied"] == ["health"] and result["restarted"] is True, result
        assert "restart_required_for" not in result
        before = len(watcher.on("/tele"))
        watcher.wait_for(lambda: len(watcher.on("/tele")) >= before + 3, 5, "0.5 s heartbeats")

        (tmp_path / "conf.d" / "60-broker.toml").write_text("[uplink]\nkeepalive_s = 7\n")
        result = reload(2)
        assert result["applied"] == [] and result["restart_required_for"] == ["uplink"], result
        assert result["restarted"] is False and result["requests"] == 1
        time.sleep(0.5)
        assert gw.proc is not None and gw.proc.poll() is None  # still running, still connected
    finally:
        watcher.stop()
        gw.terminate()
