"""The offline install: `provision wheelhouse` for a Pi's OS and CPU, and `flash` with it.

The wheelhouses are really downloaded from the package index (pip's cache and the folder under
~/.cache/wardgate-wheelhouse make a rerun take seconds); the completeness check here is written
independently of provisioning.wheelhouse.check, from the wheels' own file names and metadata.
"""

from __future__ import annotations

import email.parser
import json
import os
import shutil
import socket
import zipfile
from pathlib import Path

import pytest
from packaging import tags
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from edge.cli import main as wardgate
from provisioning import bundle, wheelhouse
from provisioning.fleet import FleetError
from tests.test_provision_boot import fake_boot_partition
from tests.test_provision_support import make_fleet, run

CACHE = Path(os.environ.get("WARDGATE_WHEELHOUSE_CACHE", "~/.cache/wardgate-wheelhouse"))

#: what the Pi's own pip accepts, written out here rather than taken from the module under test
EXPECTED = {
    "bookworm-aarch64": ((3, 11), 36),  # Debian 12: python3 3.11, glibc 2.36
    "trixie-aarch64": ((3, 13), 41),  # Debian 13: python3 3.13, glibc 2.41
}


def pi_tags(name: str) -> set[tags.Tag]:
    python, glibc_minor = EXPECTED[name]
    platforms = [f"manylinux_2_{m}_aarch64" for m in range(glibc_minor, 16, -1)]
    platforms += ["manylinux2014_aarch64", "linux_aarch64"]
    interpreter = f"cp{python[0]}{python[1]}"
    found = set(tags.cpython_tags(python, [interpreter], platforms))
    return found | set(tags.compatible_tags(python, interpreter, platforms))


def pi_env(name: str, extra: str = "") -> dict[str, str]:
    python, _ = EXPECTED[name]
    version = f"{python[0]}.{python[1]}"
    return {
        "python_version": version,
        "python_full_version": version + ".0",
        "platform_machine": "aarch64",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "implementation_name": "cpython",
        "extra": extra,
    }


def metadata(path: Path):
    with zipfile.ZipFile(path) as whl:
        (name,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.HeaderParser().parsestr(whl.read(name).decode())


def index_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def wheelhouses():
    """Both aarch64 wheelhouses, built with the command a technician runs (once per session)."""
    if not index_reachable():
        if os.environ.get("CI"):
            pytest.fail("pypi.org unreachable: the wheelhouse tests need the package index")
        pytest.skip("pypi.org unreachable: the wheelhouse tests need the package index")
    built = {}
    for name in EXPECTED:
        os_name, arch = name.split("-")
        out = CACHE.expanduser() / name
        argv = ["provision", "wheelhouse", "--os", os_name, "--arch", arch, "-o", str(out)]
        assert wardgate(argv) == 0
        built[name] = out
    return built


def test_wheelhouse_has_a_wheel_the_pi_accepts_for_every_requirement(wheelhouses):
    for name, directory in wheelhouses.items():
        accepted = pi_tags(name)
        wheels = {}
        for path in directory.glob("*.whl"):
            dist, version, _, wheel_tags = parse_wheel_filename(path.name)
            assert wheel_tags & accepted, f"{name}: {path.name} does not install on the Pi"
            wheels[dist] = (version, path)
        # follow every requirement from wardgate[gateway] down, with the Pi's markers
        todo = [(Requirement("wardgate[gateway]"), "the gateway")]
        seen = set()
        while todo:
            req, parent = todo.pop()
            dist = canonicalize_name(req.name)
            if (dist, str(req)) in seen:
                continue
            seen.add((dist, str(req)))
            assert dist in wheels, f"{name}: {req} (from {parent}) has no wheel"
            version, path = wheels[dist]
            assert req.specifier.contains(version, prereleases=True), f"{name}: {req} {version}"
            for line in metadata(path).get_all("Requires-Dist") or []:
                dep = Requirement(line)
                if dep.marker is None or any(
                    dep.marker.evaluate(pi_env(name, e)) for e in ("", *req.extras)
                ):
                    todo.append((dep, dist))
        needed = {dist for dist, _ in seen}
        assert {"numpy", "opencv-python-headless", "paho-mqtt", "sdnotify"} <= needed
        assert "ai-edge-litert" in needed  # the detector's runtime: aarch64 has it
        assert needed == set(wheels), f"{name}: wheels nobody needs: {set(wheels) - needed}"
        assert wheelhouse.check(directory, wheelhouse.target(*name.split("-"))) == []


def test_wheels_the_old_recipe_missed_are_there_with_their_real_tags(wheelhouses):
    for name, directory in wheelhouses.items():
        python = "cp" + "".join(map(str, EXPECTED[name][0]))
        (litert,) = directory.glob("ai_edge_litert-*.whl")
        # only manylinux_2_27 wheels exist: `--platform manylinux2014_aarch64` never finds it
        assert f"-{python}-{python}-manylinux_2_27_aarch64.whl" in litert.name
        (sdnotify,) = directory.glob("sdnotify-*.whl")  # an sdist on the index, built here
        assert sdnotify.name.endswith("-py3-none-any.whl")
        manifest = json.loads((directory / "wheelhouse.json").read_text())
        assert manifest["target"]["os"] == name.split("-")[0]
        assert manifest["built_from_sdist"] == [sdnotify.name]
        assert set(manifest["wheels"]) == {p.name for p in directory.glob("*.whl")}


def test_check_names_what_a_wheelhouse_misses(wheelhouses, tmp_path):
    bookworm = wheelhouse.target("bookworm", "aarch64")
    # Trixie's wheels are for Python 3.13: on Bookworm's 3.11 the compiled ones do not install
    problems = wheelhouse.check(wheelhouses["trixie-aarch64"], bookworm)
    assert any(p.startswith("numpy") and "bookworm/aarch64" in p for p in problems), problems
    assert not any(p.startswith("paho-mqtt") for p in problems)  # pure Python fits both
    partial = tmp_path / "partial"
    shutil.copytree(wheelhouses["bookworm-aarch64"], partial)
    for wheel in partial.glob("pydantic_core-*.whl"):
        wheel.unlink()
    (problem,) = wheelhouse.check(partial, bookworm)
    assert problem.startswith("pydantic-core==") and "needed by pydantic " in problem


def test_constraints_pin_only_where_their_markers_hold(tmp_path):
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(
        "# pins\n"
        'numpy==2.4.6; python_version == "3.11" and platform_machine == "x86_64"\n'
        'cbor2==6.3.0; python_version == "3.11" and platform_machine == "aarch64"\n'
        "pyserial==3.5\n"
    )
    bookworm = wheelhouse.target("bookworm", "aarch64")
    trixie = wheelhouse.target("trixie", "aarch64")
    assert wheelhouse.target_pins(constraints, bookworm) == ["cbor2==6.3.0", "pyserial==3.5"]
    assert wheelhouse.target_pins(constraints, trixie) == ["pyserial==3.5"]
    constraints.write_text("numpy=2\n")
    with pytest.raises(FleetError, match=r"constraints.txt:1: not a requirement"):
        wheelhouse.target_pins(constraints, trixie)
    with pytest.raises(FleetError, match="--os is one of bookworm, trixie"):
        wheelhouse.target("bullseye", "aarch64")


# --- flash ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    fleet = make_fleet(tmp_path_factory.mktemp("fleet"))
    run(fleet)
    return fleet


def flash(fleet, gateway, boot, *extra):
    return wardgate(["provision", "flash", str(fleet.root), gateway, "--boot", str(boot), *extra])


@pytest.mark.parametrize(
    ("cloud_init", "name", "flavour"),
    [(False, "bookworm-aarch64", "bookworm"), (True, "trixie-aarch64", "cloud-init")],
)
def test_flash_writes_an_installable_card(
    fleet, wheelhouses, tmp_path, capsys, cloud_init, name, flavour
):
    boot = fake_boot_partition(tmp_path / "bootfs", cloud_init=cloud_init)
    assert flash(fleet, "gw-a", boot, "--wheelhouse", str(wheelhouses[name])) == 0
    out = capsys.readouterr()
    assert f"({flavour} first boot)" in out.out
    assert out.out.rstrip().endswith("safe to eject")
    assert "(100 %)" in out.err and "(50 %)" in out.err
    card = boot / "wardgate/wheels"
    assert sorted(p.name for p in card.iterdir()) == sorted(
        p.name for p in wheelhouses[name].glob("*.whl")
    )
    assert wheelhouse.check(card, wheelhouse.target(*name.split("-"))) == []


def test_flash_refuses_a_card_that_cannot_install(fleet, wheelhouses, tmp_path, capsys):
    boot = fake_boot_partition(tmp_path / "bootfs", cloud_init=False)
    assert flash(fleet, "gw-a", boot) == 1
    err = capsys.readouterr().err
    assert "cannot install wardgate" in err and "no wheelhouse given" in err
    assert "wardgate provision wheelhouse --os bookworm --arch aarch64" in err
    # a Trixie wheelhouse on a Bookworm card
    assert flash(fleet, "gw-a", boot, "--wheelhouse", str(wheelhouses["trixie-aarch64"])) == 1
    assert "built for trixie/aarch64, the card is bookworm/aarch64" in capsys.readouterr().err
    # a wheelhouse with a wheel missing
    partial = tmp_path / "partial"
    shutil.copytree(wheelhouses["bookworm-aarch64"], partial)
    next(partial.glob("numpy-*.whl")).unlink()
    assert flash(fleet, "gw-a", boot, "--wheelhouse", str(partial)) == 1
    assert "numpy" in capsys.readouterr().err
    assert not (boot / "wardgate").exists() and not (boot / "custom.toml").exists()
    # ... unless told so, by name
    assert flash(fleet, "gw-a", boot, "--allow-uninstallable") == 0
    out = capsys.readouterr()
    assert "cannot install wardgate offline" in out.err and "safe to eject" in out.out
    assert (boot / "wardgate/install.sh").exists() and not (boot / "wardgate/wheels").exists()


def test_reflash_over_another_gateway_replaces_its_folder(fleet, wheelhouses, tmp_path, capsys):
    boot = fake_boot_partition(tmp_path / "bootfs", cloud_init=False)
    # gw-c has a static address: a NetworkManager keyfile on the card; then it was installed
    assert flash(fleet, "gw-c", boot, "--wheelhouse", str(wheelhouses["bookworm-aarch64"])) == 0
    assert (boot / "wardgate/network/wardgate-eth0.nmconnection").exists()
    (boot / "wardgate/INSTALLED").write_text("2026-01-01T00:00:00+00:00\n")
    capsys.readouterr()
    # the same card for gw-a (DHCP); its own wheels are complete, so they stay
    assert flash(fleet, "gw-a", boot) == 0
    out = capsys.readouterr()
    assert "this card held gateway gw-c" in out.err
    assert "keeping the wheels already on the card" in out.err
    assert "copying wheels" not in out.err
    assert out.out.rstrip().endswith("safe to eject")
    assert not (boot / "wardgate/network").exists()
    assert not (boot / "wardgate/INSTALLED").exists()
    assert "WARDGATE_ID=gw-a" in (boot / "wardgate/gateway.env").read_text()
    assert (boot / "wardgate/etc/tls/gateway.key").read_bytes() == (
        fleet.bundle("gw-a") / bundle.KEY
    ).read_bytes()
    assert (
        wheelhouse.check(boot / "wardgate/wheels", wheelhouse.target("bookworm", "aarch64")) == []
    )
    # the same gateway again: no warning
    assert flash(fleet, "gw-a", boot) == 0
    assert "held gateway" not in capsys.readouterr().err


def test_flash_reports_progress_in_steps(fleet, wheelhouses, tmp_path):
    boot = fake_boot_partition(tmp_path / "bootfs", cloud_init=True)
    seen = []
    bundle.flash(
        fleet.bundle("gw-b"),
        boot,
        wheelhouse=wheelhouses["trixie-aarch64"],
        progress=lambda done, total: seen.append((done, total)),
    )
    total = sum(p.stat().st_size for p in wheelhouses["trixie-aarch64"].glob("*.whl"))
    assert seen[-1] == (total, total) and len(seen) > 50  # ~80 MB in 1 MiB steps
    assert all(a[0] < b[0] for a, b in zip(seen, seen[1:], strict=False))
