"""The finalizer's clean-up never holds a deletion forever: against an API server that cannot be reached (a closed
loopback port, so a real connection refused) it tries a bounded number of times and gives up."""

from __future__ import annotations

import socket

from kubernetes import client

from trainguard import builders
from trainguard.k8s.client import Api
from trainguard.k8s.reconcile import Reconciler


def unreachable_api() -> Api:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{port}"
    return Api(client.ApiClient(cfg), timeout=(0.5, 0.5))


def test_clean_up_gives_up_after_its_attempts() -> None:
    waits: list[float] = []
    reconciler = Reconciler(unreachable_api(), builders.BuildSettings())
    atj = {"metadata": {"name": "gone", "namespace": "team-a", "uid": "u1"}}
    assert reconciler.clean_up(atj, attempts=4, backoff_s=0.5, sleep=waits.append) is False
    assert waits == [0.5, 1.0, 2.0, 4.0]
