"""Socket endpoints as the sensor writes them: `host:port`, IPv6 as `[addr]:port`.

Parsing is cached: a pod talks to the same few peers at every tick.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Endpoint(NamedTuple):
    """An address and a port. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are unmapped to IPv4."""

    ip: IPAddress
    port: int

    def __str__(self) -> str:
        if self.ip.version == 6:
            return f"[{self.ip}]:{self.port}"
        return f"{self.ip}:{self.port}"


def parse_ip(text: str) -> IPAddress:
    """An IP address, with IPv4-mapped IPv6 unmapped and a zone (`%eth0`) dropped; ValueError if not one."""
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_endpoint(text: str) -> Endpoint:
    """Parse `a.b.c.d:port` or `[v6]:port`; raises ValueError on anything else."""
    if text.startswith("["):
        addr, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"not an endpoint: {text!r} (IPv6 is written [addr]:port)")
    else:
        addr, sep, port = text.rpartition(":")
        if not sep or ":" in addr:
            raise ValueError(f"not an endpoint: {text!r} (expected host:port, IPv6 as [addr]:port)")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"not an endpoint: {text!r} (bad port)")
    return Endpoint(parse_ip(addr), int(port))


class EndpointCache:
    """`parse_endpoint` with a bounded cache; an unparseable endpoint is cached as None."""

    LIMIT = 16384

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[str, Endpoint | None] = {}

    def get(self, text: str) -> Endpoint | None:
        try:
            return self._cache[text]
        except KeyError:
            pass
        try:
            ep: Endpoint | None = parse_endpoint(text)
        except ValueError:
            ep = None
        if len(self._cache) >= self.LIMIT:
            self._cache.clear()
        self._cache[text] = ep
        return ep
