"""The policy compiled for evaluation: patterns compiled (RE2), networks parsed, in the engine's context.

Everything here is a pure function of the policy, the context and its arguments; the few answers
asked at every sample (what allows a remote, what the policy says of a process) are memoised in
bounded dictionaries, which changes nothing but the time they take.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import NamedTuple

from trainguard.api.patterns import Pattern, compile_pattern
from trainguard.api.sample import GpuProcess, ProcessInfo
from trainguard.api.v1alpha1 import EgressRule, Policy
from trainguard.detection import tools
from trainguard.detection.context import EngineContext
from trainguard.detection.endpoints import IPAddress, parse_ip

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Sensor protocol names to the policy's.
PROTOCOLS: dict[str, str] = {
    "tcp": "TCP",
    "tcp6": "TCP",
    "udp": "UDP",
    "udp6": "UDP",
    "sctp": "SCTP",
    "sctp6": "SCTP",
}
SSH_PORT = 22
DNS_PORT = 53
#: Entries a memo keeps before it is emptied.
MEMO_LIMIT = 16384


def _network(cidr: str) -> IPNetwork:
    return ipaddress.ip_network(cidr, strict=False)


def _in(ip: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(ip.version == n.version and ip in n for n in networks)


@dataclass(frozen=True, slots=True)
class Destination:
    """One egress rule: the addresses it allows (networks minus exceptions, or the selected pods' IPs)."""

    index: int
    networks: tuple[IPNetwork, ...]
    excepted: tuple[IPNetwork, ...]
    #: For a selector rule: the selected pods' IPs as the context resolved them (empty: none).
    ips: frozenset[IPAddress] | None
    #: (first, last, protocol) ranges; empty allows every port.
    ports: tuple[tuple[int, int, str], ...]

    def covers(self, ip: IPAddress) -> bool:
        if self.ips is not None:
            return ip in self.ips
        return _in(ip, self.networks) and not _in(ip, self.excepted)

    def allows_port(self, port: int, protocol: str) -> bool:
        return not self.ports or self.names_port(port, protocol)

    def names_port(self, port: int, protocol: str) -> bool:
        """The port is listed explicitly (a range covering it counts; 'every port' does not)."""
        return any(lo <= port <= hi and protocol == proto for lo, hi, proto in self.ports)


def _destination(index: int, rule: EgressRule, ctx: EngineContext) -> Destination:
    ports = tuple((p.port, p.end_port or p.port, p.protocol) for p in rule.ports)
    if rule.cidr is not None:
        return Destination(index, (_network(rule.cidr),), tuple(_network(e) for e in rule.except_), None, ports)
    # A selector rule: only the pods the context says it selects; none when it says nothing.
    resolved = ctx.selector_peers.get(index, frozenset())
    ips = frozenset(ip for ip in (parse_ip(i) for i in resolved) if ip is not None)
    return Destination(index, (), (), ips, ports)


class ProcessVerdict(NamedTuple):
    """What the policy says about one process."""

    #: Why it is denied: the policy's pattern or the shipped miner/tunnel name; None if it is not.
    denied: str | None
    #: Why it is a tunnel tool (`net.tunnel`, with forbidTunnels); None if it is not.
    tunnel: str | None
    #: `ssh -F FILE`: forwards may hide in a file the sample cannot carry; None if not.
    ssh_config: str | None
    #: With `processes.allowed`: its executable matches none of the patterns, it is not plumbing, and
    #: it is not denied (`process.denied` has it).
    unexpected: bool


class CompiledPolicy:
    """The policy, its patterns compiled and its networks parsed, with the context it is judged in."""

    def __init__(self, policy: Policy, context: EngineContext) -> None:
        self.policy = policy
        self.context = context
        procs = policy.processes
        self.denied: tuple[Pattern, ...] = tuple(compile_pattern(p) for p in procs.denied)
        self.use_default_denied = procs.use_default_denied
        self.allowed = tuple(compile_pattern(p) for p in procs.allowed) if procs.allowed is not None else None
        gpu = policy.gpu
        self.gpu_allowed = (
            tuple(compile_pattern(p) for p in gpu.allowed_processes) if gpu.allowed_processes is not None else None
        )
        net = policy.network
        self.network = net
        self.forbid_tunnels = net.forbid_tunnels
        self.destinations = tuple(_destination(i, r, context) for i, r in enumerate(net.egress))
        self.dns: frozenset[IPAddress] = frozenset(
            ip for ip in (parse_ip(i) for i in context.dns_resolvers) if ip is not None
        )
        self.job_ips: frozenset[IPAddress] = frozenset(
            ip for ip in (parse_ip(i) for i in context.job_pod_ips) if ip is not None
        )
        self.listen_ports = frozenset(net.listen_ports)
        self.unconnected_kinds = frozenset(net.unconnected_sockets)
        self._remote_memo: dict[tuple[str, int, str], str | None] = {}
        self._process_memo: dict[tuple[object, ...], ProcessVerdict] = {}
        self._gpu_memo: dict[tuple[object, ...], tuple[str | None, bool]] = {}

    # --- network --------------------------------------------------------------------------------

    def allowed_by(self, address: str, port: int, proto: str) -> str | None:
        """What allows traffic to this remote: 'job pod' (allowIntraJob), 'dns' (allowDNS, to a named
        resolver on 53), 'egress[i]'; None when nothing does (or the address is not one)."""
        key = (address, port, proto)
        memo = self._remote_memo
        if key in memo:
            return memo[key]
        ip = parse_ip(address)
        protocol = PROTOCOLS.get(proto)
        why: str | None = None
        if ip is not None:
            if self.network.allow_intra_job and ip in self.job_ips:
                why = "job pod"
            elif (
                self.network.allow_dns and port == DNS_PORT and protocol in ("UDP", "TCP") and ip in self.dns
            ):
                why = "dns"
            elif protocol is not None:
                for d in self.destinations:
                    if d.allows_port(port, protocol) and d.covers(ip):
                        why = f"egress[{d.index}]"
                        break
        if len(memo) >= MEMO_LIMIT:
            memo.clear()
        memo[key] = why
        return why

    def tunnel_port(self, address: str, port: int, proto: str) -> str | None:
        """'ssh' or 'miner-pool port' when the remote port is one of those and neither the job's own pods
        (allowIntraJob: MPI launches workers over SSH) nor an egress rule naming that port explicitly
        excuse it; else None."""
        if port != SSH_PORT and port not in self.context.miner_pool_ports:
            return None
        ip = parse_ip(address)
        if ip is not None:
            if self.network.allow_intra_job and ip in self.job_ips:
                return None
            protocol = PROTOCOLS.get(proto)
            if protocol is not None and any(d.names_port(port, protocol) and d.covers(ip) for d in self.destinations):
                return None
        return "ssh" if port == SSH_PORT else "miner-pool port"

    def ephemeral(self, port: int) -> bool:
        eph = self.context.ephemeral_ports
        return eph is not None and eph[0] <= port <= eph[1]

    def listen_allowed(self, port: int) -> bool:
        """A listener on this port is no violation: declared, the sensor's, or in the ephemeral range."""
        return port in self.listen_ports or port == self.context.sensor_port or self.ephemeral(port)

    # --- processes ------------------------------------------------------------------------------

    def plumbing(self, p: ProcessInfo) -> bool:
        """The pod's plumbing (the sensor, the sandbox): by container; by name only in samples converted
        from version 1 (exeStatus unknown, no container), which could say no more."""
        if p.container:
            return p.container in self.context.plumbing_containers
        return p.exe_status == "unknown" and p.name in self.context.v1_plumbing_names

    def process(self, p: ProcessInfo) -> ProcessVerdict:
        """What the policy says about a pod process (memoised on what it reads)."""
        key = (p.name, p.exe, p.exe_status, p.container, *p.argv)
        memo = self._process_memo
        verdict = memo.get(key)
        if verdict is None:
            denied = self.denied_by(p)
            verdict = ProcessVerdict(
                denied=denied,
                tunnel=tools.tunnel(p) if self.forbid_tunnels else None,
                ssh_config=tools.ssh_config(p) if self.forbid_tunnels else None,
                # A denied process is process.denied (stronger), not also unexpected.
                unexpected=(
                    self.allowed is not None
                    and denied is None
                    and not self.plumbing(p)
                    and not _allowed(self.allowed, p)
                ),
            )
            if len(memo) >= MEMO_LIMIT:
                memo.clear()
            memo[key] = verdict
        return verdict

    def denied_by(self, p: ProcessInfo | GpuProcess) -> str | None:
        """The policy's first denied pattern the process matches, else the shipped miner or tunnel it is
        (with useDefaultDenied), else None. Patterns see everything the process shows."""
        if self.denied:
            cmdline = " ".join(p.argv)
            texts = [t for t in (p.exe, tools.basename(p.exe), p.name, cmdline) if t]
            for pattern in self.denied:
                if any(pattern.matches(t) for t in texts):
                    return pattern.text
        if self.use_default_denied:
            return tools.miner(p) or tools.tunnel(p)
        return None

    def gpu_process(self, gp: GpuProcess) -> tuple[str | None, bool]:
        """(why it is denied or None, whether gpu.allowedProcesses leaves it out), memoised on what it reads."""
        key = (gp.name, gp.exe, gp.exe_status, *gp.argv)
        memo = self._gpu_memo
        verdict = memo.get(key)
        if verdict is None:
            verdict = (self.denied_by(gp), self.gpu_allowed is not None and not _allowed(self.gpu_allowed, gp))
            if len(memo) >= MEMO_LIMIT:
                memo.clear()
            memo[key] = verdict
        return verdict


def _allowed(patterns: tuple[Pattern, ...], p: ProcessInfo | GpuProcess) -> bool:
    """Whether an allow-list admits the process, by its executable: a glob with a `/` against the whole
    path, one without against the file name, `re:` searched in the path. Only a process converted from
    version 1 (`exeStatus: unknown`) is judged by argv[0] and its name instead, since v1 had no exe."""
    if p.exe_status == "unknown":
        texts = [t for t in {p.name, p.argv[0] if p.argv else ""} if t]
        candidates = [(t, tools.basename(t)) for t in texts]
    elif p.exe_status == "ok" and p.exe:
        candidates = [(p.exe, tools.basename(p.exe))]
    else:
        return False  # deleted or unreadable: nothing to excuse it by
    for pattern in patterns:
        for path, name in candidates:
            if pattern.is_glob:
                if pattern.matches(path if "/" in pattern.text else name):
                    return True
            elif pattern.matches(path):
                return True
    return False
