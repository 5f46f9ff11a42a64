"""A deliberately naive evaluator of the network and sequence rules, written from docs/detection.md.

It shares nothing with the engine: no helper, no compiled policy, no memo. It reads plain dicts
(the sample as JSON, the policy as camelCase JSON) and says, per sample, which violations become
new and which clear, for `net.egress.undeclared`, `net.tunnel` (connections), `net.listen.undeclared`,
`net.socket.unconnected` and `sensor.restarted`. Slow and obvious on purpose.
"""

from __future__ import annotations

import ipaddress
from typing import Any

POOL_PORTS = {3333, 3334, 3335, 3336, 3357, 4444, 4445, 5555, 5556, 6666, 7777, 8333, 9999, 10128, 10343,
              14433, 14444, 15555, 17777, 18080, 18081, 19999, 20535, 20580, 30303, 45560, 45700}  # fmt: skip
EPHEMERAL = range(32768, 61000)
SENSOR_PORT = 9400
CONCLUSIVE = {"net.tunnel", "sensor.restarted"}


def addr(text: str) -> Any:
    try:
        a = ipaddress.ip_address(text)
    except ValueError:
        return None
    if a.version == 6 and a.ipv4_mapped:
        return a.ipv4_mapped
    return a


def proto_name(proto: str) -> str:
    return {"tcp": "TCP", "tcp6": "TCP", "udp": "UDP", "udp6": "UDP", "sctp": "SCTP", "sctp6": "SCTP"}.get(proto, "?")


def looks_inbound(c: dict[str, Any], listening: list[dict[str, Any]]) -> bool:
    for sock in listening:
        if sock["proto"] == c["proto"] and sock["local"]["port"] == c["local"]["port"]:
            la = addr(sock["local"]["address"])
            if la is not None and (la.is_unspecified or la == addr(c["local"]["address"])):
                return True
    return False


def rule_covers(rule: dict[str, Any], a: Any, ctx: dict[str, Any], index: int) -> bool:
    if "cidr" in rule:
        net = ipaddress.ip_network(rule["cidr"], strict=False)
        if a.version != net.version or a not in net:
            return False
        return not any(
            a.version == ipaddress.ip_network(e, strict=False).version and a in ipaddress.ip_network(e, strict=False)
            for e in rule.get("except", [])
        )
    return str(a) in ctx.get("selectorPeers", {}).get(index, [])


def port_listed(rule: dict[str, Any], port: int, protocol: str) -> bool:
    for p in rule.get("ports", []):
        if p.get("protocol", "TCP") == protocol and p["port"] <= port <= p.get("endPort", p["port"]):
            return True
    return False


def findings(s: dict[str, Any], pol: dict[str, Any], ctx: dict[str, Any], prev_seq: int | None) -> set[tuple[str, str]]:
    net = pol.get("network", {})
    egress = net.get("egress", [])
    intra = net.get("allowIntraJob", True)
    dns = net.get("allowDNS", True)
    pods = {addr(x) for x in ctx.get("podIPs", [])}
    resolvers = {addr(x) for x in ctx.get("dnsResolvers", [])}
    out: set[tuple[str, str]] = set()
    for c in s.get("connections", []):
        ra = addr(c["remote"]["address"])
        port = c["remote"]["port"]
        protocol = proto_name(c["proto"])
        if ra is not None and ra.is_loopback:
            continue
        shown = c["remote"]["address"] if ra is None else (f"[{ra}]" if ra.version == 6 else str(ra))
        ident = f"{shown}:{port}"
        # Inbound: on a listener, from a client's (ephemeral) source port.
        inbound = looks_inbound(c, s.get("listening", [])) and port in EPHEMERAL
        # net.egress.undeclared
        if c["state"] != "SYN_SENT" and not inbound:
            ok = ra is not None and (
                (intra and ra in pods)
                or (dns and port == 53 and protocol in ("TCP", "UDP") and ra in resolvers)
                or any(
                    rule_covers(r, ra, ctx, i) and (not r.get("ports") or port_listed(r, port, protocol))
                    for i, r in enumerate(egress)
                )
            )
            if not ok:
                out.add(("net.egress.undeclared", ident))
        # net.tunnel
        if net.get("forbidTunnels", True) and (port == 22 or port in POOL_PORTS):
            excused = ra is not None and (
                (intra and ra in pods)
                or any(rule_covers(r, ra, ctx, i) and port_listed(r, port, protocol) for i, r in enumerate(egress))
            )
            if not excused and not inbound:
                out.add(("net.tunnel", ident))
    for sock in s.get("listening", []):
        port = sock["local"]["port"]
        if port not in net.get("listenPorts", []) and port != SENSOR_PORT and port not in EPHEMERAL:
            out.add(("net.listen.undeclared", f"port {port}"))
    for u in s.get("unconnected", []):
        kind = u["proto"].rstrip("6")
        if kind in net.get("unconnectedSockets", []):
            continue
        if kind == "udp" and u["local"]["port"] in net.get("listenPorts", []):
            continue
        a = u["local"]["address"]
        ident = f"{u['proto']} {a}:{u['local']['port']}" if a else u["proto"]
        out.add(("net.socket.unconnected", ident))
    if prev_seq is not None and s["seq"] < prev_seq:
        out.add(("sensor.restarted", ""))
    return out


def judge(
    stream: list[dict[str, Any]], pol: dict[str, Any], ctx: dict[str, Any]
) -> list[tuple[set[tuple[str, str]], set[tuple[str, str]]]]:
    """Per sample: (new violations, cleared violations), debounced by `enforcement.debounce.samples`."""
    n = pol.get("enforcement", {}).get("debounce", {}).get("samples", 3)
    runs: dict[tuple[str, str], int] = {}
    standing: dict[tuple[str, str], int] = {}  # key -> clean samples since last seen
    prev: int | None = None
    out = []
    for s in stream:
        found = findings(s, pol, ctx, prev)
        prev = s["seq"]
        new, cleared = set(), set()
        for k in found:
            runs[k] = runs.get(k, 0) + 1
            if k in standing:
                standing[k] = 0
            elif k[0] in CONCLUSIVE or runs[k] >= n:
                standing[k] = 0
                new.add(k)
        for k in list(runs):
            if k in found:
                continue
            if k in standing:
                standing[k] += 1
                if standing[k] >= n:
                    del standing[k]
                    del runs[k]
                    cleared.add(k)
            else:
                del runs[k]
        out.append((new, cleared))
    return out
