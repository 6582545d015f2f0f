"""POST incidents and escalations as JSON to a URL (the city's paging system, a chat bridge).

One worker thread, retried with the one backoff (protocol/retry.py) until the endpoint answers
2xx. The queue is bounded: when full, a record is not queued, and that is logged and counted
(`webhook_failures`): the store and the console still have it.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import urllib.request
from typing import Any

from central.live import LiveState
from protocol.retry import Backoff

log = logging.getLogger("wardgate.webhook")


class Webhook:
    def __init__(self, url: str, live: LiveState, timeout_s: float = 10.0) -> None:
        self.url = url
        self.live = live
        self.timeout_s = timeout_s
        self.sent = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(10_000)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)

    def start(self) -> Webhook:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        self._thread.join(5)

    def post(self, record: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.live.count("webhook_failures")
            log.error("webhook queue full: %s not forwarded to %s", record.get("what"), self.url)

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            if record is None:
                return
            delays = Backoff(0.5, 30.0)
            body = json.dumps(record, default=str).encode()
            while not self._stop.is_set():
                try:
                    req = urllib.request.Request(
                        self.url,
                        data=body,
                        headers={"Content-Type": "application/json"},
                        method="POST",
                    )
                    with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                        if resp.status < 300:
                            self.sent += 1
                            break
                except OSError as exc:  # URLError and HTTPError are OSErrors
                    log.warning("webhook %s failed: %s; retrying", self.url, exc)
                    self.live.count("webhook_failures")
                self._stop.wait(delays.next())
