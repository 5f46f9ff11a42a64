"""The sensor's one HTTP port: /metrics, /healthz, and the samples: /v2 (authenticated) or /v1 (without a key).

With a key (the job's Secret, mounted into the sensor only): /v2/samples (signed lines), /v2/sample and
POST /v2/cut, each refused (401) without the pod's bearer credential (api/sensorproto.py); /v1 is not served,
since it would hand the pod's process list and connections to anyone who can reach the port. Without a key
(local use): /v1 as before, and /v2 answers 503 saying why. /healthz and /metrics stay open either way: the
kubelet's probe and Prometheus carry no credential, and they reveal only liveness and counters.

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
from pydantic import ValidationError

from trainguard.api import sensorproto
from trainguard.sensor.cut import CutRefused, Cutter
from trainguard.sensor.metrics import SensorMetrics
from trainguard.sensor.stream import SampleHub

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
MAX_COMMAND_BYTES = 1 << 16
NO_KEY = (
    b"this sensor has no key (it was started without --key-file and the job's Secret is not mounted): "
    b"the authenticated /v2 protocol is off\n"
)
KEYED_V1 = b"/v1 is not served when the sensor has a key: use /v2 with the pod's credential\n"


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
        key: bytes | None = None,
        pod: str = "",
        cutter: Cutter | None = None,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.hub = hub
        self.metrics = metrics
        self.healthy_within_s = healthy_within_s
        self.write_timeout_s = write_timeout_s
        self.stopping = threading.Event()
        self.key = key
        self.pod = pod
        self.cutter = cutter
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
        if path.startswith("/v1/") and self.server.key is not None:
            self._send(HTTPStatus.FORBIDDEN, "text/plain", KEYED_V1)
        elif path in (sensorproto.SAMPLE_PATH, sensorproto.SAMPLES_PATH):
            if self._authorised():
                self._sample() if path == sensorproto.SAMPLE_PATH else self._stream()
        elif path == "/metrics":
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

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != sensorproto.CUT_PATH:
            self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")
            return
        if not self._authorised():
            return
        key, cutter = self.server.key, self.server.cutter
        assert key is not None
        if cutter is None:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"this sensor cannot cut (no cutter)\n")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._send(HTTPStatus.LENGTH_REQUIRED, "text/plain", b"a cut needs a Content-Length\n")
            return
        if not 0 < length <= MAX_COMMAND_BYTES:
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "text/plain", b"a cut command is 1 byte to 64 KiB\n")
            return
        body = self.rfile.read(length)
        if not sensorproto.command_ok(key, body, self.headers.get(sensorproto.SIGNATURE_HEADER)):
            self.server.metrics.cuts.labels(outcome="forged").inc()
            log.warning("refused a cut command whose signature does not verify, from %s", self.address_string())
            self._send(HTTPStatus.UNAUTHORIZED, "text/plain", b"the command's signature does not verify\n")
            return
        try:
            command = sensorproto.CutCommand.model_validate_json(body)
        except ValidationError as exc:
            self._send(HTTPStatus.BAD_REQUEST, "text/plain", f"not a CutCommand: {exc}\n".encode())
            return
        try:
            report = cutter.cut(command)
        except CutRefused as exc:
            self.server.metrics.cuts.labels(outcome="refused").inc()
            log.warning("refused cut %s: %s", command.nonce, exc)
            self._send(HTTPStatus(exc.status), "text/plain", f"{exc}\n".encode())
            return
        self.server.metrics.cuts.labels(outcome="confirmed" if report.confirmed else "unconfirmed").inc()
        log.warning(
            "cut %s: %d sockets destroyed, %d failed, %d still open, pids %s signalled %s, errors %s",
            command.nonce, len(report.destroyed), len(report.failed), len(report.remaining),
            report.stopped, command.signal, report.errors,
        )  # fmt: skip
        out = report.model_dump_json(by_alias=True).encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.send_header(sensorproto.SIGNATURE_HEADER, sensorproto.sign_report(key, out))
        self.end_headers()
        self.wfile.write(out)

    def _authorised(self) -> bool:
        """Whether the request may use /v2: a key is configured and it carries the pod's credential."""
        key = self.server.key
        if key is None:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", NO_KEY)
            return False
        if not sensorproto.credential_ok(key, self.server.pod, self.headers.get("Authorization")):
            self._send(HTTPStatus.UNAUTHORIZED, "text/plain", b"missing or wrong credential for this pod\n")
            return False
        return True

    def _sample(self) -> None:
        line = self.server.hub.latest_line
        if line is None:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"no sample yet\n")
        else:
            self._send(HTTPStatus.OK, "text/plain", line)

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
