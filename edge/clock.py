"""The gateway's monotonic clock, in one place: wall time (protocol.events.now_ms) is only a
timestamp, never a deadline.

A Pi has no RTC: its wall clock steps at every boot when NTP (or the first fix) arrives, and may
step again later. Every interval, deadline and age therefore uses CLOCK_BOOTTIME (monotonic, and
unlike CLOCK_MONOTONIC it keeps counting through a suspend). A stamp that must outlive the process
(an outbox row's age, an alarm awaiting its acknowledgement) is stored with the boot it was taken
in, its boottime ms and its wall ms: within the same boot its age is exact whatever the wall clock
did; from an earlier boot the wall-clock difference is the only evidence left, never below zero
(edge/uplink/outbox.py `_age_ms`, edge/alarm_ack.py `_age_s` and `_late`).
"""

from __future__ import annotations

import time
from functools import cache
from pathlib import Path

_BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


def mono_ms() -> int:
    """Milliseconds on CLOCK_BOOTTIME: for intervals, deadlines and ages."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) // 1_000_000


def mono_s() -> float:
    """Seconds on CLOCK_BOOTTIME."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) / 1e9


@cache
def boot_id() -> str:
    """This boot's id (Linux); a stamp from another boot cannot be compared on CLOCK_BOOTTIME."""
    try:
        return _BOOT_ID_FILE.read_text().strip()
    except OSError:  # not Linux: treat the process lifetime as the boot
        return f"process-{time.monotonic_ns()}"
