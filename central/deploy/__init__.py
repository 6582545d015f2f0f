"""The operations center's systemd unit and example config, shipped as package data."""

from pathlib import Path

SYSTEMD_UNIT = Path(__file__).with_name("wardgate-central.service")
EXAMPLE_CONFIG = Path(__file__).with_name("central.example.toml")
