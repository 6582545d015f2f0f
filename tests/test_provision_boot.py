"""First-boot files: valid for the tools that read them, and written onto a boot partition."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from edge.cli import main as wardgate
from edge.deploy import SYSTEMD_UNIT
from provisioning import bundle
from provisioning.fleet import FleetError
from tests.test_provision_support import make_fleet, run


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    fleet = make_fleet(
        tmp_path_factory.mktemp("fleet"),
        settings_extra="\n[config.health]\nheartbeat_s = 60.0\n",
    )
    text = fleet.settings_path.read_text().replace(
        "ssh_authorized_keys = []",
        'ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx tech@laptop"]',
    )
    fleet.settings_path.write_text(text)
    run(fleet)
    return fleet


def boot_file(fleet, gateway: str, rel: str):
    return fleet.bundle(gateway) / "boot" / rel


def cloud_init_command() -> str | None:
    """Debian's cloud-init as scripts/dev test unpacks it into the venv (not installed, so the
    host's boot does not gain its units), else one on PATH."""
    unpacked = Path(sys.prefix) / "cloud-init" / "bin" / "cloud-init"
    return str(unpacked) if unpacked.exists() else shutil.which("cloud-init")


def test_user_data_passes_cloud_init_schema(fleet):
    cloud_init = cloud_init_command()
    if cloud_init is None:
        if os.environ.get("CI"):
            pytest.fail("no cloud-init: scripts/dev test unpacks it into .venv/cloud-init")
        pytest.skip("no cloud-init: scripts/dev test unpacks it into .venv/cloud-init")
    for gw in ("gw-a", "gw-c"):
        path = boot_file(fleet, gw, "cloud-init/user-data")
        out = subprocess.run(
            [cloud_init, "schema", "--config-file", str(path)], capture_output=True, text=True
        )
        assert out.returncode == 0 and "Valid cloud-config" in out.stdout, out.stdout + out.stderr


def test_user_data_installs_wardgate_with_a_locked_key_only_admin(fleet):
    text = boot_file(fleet, "gw-a", "cloud-init/user-data").read_text()
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    assert doc["hostname"] == "wg-gw-a"
    (admin,) = doc["users"]
    assert admin["lock_passwd"] is True and admin["ssh_authorized_keys"][0].startswith("ssh-ed")
    assert doc["ssh_pwauth"] is False
    assert doc["runcmd"][-1] == ["bash", "/boot/firmware/wardgate/install.sh"]
    meta = yaml.safe_load(boot_file(fleet, "gw-a", "cloud-init/meta-data").read_text())
    assert meta["instance-id"].startswith("wardgate-gw-a-")


def test_network_config_static_and_dhcp(fleet):
    static = yaml.safe_load(boot_file(fleet, "gw-c", "cloud-init/network-config").read_text())
    assert static["network"]["ethernets"]["eth0"] == {
        "dhcp4": False,
        "addresses": ["10.2.1.5/24"],
        "routes": [{"to": "default", "via": "10.2.1.1"}],
        "nameservers": {"addresses": ["10.2.1.1"]},
    }
    dhcp = yaml.safe_load(boot_file(fleet, "gw-a", "cloud-init/network-config").read_text())
    assert dhcp == {"network": {"version": 2, "ethernets": {"eth0": {"dhcp4": True}}}}
    keyfile = (
        fleet.bundle("gw-c") / "boot/wardgate/network/wardgate-eth0.nmconnection"
    ).read_text()
    assert "address1=10.2.1.5/24,10.2.1.1" in keyfile and "dns=10.2.1.1;" in keyfile
    assert not (fleet.bundle("gw-a") / "boot/wardgate/network").exists()


def test_custom_toml_has_what_raspberrypi_sys_mods_reads(fleet):
    doc = tomllib.loads(boot_file(fleet, "gw-a", "bookworm/custom.toml").read_text())
    # init_config knows exactly these sections; anything else is ignored with a warning.
    assert set(doc) <= {"config_version", "system", "user", "ssh", "wlan", "locale"}
    assert doc["config_version"] == 1 and doc["system"]["hostname"] == "wg-gw-a"
    assert "password" not in doc["user"]  # locked account, SSH keys only
    assert doc["ssh"]["enabled"] is True and doc["ssh"]["password_authentication"] is False


def test_shell_scripts_parse_and_pass_shellcheck(fleet):
    scripts = [
        fleet.bundle("gw-a") / "boot/wardgate/install.sh",
        boot_file(fleet, "gw-a", "bookworm/firstrun.sh"),
    ]
    for script in scripts:
        subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        out = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout
    env = fleet.bundle("gw-a") / "boot/wardgate/gateway.env"
    out = subprocess.run(
        ["bash", "-c", f'. "{env}"; echo "$WARDGATE_ID|$WARDGATE_HW_SERIAL|$WARDGATE_CONF_DIR"'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "gw-a|10000000000000a1|/etc/wardgate"


def test_fleet_config_overrides_reach_every_gateway(fleet):
    for gw in ("gw-a", "gw-b", "gw-c"):
        text = (fleet.bundle(gw) / bundle.CONFIG).read_text()
        assert "heartbeat_s = 60.0" in text


def test_cameras_go_into_the_config(fleet):
    from edge.config import load

    cfg = load(fleet.bundle("gw-b") / bundle.CONFIG)
    assert [(c.name, c.url) for c in cfg.vision.cameras] == [("gate", "rtsp://10.0.0.9/s1")]
    assert cfg.serial.ports == []  # serial sensors: tests/test_provision_enroll.py


def test_installer_puts_wardgate_where_the_shipped_unit_runs_it(fleet):
    payload = fleet.bundle("gw-a") / "boot/wardgate"
    unit = (payload / "wardgate.service").read_text()
    assert unit == SYSTEMD_UNIT.read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    env = (payload / "gateway.env").read_text()
    venv = next(line for line in env.splitlines() if line.startswith("WARDGATE_VENV="))
    assert exec_start.split("=", 1)[1].split()[0] == venv.split("=", 1)[1] + "/bin/wardgate"
    assert "--config /etc/wardgate/config.toml" in exec_start
    user = next(line for line in unit.splitlines() if line.startswith("User="))
    assert "SERVICE_USER=" + user.split("=", 1)[1] in (payload / "install.sh").read_text()


def fake_boot_partition(path, cloud_init: bool):
    path.mkdir()
    (path / "config.txt").write_text("arm_64bit=1\n")
    (path / "cmdline.txt").write_text("console=tty1 root=PARTUUID=1234-02 rootwait\n")
    if cloud_init:
        (path / "meta-data").write_text("instance-id: rpios-image\n")
        (path / "user-data").write_text("#cloud-config\n")
        (path / "network-config").write_text("network: {version: 2}\n")
    return path


def test_flash_onto_a_cloud_init_image(fleet, tmp_path, capsys):
    boot = fake_boot_partition(tmp_path / "bootfs", cloud_init=True)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "wardgate-0.1.0-py3-none-any.whl").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    argv = ["provision", "flash", str(fleet.root), "gw-c", "--boot", str(boot)]
    # a stand-in wheel: the real wheelhouses are tests/test_provision_wheelhouse.py's
    assert wardgate([*argv, "--wheelhouse", str(wheels), "--allow-uninstallable"]) == 0
    assert "cloud-init first boot" in capsys.readouterr().out
    assert (boot / "user-data").read_bytes() == boot_file(
        fleet, "gw-c", "cloud-init/user-data"
    ).read_bytes()
    assert (boot / "wardgate/etc/tls/gateway.key").read_bytes() == (
        fleet.bundle("gw-c") / bundle.KEY
    ).read_bytes()
    assert (boot / "wardgate/wheels/wardgate-0.1.0-py3-none-any.whl").exists()
    assert "systemd.run" not in (boot / "cmdline.txt").read_text()
    assert not (boot / "firstrun.sh").exists()


def test_flash_onto_a_bookworm_image_twice(fleet, tmp_path):
    boot = fake_boot_partition(tmp_path / "bootfs", cloud_init=False)
    for _ in range(2):
        flavour = bundle.flash(fleet.bundle("gw-a"), boot, allow_uninstallable=True)
        assert flavour == "bookworm"
    cmdline = (boot / "cmdline.txt").read_text()
    assert cmdline.count("systemd.run=/boot/firmware/firstrun.sh") == 1
    assert cmdline.endswith("systemd.unit=kernel-command-line.target\n")
    assert len(cmdline.splitlines()) == 1
    assert (boot / "custom.toml").exists() and (boot / "firstrun.sh").exists()
    assert not (boot / "user-data").exists()


def test_flash_refuses_what_is_not_a_boot_partition_or_a_broken_bundle(fleet, tmp_path, capsys):
    with pytest.raises(FleetError, match="not a Raspberry Pi OS boot partition"):
        bundle.flash(fleet.bundle("gw-a"), tmp_path)
    empty = tmp_path / "wheels"
    empty.mkdir()
    boot = fake_boot_partition(tmp_path / "bootfs", cloud_init=True)
    with pytest.raises(FleetError, match=r"cannot install wardgate(.|\n)*wardgate\[gateway\]"):
        bundle.flash(fleet.bundle("gw-a"), boot, wheelhouse=empty)
    with pytest.raises(FleetError, match="no wardgate-.*whl"):
        bundle.flash(fleet.bundle("gw-a"), boot, wheelhouse=empty, allow_uninstallable=True)
    broken = tmp_path / "broken"
    shutil.copytree(fleet.bundle("gw-a"), broken)
    (broken / bundle.CONFIG).write_text("[gateway]\n")
    # The CLI verifies before it writes anything onto a card.
    fleet_copy = tmp_path / "fleetcopy"
    shutil.copytree(fleet.root, fleet_copy)
    shutil.copyfile(broken / bundle.CONFIG, fleet_copy / "bundles/gw-a" / bundle.CONFIG)
    argv = ["provision", "flash", str(fleet_copy), "gw-a", "--boot", str(boot)]
    assert wardgate(argv) == 1
    assert "does not verify" in capsys.readouterr().err
    assert not (boot / "wardgate").exists()
