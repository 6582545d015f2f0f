"""Files for installing the gateway as a service; shipped inside the package (and so the wheel)."""

from pathlib import Path

SYSTEMD_UNIT = Path(__file__).with_name("wardgate.service")
