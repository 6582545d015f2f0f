"""The `wardgate` command itself, as an operator or systemd runs it (a real subprocess of the
installed console script): --version, logging options after the subcommand, journald-native
logging, and the exit statuses the README promises (0 ok, 1 failure, 2 usage, 3 config error)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

WARDGATE = str(Path(sys.executable).with_name("wardgate"))
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def wardgate(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [WARDGATE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        **kw,
    )


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path: Path, outbox: Path | None = None) -> Path:
    """A valid config whose broker is a closed local port: the gateway starts and retries."""
    path = tmp_path / "config.toml"
    path.write_text(
        '[gateway]\nid = "gw-cli"\ndistrict = "d01"\nward = "w01"\n'
        f'[uplink]\nhost = "127.0.0.1"\nport = {unused_port()}\n'
        f'[outbox]\npath = "{outbox or tmp_path / "outbox.sqlite3"}"\n'
    )
    return path


def test_version():
    res = wardgate("--version")
    assert res.returncode == 0 and re.fullmatch(r"wardgate \d+\.\d+\.\d+\S*\n", res.stdout)


@pytest.mark.parametrize(
    "argv",
    [[], ["no-such-command"], ["run", "--no-such-option"], ["decode", "--log-level", "loud"]],
)
def test_a_bad_command_line_is_usage_2(argv):
    res = wardgate(*argv)
    assert res.returncode == 2 and "usage: wardgate" in res.stderr, res.stderr


def test_a_missing_or_invalid_config_is_3_for_run(tmp_path):
    res = wardgate("run", "--config", str(tmp_path / "nope.toml"))
    assert res.returncode == 3 and "nope.toml" in res.stderr, res.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway\n")
    res = wardgate("run", "--config", str(bad), "-v")  # -v after the subcommand is accepted
    assert res.returncode == 3 and "bad.toml:1" in res.stderr, res.stderr


def test_a_runtime_failure_is_1(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cfg = write_config(tmp_path, outbox=blocker / "outbox.sqlite3")  # the outbox cannot exist
    res = wardgate("run", "--config", str(cfg))
    assert res.returncode == 1 and "wardgate run:" in res.stderr, res.stderr
    payload = tmp_path / "junk.bin"
    payload.write_bytes(b"\xff\x00 not cbor")
    assert wardgate("decode", str(payload)).returncode == 1
    assert wardgate("decode", str(tmp_path / "missing.bin")).returncode == 2  # a named file


def run_for_a_moment(cfg: Path, *options: str, env=None, stderr=None, seconds=2.5):
    proc = subprocess.Popen(
        [WARDGATE, "run", "--config", str(cfg), *options],
        stdout=subprocess.DEVNULL,
        stderr=stderr if stderr is not None else subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    time.sleep(seconds)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    err = proc.stderr.read() if proc.stderr else ""
    return proc.returncode, err


def test_log_options_after_the_subcommand_override_the_config(tmp_path):
    cfg = write_config(tmp_path)
    rc, err = run_for_a_moment(cfg, "-v")
    assert rc == 0 and " DEBUG " in err, err
    rc, err = run_for_a_moment(cfg, "--log-level", "ERROR")
    assert rc == 0 and " INFO " not in err and " DEBUG " not in err, err
    rc, err = run_for_a_moment(cfg)  # the config's default level: info
    assert rc == 0 and " INFO " in err and " DEBUG " not in err, err
    assert all(STAMP.match(line) for line in err.splitlines() if " INFO " in line), err


def test_under_systemd_each_line_has_a_journal_priority_and_no_timestamp(tmp_path):
    """journald sets JOURNAL_STREAM to the device:inode of the service's stderr stream."""
    cfg = write_config(tmp_path)
    read_fd, write_fd = os.pipe()
    st = os.fstat(write_fd)
    env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
    try:
        rc, _ = run_for_a_moment(cfg, "-v", env=env, stderr=write_fd)
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd) as f:
        lines = f.read().splitlines()
    assert rc == 0 and lines
    assert all(re.match(r"<[2-7]>", line) for line in lines), lines
    assert not any(STAMP.match(line[3:]) for line in lines), lines
    assert any(line.startswith("<6>wardgate") for line in lines), lines
    assert any(line.startswith("<7>") for line in lines), lines
    # a JOURNAL_STREAM that is not this stderr (inherited by a child, say) changes nothing
    env["JOURNAL_STREAM"] = "1:1"
    rc, err = run_for_a_moment(cfg, env=env)
    assert rc == 0 and all(STAMP.match(line) for line in err.splitlines() if " INFO " in line)
