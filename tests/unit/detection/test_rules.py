"""Each rule family on its own, through the engine with a debounce of one sample."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainguard.api.patterns import compile_pattern
from trainguard.api.sample import Sample, parse_sample
from trainguard.api.v1alpha1 import Policy
from trainguard.detection import Engine, EngineContext
from trainguard.detection.context import DCGM_TENSOR_ACTIVE
from trainguard.detection.engine import ManualClock

from .samples import CTX, GIB, conn, gpu, listen, proc, sample


def pol(**spec: Any) -> Policy:
    spec.setdefault("enforcement", {"debounce": {"samples": 1}})
    return Policy.model_validate(spec)


def found(samples: list[Sample], p: Policy | None = None, ctx: EngineContext = CTX) -> set[tuple[str, str]]:
    clock = ManualClock()
    engine = Engine(p or pol(), ctx, clock)
    out: set[tuple[str, str]] = set()
    for s in samples:
        clock.set(s.ts)
        out |= {(d.violation.rule, d.violation.identity) for d in engine.observe(s.pod, s) if d.kind == "new"}
    return out


# --- patterns ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        ("python*", "Python3.11", True),
        ("*miner*", "lolMiner", True),
        ("*miner*", "python3", False),
        ("a.b", "axb", False),
        ("[!x]y", "zy", True),
        ("re:^/tmp/", "/tmp/x", True),
        ("re:^/tmp/", "/usr/tmp/x", False),
        ("re:(?i)XMR", "/opt/xmrig", True),
    ],
)
def test_globs_match_whole_texts_case_insensitively_and_re2_searches(pattern: str, text: str, matches: bool) -> None:
    assert compile_pattern(pattern).matches(text) is matches


def test_denied_patterns_see_everything_the_process_shows() -> None:
    p = pol(processes={"denied": ["*/.hidden/*", "re:--donate-level"], "useDefaultDenied": False})
    by_exe = proc(30, "python3", argv=["python3", "x.py"], exe="/tmp/.hidden/python3")
    by_args = proc(31, "worker", argv=["worker", "--donate-level", "1"])
    expected = {("process.denied", "python3"), ("process.denied", "worker")}
    assert found([sample(processes=[by_exe, by_args])], p) == expected
    assert found([sample(processes=[proc(27, "xmrig")])], p) == set()  # the shipped list is off


def test_a_denied_process_seen_only_on_the_gpu_is_caught() -> None:
    g = gpu(procs=[{"pid": 9, "name": "t-rex", "exe": "/tmp/t-rex", "argv": ["/tmp/t-rex", "-a", "kawpow"]}])
    assert ("process.denied", "t-rex") in found([sample(gpus=[g])])


# --- GPU -----------------------------------------------------------------------------------------


def test_gpu_allow_list_matches_the_executable_and_flags_unattributed() -> None:
    p = pol(gpu={"allowedProcesses": ["python*"]})
    renamed = {"pid": 9, "name": "python3", "exe": "/tmp/hash", "argv": ["python3"]}
    ghost = {"pid": 10, "name": "", "exe": "", "argv": []}
    fine = {"pid": 11, "name": "python3", "exe": "/usr/bin/python3.11", "argv": ["python3"]}
    assert found([sample(gpus=[gpu(procs=[renamed, ghost, fine])])], p) == {
        ("gpu.process.unexpected", "python3"),
        ("gpu.process.unexpected", "(unattributed)"),
    }


@pytest.mark.parametrize(
    ("field", "bound", "reading", "rule"),
    [
        ("maxUtilization", 0.5, {"util": 0.6}, "gpu.utilization"),
        ("maxMemoryBytes", 10 * GIB, {"memory": 11 * GIB}, "gpu.memory"),
        ("maxPowerWatts", 400, {"power": 401.0}, "gpu.power"),
    ],
)
def test_gpu_bounds_are_strict_and_a_missing_reading_is_no_finding(
    field: str, bound: float, reading: dict[str, float], rule: str
) -> None:
    p = pol(gpu={field: bound})
    assert found([sample(gpus=[gpu(**reading)])], p) == {(rule, "gpu0")}
    key = next(iter(reading))
    assert found([sample(gpus=[gpu(**{key: None})])], p) == set()


def mining(n: int = 60, **g: Any) -> list[Sample]:
    return [sample(t=i, gpus=[gpu(util=0.99 + (i % 2) * 0.005, power=300.0, **g)]) for i in range(n)]


def test_the_mining_signature_needs_a_full_flat_saturated_window_and_corroboration() -> None:
    assert found(mining(memory=4 * GIB)) == {("gpu.mining-signature", "gpu0")}
    assert found(mining(59, memory=4 * GIB)) == set()  # not a full window yet
    assert found(mining(memory=70 * GIB)) == set()  # full memory: training
    dcgm = [
        sample(t=i, gpus=[gpu(util=0.995, power=300.0, memory=70 * GIB)], dcgm={DCGM_TENSOR_ACTIVE: 0.01})
        for i in range(60)
    ]
    assert found(dcgm) == {("gpu.mining-signature", "gpu0")}  # idle tensor pipes, whatever the memory


def test_a_gap_in_readings_or_a_dip_restarts_the_window() -> None:
    samples = mining(memory=4 * GIB)
    dip = sample(t=30, gpus=[gpu(util=0.5, power=300.0, memory=4 * GIB)])
    unknown = sample(t=30, gpus=[gpu(util=None, power=300.0, memory=4 * GIB)])
    assert found([*samples[:30], dip, *samples[31:]]) == set()
    assert found([*samples[:30], unknown, *samples[31:]]) == set()


@settings(max_examples=50)
@given(st.lists(st.floats(0.5, 1.0), min_size=60, max_size=90).filter(lambda u: min(u) < 0.9))
def test_training_that_dips_never_looks_like_mining(utils: list[float]) -> None:
    samples = [sample(t=i, gpus=[gpu(util=u, power=300.0, memory=4 * GIB)]) for i, u in enumerate(utils)]
    # A full window needs 60 busy samples in a row: only the run after the last dip can fill one.
    last_dip = max(i for i, u in enumerate(utils) if u < 0.9)
    if len(utils) - last_dip - 1 < 60:
        assert ("gpu.mining-signature", "gpu0") not in found(samples)


# --- network edges -------------------------------------------------------------------------------


def test_ipv6_and_mapped_addresses_are_judged_as_their_family() -> None:
    p = pol(network={"egress": [{"cidr": "2001:db8::/32", "ports": [{"port": 443}]}]})
    ok = conn("[2001:db8::5]:443", proto="tcp6", local_ip="fd00::1")
    mapped = conn("[::ffff:203.0.113.9]:443", proto="tcp6", local_ip="::ffff:10.244.1.10")
    assert found([sample(connections=[ok, mapped])], p) == {("net.egress.undeclared", "203.0.113.9:443")}


def test_a_tcp6_wildcard_listener_makes_mapped_ipv4_connections_inbound() -> None:
    inbound = conn("[::ffff:10.244.0.1]:39822", proto="tcp6", local_ip="::ffff:10.244.1.10", local_port=6006)
    assert found([sample(listening=[listen(6006, "::", "tcp6")], connections=[inbound])], pol(
        network={"listenPorts": [6006]}
    )) == set()  # fmt: skip


def test_tunnel_exemptions_are_the_jobs_pods_and_a_port_named_explicitly() -> None:
    p = pol(network={"egress": [{"cidr": "192.0.2.0/24", "ports": [{"port": 22}]}, {"cidr": "198.51.100.0/24"}]})
    samples = [
        sample(
            connections=[
                conn("10.244.2.11:22"),  # a job pod: MPI over ssh
                conn("192.0.2.5:22"),  # port 22 named explicitly
                conn("198.51.100.5:22", state="SYN_SENT"),  # every port allowed does not declare ssh
            ]
        )
    ]
    assert found(samples, p) == {("net.tunnel", "198.51.100.5:22")}


def test_an_inbound_connection_from_a_client_port_that_is_a_pool_port_is_no_tunnel() -> None:
    """A real client's source port is ephemeral: 45560 (a pool port in the ephemeral range) from a client
    is not a tunnel when it reaches a listener; 3333 (outside the range) is the port of a server the pod
    dialled from the listener's port: a tunnel, and egress."""
    p = pol(network={"listenPorts": [8080]})
    probe = conn("10.244.0.1:45560", local_port=8080)
    odd = conn("10.244.0.1:3333", local_port=8080)
    assert found([sample(listening=[listen(8080)], connections=[probe, odd])], p) == {
        ("net.tunnel", "10.244.0.1:3333"),
        ("net.egress.undeclared", "10.244.0.1:3333"),
    }


@pytest.mark.parametrize(
    ("remote", "listener", "egress"),
    [
        ("192.0.2.10:8443", "0.0.0.0", True),  # SO_REUSEPORT client on a wildcard listener's port, to a C2
        ("192.0.2.10:8443", "10.244.1.10", True),  # ... on the listener's very address
        ("192.0.2.10:41234", "0.0.0.0", False),  # a client from an ephemeral port connecting in
        ("10.244.0.1:32768", "0.0.0.0", False),  # the range's first port
        ("10.244.0.1:60999", "0.0.0.0", False),  # ... and its last
        ("10.244.0.1:61000", "0.0.0.0", True),  # just past it: a server's port
        ("10.244.0.1:80", "0.0.0.0", True),  # a kubelet probe never comes from port 80: the pod dialled it
    ],
)
def test_a_connection_on_a_listener_is_inbound_only_from_an_ephemeral_port(
    remote: str, listener: str, egress: bool
) -> None:
    """The socket tables do not say which end connected; a client can share a listener's port
    (SO_REUSEPORT). A connection on a listener is inbound only from a client's (ephemeral) source port."""
    p = pol(network={"listenPorts": [29500], "forbidTunnels": False})
    c = conn(remote, local_port=29500)
    got = found([sample(listening=[listen(29500, listener)], connections=[c])], p)
    assert (("net.egress.undeclared", remote) in got) is egress, got


def test_without_an_ephemeral_range_no_connection_counts_as_inbound() -> None:
    """`ephemeral_ports=None` (flag every listener) also leaves no client port to tell an accepted
    connection by: every connection with a remote is judged as egress, the operator's own included."""
    ctx = EngineContext(job_pod_ips=CTX.job_pod_ips, dns_resolvers=CTX.dns_resolvers, ephemeral_ports=None)
    p = pol(network={"listenPorts": [29500]})
    c = conn("10.244.0.1:41234", local_port=29500)
    assert found([sample(listening=[listen(29500)], connections=[c])], p, ctx) == {
        ("net.egress.undeclared", "10.244.0.1:41234")
    }


def test_v1_samples_replay_through_the_conversion() -> None:
    line = (
        '{"ts":1767225600,"pod":"agents/worker-0","seq":0,"processes":[{"pid":1,"name":"trainguard",'
        '"cmdline":"trainguard sensor"}],"connections":[{"proto":"tcp","local":"10.244.1.10:5000",'
        '"remote":"192.0.2.1:22","state":"ESTABLISHED"}]}'
    )
    s = parse_sample(line)
    assert s.processes[0].exe_status == "unknown" and s.sensor.reader == "proc"
    assert found([s], pol(processes={"allowed": ["python*"]})) == {
        ("net.tunnel", "192.0.2.1:22"),
        ("net.egress.undeclared", "192.0.2.1:22"),
    }  # and the v1 sensor process is plumbing by name (v1 only)


def test_a_denied_process_is_not_also_unexpected() -> None:
    p = pol(processes={"allowed": ["python*"]})
    miner = proc(40, "xmrig", exe="/tmp/xmrig")
    assert found([sample(processes=[proc(27, "python3"), miner])], p) == {("process.denied", "xmrig")}
