"""Small helpers shared by the benchmarks: percentiles, RSS sampling, the result table.

Benchmarks print ratios against a baseline measured in the same run (never absolute timed
assertions), so the helpers here only summarise and print; they judge nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), interpolated between closest ranks (as numpy does)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def ratio(value: float, baseline: float) -> float:
    if not baseline or math.isnan(baseline) or math.isnan(value):
        return math.nan
    return value / baseline


def machine_summary() -> str:
    freq = psutil.cpu_freq()
    mhz = f", {freq.max or freq.current:.0f} MHz" if freq else ""
    return (
        f"{platform.machine()}, {psutil.cpu_count()} cores{mhz}, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@contextlib.contextmanager
def work_dir(prefix: str, log_name: str, keep: bool) -> Iterator[Path]:
    """A fresh dir under /var/tmp (a real disk, as the outbox's) that takes the gateways' log.

    Removed afterwards unless `keep` (then its path is printed, for the logs and outboxes).
    """
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    logging.basicConfig(
        filename=workdir / log_name,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        yield workdir
    finally:
        logging.shutdown()
        if keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def finish_run(started: float, results: dict[str, Any], json_path: Path | None) -> None:
    """Close a run: its time, and whether the machine was busy enough to make the numbers noisy."""
    print(f"total bench time {time.monotonic() - started:.0f} s; load average {loadavg()}")
    if os.getloadavg()[0] > 2.5:
        print("note: the machine was busy with other work; expect noisy numbers, run again")
    if json_path:
        json_path.write_text(json.dumps(results, indent=1, default=str))


@dataclass
class RssSampler:
    """Samples a process's RSS (and CPU) every `interval_s` on a thread; marks named phases."""

    pid: int
    interval_s: float = 0.1
    samples: list[tuple[float, str, int]] = field(default_factory=list)  # (t, phase, rss bytes)
    phase: str = "start"

    def __post_init__(self) -> None:
        self._proc = psutil.Process(self.pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._cpu_start: float | None = None
        self._cpu_end: float | None = None
        self._t_start = 0.0
        self._t_end = 0.0

    def start(self) -> RssSampler:
        self._t_start = time.monotonic()
        self._cpu_start = _cpu_seconds(self._proc)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def mark(self, phase: str) -> None:
        self.phase = phase

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self._proc.memory_info().rss
                self._cpu_end = _cpu_seconds(self._proc)
                self._t_end = time.monotonic()
            except psutil.Error:
                return
            self.samples.append((time.monotonic(), self.phase, rss))
            self._stop.wait(self.interval_s)

    def rss(self, phase: str | None = None) -> list[int]:
        return [rss for _, p, rss in self.samples if phase is None or p == phase]

    def peak(self) -> int:
        return max(self.rss(), default=0)

    def cpu_percent(self) -> float:
        """Mean CPU use over the sampled time, in % of one core."""
        if self._cpu_start is None or self._cpu_end is None or self._t_end <= self._t_start:
            return math.nan
        return 100.0 * (self._cpu_end - self._cpu_start) / (self._t_end - self._t_start)


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def mb(n_bytes: float) -> float:
    return n_bytes / 2**20


def fmt(value: float, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int) or (abs(value) >= 1000 and digits <= 1):
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain-text table (first column left-aligned, the others right-aligned)."""
    cells = [list(map(str, headers))] + [list(map(str, r)) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [
            row[i].ljust(widths[i]) if i == 0 else row[i].rjust(widths[i]) for i in range(len(row))
        ]
        return "  ".join(parts).rstrip()

    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))
