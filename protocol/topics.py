"""The MQTT topic tree (contract: docs/topics.md). One place builds every topic name.

<prefix>/<district>/<ward>/<gateway>/state        retained birth / last will (JSON)
<prefix>/<district>/<ward>/<gateway>/evt/<kind>   alarm, fault, person, smoke, reading
<prefix>/<district>/<ward>/<gateway>/tele         heartbeat telemetry
<prefix>/<district>/<ward>/<gateway>/snap/<cam>   JPEG snapshots
<prefix>/<district>/<ward>/<gateway>/cmd/<name>   commands in (operators)
<prefix>/<district>/<ward>/<gateway>/cmd/res      command replies out
<prefix>/<district>/<ward>/<gateway>/ack          alarm acknowledgements in (receivers)
"""

from __future__ import annotations

import dataclasses
import re

from protocol.events import Kind

DEFAULT_PREFIX = "wg/v1"

#: The commands a gateway answers on cmd/<name> (docs/topics.md): the runtime's built-ins and
#: the serial pipelines'. The broker ACL grants operators exactly these; a command added to the
#: gateway must be added here (tests/test_provision_broker.py fails until it is).
GATEWAY_COMMANDS = ("ping", "status", "test-alarm", "reload", "sensor_reset", "sensor_silence")
SEGMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_segment(value: str) -> str:
    """A topic level chosen by people (district, ward, gateway, camera): no wildcards, no '/'."""
    if not SEGMENT_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid topic segment: use 1-64 letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return value


@dataclasses.dataclass(frozen=True)
class GatewayTopics:
    prefix: str
    district: str
    ward: str
    gateway: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.district}/{self.ward}/{self.gateway}"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def tele(self) -> str:
        return f"{self.base}/tele"

    @property
    def cmd_filter(self) -> str:
        return f"{self.base}/cmd/#"

    @property
    def cmd_res(self) -> str:
        return f"{self.base}/cmd/res"

    @property
    def ack(self) -> str:
        return f"{self.base}/ack"

    def cmd(self, name: str) -> str:
        return f"{self.base}/cmd/{name}"

    def event(self, kind: Kind | str) -> str:
        kind = Kind(kind)
        if kind is Kind.TELEMETRY:
            return self.tele
        return f"{self.base}/evt/{kind}"

    def snap(self, camera: str) -> str:
        return f"{self.base}/snap/{camera}"


def parse(topic: str, prefix: str = DEFAULT_PREFIX) -> dict[str, str] | None:
    """Split a gateway topic into its parts, or None if it is not in the tree."""
    if not topic.startswith(prefix + "/"):
        return None
    parts = topic[len(prefix) + 1 :].split("/")
    if len(parts) < 4:
        return None
    district, ward, gateway, *rest = parts
    return {"district": district, "ward": ward, "gateway": gateway, "leaf": "/".join(rest)}


def district_filter(prefix: str, district: str, leaf: str) -> str:
    """Wildcard filter over one district's gateways, e.g. every alarm in district d03."""
    return f"{prefix}/{district}/+/+/{leaf}"
