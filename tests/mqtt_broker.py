"""Tests use the same private-Mosquitto launcher as `wardgate demo` (edge/devbroker.py)."""

from devtools.devbroker import MosquittoBroker, free_port, wait_for_port

__all__ = ["MosquittoBroker", "free_port", "wait_for_port"]
