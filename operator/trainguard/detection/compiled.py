"""A policy compiled for evaluation: patterns compiled, networks parsed, verdicts cached.

Built once per engine; everything the rules ask of the policy at every sample is a dict or set
lookup after the first time.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Set
from dataclasses import dataclass

from trainguard.api.v1alpha1 import Debounce, EgressRule, Policy
from trainguard.detection.context import EngineContext
from trainguard.detection.endpoints import Endpoint, IPAddress, parse_ip
from trainguard.detection.patterns import DEFAULT_DENIED, DEFAULT_TUNNEL_PATTERNS, PatternSet

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
    """Whether the policy allows an outbound connection to an endpoint, cached per (endpoint, protocol).

    The job's own pods (`allowIntraJob`) are judged outside the cache, since the set grows as pods
    are seen.
    """

    LIMIT = 16384

    __slots__ = ("_cache", "allow_dns", "allow_intra_job", "destinations", "dns")

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
        self._cache: dict[tuple[Endpoint, str], str | None] = {}

    def allowed_by(self, remote: Endpoint, protocol: str, job_ips: Set[IPAddress]) -> str | None:
        """What allows the connection ('intra-job', 'dns', 'egress[i]'), or None when nothing does."""
        if self.allow_intra_job and remote.ip in job_ips:
            return "intra-job"
        key = (remote, protocol)
        try:
            return self._cache[key]
        except KeyError:
            pass
        verdict = self._judge(remote, protocol)
        if len(self._cache) >= self.LIMIT:
            self._cache.clear()
        self._cache[key] = verdict
        return verdict

    def _judge(self, remote: Endpoint, protocol: str) -> str | None:
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


@dataclass(frozen=True, slots=True)
class Bounds:
    """The GPU bounds, with +inf for unset ones (so the rules compare without a None check)."""

    utilization: float
    memory_bytes: float
    power_watts: float


class CompiledPolicy:
    """The policy, its patterns compiled and its networks parsed, plus the context it is judged in."""

    __slots__ = (
        "allowed",
        "context",
        "debounce",
        "denied",
        "egress",
        "gpu_allowed",
        "gpu_bounds",
        "listen_ports",
        "policy",
        "tunnels",
    )

    def __init__(self, policy: Policy, context: EngineContext) -> None:
        self.policy = policy
        self.context = context
        procs = policy.processes
        self.denied = PatternSet([*(DEFAULT_DENIED if procs.use_default_denied else ()), *procs.denied])
        self.allowed = PatternSet(procs.allowed) if procs.allowed is not None else None
        self.tunnels = PatternSet(DEFAULT_TUNNEL_PATTERNS)
        gpu = policy.gpu
        self.gpu_allowed = PatternSet(gpu.allowed_processes) if gpu.allowed_processes is not None else None
        inf = float("inf")
        self.gpu_bounds = Bounds(
            gpu.max_utilization if gpu.max_utilization is not None else inf,
            gpu.max_memory_bytes if gpu.max_memory_bytes is not None else inf,
            gpu.max_power_watts if gpu.max_power_watts is not None else inf,
        )
        self.egress = EgressJudge(policy, context)
        self.listen_ports: frozenset[int] = frozenset(policy.network.listen_ports)
        self.debounce: Debounce = policy.enforcement.debounce
