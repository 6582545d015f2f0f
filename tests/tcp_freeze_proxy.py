"""A TCP proxy that can freeze its connections: a stream whose server stops sending, unclosed.

    with FreezeProxy(upstream_port) as proxy:     # clients connect to proxy.port
        proxy.freeze()        # the connections open now stop forwarding, both ways, and stay open
        proxy.thaw()          # ...and go on, with what was held back
        proxy.cut_frozen()    # or: close them (the client's blocked read returns)

Connections made after `freeze()` are forwarded normally: the camera is still there, only the
old stream hangs (a half-open connection after a NAT or camera reset, a wedged encoder session).
"""

from __future__ import annotations

import contextlib
import socket
import threading


class _Link:
    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.frozen = False
        self.closed = False
        self.cond = threading.Condition()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class FreezeProxy:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (host, upstream_port)
        self._listener = socket.create_server((host, 0))
        self.port = self._listener.getsockname()[1]
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._accept = threading.Thread(target=self._serve, name="freeze-proxy", daemon=True)
        self._accept.start()

    def url(self, path: str = "/cam") -> str:
        return f"rtsp://{self.upstream[0]}:{self.port}{path}"

    def _serve(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            link = _Link(client, upstream)
            with self._lock:
                self._links.append(link)
                for src, dst in ((client, upstream), (upstream, client)):
                    t = threading.Thread(
                        target=self._pump, args=(link, src, dst), name="freeze-proxy-pump"
                    )
                    t.daemon = True
                    self._threads.append(t)
                    t.start()

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with link.cond:  # frozen: hold the data, read nothing more
                    link.cond.wait_for(lambda: not link.frozen or link.closed)
                    if link.closed:
                        return
                dst.sendall(data)
        except OSError:
            pass
        link.close()  # one side ended: end the other, as a TCP peer would see it

    def freeze(self) -> int:
        """Freeze every connection open now; returns how many."""
        with self._lock:
            links = [link for link in self._links if not link.closed]
        for link in links:
            with link.cond:
                link.frozen = True
        return len(links)

    def thaw(self) -> None:
        with self._lock:
            links = list(self._links)
        for link in links:
            with link.cond:
                link.frozen = False
                link.cond.notify_all()

    def cut_frozen(self) -> None:
        with self._lock:
            links = [link for link in self._links if link.frozen]
        for link in links:
            link.close()

    @property
    def open_links(self) -> int:
        with self._lock:
            return sum(not link.closed for link in self._links)

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept(); close() alone does not
        self._listener.close()
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()
        for t in self._threads:
            t.join(5)
        self._accept.join(5)

    def __enter__(self) -> FreezeProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
