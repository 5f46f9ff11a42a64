"""A fault-injecting HTTP proxy between the operator and the API server (toxiproxy cannot be installed here and
cannot answer with status codes anyway).

The operator talks plain HTTP to the proxy on loopback (its kubeconfig copy says so, with the same token); the
proxy talks HTTPS to the API server. Each request whose method is in `methods` gets, with probability `rate`
(seeded, so that a failure replays), one fault picked in turn from `faults`:

- `409`, `429` (with `Retry-After: 1`), `500`, `503`: answered by the proxy, the request never reaches the server;
- `reset`: the connection is closed without an answer, before the request is forwarded;
- `stall`: held `stall_s` seconds, then forwarded (the client's timeout may fire first).

Watches (`watch=true`) are streamed through and cut after `drop_watch_s` seconds (a dropped watch).
Faults are injected before forwarding only: a non-idempotent create that the server applied and whose answer was
lost is a different fault (duplicates of an Event are then possible; docs/enforcement.md says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import yaml
from aiohttp import web

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}


@dataclass
class FaultyProxy:
    upstream: str
    rate: float = 0.3
    faults: tuple[str, ...] = ("500", "429", "reset", "409", "503", "stall")
    methods: frozenset[str] = frozenset({"PATCH", "POST", "PUT", "DELETE"})
    stall_s: float = 3.0
    drop_watch_s: float = 5.0
    seed: int = 13
    injected: Counter[str] = field(default_factory=Counter)
    port: int = 0
    enabled: bool = True

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._turn = 0
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True, name="faulty-proxy")
        self._thread.start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False, limit=0))
            app = web.Application(client_max_size=64 << 20)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            started.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def _pick(self, method: str) -> str | None:
        if not self.enabled or method not in self.methods or self._random.random() >= self.rate:
            return None
        fault = self.faults[self._turn % len(self.faults)]
        self._turn += 1
        self.injected[fault] += 1
        return fault

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        fault = self._pick(request.method)
        if fault in ("409", "429", "500", "503"):
            status = int(fault)
            headers = {"Retry-After": "1"} if status == 429 else {}
            reason = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}
            return web.json_response(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "reason": reason[status],
                    "code": status,
                    "message": f"injected by the test's proxy: {status}",
                },
                status=status,
                headers=headers,
            )
        if fault == "reset":
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("injected reset")
        if fault == "stall":
            await asyncio.sleep(self.stall_s)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        watch = request.query.get("watch") in ("true", "1")
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body or None,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None if watch else 60),
        ) as upstream:
            response = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP},
            )
            await response.prepare(request)
            deadline = self._loop.time() + self.drop_watch_s if watch else None
            while True:
                timeout = None if deadline is None else max(0.0, deadline - self._loop.time())
                try:
                    chunk = await asyncio.wait_for(upstream.content.readany(), timeout)
                except TimeoutError:
                    self.injected["dropped-watch"] += 1
                    if request.transport is not None:
                        request.transport.close()
                    return response
                if not chunk:
                    break
                await response.write(chunk)
            await response.write_eof()
            return response

    def close(self) -> None:
        async def down() -> None:
            await self._runner.cleanup()
            await self._session.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(down(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@contextlib.contextmanager
def faulty_proxy(kubeconfig: Path, directory: Path, **options: object) -> Iterator[tuple[FaultyProxy, Path]]:
    """The proxy and a copy of the kubeconfig that goes through it (plain HTTP to the proxy, same token)."""
    config = yaml.safe_load(kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    server = urlsplit(cluster["server"])
    proxy = FaultyProxy(f"https://{server.hostname}:{server.port or 443}", **options)  # type: ignore[arg-type]
    cluster["server"] = f"http://127.0.0.1:{proxy.port}"
    cluster.pop("certificate-authority-data", None)
    cluster.pop("certificate-authority", None)
    path = directory / "kubeconfig-faulty"
    path.write_text(yaml.safe_dump(config))
    try:
        yield proxy, path
    finally:
        proxy.close()
