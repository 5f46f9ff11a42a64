"""The collector: one authenticated stream per running pod of every guarded job (issue 13).

It runs its own asyncio loop in a thread of its own (aiohttp, already a dependency through kopf): a thousand
idle streams are a thousand small tasks, not a thousand threads. Every pod's stream is

    GET http://<pod IP from the API server>:<sensor port>/v2/samples
    Authorization: Bearer <pod_credential(job key, namespace/name)>

and every line must verify against the job's key (`sensorproto.verify_sample`) before it is parsed. A line that
does not is handed on as forged (`sensor.identity`): a workload that killed the sensor and took its port has no
key. A stream that fails, ends or stays silent past `read_timeout_s` is opened again after a backoff that doubles
up to `backoff_max_s`, with full jitter so that a thousand pods do not reconnect in step.

Memory is bounded: a line longer than `max_line_bytes` ends the stream, and the hand-off queue to the detection
thread is bounded (`Sink.put` may drop; the detector counts what it dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import aiohttp

from trainguard.api import sensorproto
from trainguard.api.sample import Sample, parse_sample

log = logging.getLogger("trainguard.collector")

StreamState = Literal["streaming", "connecting", "backoff"]


@dataclass(frozen=True)
class Target:
    """Where one pod's sensor is and how to talk to it."""

    job: tuple[str, str]
    pod: str  # namespace/name
    ip: str
    port: int
    key: bytes

    @property
    def url(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{self.port}{sensorproto.SAMPLES_PATH}"


#: What the collector hands on: a verified sample, or a line that failed verification (with why).
OnSample = Callable[[Target, Sample, float], None]
OnForged = Callable[[Target, str], None]


@dataclass(frozen=True)
class CollectorSettings:
    connect_timeout_s: float = 3.0
    #: No byte for this long (the sensor samples every second): the stream is taken for dead and reopened.
    read_timeout_s: float = 5.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0
    max_line_bytes: int = 4 << 20


class Collector:
    """Streams for the targets it is told of (`want`); call from any thread."""

    def __init__(
        self,
        on_sample: OnSample,
        on_forged: OnForged,
        settings: CollectorSettings | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import time  # noqa: PLC0415

        self.settings = settings or CollectorSettings()
        self._on_sample = on_sample
        self._on_forged = on_forged
        self._clock = clock or time.time
        self._loop = asyncio.new_event_loop()
        self._tasks: dict[str, tuple[Target, asyncio.Task[None]]] = {}
        self._states: dict[str, StreamState] = {}
        self._session: aiohttp.ClientSession | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    # --- the API (any thread) ----------------------------------------------------------------------

    def want(self, job: tuple[str, str], targets: Mapping[str, Target]) -> None:
        """The job's streams should be exactly `targets` (pod -> target); others of the job are closed."""
        self._loop.call_soon_threadsafe(self._sync, job, dict(targets))

    def forget(self, job: tuple[str, str]) -> None:
        self.want(job, {})

    def states(self) -> dict[StreamState, int]:
        counts: dict[StreamState, int] = {"streaming": 0, "connecting": 0, "backoff": 0}
        for state in list(self._states.values()):
            counts[state] += 1
        return counts

    def stop(self) -> None:
        async def close() -> None:
            for _, task in list(self._tasks.values()):
                task.cancel()
            if self._session is not None:
                await self._session.close()

        with contextlib.suppress(RuntimeError):  # the loop is already closed
            try:
                asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
            except TimeoutError:  # thousands of streams on a starved machine: stop the loop regardless
                log.warning("collector: streams not closed within 5 s; stopping anyway")
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    # --- the loop ------------------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._session = aiohttp.ClientSession(
                read_bufsize=self.settings.max_line_bytes // 2,
                connector=aiohttp.TCPConnector(limit=0, force_close=True),
            )
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def _sync(self, job: tuple[str, str], targets: dict[str, Target]) -> None:
        for pod, (target, task) in list(self._tasks.items()):
            if target.job == job and targets.get(pod) != target:
                task.cancel()
                del self._tasks[pod]
                self._states.pop(pod, None)
        for pod, target in targets.items():
            if pod not in self._tasks:
                self._tasks[pod] = (target, self._loop.create_task(self._stream(target)))

    async def _stream(self, target: Target) -> None:
        s = self.settings
        backoff = s.backoff_initial_s
        credential = "Bearer " + sensorproto.pod_credential(target.key, target.pod)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=s.connect_timeout_s, sock_read=s.read_timeout_s)
        try:
            while True:
                self._states[target.pod] = "connecting"
                try:
                    assert self._session is not None
                    async with self._session.get(
                        target.url, headers={"Authorization": credential}, timeout=timeout
                    ) as response:
                        if response.status != 200:
                            raise ConnectionError(f"HTTP {response.status}")
                        self._states[target.pod] = "streaming"
                        got_one = False
                        while True:
                            line = await response.content.readline()
                            if not line:
                                break
                            if not line.strip():
                                continue
                            self._line(target, line)
                            if not got_one:
                                got_one = True
                                backoff = s.backoff_initial_s
                except asyncio.CancelledError:
                    raise
                except (aiohttp.ClientError, OSError, ValueError, TimeoutError) as error:
                    log.debug("stream of %s: %s", target.pod, error)
                self._states[target.pod] = "backoff"
                await asyncio.sleep(random.uniform(0, backoff))
                backoff = min(backoff * 2, s.backoff_max_s)
        finally:
            if self._tasks.get(target.pod, (None,))[0] == target:
                self._states.pop(target.pod, None)

    def _line(self, target: Target, line: bytes) -> None:
        try:
            body = sensorproto.verify_sample(target.key, line)
        except sensorproto.BadSignature as error:
            self._on_forged(target, str(error))
            return
        try:
            sample = parse_sample(body)
        except ValueError as error:  # pydantic's ValidationError is a ValueError
            log.warning("signed but unreadable sample from %s: %s", target.pod, str(error)[:300])
            return
        self._on_sample(target, sample, self._clock())
