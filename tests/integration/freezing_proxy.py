"""A TCP proxy in front of the API server whose open connections can be frozen: they stay open and deliver
nothing, in either direction, as a broken NAT or load balancer does (kopf issues #232, #585). New connections
made after the freeze are forwarded as usual."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml


@dataclass
class FreezingProxy:
    upstream: tuple[str, int]
    listener: socket.socket = field(init=False)
    port: int = field(init=False)
    _generation: int = 0
    _frozen_before: int = -1
    _sockets: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopped: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def freeze(self) -> int:
        """Freeze every connection open now; returns how many there were."""
        with self._lock:
            self._frozen_before = self._generation
            return self._generation

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            with self._lock:
                self._generation += 1
                generation = self._generation
                self._sockets += [downstream, upstream]
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(a, b, generation), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, generation: int) -> None:
        source.settimeout(0.2)
        while not self._stopped.is_set():
            if generation <= self._frozen_before:
                self._stopped.wait(0.2)  # frozen: keep the sockets open, move nothing
                continue
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            if generation <= self._frozen_before:
                # Frozen while this recv waited: a chunk read after the freeze goes nowhere, so that a connection
                # freezes in both directions at once (else a request sent just after the freeze reached the API
                # server and only its answer was lost: a half-open connection, another fault, docs/notes.md).
                continue
            try:
                sink.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._stopped.set()
        self.listener.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.close()


@contextlib.contextmanager
def freezing_proxy(kubeconfig: Path, directory: Path) -> Iterator[tuple[FreezingProxy, Path]]:
    """The proxy and a copy of the kubeconfig that goes through it."""
    config = yaml.safe_load(kubeconfig.read_text())
    server = urlsplit(config["clusters"][0]["cluster"]["server"])
    proxy = FreezingProxy((server.hostname or "127.0.0.1", server.port or 443))
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    path = directory / "kubeconfig-via-proxy"
    path.write_text(yaml.safe_dump(config))
    try:
        yield proxy, path
    finally:
        proxy.close()
