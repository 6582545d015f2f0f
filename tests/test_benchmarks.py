"""Keep the benchmarks working: each runs in its smoke mode and prints its table.

These are not performance tests (the numbers are not asserted: docs/performance.md).
"""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import REPO

SMOKE_RUNS = {
    "uplink": ["bench/uplink.py", "--quick"],
    "fire_path": ["bench/fire_path.py", "--quick"],
    "provision": ["bench/provision.py", "--gateways", "20", "--openssl-sample", "2"],
    "console": ["bench/console.py", "--quick"],
}


@pytest.mark.parametrize("name", sorted(SMOKE_RUNS))
def test_benchmark_smoke_run(name, tmp_path):
    if name == "console" and not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    res = subprocess.run(
        [sys.executable, str(REPO / SMOKE_RUNS[name][0]), *SMOKE_RUNS[name][1:]],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,  # as a script, from anywhere
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert any(word in res.stdout for word in ("PASS", "MISS", "met", "missed")), res.stdout
