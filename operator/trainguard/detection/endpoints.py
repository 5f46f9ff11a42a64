"""IP addresses as the sensor reports them, parsed once and compared as the kernel would."""

from __future__ import annotations

import ipaddress
from functools import lru_cache

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@lru_cache(maxsize=65536)
def parse_ip(text: str) -> IPAddress | None:
    """An IP address with IPv4-mapped IPv6 (`::ffff:a.b.c.d`) unmapped and a zone (`%eth0`) dropped;
    None when the text is not an address (what cannot be parsed cannot be allowed)."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@lru_cache(maxsize=65536)
def is_loopback(address: str) -> bool:
    """The address is a loopback one (127/8, ::1, or IPv4-mapped loopback)."""
    ip = parse_ip(address)
    return ip is not None and ip.is_loopback


def show(address: str, port: int) -> str:
    """An endpoint as text: `a.b.c.d:port`, IPv6 as `[addr]:port` (IPv4-mapped shown as IPv4)."""
    ip = parse_ip(address)
    if ip is None:
        return f"{address}:{port}"
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
