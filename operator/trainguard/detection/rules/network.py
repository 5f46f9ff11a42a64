"""The network rules: every socket that can carry data, judged against what the policy and the cluster allow.

Directions: the kernel's socket tables do not say which end connected (sock_diag has no "accepted"
flag), and a client can share a listener's port (SO_REUSEPORT), so a connection counts as inbound
only when both of its ends say so: a listening socket of the same protocol and family accepts on
its local address and port (that address, or a wildcard), and its remote port is in the kernel's
ephemeral range, where a connecting client's source port comes from. A remote on any other port
is a server the pod dialled, whatever local port the pod's end has. Everything else with a remote
is outbound. Every state with a remote is evidence that data moved (TIME_WAIT proves a finished
connection, CLOSE_WAIT and FIN_WAIT still carry data one way), except SYN_SENT, an attempt, which
only `net.tunnel` counts.
"""

from __future__ import annotations

from collections.abc import Sequence

from trainguard.api.sample import Connection, ListeningSocket, ProcessInfo, Sample
from trainguard.detection.endpoints import is_loopback, parse_ip, show
from trainguard.detection.rules.base import (
    NOTHING,
    Rule,
    RuleInput,
    connection_evidence,
    owner,
    process_evidence,
)
from trainguard.detection.violation import Finding

NET_EGRESS_UNDECLARED = "net.egress.undeclared"
NET_TUNNEL = "net.tunnel"
NET_TUNNEL_SSH_CONFIG = "net.tunnel.ssh-config"
NET_LISTEN_UNDECLARED = "net.listen.undeclared"
NET_SOCKET_UNCONNECTED = "net.socket.unconnected"

#: The state of a connection being attempted: no data has moved yet.
ATTEMPT = "SYN_SENT"


def on_listener(c: Connection, listening: Sequence[ListeningSocket]) -> bool:
    """A listening socket of the same protocol and family accepts on this connection's local address
    and port (the very address, or a wildcard)."""
    local = parse_ip(c.local.address)
    for sock in listening:
        if sock.proto != c.proto or sock.local.port != c.local.port:
            continue
        ip = parse_ip(sock.local.address)
        if ip is not None and (ip.is_unspecified or ip == local):
            return True
    return False


def inbound(inp: RuleInput, c: Connection) -> bool:
    """The connection may have been accepted: it is on a listener (`on_listener`) and its remote port is
    in the ephemeral range (a client's source port). A client bound with SO_REUSEPORT to a wildcard
    listener's port and connected to a server on port 8443 is on the listener, but 8443 is the port a
    server chose: outbound. (A server of the workload's own on an ephemeral port is the blind spot
    left: docs/detection.md.)"""
    return inp.policy.ephemeral(c.remote.port) and on_listener(c, inp.sample.listening)


def local_traffic(c: Connection) -> bool:
    """Traffic inside the pod: the remote is a loopback address."""
    return is_loopback(c.remote.address)


def net_egress_undeclared(inp: RuleInput) -> Sequence[Finding]:
    """An outbound connection, in any state but an attempt, to a remote that nothing allows: no egress
    rule covers its address, port and protocol, it is not DNS to a resolver the context names
    (allowDNS), nor one of the job's pods (allowIntraJob). A remote that is not an address is not allowed."""
    s = inp.sample
    policy = inp.policy
    found: list[Finding] = []
    for c in s.connections:
        if c.state == ATTEMPT or policy.allowed_by(c.remote.address, c.remote.port, c.proto) is not None:
            continue
        if local_traffic(c) or inbound(inp, c):
            continue
        found.append(Finding(NET_EGRESS_UNDECLARED, show(c.remote.address, c.remote.port), connection_evidence(s, c)))
    return found or NOTHING


def tunnel_connection(inp: RuleInput, c: Connection) -> str | None:
    """Why a connection is a tunnel: its remote port is SSH or a miner pool (not excused by the job's
    pods or an egress rule naming the port), whatever its state, unless it is inbound (a client
    connecting in from a pool port number in the ephemeral range, 45560, is no tunnel)."""
    why = inp.policy.tunnel_port(c.remote.address, c.remote.port, c.proto)
    if why is None or local_traffic(c) or inbound(inp, c):
        return None
    return why


def tool_identity(p: ProcessInfo) -> str:
    """A tunnel tool's violation is about that process: `process:<name> pid <pid>`. Keyed by name alone,
    a second tunnel of the same tool opened while the first stood was in no decision (and a cut stops
    only the pid a decision names), and it stood on unreported once the first was killed."""
    return f"process:{p.name or p.exe} pid {p.pid}"


def net_tunnel(inp: RuleInput) -> Sequence[Finding]:
    """With forbidTunnels: a connection (or attempt) to SSH or a miner-pool port (`tunnel_connection`), or a
    live tunnel tool: ssh/dbclient with a forward in any spelling, socat/ncat running a program for the
    peer, and the tunnel tools by name (tools.TUNNEL_TOOLS)."""
    policy = inp.policy
    if not policy.forbid_tunnels:
        return NOTHING
    s = inp.sample
    found: list[Finding] = []
    for c in s.connections:
        why = tunnel_connection(inp, c)
        if why is not None:
            found.append(
                Finding(NET_TUNNEL, show(c.remote.address, c.remote.port), connection_evidence(s, c, reason=why))
            )
    for p, verdict in zip(s.processes, inp.verdicts, strict=True):
        tool = verdict.tunnel
        if tool is not None:
            found.append(
                Finding(NET_TUNNEL, tool_identity(p), {**process_evidence(p), "reason": tool})
            )
    return found or NOTHING


def net_tunnel_ssh_config(inp: RuleInput) -> Sequence[Finding]:
    """With forbidTunnels: ssh or dbclient given a configuration file (`-F FILE`, other than /dev/null).
    Forwards set in it cannot be seen (the sample does not carry files): lower than a tunnel seen."""
    policy = inp.policy
    if not policy.forbid_tunnels:
        return NOTHING
    found = [
        Finding(NET_TUNNEL_SSH_CONFIG, tool_identity(p), {**process_evidence(p), "option": why})
        for p, verdict in zip(inp.sample.processes, inp.verdicts, strict=True)
        if (why := verdict.ssh_config) is not None
    ]
    return found or NOTHING


def net_listen_undeclared(inp: RuleInput) -> Sequence[Finding]:
    """A listening socket on a port not in network.listenPorts, any bind address (loopback too: ssh -L
    binds loopback). The sensor's port and the kernel's ephemeral range are exempt."""
    s = inp.sample
    policy = inp.policy
    found = [
        Finding(
            NET_LISTEN_UNDECLARED,
            f"port {sock.local.port}",
            {
                "port": sock.local.port,
                "proto": sock.proto,
                "address": sock.local.address,
                **process_evidence(owner(s, sock.pid), sock.pid),
            },
        )
        for sock in s.listening
        if not policy.listen_allowed(sock.local.port)
    ]
    return found or NOTHING


def socket_kind(proto: str) -> str:
    """A socket's kind as `network.unconnectedSockets` names it: udp, icmp, raw, packet, sctp."""
    return proto.removesuffix("6")


def net_socket_unconnected(inp: RuleInput) -> Sequence[Finding]:
    """A socket that can send without a peer (unconnected UDP, ICMP echo, raw, packet, SCTP) of a kind
    network.unconnectedSockets does not allow. A UDP socket bound to a port in listenPorts is a
    declared UDP server; the plumbing containers' sockets are exempt."""
    s: Sample = inp.sample
    policy = inp.policy
    found: list[Finding] = []
    for u in s.unconnected:
        kind = socket_kind(u.proto)
        if kind in policy.unconnected_kinds:
            continue
        if kind == "udp" and u.local.port in policy.listen_ports:
            continue
        proc = owner(s, u.pid)
        if proc is not None and proc.container and proc.container in policy.context.plumbing_containers:
            continue
        identity = f"{u.proto} {show(u.local.address, u.local.port)}" if u.local.address else u.proto
        found.append(
            Finding(
                NET_SOCKET_UNCONNECTED,
                identity,
                {"proto": u.proto, "local": f"{u.local.address}:{u.local.port}", **process_evidence(proc, u.pid)},
            )
        )
    return found or NOTHING


RULES: tuple[Rule, ...] = (
    Rule(NET_EGRESS_UNDECLARED, "High", False, net_egress_undeclared, "undeclared egress"),
    Rule(NET_TUNNEL, "Critical", True, net_tunnel, "tunnel"),
    Rule(NET_TUNNEL_SSH_CONFIG, "High", False, net_tunnel_ssh_config, "ssh with a configuration file"),
    Rule(NET_LISTEN_UNDECLARED, "High", False, net_listen_undeclared, "undeclared listener"),
    Rule(NET_SOCKET_UNCONNECTED, "High", False, net_socket_unconnected, "socket without a peer not allowed"),
)
