"""wardgate: the edge gateway of the smart-ward program."""

from pathlib import Path

__version__ = "0.1.0"

#: where `wardgate run` and `check-config` look for the gateway's config by default
CONFIG_PATH = Path("/etc/wardgate/config.toml")
