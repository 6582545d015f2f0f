"""Which gateways are online, from the broker's retained `state` messages (birth / last will),
for `provision status --broker-user ...`. Reads through protocol/mqtt.py with an account that
may read `state` (an operator, backend or receiver account); only its districts are seen."""

from __future__ import annotations

import datetime as dt
import json
import queue
import time
from typing import Any

from protocol import mqtt as policy
from protocol.topics import parse


class LivenessError(Exception):
    """The broker could not be asked; the message says why."""


def retained_states(
    endpoint: policy.Endpoint, prefix: str, timeout: float = 5.0
) -> dict[str, dict[str, Any]]:
    """gateway id -> {"online": bool | None, "state_at": ISO time of its last state message,
    "district": ..., "ward": ...}. Retained messages follow the SUBACK at once: collecting
    stops 0.5 s after the last one (or `timeout` after subscribing when there is none)."""
    try:
        client = policy.new_client(endpoint)
    except policy.ConnectError as exc:
        raise LivenessError(str(exc)) from None
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    client.on_connect = lambda c, u, f, rc, p: events.put(("connack", rc))
    client.on_subscribe = lambda c, u, mid, rcs, p: events.put(("suback", rcs))
    client.on_message = lambda c, u, msg: events.put(("message", msg))
    client.on_disconnect = lambda c, u, f, rc, p: events.put(("disconnect", rc))
    try:
        policy.connect(client, endpoint)
    except Exception as exc:  # noqa: BLE001 - DNS, refused, TLS: all said the same way
        raise LivenessError(policy.explain_error(exc, endpoint)) from None
    client.loop_start()
    out: dict[str, dict[str, Any]] = {}
    try:
        deadline = time.monotonic() + timeout

        def next_event(wait: float) -> tuple[str | None, Any]:
            try:
                return events.get(timeout=max(0.0, wait))
            except queue.Empty:
                return None, None

        kind, rc = next_event(deadline - time.monotonic())
        if kind != "connack" or rc.is_failure:
            why = policy.explain(rc, endpoint) if rc is not None else "no answer"
            raise LivenessError(f"{endpoint.where}: {why}")
        client.subscribe(f"{prefix}/+/+/+/state", qos=1)
        quiet = deadline
        while True:
            kind, item = next_event(min(deadline, quiet) - time.monotonic())
            if kind is None:
                break
            if kind == "suback":
                if all(code.is_failure for code in item):
                    raise LivenessError(
                        f"{endpoint.where}: {endpoint.username!r} may not read gateway states "
                        f"({item[0]}); use an operator, backend or receiver account"
                    )
                quiet = time.monotonic() + 0.5
            elif kind == "message" and item.payload:
                quiet = time.monotonic() + 0.5
                parts = parse(item.topic, prefix)
                if parts is None or parts["leaf"] != "state":
                    continue
                try:
                    doc = json.loads(item.payload)
                except ValueError:
                    doc = {}
                online = doc.get("online") if isinstance(doc, dict) else None
                at = doc.get("time_ms") if isinstance(doc, dict) else None
                out[parts["gateway"]] = {
                    "online": online if isinstance(online, bool) else None,
                    "state_at": (
                        dt.datetime.fromtimestamp(at / 1000, dt.UTC).isoformat(timespec="seconds")
                        if isinstance(at, int)
                        else ""
                    ),
                    "district": parts["district"],
                    "ward": parts["ward"],
                    "install": doc.get("install") if isinstance(doc, dict) else None,
                }
            elif kind == "disconnect":
                raise LivenessError(f"{endpoint.where}: disconnected while reading states")
    finally:
        client.disconnect()
        client.loop_stop()
    return out
