"""The detection rules: named pure functions over one pod's window of samples, clock injected.

Each rule has the shape of cert-manager's policy checks: a name, a comment saying what it catches
and why, and a function from its input (the latest sample, the pod's window, the compiled policy,
the time) to what it found. A rule decides nothing about debounce, de-duplication or action: the
engine does that, the same way for every rule. `docs/detection.md` documents each rule's
thresholds and blind spots.

The functions run for every sample of every pod, so they are written for speed: the common case
(nothing found) allocates nothing and every policy question is a cached lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass

from trainguard.api.sample import Connection, Sample
from trainguard.api.v1alpha1 import Severity
from trainguard.detection.compiled import PROTOCOLS, CompiledPolicy
from trainguard.detection.endpoints import Endpoint, EndpointCache, IPAddress
from trainguard.detection.violation import Evidence, Finding
from trainguard.detection.window import Window

PROCESS_DENIED = "process.denied"
PROCESS_UNEXPECTED = "process.unexpected"
GPU_PROCESS_UNEXPECTED = "gpu.process.unexpected"
GPU_UTILIZATION = "gpu.utilization"
GPU_MEMORY = "gpu.memory"
GPU_POWER = "gpu.power"
GPU_MINING_SIGNATURE = "gpu.mining-signature"
NET_EGRESS_UNDECLARED = "net.egress.undeclared"
NET_TUNNEL = "net.tunnel"
NET_LISTEN_UNDECLARED = "net.listen.undeclared"
SENSOR_SILENT = "sensor.silent"
SENSOR_RESTARTED = "sensor.restarted"

NOTHING: tuple[Finding, ...] = ()

#: TCP states of an outbound connection that is up (UDP sockets with a peer have no state or
#: ESTABLISHED, depending on how the sensor reads them).
ESTABLISHED_STATES = frozenset({"ESTABLISHED", ""})
#: ... and of one being attempted (`net.tunnel` counts attempts: the intent is the finding).
ATTEMPT_STATES = frozenset({"ESTABLISHED", "", "SYN_SENT"})
SSH_PORT = 22


class RuleInput:
    """What a rule sees: the latest sample, the pod's window (the sample included), the policy, the time."""

    __slots__ = ("endpoints", "job_ips", "now", "policy", "sample", "window")

    def __init__(
        self,
        *,
        sample: Sample,
        window: Window,
        policy: CompiledPolicy,
        now: float,
        job_ips: Set[IPAddress],
        endpoints: EndpointCache,
    ) -> None:
        self.sample = sample
        self.window = window
        self.policy = policy
        #: The injected clock's time when the sample is evaluated.
        self.now = now
        #: The IPs of the job's pods (declared in the context, and learned from samples).
        self.job_ips = job_ips
        #: A shared cache of parsed endpoints.
        self.endpoints = endpoints


Check = Callable[[RuleInput], Sequence[Finding]]


@dataclass(frozen=True, slots=True)
class Rule:
    """A named check, its severity, and whether one violating sample is conclusive."""

    name: str
    severity: Severity
    #: Conclusive rules are confirmed on the first violating sample (debounce 1): there is no
    #: innocent reading of a known miner binary or a tunnel to port 22.
    conclusive: bool
    check: Check
    #: Whether the rule can find anything under this policy (rules that cannot are not run).
    enabled: Callable[[CompiledPolicy], bool]
    summary: str


def _process_evidence(pid: int, name: str, cmdline: str, **extra: str | int | float) -> Evidence:
    return {"pid": pid, "process": name, "cmdline": cmdline[:512], **extra}


# --- processes -------------------------------------------------------------------------------


def process_denied(inp: RuleInput) -> Sequence[Finding]:
    """A process whose name or command line matches a denied pattern (the policy's, plus the shipped
    list of miners and tunnel tools unless `useDefaultDenied: false`). GPU processes are checked too:
    a process on the pod's GPU may be invisible in the pod's own process list."""
    denied = inp.policy.denied
    found: list[Finding] | None = None
    s = inp.sample
    for p in s.processes:
        m = denied.first_match(p.name, p.cmdline)
        if m is not None:
            found = found or []
            found.append(
                Finding(
                    PROCESS_DENIED,
                    p.name or p.cmdline[:64],
                    _process_evidence(p.pid, p.name, p.cmdline, pattern=m.text),
                )
            )
    for g in s.gpus:
        for gp in g.processes:
            m = denied.first_match(gp.name, gp.cmdline)
            if m is not None:
                found = found or []
                found.append(
                    Finding(
                        PROCESS_DENIED,
                        gp.name or gp.cmdline[:64],
                        _process_evidence(gp.pid, gp.name, gp.cmdline, pattern=m.text, gpu=g.index),
                    )
                )
    return found or NOTHING


def process_unexpected(inp: RuleInput) -> Sequence[Finding]:
    """With `processes.allowed` set: a process that matches none of the allowed patterns. The pod's
    plumbing (pause, the sensor) is exempt, and so are denied processes (`process.denied` has them)."""
    allowed = inp.policy.allowed
    if allowed is None:
        return NOTHING
    infra = inp.policy.context.infrastructure_processes
    denied = inp.policy.denied
    found: list[Finding] | None = None
    for p in inp.sample.processes:
        if allowed.first_match(p.name, p.cmdline) is not None or p.name in infra:
            continue
        if denied.first_match(p.name, p.cmdline) is not None:
            continue
        found = found or []
        found.append(Finding(PROCESS_UNEXPECTED, p.name or p.cmdline[:64], _process_evidence(p.pid, p.name, p.cmdline)))
    return found or NOTHING


# --- GPU -------------------------------------------------------------------------------------


def gpu_process_unexpected(inp: RuleInput) -> Sequence[Finding]:
    """With `gpu.allowedProcesses` set: a process on a GPU whose name matches none of the patterns.
    A GPU process the sensor could not attribute (no name) matches nothing: something outside the
    pod's view is using its GPU."""
    allowed = inp.policy.gpu_allowed
    if allowed is None:
        return NOTHING
    found: list[Finding] | None = None
    for g in inp.sample.gpus:
        for gp in g.processes:
            if allowed.first_match(gp.name, gp.name) is None:
                found = found or []
                found.append(
                    Finding(
                        GPU_PROCESS_UNEXPECTED,
                        gp.name or "(unattributed)",
                        _process_evidence(
                            gp.pid, gp.name, gp.cmdline, gpu=g.index, usedMemoryBytes=gp.used_memory_bytes
                        ),
                    )
                )
    return found or NOTHING


def gpu_utilization(inp: RuleInput) -> Sequence[Finding]:
    """SM utilization above `gpu.maxUtilization` (the debounce makes it 'sustained')."""
    bound = inp.policy.gpu_bounds.utilization
    found: list[Finding] | None = None
    for g in inp.sample.gpus:
        if g.utilization > bound:
            found = found or []
            found.append(
                Finding(
                    GPU_UTILIZATION, f"gpu{g.index}", {"gpu": g.index, "utilization": g.utilization, "bound": bound}
                )
            )
    return found or NOTHING


def gpu_memory(inp: RuleInput) -> Sequence[Finding]:
    """Framebuffer use above `gpu.maxMemoryBytes` on a GPU."""
    bound = inp.policy.gpu_bounds.memory_bytes
    found: list[Finding] | None = None
    for g in inp.sample.gpus:
        if g.memory_used_bytes > bound:
            found = found or []
            found.append(
                Finding(
                    GPU_MEMORY,
                    f"gpu{g.index}",
                    {"gpu": g.index, "memoryUsedBytes": g.memory_used_bytes, "bound": int(bound)},
                )
            )
    return found or NOTHING


def gpu_power(inp: RuleInput) -> Sequence[Finding]:
    """Power draw above `gpu.maxPowerWatts` on a GPU."""
    bound = inp.policy.gpu_bounds.power_watts
    found: list[Finding] | None = None
    for g in inp.sample.gpus:
        if g.power_watts > bound:
            found = found or []
            found.append(
                Finding(GPU_POWER, f"gpu{g.index}", {"gpu": g.index, "powerWatts": g.power_watts, "bound": bound})
            )
    return found or NOTHING


def gpu_mining_signature(inp: RuleInput) -> Sequence[Finding]:
    """A GPU busy the way a miner is and training is not, whatever the miner's binary is called.

    Required, over a full window (default 60 samples): every sample saturated, the mean near 100%,
    utilization flat (training pauses for data, collectives, optimizer steps, logging; a hash loop
    never does) and power flat. Corroborated by either: framebuffer use low (training fills memory
    with weights, activations and optimizer state; a hash loop needs a few GB), or DCGM tensor-pipe
    activity near zero (hashing is integer and memory work; training is matrix multiplies).
    """
    t = inp.policy.context.mining
    window = inp.window
    found: list[Finding] | None = None
    for index, series in window.gpus.items():
        # Cheapest tests first: the window must be full and never drop below the floor.
        if series.low or not series.full:
            continue
        mean = series.util_mean
        if mean < t.min_mean_utilization:
            continue
        stddev = series.util_stddev
        if stddev > t.max_utilization_stddev:
            continue
        power_cv = series.power_cv
        if power_cv > t.max_power_cv:
            continue
        mem = series.mem_fraction_mean
        tensor = window.tensor_active_mean
        low_memory = mem < t.max_memory_fraction
        idle_tensor = tensor is not None and tensor < t.max_tensor_active
        if not (low_memory or idle_tensor):
            continue
        gpu = next((g for g in inp.sample.gpus if g.index == index), None)
        evidence: dict[str, str | int | float | bool | list[str] | None] = {
            "gpu": index,
            "uuid": gpu.uuid if gpu else "",
            "windowSamples": len(series.values),
            "utilizationMean": round(mean, 4),
            "utilizationStddev": round(stddev, 4),
            "powerMeanWatts": round(series.power_mean, 1),
            "powerCv": round(power_cv, 4),
            "memoryFraction": round(mem, 4),
            "tensorActive": round(tensor, 4) if tensor is not None else None,
            "corroboratedBy": [w for w, on in (("lowMemory", low_memory), ("idleTensorPipe", idle_tensor)) if on],
            "gpuProcesses": [p.name or f"pid {p.pid}" for p in gpu.processes] if gpu else [],
        }
        found = found or []
        found.append(Finding(GPU_MINING_SIGNATURE, f"gpu{index}", evidence))
    return found or NOTHING


# --- network ---------------------------------------------------------------------------------


def _outbound(inp: RuleInput, states: frozenset[str]) -> list[tuple[Connection, Endpoint | None]]:
    """The sample's outbound connections in `states`, with the parsed remote (None if unparseable).

    A connection is inbound when its local port is one the pod listens on; loopback is neither.
    """
    s = inp.sample
    if not s.connections:
        return []
    listening = {sock.port for sock in s.listening}
    eps = inp.endpoints
    out: list[tuple[Connection, Endpoint | None]] = []
    for c in s.connections:
        if c.state not in states:
            continue
        local = eps.get(c.local)
        if local is not None and local.port in listening:
            continue
        remote = eps.get(c.remote)
        if remote is not None and remote.ip.is_loopback:
            continue
        out.append((c, remote))
    return out


def _connection_evidence(inp: RuleInput, c: Connection, **extra: str | int) -> Evidence:
    proc = next((p for p in inp.sample.processes if p.pid == c.pid), None) if c.pid is not None else None
    return {
        "remote": c.remote,
        "local": c.local,
        "proto": c.proto,
        "state": c.state,
        "pid": c.pid,
        "process": proc.name if proc else "",
        "cmdline": proc.cmdline[:512] if proc else "",
        **extra,
    }


def net_egress_undeclared(inp: RuleInput) -> Sequence[Finding]:
    """An established outbound connection that nothing in `network.egress` allows, nor DNS to the
    resolver (`allowDNS`), nor the job's own pods (`allowIntraJob`). An unparseable remote is flagged:
    what cannot be judged is not allowed."""
    judge = inp.policy.egress
    job_ips = inp.job_ips
    found: list[Finding] | None = None
    for c, remote in _outbound(inp, ESTABLISHED_STATES):
        if remote is not None and judge.allowed_by(remote, PROTOCOLS.get(c.proto, "TCP"), job_ips) is not None:
            continue
        found = found or []
        found.append(Finding(NET_EGRESS_UNDECLARED, str(remote) if remote else c.remote, _connection_evidence(inp, c)))
    return found or NOTHING


def net_tunnel(inp: RuleInput) -> Sequence[Finding]:
    """With `forbidTunnels`: an outbound connection (or attempt) to SSH (22) or a miner-pool port,
    or a live tunnel process (ngrok, chisel, frpc, autossh, ssh -R/-L/-D, socat/ncat exec). The
    job's own pods are exempt under `allowIntraJob` (MPI launches workers over SSH), and so is a
    destination whose egress rule lists the port explicitly."""
    ctx = inp.policy.context
    judge = inp.policy.egress
    pool_ports = ctx.miner_pool_ports
    intra = judge.allow_intra_job
    found: list[Finding] | None = None
    if inp.sample.connections:
        for c, remote in _outbound(inp, ATTEMPT_STATES):
            if remote is None:
                continue
            port = remote.port
            if port != SSH_PORT and port not in pool_ports:
                continue
            if intra and remote.ip in inp.job_ips:
                continue
            if judge.names_port(remote, PROTOCOLS.get(c.proto, "TCP")):
                continue
            reason = "ssh" if port == SSH_PORT else "miner-pool port"
            found = found or []
            found.append(Finding(NET_TUNNEL, str(remote), _connection_evidence(inp, c, reason=reason)))
    tunnels = inp.policy.tunnels
    for p in inp.sample.processes:
        m = tunnels.first_match(p.name, p.cmdline)
        if m is not None:
            found = found or []
            found.append(
                Finding(
                    NET_TUNNEL,
                    f"process:{p.name or p.cmdline[:64]}",
                    _process_evidence(p.pid, p.name, p.cmdline, reason="tunnel tool", pattern=m.text),
                )
            )
    return found or NOTHING


def net_listen_undeclared(inp: RuleInput) -> Sequence[Finding]:
    """A listening socket on a port that is not in `network.listenPorts`. The sensor's own port is
    exempt, and so is the kernel's ephemeral range (NCCL/Gloo bootstrap sockets bind port 0)."""
    ctx = inp.policy.context
    declared = inp.policy.listen_ports
    sensor_port = ctx.sensor_port
    eph = ctx.ephemeral_ports
    found: list[Finding] | None = None
    for sock in inp.sample.listening:
        port = sock.port
        if port in declared or port == sensor_port:
            continue
        if eph is not None and eph[0] <= port <= eph[1]:
            continue
        proc = next((p for p in inp.sample.processes if p.pid == sock.pid), None) if sock.pid is not None else None
        found = found or []
        found.append(
            Finding(
                NET_LISTEN_UNDECLARED,
                f"port {port}",
                {
                    "port": port,
                    "proto": sock.proto,
                    "address": sock.address,
                    "pid": sock.pid,
                    "process": proc.name if proc else "",
                    "cmdline": proc.cmdline[:512] if proc else "",
                },
            )
        )
    return found or NOTHING


# --- the sensor ------------------------------------------------------------------------------


def sensor_restarted(inp: RuleInput) -> Sequence[Finding]:
    """`seq` went back: the sensor restarted (or was restarted: killing it is how one hides)."""
    prev = inp.window.previous_seq
    if prev is None or inp.sample.seq >= prev:
        return NOTHING
    return (Finding(SENSOR_RESTARTED, "", {"seq": inp.sample.seq, "previousSeq": prev}),)


def sensor_silent(last_heard: float, now: float, silence_seconds: float) -> Finding | None:
    """No sample from the pod for `monitoring.sensorSilenceSeconds`, by the injected clock. Run by
    `Engine.tick(now)`, not per sample: silence is the absence of samples."""
    quiet = now - last_heard
    if quiet < silence_seconds:
        return None
    return Finding(SENSOR_SILENT, "", {"silentSeconds": round(quiet, 3), "bound": silence_seconds})


def _always(_: CompiledPolicy) -> bool:
    return True


#: The sample rules, in the order they run. `sensor.silent` is evaluated by `Engine.tick`.
CHAIN: tuple[Rule, ...] = (
    Rule(PROCESS_DENIED, "Critical", True, process_denied, lambda p: bool(p.denied), "denied process"),
    Rule(
        PROCESS_UNEXPECTED, "Medium", False, process_unexpected, lambda p: p.allowed is not None, "process not allowed"
    ),
    Rule(
        GPU_PROCESS_UNEXPECTED,
        "High",
        False,
        gpu_process_unexpected,
        lambda p: p.gpu_allowed is not None,
        "process on a GPU not allowed",
    ),
    Rule(
        GPU_UTILIZATION,
        "Medium",
        False,
        gpu_utilization,
        lambda p: p.policy.gpu.max_utilization is not None,
        "GPU utilization above bound",
    ),
    Rule(
        GPU_MEMORY,
        "Medium",
        False,
        gpu_memory,
        lambda p: p.policy.gpu.max_memory_bytes is not None,
        "GPU memory above bound",
    ),
    Rule(
        GPU_POWER,
        "Medium",
        False,
        gpu_power,
        lambda p: p.policy.gpu.max_power_watts is not None,
        "GPU power above bound",
    ),
    Rule(
        GPU_MINING_SIGNATURE,
        "High",
        True,
        gpu_mining_signature,
        lambda p: p.policy.gpu.mining_signature,
        "GPU busy like a miner",
    ),
    Rule(NET_EGRESS_UNDECLARED, "High", False, net_egress_undeclared, _always, "undeclared egress"),
    Rule(NET_TUNNEL, "Critical", True, net_tunnel, lambda p: p.policy.network.forbid_tunnels, "tunnel"),
    Rule(NET_LISTEN_UNDECLARED, "High", False, net_listen_undeclared, _always, "undeclared listener"),
    Rule(SENSOR_RESTARTED, "Medium", True, sensor_restarted, _always, "sensor restarted"),
)

#: The tick rule.
SENSOR_SILENT_RULE = Rule(SENSOR_SILENT, "High", True, lambda _: NOTHING, _always, "sensor silent")

RULES: dict[str, Rule] = {r.name: r for r in (*CHAIN, SENSOR_SILENT_RULE)}
