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

from trainguard.api.sample import Connection, GpuProcess, ProcessInfo, Sample
from trainguard.api.v1alpha1 import Severity
from trainguard.detection.compiled import (
    ATTEMPT_STATES,
    CLEAN_PROCESS,
    ESTABLISHED_STATES,
    CompiledPolicy,
    ProcessFacts,
    RemoteFacts,
)
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
#: Quiet remotes kept per protocol before the set is emptied.
QUIET_LIMIT = 16384


class RuleInput:
    """What a rule sees: the latest sample, the pod's window (the sample included), the policy, the time."""

    __slots__ = ("flagged", "flagged_gpu", "job_ips", "now", "outbound", "policy", "quiet", "sample", "window")

    def __init__(
        self,
        *,
        sample: Sample,
        window: Window,
        policy: CompiledPolicy,
        now: float,
        job_ips: Set[bytes],
        quiet: dict[str, set[str]],
    ) -> None:
        self.sample = sample
        self.window = window
        self.policy = policy
        #: The injected clock's time when the sample is evaluated.
        self.now = now
        #: The IPs of the job's pods, packed (declared in the context, and learned from samples).
        self.job_ips = job_ips
        #: The outbound connections, computed by the first network rule that asks.
        #: Remotes (by protocol) that can never be a network finding; the engine keeps it.
        self.quiet = quiet
        self.outbound: list[tuple[Connection, RemoteFacts]] | None = None
        #: The processes (and GPU processes) the policy flags, computed by the first rule that asks.
        self.flagged: list[tuple[ProcessInfo, ProcessFacts]] | None = None
        self.flagged_gpu: list[tuple[int, GpuProcess, ProcessFacts]] | None = None


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
    #: The sections of a sample it looks at (bit mask, see `active_sections`).
    sections: int
    summary: str


def _process_evidence(pid: int, name: str, cmdline: str, **extra: str | int | float) -> Evidence:
    return {"pid": pid, "process": name, "cmdline": cmdline[:512], **extra}


# --- processes -------------------------------------------------------------------------------


def _flagged_processes(inp: RuleInput) -> list[tuple[ProcessInfo, ProcessFacts]]:
    """The sample's processes that the policy has anything to say about (usually none).

    Computed once per sample, shared by the process rules and `net.tunnel`.
    """
    out = inp.flagged
    if out is None:
        policy = inp.policy
        cache = policy.process_cache
        out = inp.flagged = []
        for p in inp.sample.processes:
            # The policy's cache, read inline: this loop runs for every process of every sample.
            by_name = cache.get(p.cmdline)
            f = by_name.get(p.name) if by_name is not None else None
            if f is None:
                f = policy.process(p.name, p.cmdline)
            # A pod process is flagged only for what the pod-process rules read: a process that
            # only a GPU allow-list would flag is not (`gpu.process.unexpected` reads GPU processes).
            if f is not CLEAN_PROCESS and (f.denied is not None or f.tunnel is not None or f.unexpected):
                out.append((p, f))
    return out


def _flagged_gpu_processes(inp: RuleInput) -> list[tuple[int, GpuProcess, ProcessFacts]]:
    """(GPU index, process, facts) for the GPU processes the policy has anything to say about."""
    out = inp.flagged_gpu
    if out is None:
        policy = inp.policy
        cache = policy.process_cache
        out = inp.flagged_gpu = []
        for g in inp.sample.gpus:
            for gp in g.processes:
                by_name = cache.get(gp.cmdline)
                f = by_name.get(gp.name) if by_name is not None else None
                if f is None:
                    f = policy.process(gp.name, gp.cmdline)
                if f is not CLEAN_PROCESS:
                    out.append((g.index, gp, f))
    return out


def process_denied(inp: RuleInput) -> Sequence[Finding]:
    """A process whose name or command line matches a denied pattern (the policy's, plus the shipped
    list of miners and tunnel tools unless `useDefaultDenied: false`). GPU processes are checked too:
    a process on the pod's GPU may be invisible in the pod's own process list."""
    found: list[Finding] | None = None
    for p, f in _flagged_processes(inp):
        if f.denied is not None:
            found = found or []
            evidence = _process_evidence(p.pid, p.name, p.cmdline, pattern=f.denied.text)
            found.append(Finding(PROCESS_DENIED, p.name or p.cmdline[:64], evidence))
    for index, gp, f in _flagged_gpu_processes(inp):
        if f.denied is not None:
            found = found or []
            evidence = _process_evidence(gp.pid, gp.name, gp.cmdline, pattern=f.denied.text, gpu=index)
            found.append(Finding(PROCESS_DENIED, gp.name or gp.cmdline[:64], evidence))
    return found or NOTHING


def process_unexpected(inp: RuleInput) -> Sequence[Finding]:
    """With `processes.allowed` set: a process that matches none of the allowed patterns. The pod's
    plumbing (pause, the sensor) is exempt, and so are denied processes (`process.denied` has them)."""
    found: list[Finding] | None = None
    for p, f in _flagged_processes(inp):
        if f.unexpected:
            found = found or []
            found.append(
                Finding(PROCESS_UNEXPECTED, p.name or p.cmdline[:64], _process_evidence(p.pid, p.name, p.cmdline))
            )
    return found or NOTHING


# --- GPU -------------------------------------------------------------------------------------


def gpu_process_unexpected(inp: RuleInput) -> Sequence[Finding]:
    """With `gpu.allowedProcesses` set: a process on a GPU whose name matches none of the patterns.
    A GPU process the sensor could not attribute (no name) matches nothing: something outside the
    pod's view is using its GPU."""
    found: list[Finding] | None = None
    for index, gp, f in _flagged_gpu_processes(inp):
        if f.gpu_unexpected:
            found = found or []
            evidence = _process_evidence(gp.pid, gp.name, gp.cmdline, gpu=index, usedMemoryBytes=gp.used_memory_bytes)
            found.append(Finding(GPU_PROCESS_UNEXPECTED, gp.name or "(unattributed)", evidence))
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
        # Cheapest tests first: a full window, no sample below the floor (see `GpuSeries`).
        if not series.full:
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


def passed_over(c: Connection, quiet: dict[str, set[str]]) -> bool:
    """Whether `outbound` passes a connection over before reading anything else of it: it is not up
    or being attempted, or its remote is quiet (never a finding). Neither depends on the local
    address or the ports listened on, so the engine's fast path asks this too (`Engine._harmless`).
    """
    fields = c.__dict__  # cheaper than a pydantic model's attributes; strings keep their hash
    if fields["state"] not in ATTEMPT_STATES:
        return True
    remotes = quiet.get(fields["proto"])
    return remotes is not None and fields["remote"] in remotes


def outbound(inp: RuleInput) -> list[tuple[Connection, RemoteFacts]]:
    """The sample's outbound connections that the network rules must look at, with the policy's
    facts about their remotes: up or being attempted, not loopback, not inbound (a connection is
    inbound when its local port is one the pod listens on).

    Computed once per sample, shared by the network rules. A remote that can never be a finding
    (allowed, or one of the job's pods, and not a tunnel port) is remembered in `inp.quiet` and
    skipped from then on: the job's pod set only grows, and the policy does not change.
    """
    out = inp.outbound
    if out is not None:
        return out
    out = inp.outbound = []
    s = inp.sample
    if not s.connections:
        return out
    quiet = inp.quiet
    policy = inp.policy
    intra = policy.egress.allow_intra_job
    job_ips = inp.job_ips
    listening: set[int] | None = None
    for c in s.connections:
        if passed_over(c, quiet):
            continue
        f = policy.remote(c.remote, c.proto)
        if f.loopback or (f.tunnel is None and (f.allowed is not None or (intra and f.ip_key in job_ips))):
            known = quiet.get(c.proto)
            if known is None:
                known = quiet[c.proto] = set()
            if len(known) >= QUIET_LIMIT:
                known.clear()
            known.add(c.remote)
            continue
        if listening is None:
            listening = {sock.port for sock in s.listening}
        local = policy.endpoints.get(c.local)
        if local is not None and local.port in listening:
            continue
        out.append((c, f))
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
    intra = inp.policy.egress.allow_intra_job
    job_ips = inp.job_ips
    found: list[Finding] | None = None
    for c, f in outbound(inp):
        if c.state not in ESTABLISHED_STATES or f.allowed is not None or (intra and f.ip_key in job_ips):
            continue
        found = found or []
        found.append(Finding(NET_EGRESS_UNDECLARED, f.text, _connection_evidence(inp, c)))
    return found or NOTHING


def net_tunnel(inp: RuleInput) -> Sequence[Finding]:
    """With `forbidTunnels`: an outbound connection (or attempt) to SSH (22) or a miner-pool port,
    or a live tunnel process (ngrok, chisel, frpc, autossh, ssh -R/-L/-D, socat/ncat exec). The
    job's own pods are exempt under `allowIntraJob` (MPI launches workers over SSH), and so is a
    destination whose egress rule lists the port explicitly."""
    intra = inp.policy.egress.allow_intra_job
    job_ips = inp.job_ips
    found: list[Finding] | None = None
    for c, f in outbound(inp):
        if f.tunnel is None or (intra and f.ip_key in job_ips):
            continue
        found = found or []
        found.append(Finding(NET_TUNNEL, f.text, _connection_evidence(inp, c, reason=f.tunnel)))
    for p, pf in _flagged_processes(inp):
        if pf.tunnel is not None:
            found = found or []
            evidence = _process_evidence(p.pid, p.name, p.cmdline, reason="tunnel tool", pattern=pf.tunnel.text)
            found.append(Finding(NET_TUNNEL, f"process:{p.name or p.cmdline[:64]}", evidence))
    return found or NOTHING


def net_listen_undeclared(inp: RuleInput) -> Sequence[Finding]:
    """A listening socket on a port that is not in `network.listenPorts`. The sensor's own port is
    exempt, and so is the kernel's ephemeral range (NCCL/Gloo bootstrap sockets bind port 0)."""
    exempt = inp.policy.listen_exempt
    found: list[Finding] | None = None
    for sock in inp.sample.listening:
        port = sock.port
        if exempt(port):
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


# --- sections: which rules have anything to look at --------------------------------------------

#: The parts of a sample a rule looks at. The engine works out, once per sample, which parts hold
#: anything a rule could find (`active_sections`) and runs only the rules that look there: in the
#: common case, a clean sample, no rule function runs at all. The rules work without it too.
PROCESSES = 1
GPU_BOUNDS = 2
GPU_WINDOW = 4
NETWORK = 8
LISTENING = 16
SEQUENCE = 32


def active_sections(inp: RuleInput) -> int:
    """The sections of the sample with something for a rule to look at, as a bit mask.

    Errs on the side of running a rule: a set bit means "look", and the rule decides.
    """
    s = inp.sample
    policy = inp.policy
    active = 0
    if _flagged_processes(inp) or _flagged_gpu_processes(inp):
        active |= PROCESSES
    if s.gpus:
        b = policy.gpu_bounds
        for g in s.gpus:
            if g.utilization > b.utilization or g.memory_used_bytes > b.memory_bytes or g.power_watts > b.power_watts:
                active |= GPU_BOUNDS
                break
    if inp.window.full_gpus:
        active |= GPU_WINDOW
    if s.connections and outbound(inp):
        active |= NETWORK
    if s.listening:
        known = policy.listen_exempt_cache
        for sock in s.listening:
            exempt = known.get(sock.port)
            if exempt is None:
                exempt = policy.listen_exempt(sock.port)
            if not exempt:
                active |= LISTENING
                break
    prev = inp.window.previous_seq
    if prev is not None and s.seq < prev:
        active |= SEQUENCE
    return active


#: The sample rules, in the order they run. `sensor.silent` is evaluated by `Engine.tick`.
CHAIN: tuple[Rule, ...] = (
    Rule(
        name=PROCESS_DENIED,
        severity="Critical",
        conclusive=True,
        check=process_denied,
        enabled=lambda p: bool(p.denied),
        sections=PROCESSES,
        summary="denied process",
    ),
    Rule(
        name=PROCESS_UNEXPECTED,
        severity="Medium",
        conclusive=False,
        check=process_unexpected,
        enabled=lambda p: p.allowed is not None,
        sections=PROCESSES,
        summary="process not allowed",
    ),
    Rule(
        name=GPU_PROCESS_UNEXPECTED,
        severity="High",
        conclusive=False,
        check=gpu_process_unexpected,
        enabled=lambda p: p.gpu_allowed is not None,
        sections=PROCESSES,
        summary="process on a GPU not allowed",
    ),
    Rule(
        name=GPU_UTILIZATION,
        severity="Medium",
        conclusive=False,
        check=gpu_utilization,
        enabled=lambda p: p.policy.gpu.max_utilization is not None,
        sections=GPU_BOUNDS,
        summary="GPU utilization above bound",
    ),
    Rule(
        name=GPU_MEMORY,
        severity="Medium",
        conclusive=False,
        check=gpu_memory,
        enabled=lambda p: p.policy.gpu.max_memory_bytes is not None,
        sections=GPU_BOUNDS,
        summary="GPU memory above bound",
    ),
    Rule(
        name=GPU_POWER,
        severity="Medium",
        conclusive=False,
        check=gpu_power,
        enabled=lambda p: p.policy.gpu.max_power_watts is not None,
        sections=GPU_BOUNDS,
        summary="GPU power above bound",
    ),
    Rule(
        name=GPU_MINING_SIGNATURE,
        severity="High",
        conclusive=True,
        check=gpu_mining_signature,
        enabled=lambda p: p.policy.gpu.mining_signature,
        sections=GPU_WINDOW,
        summary="GPU busy like a miner",
    ),
    Rule(
        name=NET_EGRESS_UNDECLARED,
        severity="High",
        conclusive=False,
        check=net_egress_undeclared,
        enabled=_always,
        sections=NETWORK,
        summary="undeclared egress",
    ),
    Rule(
        name=NET_TUNNEL,
        severity="Critical",
        conclusive=True,
        check=net_tunnel,
        enabled=lambda p: p.policy.network.forbid_tunnels,
        sections=NETWORK | PROCESSES,
        summary="tunnel",
    ),
    Rule(
        name=NET_LISTEN_UNDECLARED,
        severity="High",
        conclusive=False,
        check=net_listen_undeclared,
        enabled=_always,
        sections=LISTENING,
        summary="undeclared listener",
    ),
    Rule(
        name=SENSOR_RESTARTED,
        severity="Medium",
        conclusive=True,
        check=sensor_restarted,
        enabled=_always,
        sections=SEQUENCE,
        summary="sensor restarted",
    ),
)


def _no_sample_check(_: RuleInput) -> Sequence[Finding]:
    """sensor.silent is about the absence of samples: `Engine.tick` evaluates it with `sensor_silent`."""
    return NOTHING


#: The tick rule.
SENSOR_SILENT_RULE = Rule(
    name=SENSOR_SILENT,
    severity="High",
    conclusive=True,
    check=_no_sample_check,
    enabled=_always,
    sections=0,
    summary="sensor silent",
)

RULES: dict[str, Rule] = {r.name: r for r in (*CHAIN, SENSOR_SILENT_RULE)}
