"""The wire contract shared by gateways, receivers and sensor nodes: events (docs/events.md), the
topic tree (docs/topics.md), the node protocol (docs/node-protocol.md) and the name rule.

Light on purpose: only cbor2 at import, and none of wardgate's other packages, so a backend can
decode events with the base install (`pip install wardgate`). node_protocol.py and names.py also
run under MicroPython (they are compiled into the sensor-node firmware bundle).
"""
