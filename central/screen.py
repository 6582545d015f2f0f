"""`wardgate alarms`: the console's queue in a terminal, read from the store.

A screen, not a receiver: it never subscribes to the broker, so it can never take a share of the
alarms or acknowledge one that was not stored. Ingest (`wardgate central run`) stores; every
screen — browser or terminal — reads the same store.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from central.store import Store, label_of
from protocol.events import now_ms


def _age(ms: int | None, now: int) -> str:
    if not ms:
        return "-"
    s = max(0, (now - ms) // 1000)
    return f"{s}s" if s < 120 else f"{s // 60}m"


def render(store: Store, title: str = "wardgate alarms") -> Any:
    from rich.console import Group
    from rich.table import Table

    now = now_ms()
    queue = Table(title=f"{title}: open incidents")
    for col in ("#", "what", "where", "sensor", "waiting", "status", "owner", "events"):
        queue.add_column(col)
    gateways = {g["site"]: g for g in store.gateways()}
    for inc in store.queue(now):
        g = gateways.get(inc["site"], {})
        label = label_of(g.get("labels"), inc["source"])
        where = g.get("name") or inc["site"]
        if g.get("address"):
            where += f", {g['address']}"
        style = {"fire": "bold red", "smoke": "red", "fault": "yellow", "test": "cyan"}
        queue.add_row(
            str(inc["id"]),
            ("TEST " if inc["test"] else "") + inc["summary"],
            where,
            f"{label} ({inc['source']})" if label else inc["source"],
            _age(inc["received_ms"], now),
            inc["status"] + (" ESCALATED" if inc["escalated_ms"] else ""),
            inc["owner"] or "-",
            str(inc["event_count"]),
            style=style.get(inc["category"]),
        )
    gw = Table(title="gateways")
    for col in ("site", "name", "state", "last heard"):
        gw.add_column(col)
    for g in gateways.values():
        state = {True: "online", False: "OFFLINE", None: "?"}[g["online"]]
        if g["silent"]:
            state = "SILENT"
        gw.add_row(
            g["site"],
            g.get("name") or "-",
            state,
            _age(g["last_seen_ms"], now) + " ago",
            style=None if state == "online" else "bold red",
        )
    return Group(_status_line(store, now), queue, gw)


def _status_line(store: Store, now: int) -> Any:
    """Each ingest instance's broker link, as it last wrote it: never an empty table that looks
    like a quiet night."""
    from rich.text import Text

    text = Text()
    rows = store.status()
    if not rows:
        return Text("no ingest has run on this store yet (wardgate central run)", "bold red")
    for row in rows:
        age = (now - row["heartbeat_ms"]) / 1000
        if age > 10:
            text.append(f"ingest {row['instance']}: NOT RUNNING (last seen {age:.0f} s ago)\n",
                        "bold red")  # fmt: skip
        elif not row["connected"]:
            text.append(f"ingest {row['instance']}: BROKER DOWN since "
                        f"{time.strftime('%H:%M:%S', time.localtime(row['since_ms'] / 1000))}: "
                        f"{row['detail']}\n", "bold red")  # fmt: skip
        else:
            text.append(f"ingest {row['instance']}: {row['detail']}\n", "green")
    return text


def run_screen(url: str, *, json_lines: bool, duration: float = 0, out: TextIO = sys.stdout) -> int:
    store = Store(url)
    deadline = time.monotonic() + duration if duration else None
    try:
        if json_lines:
            seen: dict[int, int] = {}
            links: dict[str, tuple[bool, str]] = {}
            while deadline is None or time.monotonic() < deadline:
                for row in store.status():
                    link = (row["connected"], row["detail"])
                    if links.get(row["instance"]) != link:
                        links[row["instance"]] = link
                        out.write(json.dumps({"what": "ingest", **row}) + "\n")
                for inc in store.queue():
                    if seen.get(inc["id"]) != inc["revision"]:
                        seen[inc["id"]] = inc["revision"]
                        out.write(json.dumps({"what": "incident", **inc}) + "\n")
                        out.flush()
                time.sleep(0.5)
        else:
            from rich.live import Live

            with Live(render(store), refresh_per_second=2) as live:
                while deadline is None or time.monotonic() < deadline:
                    time.sleep(0.5)
                    live.update(render(store))
    except KeyboardInterrupt:
        pass
    finally:
        store.close()
    return 0
