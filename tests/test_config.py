import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge import config

REPO = Path(__file__).resolve().parent.parent
GOOD = """\
[gateway]
id = "gw-1"
district = "d01"
ward = "w01"
"""


def check(tmp_path, text, *options):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path, subprocess.run(
        [sys.executable, "-m", "edge.cli", "check-config", *options, str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )


def test_minimal_config_is_valid_with_defaults(tmp_path):
    path, res = check(tmp_path, GOOD)
    assert res.returncode == 0, res.stderr
    cfg = config.load(path)
    assert cfg.uplink.port == 1883 and cfg.outbox.fsync == "critical"
    assert cfg.topics.event("alarm") == "wg/v1/d01/w01/gw-1/evt/alarm"


@pytest.mark.parametrize(
    ("text", "line", "key", "reason"),
    [
        (GOOD + "[uplink]\nport = 99999\n", 6, "uplink.port", "less than or equal to 65535"),
        (GOOD + "[uplink]\nhots = 'x'\n", 6, "uplink.hots", "unknown key"),
        (GOOD.replace('"d01"', '"d/01"'), 3, "gateway.district", "not a valid topic segment"),
        (GOOD.replace('id = "gw-1"\n', ""), 1, "gateway.id", "required key is missing"),
        (
            GOOD + "[uplink.tls]\nca = '/ca.pem'\ncert = '/c.pem'\n",
            5,
            "uplink.tls",
            "give both `cert` and `key`",
        ),
        (GOOD + "[outbox]\nmax_events = 'lots'\n", 6, "outbox.max_events", "must be an integer"),
        (GOOD + "[health\nheartbeat_s = 1\n", 5, "", "not valid TOML"),
        (GOOD + "[uplink]\nformat = 'xml'\n", 6, "uplink.format", "'cbor' or 'json'"),
    ],
)
def test_each_bad_example_names_file_line_key_and_reason(tmp_path, text, line, key, reason):
    path, res = check(tmp_path, text)
    assert res.returncode != 0
    first = res.stderr.strip().splitlines()[0]
    assert first.startswith(f"{path}:{line}: "), first
    assert key in first and reason in first, first


def test_missing_file_is_a_clear_error(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "edge.cli", "check-config", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 3 and "file not found" in res.stderr


def test_all_problems_are_reported_at_once(tmp_path):
    _, res = check(tmp_path, GOOD + "[uplink]\nport = 0\nkeepalive_s = 1\n")
    assert len(res.stderr.strip().splitlines()) == 2


def test_documented_full_example_is_valid(tmp_path):
    """docs/config.md's full example must stay a valid config (its files are on a gateway)."""
    doc = (REPO / "docs" / "config.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", doc, re.S)
    assert blocks, "docs/config.md has no ```toml example"
    path, res = check(tmp_path, blocks[0], "--no-files")
    assert res.returncode == 0, res.stderr
