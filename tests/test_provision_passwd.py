"""Password hashes: the format of the real `mosquitto_passwd`, accepted by the real broker."""

from __future__ import annotations

import subprocess
import threading

import pytest

from devtools.devbroker import MOSQUITTO_PASSWD
from provisioning.passwd import check_password, hash_password, parse_file, render_file
from tests.mqtt_broker import MosquittoBroker


@pytest.mark.parametrize("algorithm", ["sha512-pbkdf2", "sha512"])
def test_we_verify_what_mosquitto_passwd_writes(tmp_path, algorithm):
    path = tmp_path / "passwd"
    subprocess.run(
        [MOSQUITTO_PASSWD, "-c", "-H", algorithm, "-b", str(path), "alice", "s3cret pass"],
        check=True,
        capture_output=True,
    )
    hashed = parse_file(path.read_text())["alice"]
    assert hashed.startswith("$7$101$" if algorithm == "sha512-pbkdf2" else "$6$")
    assert check_password("s3cret pass", hashed)
    assert not check_password("s3cret pasS", hashed)


def test_our_hash_has_mosquitto_passwd_shape():
    ours = hash_password("pw", 101)
    _, seven, iterations, salt, digest = ours.split("$")
    assert (seven, iterations, len(salt), len(digest)) == ("7", "101", 16, 88)  # 12 + 64 bytes
    assert ours != hash_password("pw", 101)  # fresh salt each time
    assert check_password("pw", ours) and not check_password("pW", ours)


def login(host: str, port: int, user: str, password: str):
    """The CONNACK reason code, or None if the broker closed the connection without one."""
    from protocol import mqtt as policy

    done, result = threading.Event(), {}
    endpoint = policy.Endpoint(host=host, port=port, username=user, password=password)
    client = policy.new_client(endpoint)
    client.on_connect = lambda c, u, flags, rc, props: (result.update(rc=rc), done.set())
    client.on_disconnect = lambda *args: done.set()
    policy.connect(client, endpoint)
    client.loop_start()
    done.wait(5)
    client.disconnect()
    client.loop_stop()
    return result.get("rc")


@pytest.mark.parametrize("iterations", [101, 1000])
def test_real_broker_accepts_our_hashes(tmp_path, iterations):
    passwd = tmp_path / "passwd"
    passwd.write_text(render_file([("gw-x", hash_password("right-one", iterations))]))
    with MosquittoBroker(tmp_path / "broker", password_file=passwd) as broker:
        good = login(broker.host, broker.port, "gw-x", "right-one")
        bad = login(broker.host, broker.port, "gw-x", "wrong-one")
    assert good is not None and not good.is_failure
    assert bad is not None and bad.is_failure


def test_password_file_is_sorted_and_rejects_bad_names():
    text = render_file([("b", "$7$1$x$y"), ("a", "$7$1$x$y")])
    assert text.splitlines() == ["a:$7$1$x$y", "b:$7$1$x$y"]
    with pytest.raises(ValueError):
        render_file([("a:b", "$7$1$x$y")])
