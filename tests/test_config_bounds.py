"""Issue 8, defect 12: configs that passed `check-config` and then broke at run time.

Every number is finite and bounded, types are strict, paths absolute, the files a config names are
checked, and hostile files (deep nesting, a BOM, huge values, a directory) get one short line each.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import types
import typing
from pathlib import Path

import annotated_types
import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from edge import config
from edge.confbase import Section
from edge.config import ConfigError

REPO = Path(__file__).resolve().parent.parent
GOOD = """\
[gateway]
id = "gw-1"
district = "d01"
ward = "w01"
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config.parse(text, "c.toml")
    return caught.value.problems


def one_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def check_config(path: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", "check-config", *options, str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


# --- numbers: finite, bounded -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "key", "value", "reason"),
    [
        ("health", "heartbeat_s", "inf", "finite"),  # time.sleep(inf): OverflowError, crash loop
        ("health", "heartbeat_s", "nan", "finite"),
        ("health", "heartbeat_s", "1e308", "less than or equal"),
        ("alarm_ack", "timeout_s", "1e308", "EN 54-21"),  # ended ack supervision silently
        ("alarm_ack", "timeout_s", "101", "allow_over_100_s"),
        ("uplink", "backoff_max_s", "1e308", "less than or equal"),  # no reconnect cap
        ("uplink", "backoff_initial_s", "inf", "finite"),
        ("uplink", "session_expiry_s", str(2**40), "less than or equal"),  # MQTT: 4 bytes
        ("uplink", "event_expiry_s", str(2**63), "less than or equal"),
        ("outbox", "max_events", str(10**30), "less than or equal"),
        ("test_source", "interval_s", "1e-300", "greater than or equal"),
        ("test_source", "alarm_every_s", "-inf", "finite"),
    ],
)
def test_numbers_are_finite_and_bounded(table, key, value, reason):
    problem = one_problem(GOOD + f"[{table}]\n{key} = {value}\n")
    assert problem.startswith(f"c.toml:6: {table}.{key}: "), problem
    assert reason in problem, problem


@pytest.mark.parametrize(
    "text",
    [
        "[[vision.cameras]]\nname = 'c'\nurl = 'rtsp://x'\nfps = inf\n",
        "[[vision.cameras]]\nname = 'c'\nurl = 'rtsp://x'\nstall_timeout_s = 1e308\n",
        "[[vision.cameras]]\nname = 'c'\nurl = 'rtsp://x'\nperson = { cooldown_s = nan }\n",
        "[[serial.ports]]\nname = 'n'\npath = '/dev/ttyUSB0'\nprotocol = 'node'\n"
        "silent_after_s = inf\n",
        "[[serial.ports]]\nname = 'n'\npath = '/dev/ttyUSB0'\nprotocol = 'node'\n"
        "reconnect_max_s = 1e308\n",
        "[serial.readings]\nmax_interval_s = inf\n",
    ],
)
def test_pipeline_numbers_are_finite_and_bounded(text):
    problem = one_problem(GOOD + text)
    assert "finite" in problem or "less than or equal" in problem, problem


def test_alarm_ack_over_100_s_needs_the_explicit_opt_out():
    cfg = config.parse(GOOD + "[alarm_ack]\nallow_over_100_s = true\ntimeout_s = 600\n")
    assert cfg.alarm_ack.timeout_s == 600
    assert config.parse(GOOD + "[alarm_ack]\ntimeout_s = 100\n").alarm_ack.timeout_s == 100
    problem = one_problem(GOOD + "[alarm_ack]\nallow_over_100_s = true\ntimeout_s = 3601\n")
    assert problem.startswith("c.toml:7: alarm_ack.timeout_s: at most 3600 s"), problem


def test_backoff_initial_may_not_exceed_the_cap():
    problem = one_problem(GOOD + "[uplink]\nbackoff_initial_s = 20\nbackoff_max_s = 10\n")
    assert "must not exceed backoff_max_s" in problem, problem


def _numeric_gaps(annotation, meta, where, out):
    """Append `where` for each int/float reachable from `annotation` without both bounds."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *more = typing.get_args(annotation)
        _numeric_gaps(base, [*meta, *more], where, out)
    elif annotation in (int, float):
        kinds = set()
        stack = list(meta)
        while stack:
            item = stack.pop()
            if isinstance(item, FieldInfo):
                stack.extend(item.metadata)
            elif isinstance(item, annotated_types.Ge | annotated_types.Gt):
                kinds.add("lower")
            elif isinstance(item, annotated_types.Le | annotated_types.Lt):
                kinds.add("upper")
        if kinds != {"lower", "upper"}:
            out.append(f"{where} ({annotation.__name__}, bounds: {sorted(kinds)})")
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            _numeric_gaps(arg, meta, where, out)
    elif origin in (list, tuple):
        for arg in typing.get_args(annotation):
            if arg is not Ellipsis:
                _numeric_gaps(arg, [], f"{where}[]", out)
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        for name, field in annotation.model_fields.items():
            _numeric_gaps(field.annotation, field.metadata, f"{annotation.__name__}.{name}", out)


def _all_sections() -> list[type[Section]]:
    import provisioning.fleet  # noqa: F401  (fleet.toml is parsed through Section too)
    import sensor_drivers.modbus_profile  # noqa: F401

    found, stack = [], [Section]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.split(".")[0] in ("edge", "sensor_drivers", "provisioning"):
                found.append(sub)
                stack.append(sub)
    return found


#: bounded by a validator rather than by Field(le=...): checked by the tests above
BOUNDED_BY_VALIDATOR = {"AlarmAckSection.timeout_s"}


def test_every_int_and_float_in_every_section_has_both_bounds():
    """The structural guard: a new number without a range fails here, not on a gateway."""
    sections = _all_sections()
    assert len(sections) > 30, sections
    gaps: list[str] = []
    for section in sections:
        _numeric_gaps(section, [], section.__name__, gaps)
    gaps = [g for g in gaps if g.split(" ")[0] not in BOUNDED_BY_VALIDATOR]
    assert not gaps, "numbers without a lower and an upper bound:\n" + "\n".join(sorted(gaps))


# --- strict types -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "key", "reason"),
    [
        ('[uplink]\nport = "1883"\n', 6, "uplink.port", "must be an integer, not a string"),
        ('[health]\nheartbeat_s = "30"\n', 6, "health.heartbeat_s", "must be a number"),
        ("[health]\nwatchdog = 1\n", 6, "health.watchdog", "must be true or false"),
        ('[health]\nwatchdog = "yes"\n', 6, "health.watchdog", "must be true or false"),
        ("[uplink]\nkeepalive_s = 30.0\n", 6, "uplink.keepalive_s", "must be an integer"),
        ("[uplink]\nhost = 42\n", 6, "uplink.host", "must be a string"),
        ("[uplink]\npassword_file = 42\n", 6, "uplink.password_file", "path written as a string"),
    ],
)
def test_no_silent_type_coercion(text, line, key, reason):
    problem = one_problem(GOOD + text)
    assert problem.startswith(f"c.toml:{line}: {key}: "), problem
    assert reason in problem, problem


def test_toml_native_conversions_are_kept():
    """An integer is a fine float; a path is a string in TOML; [x, y] is a point."""
    cfg = config.parse(
        GOOD
        + "[health]\nheartbeat_s = 30\n[uplink]\npassword_file = '/etc/wardgate/pw'\n"
        + "[[vision.cameras]]\nname = 'c'\nurl = 'rtsp://x'\nmasks = [[[0, 0], [1, 0], [1, 1]]]\n"
    )
    assert cfg.health.heartbeat_s == 30.0 and isinstance(cfg.health.heartbeat_s, float)
    assert cfg.uplink.password_file == Path("/etc/wardgate/pw")
    assert cfg.vision.cameras[0].masks[0][1] == (1.0, 0.0)


# --- paths --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[uplink]\npassword_file = 'broker.password'\n", "uplink.password_file"),
        ("[uplink.tls]\nca = 'tls/ca.crt'\n", "uplink.tls.ca"),
        ("[outbox]\npath = 'outbox.sqlite3'\n", "outbox.path"),
        ("[alarm_ack]\noutput = 'led'\n", "alarm_ack.output"),
    ],
)
def test_relative_paths_are_rejected_with_a_reason(text, key):
    problem = one_problem(GOOD + text)
    assert problem.startswith(f"c.toml:6: {key}: must be an absolute path"), problem


def test_relative_serial_and_profile_paths_are_rejected():
    port = "[[serial.ports]]\nname = 'p'\nprotocol = 'modbus'\n"
    problem = one_problem(
        GOOD + port + "path = 'dev/ttyUSB0'\n[[serial.ports.devices]]\nunit = 1\n"
        "profile = 'smoke_heat'\n"
    )
    assert "serial.ports[0].path: a device path must be absolute" in problem, problem
    problem = one_problem(
        GOOD + port + "path = '/dev/ttyUSB0'\n[[serial.ports.devices]]\nunit = 1\n"
        "profile = 'profiles/x.toml'\n"
    )
    assert "absolute path" in problem, problem
    # a bare /dev/serial/by-id name and a built-in profile name are still fine
    config.parse(
        GOOD + port + "path = 'usb-FTDI_X-if00-port0'\n[[serial.ports.devices]]\nunit = 1\n"
        "profile = 'smoke_heat'\n"
    )


# --- the files a config names -------------------------------------------------------------------


def _secrets(tmp_path: Path) -> dict[str, Path]:
    files = {}
    for name in ("pw", "ca.crt", "gw.crt", "gw.key"):
        files[name] = tmp_path / name
        files[name].write_text("x\n")
        files[name].chmod(0o600 if name in ("pw", "gw.key") else 0o644)
    return files


def _with_files(files: dict[str, Path]) -> str:
    return GOOD + (
        f"[uplink]\npassword_file = '{files['pw']}'\n"
        f"[uplink.tls]\nca = '{files['ca.crt']}'\ncert = '{files['gw.crt']}'\n"
        f"key = '{files['gw.key']}'\n"
    )


def test_named_files_that_exist_pass(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(_with_files(_secrets(tmp_path)))
    res = check_config(path)
    assert res.returncode == 0 and res.stderr == "", res.stderr


def test_missing_password_file_and_other_file_problems_fail_check_config_at_once(tmp_path):
    files = _secrets(tmp_path)
    files["pw"].unlink()  # the defect: a missing password_file passed
    files["ca.crt"].unlink()
    files["ca.crt"].mkdir()
    files["gw.crt"].write_text("")
    files["gw.key"].chmod(0o644)
    path = tmp_path / "config.toml"
    path.write_text(_with_files(files).replace("[uplink]\n", "[uplink]\nport = 'x'\n"))
    res = check_config(path)
    assert res.returncode == 3
    lines = res.stderr.strip().splitlines()
    assert lines[0] == (
        f"{path}:6: uplink.port: must be an integer, not a string: write it without quotes "
        "(got 'x')"
    )
    assert lines[1] == f"{path}:7: uplink.password_file: file not found: {files['pw']}"
    assert lines[2] == f"{path}:9: uplink.tls.ca: is a directory, not a file: {files['ca.crt']}"
    assert lines[3] == f"{path}:10: uplink.tls.cert: is empty: {files['gw.crt']}"
    assert lines[4].startswith(f"{path}:11: uplink.tls.key: warning: holds a secret but is ")
    assert "mode 0644" in lines[4] and "chmod 600" in lines[4]
    assert len(lines) == 5, lines
    # away from its gateway, the files are not looked at
    res = check_config(path, "--no-files")
    assert res.returncode == 3 and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_world_readable_secret_is_a_warning_not_an_error(tmp_path):
    files = _secrets(tmp_path)
    files["pw"].chmod(0o640)
    path = tmp_path / "config.toml"
    path.write_text(_with_files(files))
    res = check_config(path)
    assert res.returncode == 0, res.stderr
    assert "uplink.password_file: warning: holds a secret but is readable by its group" in (
        res.stderr
    )


def test_secret_the_service_user_cannot_read_is_an_error(tmp_path):
    """As the unit runs it: check-config as an unprivileged user, the key owned by root, 0600."""
    if os.geteuid() == 0:  # CI runs as root, who reads every file: check as `nobody` instead
        work = Path(tempfile.mkdtemp(prefix="wg-cfg-"))
        work.chmod(0o755)
        as_user = {"user": 65534, "group": 65534, "extra_groups": []}
        try:
            usable = subprocess.run([sys.executable, "-c", "import edge"], cwd=REPO, **as_user)
        except OSError:
            usable = None
        if usable is None or usable.returncode != 0:
            shutil.rmtree(work)
            pytest.skip("this Python cannot run as nobody (e.g. a pyenv under /root)")
    else:
        work, as_user = tmp_path, {}
    try:
        files = _secrets(work)
        files["gw.key"].chmod(0o000 if not as_user else 0o600)
        path = work / "config.toml"
        path.write_text(_with_files(files))
        path.chmod(0o644)
        for name in ("pw", "ca.crt", "gw.crt"):
            files[name].chmod(0o644)
        res = subprocess.run(
            [sys.executable, "-m", "edge.cli", "check-config", str(path)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
            **as_user,
        )
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 3, res.stderr
        assert [line for line in lines if "warning" not in line] == [
            f"{path}:10: uplink.tls.key: cannot be read by this user "
            f"({'nobody' if as_user else _me()}): {files['gw.key']}: Permission denied"
        ], lines
    finally:
        if as_user:
            shutil.rmtree(work)


def _me() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


# --- hostile files: one short line each ---------------------------------------------------------


def test_deep_nesting_is_one_line_not_a_traceback(tmp_path):
    for depth in (40, 5000):  # under and over what tomllib itself can recurse into
        problem = one_problem(GOOD + "[uplink]\nx = " + "[" * depth + "]" * depth + "\n")
        assert problem.startswith("c.toml:6: "), problem
        assert "nested more than 32 levels deep" in problem and len(problem) < 200, problem
    with pytest.raises(ConfigError, match="nested more than 32"):
        config.from_dict({"gateway": {"id": "g", "district": "d", "ward": "w"}, "x": _deep(5000)})


def _deep(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def test_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert config.load(path).gateway.id == "gw-1"
    path.write_bytes(b"\xef\xbb\xbf" + (GOOD + "[uplink]\nport = 0\n").encode())
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert caught.value.problems[0].startswith(f"{path}:6: uplink.port: "), caught.value.problems
    path.write_bytes("\ufeff".encode("utf-16-le").join([b"", GOOD.encode("utf-16-le")]))
    with pytest.raises(ConfigError, match="UTF-16 text: save the file as UTF-8"):
        config.load(path)


def test_huge_value_is_echoed_once_and_cut_short():
    big = "a" * 200_000
    problem = one_problem(GOOD.replace('"gw-1"', f'"{big}"'))
    assert problem.startswith("c.toml:2: gateway.id: 'aaaa"), problem[:100]
    assert problem.count("'a") == 1 and len(problem) < 300, problem
    assert "(200,002 characters)" in problem
    problem = one_problem(GOOD + "[uplink]\n" + "k" * 100_000 + " = 1\n")
    assert "unknown key" in problem and len(problem) < 200, problem[:200]


def test_directory_and_oversized_files_are_named_for_what_they_are(tmp_path):
    with pytest.raises(ConfigError) as caught:
        config.load(tmp_path)
    assert caught.value.problems == [f"{tmp_path}: is a directory, not a file"]
    huge = tmp_path / "huge.toml"
    huge.write_text(GOOD + "x = '" + "a" * 10_000_000 + "'\n")
    with pytest.raises(ConfigError) as caught:
        config.load(huge)
    assert caught.value.problems == [f"{huge}: larger than 1024 KiB: not a config file"]


def test_check_config_cli_gives_one_short_line_per_hostile_file(tmp_path):
    cases = {
        "nested.toml": (GOOD + "[uplink]\nx = " + "[" * 5000 + "]" * 5000 + "\n").encode(),
        "huge.toml": (GOOD + "[uplink]\nhost = '" + "h" * 10_000_000 + "'\n").encode(),
        "value.toml": GOOD.replace('"gw-1"', '"' + "a" * 500_000 + '"').encode(),
        "bad-bom.toml": b"\xef\xbb\xbf" + (GOOD + "[health]\nheartbeat_s = inf\n").encode(),
        "latin1.toml": (GOOD + "# caf\xe9\n").encode("latin-1"),
        "dir.toml": None,
    }
    for name, data in cases.items():
        path = tmp_path / name
        if data is None:
            path.mkdir()
        else:
            path.write_bytes(data)
        res = check_config(path)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 3, (name, res.stderr[:300])
        assert len(lines) == 1 and len(lines[0]) < 300, (name, res.stderr[:600])
        assert lines[0].startswith(str(path)), lines[0]
        assert "Traceback" not in res.stderr
    ok = tmp_path / "bom.toml"
    ok.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    res = check_config(ok)
    assert res.returncode == 0 and res.stdout.startswith(f"{ok}: ok"), res.stderr
