"""A policy compiled for evaluation: patterns compiled, networks parsed, verdicts cached.

Built once per engine; everything the rules ask of the policy at every sample is a dict or set
lookup after the first time.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import NamedTuple

from trainguard.api.v1alpha1 import Debounce, EgressRule, Policy
from trainguard.detection.context import EngineContext
from trainguard.detection.endpoints import Endpoint, EndpointCache, IPAddress, parse_ip
from trainguard.detection.patterns import DEFAULT_DENIED, DEFAULT_TUNNEL_PATTERNS, Pattern, PatternSet

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Sensor protocol names to the policy's.
PROTOCOLS: dict[str, str] = {"tcp": "TCP", "tcp6": "TCP", "udp": "UDP", "udp6": "UDP", "sctp": "SCTP"}


def _network(cidr: str) -> IPNetwork:
    return ipaddress.ip_network(cidr, strict=False)


def _in(ip: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(ip.version == n.version and ip in n for n in networks)


@dataclass(frozen=True, slots=True)
class _Ports:
    """A rule's ports: (first, last, protocol) ranges; empty allows every port."""

    ranges: tuple[tuple[int, int, str], ...]

    def allow(self, port: int, protocol: str) -> bool:
        if not self.ranges:
            return True
        return any(lo <= port <= hi and protocol == proto for lo, hi, proto in self.ranges)

    def names(self, port: int, protocol: str) -> bool:
        """True when the port is listed explicitly (a range that covers it counts; 'every port' does not)."""
        return any(lo <= port <= hi and protocol == proto for lo, hi, proto in self.ranges)


@dataclass(frozen=True, slots=True)
class _Destination:
    """One egress rule: the addresses it allows (networks minus exceptions, or selected pod IPs)."""

    index: int
    networks: tuple[IPNetwork, ...]
    excepted: tuple[IPNetwork, ...]
    #: For a selector rule the context resolved: the selected pods' IPs.
    ips: frozenset[IPAddress] | None
    ports: _Ports
    selector: bool

    def covers(self, ip: IPAddress) -> bool:
        if self.ips is not None:
            return ip in self.ips
        return _in(ip, self.networks) and not _in(ip, self.excepted)


def _destination(index: int, rule: EgressRule, ctx: EngineContext, cluster: tuple[IPNetwork, ...]) -> _Destination:
    ports = _Ports(tuple((p.port, p.end_port or p.port, p.protocol) for p in rule.ports))
    if rule.cidr is not None:
        return _Destination(
            index, (_network(rule.cidr),), tuple(_network(e) for e in rule.except_), None, ports, selector=False
        )
    resolved = ctx.selector_peers.get(index)
    if resolved is not None:
        return _Destination(index, (), (), frozenset(parse_ip(i) for i in resolved), ports, selector=True)
    # A selector the context did not resolve: any address where pods can be.
    return _Destination(index, cluster, (), None, ports, selector=True)


class EgressJudge:
    """Whether the policy's egress rules or DNS allow an outbound connection to an endpoint.

    The job's own pods (`allowIntraJob`) are judged by the rules, against a set that grows as pods
    are seen; callers cache the verdicts (see `CompiledPolicy.connection`).
    """

    __slots__ = ("allow_dns", "allow_intra_job", "destinations", "dns")

    def __init__(self, policy: Policy, ctx: EngineContext) -> None:
        net = policy.network
        cluster = tuple(_network(c) for c in ctx.cluster_cidrs)
        self.destinations = tuple(_destination(i, r, ctx, cluster) for i, r in enumerate(net.egress))
        self.allow_dns = net.allow_dns
        self.allow_intra_job = net.allow_intra_job
        #: The resolvers' addresses; None means any address on port 53.
        self.dns: frozenset[IPAddress] | None = (
            frozenset(parse_ip(i) for i in ctx.dns_resolvers) if ctx.dns_resolvers else None
        )

    def allowed_by(self, remote: Endpoint, protocol: str) -> str | None:
        """What allows the connection ('dns', 'egress[i]'), or None when nothing does (intra-job aside)."""
        dns_port = remote.port == 53 and protocol in ("UDP", "TCP")
        if self.allow_dns and dns_port and (self.dns is None or remote.ip in self.dns):
            return "dns"
        for d in self.destinations:
            if d.ports.allow(remote.port, protocol) and d.covers(remote.ip):
                return f"egress[{d.index}]"
        return None

    def names_port(self, remote: Endpoint, protocol: str) -> bool:
        """True when an egress rule covering the address lists this port explicitly."""
        return any(d.ports.names(remote.port, protocol) and d.covers(remote.ip) for d in self.destinations)


#: TCP states of an outbound connection that is up (UDP sockets with a peer have no state or
#: ESTABLISHED, depending on how the sensor reads them).
ESTABLISHED_STATES = frozenset({"ESTABLISHED", ""})
#: ... and of one being attempted (`net.tunnel` counts attempts: the intent is the finding).
ATTEMPT_STATES = frozenset({"ESTABLISHED", "", "SYN_SENT"})
SSH_PORT = 22


class ProcessFacts(NamedTuple):
    """What the policy says about a process (name, command line)."""

    #: The first denied pattern it matches (`process.denied`), or None.
    denied: Pattern | None
    #: The first tunnel-tool pattern it matches (`net.tunnel`, with `forbidTunnels`), or None.
    tunnel: Pattern | None
    #: With `processes.allowed`: it matches none, is not plumbing, and is not denied.
    unexpected: bool
    #: With `gpu.allowedProcesses`: its name matches none (only meaningful on a GPU).
    gpu_unexpected: bool

    @property
    def flagged(self) -> bool:
        return self.denied is not None or self.tunnel is not None or self.unexpected or self.gpu_unexpected


CLEAN_PROCESS = ProcessFacts(None, None, unexpected=False, gpu_unexpected=False)


class RemoteFacts(NamedTuple):
    """What the policy says about a remote endpoint reached over a protocol, apart from whether it
    is one of the job's pods (a set that grows as pods are seen)."""

    #: The parsed remote, or None when it could not be parsed.
    remote: Endpoint | None
    #: The remote as it is reported in evidence and keys a violation.
    text: str
    #: The remote address packed (for the job's pod set), or None.
    ip_key: bytes | None
    loopback: bool
    #: What allows it ('dns', 'egress[i]'), not counting the job's own pods; None if nothing.
    allowed: str | None
    #: 'ssh' or 'miner-pool port' when the remote port is one, and no egress rule names it; else None.
    tunnel: str | None


@dataclass(frozen=True, slots=True)
class Bounds:
    """The GPU bounds, with +inf for unset ones (so the rules compare without a None check)."""

    utilization: float
    memory_bytes: float
    power_watts: float


class CompiledPolicy:
    """The policy, its patterns compiled and its networks parsed, plus the context it is judged in."""

    __slots__ = (
        "_remotes",
        "allowed",
        "context",
        "debounce",
        "denied",
        "egress",
        "endpoints",
        "gpu_allowed",
        "gpu_bounds",
        "listen_exempt_cache",
        "listen_ports",
        "policy",
        "process_cache",
        "tunnels",
    )

    def __init__(self, policy: Policy, context: EngineContext) -> None:
        self.policy = policy
        self.context = context
        procs = policy.processes
        self.denied = PatternSet([*(DEFAULT_DENIED if procs.use_default_denied else ()), *procs.denied])
        self.allowed = PatternSet(procs.allowed) if procs.allowed is not None else None
        self.tunnels = PatternSet(DEFAULT_TUNNEL_PATTERNS) if policy.network.forbid_tunnels else None
        gpu = policy.gpu
        self.gpu_allowed = PatternSet(gpu.allowed_processes) if gpu.allowed_processes is not None else None
        inf = float("inf")
        self.gpu_bounds = Bounds(
            gpu.max_utilization if gpu.max_utilization is not None else inf,
            gpu.max_memory_bytes if gpu.max_memory_bytes is not None else inf,
            gpu.max_power_watts if gpu.max_power_watts is not None else inf,
        )
        self.egress = EgressJudge(policy, context)
        self.endpoints = EndpointCache()
        self._remotes: dict[str, dict[str, RemoteFacts]] = {}
        self.listen_exempt_cache: dict[int, bool] = {}
        self.process_cache: dict[str, dict[str, ProcessFacts]] = {}
        self.listen_ports: frozenset[int] = frozenset(policy.network.listen_ports)
        self.debounce: Debounce = policy.enforcement.debounce

    #: Remotes whose facts are kept (per protocol) before the cache is emptied.
    REMOTE_CACHE_LIMIT = 16384

    def remote(self, remote: str, proto: str) -> RemoteFacts:
        """The policy's facts about a remote endpoint over a sensor protocol (tcp, udp6...), cached."""
        by_remote = self._remotes.get(proto)
        if by_remote is None:
            by_remote = self._remotes[proto] = {}
        facts = by_remote.get(remote)
        if facts is not None:
            return facts
        ep = self.endpoints.get(remote)
        protocol = PROTOCOLS.get(proto, "TCP")
        tunnel: str | None = None
        suspect = ep is not None and (ep.port == SSH_PORT or ep.port in self.context.miner_pool_ports)
        if ep is not None and suspect and not self.egress.names_port(ep, protocol):
            tunnel = "ssh" if ep.port == SSH_PORT else "miner-pool port"
        facts = RemoteFacts(
            remote=ep,
            text=str(ep) if ep is not None else remote,
            ip_key=ep.ip.packed if ep is not None else None,
            loopback=ep is not None and ep.ip.is_loopback,
            allowed=self.egress.allowed_by(ep, protocol) if ep is not None else None,
            tunnel=tunnel,
        )
        if len(by_remote) >= self.REMOTE_CACHE_LIMIT:
            by_remote.clear()
        by_remote[remote] = facts
        return facts

    #: Processes whose facts are kept before the cache is emptied.
    PROCESS_CACHE_LIMIT = 8192

    def process(self, name: str, cmdline: str) -> ProcessFacts:
        """The policy's facts about a process, cached per (command line, name)."""
        by_name = self.process_cache.get(cmdline)
        if by_name is not None:
            facts = by_name.get(name)
            if facts is not None:
                return facts
        denied = self.denied.first_match(name, cmdline)
        tunnel = self.tunnels.first_match(name, cmdline) if self.tunnels is not None else None
        unexpected = (
            self.allowed is not None
            and denied is None
            and name not in self.context.infrastructure_processes
            and self.allowed.first_match(name, cmdline) is None
        )
        # GPU patterns are process-name patterns: the name stands in for the command line too.
        gpu_unexpected = self.gpu_allowed is not None and self.gpu_allowed.first_match(name, name) is None
        facts = ProcessFacts(denied, tunnel, unexpected=unexpected, gpu_unexpected=gpu_unexpected)
        if facts == CLEAN_PROCESS:
            facts = CLEAN_PROCESS
        if len(self.process_cache) >= self.PROCESS_CACHE_LIMIT:
            self.process_cache.clear()
        self.process_cache.setdefault(cmdline, {})[name] = facts
        return facts

    def listen_exempt(self, port: int) -> bool:
        """A listener on this port is no violation: declared, the sensor's, or in the ephemeral range."""
        exempt = self.listen_exempt_cache.get(port)
        if exempt is None:
            eph = self.context.ephemeral_ports
            exempt = self.listen_exempt_cache[port] = (
                port in self.listen_ports
                or port == self.context.sensor_port
                or (eph is not None and eph[0] <= port <= eph[1])
            )
        return exempt
