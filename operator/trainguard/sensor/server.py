"""The sensor's one HTTP port: /metrics, /v1/sample, /v1/samples (a stream), /healthz.

Built on the standard library's ThreadingHTTPServer: one thread per connection. The work behind
each request is either tiny (copy the latest line, render the registry) or a stream that sleeps on
its own queue, so threads suit it; the sampler does blocking /proc and NVML calls in its own threads
and never shares a loop with the clients. The number of stream readers is capped (`max_subscribers`)
so the thread count is bounded too; extra readers get 503.
"""

from __future__ import annotations

import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from trainguard.sensor.metrics import SensorMetrics
from trainguard.sensor.stream import SampleHub

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"


class SensorServer(ThreadingHTTPServer):
    """Serves one hub and one registry."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        hub: SampleHub,
        metrics: SensorMetrics,
        *,
        healthy_within_s: float,
        write_timeout_s: float = 30.0,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.hub = hub
        self.metrics = metrics
        self.healthy_within_s = healthy_within_s
        self.write_timeout_s = write_timeout_s
        self.stopping = threading.Event()
        super().__init__(address, SensorRequestHandler)

    def stop(self) -> None:
        """Stop accepting, end the streams, close the socket."""
        self.stopping.set()
        self.hub.close()
        self.shutdown()
        self.server_close()


class SensorRequestHandler(BaseHTTPRequestHandler):
    server: SensorServer
    protocol_version = "HTTP/1.0"  # a stream ends when the connection closes; no chunking needed
    server_version = "trainguard-sensor"

    def setup(self) -> None:
        super().setup()
        # A reader that stops reading makes our writes block; give up on it after a while.
        self.connection.settimeout(self.server.write_timeout_s)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(HTTPStatus.OK, CONTENT_TYPE_LATEST, self.server.metrics.render())
        elif path == "/v1/sample":
            line = self.server.hub.latest_line
            if line is None:
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"no sample yet\n")
            else:
                self._send(HTTPStatus.OK, "application/json", line)
        elif path == "/v1/samples":
            self._stream()
        elif path == "/healthz":
            age = self.server.hub.seconds_since_publish()
            if age is not None and age <= self.server.healthy_within_s:
                self._send(HTTPStatus.OK, "text/plain", b"ok\n")
            else:
                text = "no sample yet" if age is None else f"last sample {age:.1f}s ago"
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", f"{text}\n".encode())
        else:
            self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")

    def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream(self) -> None:
        hub = self.server.hub
        sub = hub.subscribe()
        if sub is None:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"too many stream readers\n")
            return
        dropped_before = 0
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", NDJSON)
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            self.wfile.flush()
            while not self.server.stopping.is_set() and not sub.closed:
                lines = sub.take(timeout=1.0)
                if sub.dropped != dropped_before:
                    self.server.metrics.stream_dropped.inc(sub.dropped - dropped_before)
                    dropped_before = sub.dropped
                if lines:
                    self.wfile.write(b"".join(lines))
                    self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
            pass  # the reader went away or stopped reading
        finally:
            hub.unsubscribe(sub)
