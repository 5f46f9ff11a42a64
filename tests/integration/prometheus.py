"""A real Prometheus (Debian package `prometheus`, installed by `make tools`) on 127.0.0.1 for tests, scraping small
exporters the test serves on 127.0.0.1 with DCGM-named series. Nothing listens beyond loopback; everything started
is stopped at the end."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.polling import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def series(labels: Mapping[str, str], values: Mapping[str, float]) -> str:
    """Lines of the text exposition format: each name with these labels and its value."""
    text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return "".join(f"{name}{{{text}}} {value}\n" for name, value in values.items())


@contextlib.contextmanager
def exporter(pages: Mapping[str, Callable[[], str]]) -> Iterator[str]:
    """Serve each path's page (called at every scrape) on 127.0.0.1; yields `host:port`."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            page = pages.get(self.path)
            if page is None:
                self.send_error(404)
                return
            body = page().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def prometheus(tmp_path: Path, scrape_configs: str, port: int | None = None) -> Iterator[str]:
    """Prometheus with `scrape_configs` (YAML, a 1 s scrape interval) on `port` (default: a free one); yields its URL
    once it is ready. Skips the test, saying why, when the binary is not installed."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (Debian package prometheus; `make tools` installs it)")
    port = port or free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"global: {{scrape_interval: 1s, scrape_timeout: 1s}}\nscrape_configs:\n{scrape_configs}")
    log_path = tmp_path / "prometheus.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {log_path.read_text()[-2000:]}")
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as answer:
                return bool(answer.status == 200)

        wait_for(ready, 30, "prometheus ready", interval=0.2, ignoring=(OSError,))
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
