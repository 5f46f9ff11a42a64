"""The engine against an independent, naive evaluator (oracle.py) on generated streams of samples."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from trainguard.api.sample import Sample
from trainguard.api.v1alpha1 import Monitoring, Policy
from trainguard.detection import Engine, EngineContext
from trainguard.detection.engine import ManualClock

from . import oracle

POD = "agents/worker-0"
POD_IPS = ["10.244.1.10", "10.244.2.11"]
RESOLVERS = ["10.96.0.10"]
REMOTES = ["10.244.2.11", "10.96.0.10", "203.0.113.40", "192.0.2.77", "127.0.0.1", "10.1.2.3"]
PORTS = [22, 53, 443, 3333, 8443, 29500, 45560, 50000]
LOCAL_ADDRESSES = ["10.244.1.10", "127.0.0.1", "0.0.0.0"]
STATES = ["ESTABLISHED", "SYN_SENT", "TIME_WAIT", "CLOSE_WAIT", "FIN_WAIT1", "FIN_WAIT2", "LAST_ACK", "CLOSING"]
POLICY: dict[str, Any] = {
    "network": {
        "egress": [
            {"cidr": "203.0.113.0/24", "ports": [{"port": 443}]},
            {"cidr": "192.0.2.0/24", "except": ["192.0.2.64/26"], "ports": [{"port": 3333}]},
            {"podSelector": {"matchLabels": {"app": "db"}}, "ports": [{"port": 8443}]},
        ],
        "listenPorts": [29500, 8443],
    },
    "enforcement": {"debounce": {"samples": 2}},
}
CTX = {"podIPs": POD_IPS, "dnsResolvers": RESOLVERS, "selectorPeers": {2: ["10.1.2.3"]}}

endpoint = st.fixed_dictionaries({"address": st.sampled_from(REMOTES), "port": st.sampled_from(PORTS)})
#: Few local ports, shared with the listeners, so that connections often share a listener's port.
LOCAL_PORTS = [29500, 443, 45560]
local = st.fixed_dictionaries({"address": st.sampled_from(["10.244.1.10"]), "port": st.sampled_from(LOCAL_PORTS)})
connection = st.fixed_dictionaries(
    {
        "proto": st.sampled_from(["tcp", "udp"]),
        "local": local,
        "remote": endpoint,
        "state": st.sampled_from(STATES),
    }
)
listener = st.fixed_dictionaries(
    {
        "proto": st.sampled_from(["tcp"]),
        "local": st.fixed_dictionaries(
            {"address": st.sampled_from(LOCAL_ADDRESSES), "port": st.sampled_from([*LOCAL_PORTS, 9400, 6006])}
        ),
    }
)
socket = st.fixed_dictionaries(
    {
        "proto": st.sampled_from(["udp", "raw", "icmp", "packet", "udp6"]),
        "local": st.fixed_dictionaries(
            {"address": st.sampled_from(["10.244.1.10", ""]), "port": st.sampled_from(PORTS)}
        ),
    }
)
one_sample = st.fixed_dictionaries(
    {
        "connections": st.lists(connection, max_size=4),
        "listening": st.lists(listener, max_size=2),
        "unconnected": st.lists(socket, max_size=1),
        "seqStep": st.sampled_from([1, 1, 1, 1, -5]),
    }
)


def make_stream(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    stream = []
    seq = 100
    for i, p in enumerate(parts):
        seq = max(0, seq + p["seqStep"])
        stream.append(
            {
                "version": 2,
                "ts": 1767225600.0 + i,
                "pod": POD,
                "seq": seq,
                "processes": [{"pid": 27, "name": "python3", "exe": "/usr/bin/python3", "argv": ["python3"]}],
                "connections": p["connections"],
                "listening": p["listening"],
                "unconnected": p["unconnected"],
                "sensor": {"reader": "netlink"},
            }
        )
    return stream


def engine_judges(stream: list[dict[str, Any]]) -> list[tuple[set[tuple[str, str]], set[tuple[str, str]]]]:
    clock = ManualClock()
    ctx = EngineContext(
        dns_resolvers=frozenset(RESOLVERS),
        job_pod_ips=frozenset(POD_IPS),
        selector_peers={i: frozenset(v) for i, v in CTX["selectorPeers"].items()},
    )
    engine = Engine(Policy.model_validate(POLICY), ctx, clock, Monitoring())
    out = []
    for raw in stream:
        s = Sample.model_validate(raw)
        clock.set(s.ts)
        decisions = engine.observe(POD, s)
        new = {(d.violation.rule, d.violation.identity) for d in decisions if d.kind == "new"}
        cleared = {(d.violation.rule, d.violation.identity) for d in decisions if d.kind == "cleared"}
        out.append((new, cleared))
    return out


@settings(max_examples=500)
@given(st.lists(one_sample, min_size=1, max_size=3), st.lists(st.integers(0, 2), min_size=1, max_size=12))
def test_the_engine_and_the_oracle_agree(pool: list[dict[str, Any]], order: list[int]) -> None:
    """Streams that repeat a few samples in any order: findings persist, debounce, clear and come back."""
    stream = make_stream([pool[i % len(pool)] for i in order])
    assert engine_judges(stream) == oracle.judge(stream, POLICY, CTX)


def test_the_oracle_is_not_vacuous() -> None:
    """The generated streams do raise and clear every compared rule (a comparison of nothing proves nothing)."""
    s = make_stream(
        [
            {
                "connections": [
                    {"proto": "tcp", "local": {"address": "10.244.1.10", "port": 50000},
                     "remote": {"address": "192.0.2.70", "port": 3333}, "state": "TIME_WAIT"},
                ],
                "listening": [{"proto": "tcp", "local": {"address": "0.0.0.0", "port": 6006}}],
                "unconnected": [{"proto": "raw", "local": {"address": "", "port": 1}}],
                "seqStep": 1,
            }
        ] * 2
        + [{"connections": [], "listening": [], "unconnected": [], "seqStep": -5}] * 3
    )  # fmt: skip
    judged = oracle.judge(s, POLICY, CTX)
    raised = {k for new, _ in judged for k in new}
    assert {r for r, _ in raised} == {
        "net.tunnel",
        "net.egress.undeclared",
        "net.listen.undeclared",
        "net.socket.unconnected",
        "sensor.restarted",
    }
    assert any(cleared for _, cleared in judged)
    assert engine_judges(s) == judged
