"""The operations-center side: what runs away from the gateways (today the fire brigade's alarm
receiver, `wardgate alarms`). Installs with `pip install 'wardgate[central]'`; it imports the
shared `protocol` package, never the gateway's runtime (edge.runtime, edge.uplink, edge.vision,
sensor_drivers)."""
