"""The collector against the replaying sensor over real loopback sockets: signed lines in, forged lines flagged,
a wrong credential refused and retried with backoff, streams closed when the pod goes."""

from __future__ import annotations

import socket
import threading
from typing import Any

from tests.polling import wait_for
from tests.sensorplay import Player
from trainguard.k8s.collector import Collector, CollectorSettings, Target

KEY = b"k" * 32
JOB = ("ns", "train")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Seen:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.samples: list[tuple[str, Any]] = []
        self.forged: list[tuple[str, str]] = []

    def sample(self, target: Target, sample: Any, _arrived: float) -> None:
        with self.lock:
            self.samples.append((target.pod, sample))

    def forge(self, target: Target, why: str) -> None:
        with self.lock:
            self.forged.append((target.pod, why))


def test_streams_verify_flag_forgeries_and_back_off() -> None:
    port = _port()
    player = Player(port=port, interval_s=0.05)
    seen = Seen()
    collector = Collector(seen.sample, seen.forge, CollectorSettings(backoff_initial_s=0.05, backoff_max_s=0.2))
    try:
        player.add("ns/a", "127.77.0.1", KEY)
        player.add("ns/b", "127.77.0.2", KEY)
        collector.want(
            JOB,
            {
                "ns/a": Target(JOB, "ns/a", "127.77.0.1", port, KEY),
                "ns/b": Target(JOB, "ns/b", "127.77.0.2", port, b"x" * 32),  # not the pod's key: 401
            },
        )
        wait_for(lambda: len([s for p, s in seen.samples if p == "ns/a"]) >= 3, 10, "samples of ns/a")
        assert all(s.pod == "ns/a" for _, s in seen.samples)
        seqs = [s.seq for _, s in seen.samples]
        assert seqs == sorted(seqs)
        wait_for(lambda: player.refused.count(("ns/b", 401)) >= 2, 10, "ns/b refused and retried")
        assert not [p for p, _ in seen.samples if p == "ns/b"]
        assert collector.states()["streaming"] == 1
        player.set_mode("ns/a", "forged")
        wait_for(lambda: seen.forged, 10, "a forged line flagged")
        assert seen.forged[0][0] == "ns/a" and "signature" in seen.forged[0][1]
        collector.forget(JOB)
        wait_for(lambda: player.streams == 0 and sum(collector.states().values()) == 0, 10, "streams closed")
    finally:
        collector.stop()
        player.stop()
