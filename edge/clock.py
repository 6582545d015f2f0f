"""The gateway's two clocks, in one place: wall time is only a timestamp, never a deadline.

A Pi has no RTC: its wall clock steps at every boot when NTP (or the first fix) arrives, and may
step again later. Every interval, deadline and age therefore uses CLOCK_BOOTTIME (monotonic, and
unlike CLOCK_MONOTONIC it keeps counting through a suspend). A stamp that must outlive the process
(an outbox row's age, an alarm awaiting its acknowledgement) is stored as (boot id, boottime ms,
wall ms): within the same boot its age is exact whatever the wall clock did; from an earlier boot
the wall-clock difference is the only evidence left, and it is clamped at zero.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


def mono_ms() -> int:
    """Milliseconds on CLOCK_BOOTTIME: for intervals, deadlines and ages."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) // 1_000_000


def mono_s() -> float:
    """Seconds on CLOCK_BOOTTIME."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) / 1e9


def wall_ms() -> int:
    """Wall-clock epoch milliseconds: only ever a timestamp in an event, never a deadline."""
    return time.time_ns() // 1_000_000


@cache
def boot_id() -> str:
    """This boot's id (Linux); a stamp from another boot cannot be compared on CLOCK_BOOTTIME."""
    try:
        return _BOOT_ID_FILE.read_text().strip()
    except OSError:  # not Linux: treat the process lifetime as the boot
        return f"process-{time.monotonic_ns()}"


@dataclass(frozen=True, slots=True)
class Stamp:
    """A moment that can be stored and later aged correctly across wall-clock steps."""

    boot: str
    mono_ms: int
    wall_ms: int

    @classmethod
    def now(cls) -> Stamp:
        return cls(boot_id(), mono_ms(), wall_ms())

    def age_ms(self) -> int:
        """How long ago this was: exact within a boot; across a reboot by wall clock, >= 0."""
        if self.boot == boot_id():
            return max(0, mono_ms() - self.mono_ms)
        return max(0, wall_ms() - self.wall_ms)
