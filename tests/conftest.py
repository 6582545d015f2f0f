"""Shared fixtures: a private real Mosquitto (plain + TLS, passwords, ACL) and test PKI."""

from __future__ import annotations

import pytest

from tests.mqtt_broker import MosquittoBroker
from tests.pki import TestPKI

# Accounts of the standard test broker. The ACL confines gateways to their own subtree, as the
# provisioning tool does for real fleets.
GATEWAY_USER, GATEWAY_PASSWORD = "gw-test-1", "gw-secret"
WATCHER_USER, WATCHER_PASSWORD = "watcher", "watch-secret"
TEST_ACL = """\
user watcher
topic readwrite wg/#

pattern write wg/v1/+/+/%u/state
pattern write wg/v1/+/+/%u/evt/#
pattern write wg/v1/+/+/%u/tele
pattern write wg/v1/+/+/%u/snap/#
pattern write wg/v1/+/+/%u/cmd/res
pattern read wg/v1/+/+/%u/cmd/#
pattern read wg/v1/+/+/%u/ack
pattern read wg/v1/+/+/%u/state
"""


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return TestPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker(tmp_path, pki):
    """Mosquitto with a plain and a TLS listener, password auth and the test ACL."""
    users = {GATEWAY_USER: GATEWAY_PASSWORD, WATCHER_USER: WATCHER_PASSWORD}
    b = MosquittoBroker(tmp_path / "broker", users=users, acl=TEST_ACL, tls=pki.server_files())
    b.start()
    yield b
    b.stop()
