"""A replaying sensor for tests and benchmarks: one process plays the sensors of many pods, each on its pod's
own IP (KWOK gives pods 127.x addresses, so a socket bound there is where the operator dials), speaking the real
protocol of `trainguard.api.sensorproto` (nothing of the format is copied here). `set_gpus` gives a pod's samples
GPUs (none by default).

    player = Player(port=9400)            # an aiohttp server in a thread of its own
    player.add("ns/worker-0", "127.128.0.5", key)
    player.set_mode("ns/worker-0", "tunnel")   # the next samples show `ssh -R` to 10.0.0.9:22
    player.cuts["ns/worker-0"]            # the CutCommands it accepted

What it checks is what a real sensor must check: the bearer credential of its pod, the command's signature, its
age and its nonce (replay). Modes: `clean` (a trainer), `tunnel` (plus an ssh reverse tunnel, until a cut
destroys the connection and stops the pid), `two-tunnels` (two ssh reverse tunnels, pids 31 and 32, to two
remotes; a cut destroys both connections, as the real cut destroys every socket it does not keep, and the processes
stay listed, stopped or not, as a SIGSTOPped process does), `forged` (lines signed with another key), `silent`
(no lines).
`cut_reply`: `confirm` (a signed report, nothing remaining), `remaining` (the tunnel still open: not confirmed),
`hang` (no answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from trainguard.api import sensorproto
from trainguard.api.sample import Sample

Mode = Literal["clean", "tunnel", "two-tunnels", "forged", "silent"]
CutReply = Literal["confirm", "remaining", "hang"]
TUNNEL_REMOTE = ("10.0.0.9", 22)
TUNNEL_PID = 31
SECOND_TUNNEL_REMOTE = ("10.0.0.8", 22)
SECOND_TUNNEL_PID = 32


@dataclass
class PlayedPod:
    pod: str
    ip: str
    key: bytes
    mode: Mode = "clean"
    cut_reply: CutReply = "confirm"
    seq: int = 0
    cut: bool = False
    #: When the first sample of the current mode was sent (the bench measures from it).
    mode_since: float | None = None
    #: When the first cut was accepted (Unix time).
    cut_at: float | None = None
    #: Sample streams open to this pod now.
    streams: int = 0
    site: web.TCPSite | None = None
    nonces: set[str] = field(default_factory=set)
    #: Every pid a cut named (a stopped process stays listed in `two-tunnels`).
    stopped: set[int] = field(default_factory=set)
    #: The sample's `gpus` (wire form), in every mode.
    gpus: list[dict[str, Any]] = field(default_factory=list)


def sample_for(p: PlayedPod, now: float) -> Sample:
    processes: list[dict[str, Any]] = [
        {
            "pid": 7,
            "ppid": 1,
            "name": "python3",
            "exe": "/usr/bin/python3",
            "exeStatus": "ok",
            "argv": ["python3", "train.py"],
            "container": "trainer",
        }
    ]
    connections: list[dict[str, Any]] = []
    tunnels = _tunnels(p.mode)
    if p.mode == "tunnel" and p.cut:
        tunnels = []
    for pid, remote, local_port in tunnels:
        processes.append(
            {
                "pid": pid,
                "ppid": 7,
                "name": "ssh",
                "exe": "/usr/bin/ssh",
                "exeStatus": "ok",
                "argv": ["ssh", "-N", "-R", "2222:localhost:22", f"tunnel@{remote[0]}"],
                "container": "trainer",
            }
        )
        if not p.cut:
            connections.append(
                {
                    "proto": "tcp",
                    "local": {"address": p.ip, "port": local_port},
                    "remote": {"address": remote[0], "port": remote[1]},
                    "state": "ESTABLISHED",
                    "pid": pid,
                    "inode": 9000 + pid,
                }
            )
    return Sample.model_validate(
        {
            "version": 2,
            "ts": now,
            "pod": p.pod,
            "seq": p.seq,
            "processes": processes,
            "connections": connections,
            "gpus": p.gpus,
            "sensor": {"reader": "netlink"},
        }
    )


def _tunnels(mode: Mode) -> list[tuple[int, tuple[str, int], int]]:
    """(pid, remote, local port) of the tunnels a mode plays."""
    first = (TUNNEL_PID, TUNNEL_REMOTE, 41000)
    if mode == "tunnel":
        return [first]
    if mode == "two-tunnels":
        return [first, (SECOND_TUNNEL_PID, SECOND_TUNNEL_REMOTE, 41001)]
    return []


class Player:
    def __init__(self, port: int = 9400, interval_s: float = 1.0) -> None:
        self.port = port
        self.interval_s = interval_s
        self.pods: dict[str, PlayedPod] = {}
        self.cuts: dict[str, list[sensorproto.CutCommand]] = defaultdict(list)
        self.refused: list[tuple[str, int]] = []
        self.streams = 0
        #: Sample lines written, all pods together, and streams ever opened (more than the pods: reconnects).
        self.sent = 0
        self.opened = 0
        self._runner: web.AppRunner | None = None
        self._by_ip: dict[str, PlayedPod] = {}
        self._templates: dict[tuple[str, str, bool], str] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sensorplay", daemon=True)
        self._thread.start()

    # --- control (any thread) --------------------------------------------------------------------------

    def add(self, pod: str, ip: str, key: bytes) -> None:
        played = PlayedPod(pod, ip, key)
        self.pods[pod] = played
        self._by_ip[ip] = played
        asyncio.run_coroutine_threadsafe(self._bind(played), self._loop).result(10)

    def set_gpus(self, pod: str, gpus: list[dict[str, Any]]) -> None:
        """What the pod's samples say of its GPUs from now on (wire form: `index`, `uuid`, `utilization`, ...)."""
        self.pods[pod].gpus = gpus
        for key in [k for k in self._templates if k[0] == pod]:
            del self._templates[key]

    def set_mode(self, pod: str, mode: Mode) -> None:
        p = self.pods[pod]
        p.mode, p.mode_since, p.cut = mode, None, False
        p.stopped = set()

    def stop(self) -> None:
        async def down() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(down(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    # --- the server ------------------------------------------------------------------------------------

    async def _bind(self, p: PlayedPod) -> None:
        """One listener on the pod's own IP; every listener serves the same application (one runner), which
        tells the pods apart by the address a request came in on."""
        if self._runner is None:
            app = web.Application()
            app.router.add_get(sensorproto.SAMPLES_PATH, self._samples)
            app.router.add_post(sensorproto.CUT_PATH, self._cut)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
        site = web.TCPSite(self._runner, p.ip, self.port, reuse_address=True)
        await site.start()
        p.site = site

    def _body(self, p: PlayedPod, now: float) -> bytes:
        """The sample's JSON: built once per (pod, mode, cut) by the model, then only ts and seq change (a
        thousand pods at 1 Hz must not cost the player a core)."""
        key = (p.pod, p.mode, p.cut)
        template = self._templates.get(key)
        if template is None:
            saved = p.seq
            p.seq = 987654321
            text = sample_for(p, 1234567890.5).model_dump_json(by_alias=True, exclude_none=True)
            p.seq = saved
            assert text.count("1234567890.5") == 1 and text.count("987654321") == 1
            template = self._templates[key] = text.replace("1234567890.5", "{ts}").replace("987654321", "{seq}")
        return template.replace("{ts}", repr(now)).replace("{seq}", str(p.seq)).encode()

    def _pod_of(self, request: web.Request) -> PlayedPod:
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        return self._by_ip[sock[0]]

    async def _samples(self, request: web.Request) -> web.StreamResponse:
        p = self._pod_of(request)
        if not sensorproto.credential_ok(p.key, p.pod, request.headers.get("Authorization")):
            self.refused.append((p.pod, 401))
            raise web.HTTPUnauthorized()
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        try:
            await response.prepare(request)
        except ConnectionError:  # the operator gave up on this connection before the headers went out
            return response
        self.streams += 1
        self.opened += 1
        p.streams += 1
        try:
            while True:
                if p.mode != "silent":
                    now = time.time()
                    if p.mode_since is None:
                        p.mode_since = now
                    p.seq += 1
                    body = self._body(p, now)
                    key = b"not the job's key, 32 bytes long" if p.mode == "forged" else p.key
                    await response.write(sensorproto.sign_sample(key, body))
                    self.sent += 1
                await asyncio.sleep(self.interval_s)
        except ConnectionError:  # the operator closed the stream (or died): as a sensor would, forget it
            pass
        finally:
            self.streams -= 1
            p.streams -= 1
        return response

    async def _cut(self, request: web.Request) -> web.Response:
        p = self._pod_of(request)
        body = await request.read()
        if not sensorproto.credential_ok(p.key, p.pod, request.headers.get("Authorization")) or not (
            sensorproto.command_ok(p.key, body, request.headers.get(sensorproto.SIGNATURE_HEADER))
        ):
            self.refused.append((p.pod, 401))
            raise web.HTTPUnauthorized()
        command = sensorproto.CutCommand.model_validate_json(body)
        stale = abs(time.time() - command.issued_at) > sensorproto.MAX_COMMAND_AGE_SECONDS
        if command.pod != p.pod or stale or command.nonce in p.nonces:
            self.refused.append((p.pod, 409))
            raise web.HTTPConflict()
        p.nonces.add(command.nonce)
        if p.cut_at is None:
            p.cut_at = time.time()
        self.cuts[p.pod].append(command)
        if p.cut_reply == "hang":
            await asyncio.sleep(3600)
        sockets = [
            sensorproto.CutSocket.model_validate(
                {
                    "proto": "tcp",
                    "local": {"address": p.ip, "port": local_port},
                    "remote": {"address": remote[0], "port": remote[1]},
                    "pid": pid,
                }
            )
            for pid, remote, local_port in _tunnels(p.mode)
            if not any(_covers(peer.cidr, remote[0]) for peer in command.keep)
        ]
        open_tunnels = [] if p.cut else sockets
        if p.cut_reply == "remaining":
            # Whatever was asked, the (first) tunnel is reported still open: never confirmed.
            first = {"proto": "tcp", "local": {"address": p.ip, "port": 41000}, "pid": TUNNEL_PID}
            still = sensorproto.CutSocket.model_validate(
                {**first, "remote": {"address": TUNNEL_REMOTE[0], "port": TUNNEL_REMOTE[1]}}
            )
            report = sensorproto.CutReport(pod=p.pod, nonce=command.nonce, remaining=open_tunnels or [still])
        else:
            report = sensorproto.CutReport(
                pod=p.pod,
                nonce=command.nonce,
                destroyed=open_tunnels,
                stopped=list(command.pids),
            )
            p.cut = p.cut or bool(open_tunnels)
            p.stopped |= set(command.pids)
        data = report.model_dump_json(by_alias=True).encode()
        return web.Response(
            body=data,
            content_type="application/json",
            headers={sensorproto.SIGNATURE_HEADER: sensorproto.sign_report(p.key, data)},
        )


def _covers(cidr: str, ip: str) -> bool:
    import ipaddress  # noqa: PLC0415

    return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr, strict=False)
