"""The pod's sockets from the kernel's socket diagnostics (netlink NETLINK_SOCK_DIAG).

One dump per (family, protocol) asks the kernel for every socket of the sensor's network namespace
(the pod's): TCP with `tcp_info` (bytes acknowledged and received per connection), UDP, SCTP and raw
where the kernel has their diag modules, and AF_PACKET sockets (packet_diag). What the kernel has no
diagnostics for is read from /proc/net by `sockets.SocketWatcher`: ICMP echo ("ping") sockets always
(no kernel has a ping_diag), raw sockets where raw_diag is missing (CONFIG_INET_RAW_DIAG). A family
whose diag module is missing answers ENOENT: it is read from its table if there is one, and SCTP,
which has no table we parse, is then absent from the kernel altogether (`/proc/net/sctp` missing) or
reported as a `net_read` blind spot.

Hand-written, not pyroute2: pyroute2's `DiagSocket.get_sock_stats` decodes every message into
dicts, ~100 ms of CPU for 2,000 TCP sockets on the development VM (150 ms with tcp_info), twenty to
thirty times the whole sample's budget; `bench/sensor.py` prints both. Here each message is one
`struct.unpack_from` of its identity (family, state, ports, addresses, inode); a socket seen at the
last tick is not decoded again, and tcp_info is read at the offset it had in the last message.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from trainguard.sensor.errors import SensorError, SensorErrorKind, error
from trainguard.sensor.sockets import Counters, SocketEntry, SocketRead, SocketWatcher, packet_entry

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCPDIAG_GETSOCK = 18
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
INET_DIAG_INFO = 2
IPPROTO_SCTP = 132
IPPROTO_RAW = 255
ALL_STATES = 0xFFFFFFFF
RECV_BYTES = 1 << 16
"""The kernel fills one dump message batch up to 32 KiB; a larger buffer is never truncated."""

TCP_INFO_BYTES_OFFSET = 120
"""tcpi_bytes_acked and tcpi_bytes_received (two u64) sit at this offset in struct tcp_info (Linux 4.1+)."""

REFUSED = frozenset({errno.EPERM, errno.EACCES, errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT, errno.ENOSYS})
"""Errors that mean "netlink sock_diag is not for us" (a seccomp filter, an LSM, no such family)."""

UNSUPPORTED = frozenset({errno.ENOENT, errno.EINVAL, errno.EOPNOTSUPP})
"""Errors a dump answers when the kernel has no diag module for that protocol."""

_HEADER = struct.Struct("=IHHII")
_INET_REQUEST = struct.Struct("=IHHIIBBBBI48x")
_COMPAT_REQUEST = struct.Struct("=IHHIIBBBB48xII")
"""nlmsghdr + struct inet_diag_req (family, src_len, dst_len, ext, sockid, states, dbs)."""
_PACKET_REQUEST = struct.Struct("=IHHIIBBHII8x")
_INET_ID = struct.Struct("=BB2x36s28xI")
"""inet_diag_msg: family, state, raw ports and addresses, inode (timers, queues, cookie and uid skipped)."""
_ATTR = struct.Struct("=HH")
_BYTES = struct.Struct("=HH120xQQ")
_PACKET_INODE = struct.Struct("=4xI")
_INET_MSG_BYTES = 72
_ERRNO = struct.Struct("=i")


class NetlinkRefused(OSError):
    """The kernel or a filter refused netlink sock_diag to this process."""


@dataclass(frozen=True, slots=True)
class _Query:
    proto: str
    family: int
    protocol: int
    info: bool = False
    compat: bool = False
    """The legacy TCPDIAG_GETSOCK request: the kernel answers it for both families in one walk of the TCP
    hash table (it sets the family to AF_UNSPEC), where the v2 request walks it once per family."""


TCP_BOTH = _Query("tcp+tcp6", socket.AF_UNSPEC, socket.IPPROTO_TCP, info=True, compat=True)
"""TCP of both families in one dump; where the kernel refuses it, the two v2 dumps below."""

QUERIES = (
    TCP_BOTH,
    _Query("tcp", socket.AF_INET, socket.IPPROTO_TCP, info=True),
    _Query("tcp6", socket.AF_INET6, socket.IPPROTO_TCP, info=True),
    _Query("udp", socket.AF_INET, socket.IPPROTO_UDP),
    _Query("udp6", socket.AF_INET6, socket.IPPROTO_UDP),
    _Query("raw", socket.AF_INET, IPPROTO_RAW),
    _Query("raw6", socket.AF_INET6, IPPROTO_RAW),
    _Query("sctp", socket.AF_INET, IPPROTO_SCTP),
    _Query("sctp6", socket.AF_INET6, IPPROTO_SCTP),
)
"""Every inet dump, in the order of the sample."""

_FALLBACK_TABLE = {"raw": "raw", "raw6": "raw6"}
"""A dump the kernel cannot answer, and the /proc/net table that lists the same sockets."""


class SockDiag:
    """One NETLINK_SOCK_DIAG socket and its dumps. Raises NetlinkRefused when netlink is refused."""

    def __init__(self) -> None:
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
        except OSError as exc:
            raise NetlinkRefused(exc.errno, f"netlink sock_diag socket: {exc.strerror or exc}") from exc
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def dump(self, request: bytes) -> Iterator[tuple[bytes, int, int]]:
        """(buffer, start, end) of each answer's payload. OSError with the kernel's errno when it answers one."""
        try:
            self._sock.send(request)
        except OSError as exc:
            if exc.errno in REFUSED:
                raise NetlinkRefused(exc.errno, f"netlink sock_diag send: {exc.strerror}") from exc
            raise
        recv = self._sock.recv
        while True:
            buf = recv(RECV_BYTES)
            if not buf:
                return
            found, done = messages(buf)
            for start, end in found:
                yield buf, start, end
            if done:
                return

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq


def messages(buf: bytes) -> tuple[list[tuple[int, int]], bool]:
    """The payloads (start, end) of the SOCK_DIAG_BY_FAMILY messages in one netlink read, and whether the dump
    ended in it. OSError with the kernel's errno for an error answer (NetlinkRefused for EPERM/EACCES), EPROTO
    for a message that does not fit in the read."""
    found: list[tuple[int, int]] = []
    off, size = 0, len(buf)
    while off + 16 <= size:
        length, kind = _HEADER.unpack_from(buf, off)[:2]
        if length < 16 or off + length > size:
            raise OSError(errno.EPROTO, f"netlink: a message of {length} bytes at {off} of {size}")
        if kind in (NLMSG_DONE, NLMSG_ERROR):
            code = _ERRNO.unpack_from(buf, off + 16)[0] if length >= 20 else 0
            if code < 0:
                name = os.strerror(-code)
                if -code in REFUSED:  # an LSM or a filter said no to the dump itself
                    raise NetlinkRefused(-code, f"netlink sock_diag dump: {name}")
                raise OSError(-code, name)
            if kind == NLMSG_DONE:
                return found, True
        elif kind in (SOCK_DIAG_BY_FAMILY, TCPDIAG_GETSOCK):
            found.append((off + 16, off + length))
        off += (length + 3) & ~3
    return found, False


def inet_request(query: _Query, seq: int) -> bytes:
    ext = 1 << (INET_DIAG_INFO - 1) if query.info else 0
    if query.compat:
        flags = NLM_F_REQUEST | NLM_F_DUMP
        return _COMPAT_REQUEST.pack(_COMPAT_REQUEST.size, TCPDIAG_GETSOCK, flags, seq, 0, 0, 0, 0, ext, ALL_STATES, 0)
    return _INET_REQUEST.pack(
        _INET_REQUEST.size,
        SOCK_DIAG_BY_FAMILY,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        0,
        query.family,
        query.protocol,
        ext,
        0,
        ALL_STATES,
    )


def packet_request(seq: int) -> bytes:
    return _PACKET_REQUEST.pack(
        _PACKET_REQUEST.size, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0, socket.AF_PACKET, 0, 0, 0, 0
    )


def decode_inet(proto: str, family: int, state: int, ids: bytes, inode: int) -> SocketEntry:
    """A socket's entry from the raw identity of its inet_diag_msg (ports big-endian, addresses in 16 bytes)."""
    width = 4 if family == socket.AF_INET else 16
    return SocketEntry(
        proto,
        socket.inet_ntop(family, ids[4 : 4 + width]),
        int.from_bytes(ids[0:2], "big"),
        socket.inet_ntop(family, ids[20 : 20 + width]),
        int.from_bytes(ids[2:4], "big"),
        state,
        inode,
    )


@dataclass(slots=True)
class _Cache:
    entries: dict[tuple[int, int, bytes, int], SocketEntry] = field(default_factory=dict)
    info_at: dict[int, int] = field(default_factory=dict)
    """Family -> where INET_DIAG_INFO started in the last message of that family (after the attributes every
    message has: an IPv6 one carries one more)."""


class NetlinkSocketReader:
    """Every socket of the namespace through sock_diag, what it lacks from /proc/net (see the module).

    `read()` raises NetlinkRefused when netlink is refused (the caller falls back to /proc/net).
    """

    name = "netlink"

    def __init__(self, proc_root: str = "/proc") -> None:
        self.proc_root = proc_root
        self._diag = SockDiag()
        self._unsupported: set[str] = set()
        self._packet_unsupported = False
        self._caches: dict[str, _Cache] = {}
        self._tables = SocketWatcher(proc_root, tables=("icmp", "icmp6"), packet=False)

    def close(self) -> None:
        self._diag.close()

    def _restart(self) -> None:
        """A dump that failed half-way leaves answers in the socket: start over with a fresh one."""
        self._diag.close()
        self._diag = SockDiag()

    def read(self) -> SocketRead:
        result = SocketRead("netlink")
        tables: list[str] = ["icmp", "icmp6"]
        for query in QUERIES:
            if query.protocol == socket.IPPROTO_TCP and not query.compat and TCP_BOTH.proto not in self._unsupported:
                continue  # read by the one dump of both families
            if query.proto in self._unsupported:
                if query.proto in _FALLBACK_TABLE:
                    tables.append(_FALLBACK_TABLE[query.proto])
                continue
            kept = len(result.entries)
            try:
                self._inet(query, result)
            except NetlinkRefused:
                raise
            except OSError as exc:
                del result.entries[kept:], result.counters[kept:]  # nothing half read: the error says it
                self._restart()
                if exc.errno in UNSUPPORTED:
                    self._unsupported.add(query.proto)
                    if query.proto in _FALLBACK_TABLE:
                        tables.append(_FALLBACK_TABLE[query.proto])
                    continue
                result.errors.append(error(SensorErrorKind.NET_READ, f"sock_diag {query.proto}: {exc.strerror}"))
        if "sctp" in self._unsupported and self._sctp_in_kernel():
            result.errors.append(
                error(SensorErrorKind.NET_READ, "SCTP is loaded but sctp_diag is not: SCTP sockets are not read")
            )
        self._packet(result)
        if self._packet_unsupported:
            tables.append("packet")
        self._tables.tables = tuple(t for t in tables if t != "packet")
        self._tables.packet = "packet" in tables
        table_read = self._tables.read()
        result.entries += table_read.entries
        result.counters += [None] * len(table_read.entries)
        result.errors += table_read.errors
        return result

    def _sctp_in_kernel(self) -> bool:
        try:
            with open(f"{self.proc_root}/net/sctp/eps", "rb"):
                return True
        except OSError:
            return False

    def _inet(self, query: _Query, result: SocketRead) -> None:
        cache = self._caches.get(query.proto) or _Cache()
        last = cache.entries
        now: dict[tuple[int, int, bytes, int], SocketEntry] = {}
        entries, counters = result.entries, result.counters
        unpack_id, unpack_bytes, unpack_attr = _INET_ID.unpack_from, _BYTES.unpack_from, _ATTR.unpack_from
        proto, info = query.proto, query.info
        names = {socket.AF_INET: "tcp", socket.AF_INET6: "tcp6"} if query.compat else None
        info_at = cache.info_at
        for buf, start, end in self._diag.dump(inet_request(query, self._diag.next_seq())):
            if end - start < _INET_MSG_BYTES:
                raise OSError(errno.EPROTO, f"sock_diag {proto}: a message of {end - start} bytes")
            key = unpack_id(buf, start)
            entry = last.get(key) or now.get(key)
            if entry is None:
                family = key[0]
                if names is not None and family not in names:
                    raise OSError(errno.EPROTO, f"sock_diag {proto}: family {family}")
                entry = decode_inet(proto if names is None else names[family], *key)
            now[key] = entry
            entries.append(entry)
            if not info:
                counters.append(None)
                continue
            counted: Counters | None = None
            at = start + info_at.get(key[0], _INET_MSG_BYTES)
            if at + 140 <= end:
                length, kind, sent, received = unpack_bytes(buf, at)
                if kind == INET_DIAG_INFO and length >= 140:
                    counted = (sent, received)
            if counted is None:  # not where it was last time: walk the attributes
                at = start + _INET_MSG_BYTES
                while at + 4 <= end:
                    length, kind = unpack_attr(buf, at)
                    if length < 4:
                        break
                    if kind == INET_DIAG_INFO:
                        if length >= 140 and at + 140 <= end:
                            counted = unpack_bytes(buf, at)[2:]
                            info_at[key[0]] = at - start
                        break
                    at += (length + 3) & ~3
            counters.append(counted)
        cache.entries, cache.info_at = now, info_at
        self._caches[query.proto] = cache

    def _packet(self, result: SocketRead) -> None:
        if self._packet_unsupported:
            return
        try:
            found = [
                packet_entry(_PACKET_INODE.unpack_from(buf, start)[0])
                for buf, start, end in self._diag.dump(packet_request(self._diag.next_seq()))
                if end - start >= _PACKET_INODE.size
            ]
        except NetlinkRefused:
            raise
        except OSError as exc:
            self._restart()
            if exc.errno in UNSUPPORTED:
                self._packet_unsupported = True
            else:
                result.errors.append(error(SensorErrorKind.NET_READ, f"packet_diag: {exc.strerror}"))
            return
        result.entries += found
        result.counters += [None] * len(found)


class ProcSocketReader:
    """The fallback: every table of /proc/net (no byte counts, no SCTP)."""

    name = "proc"

    def __init__(self, proc_root: str = "/proc") -> None:
        self._watcher = SocketWatcher(proc_root)

    def read(self) -> SocketRead:
        return self._watcher.read()

    def close(self) -> None:
        return None


class SocketSource:
    """Netlink first; /proc/net where netlink is refused, and then every sample says so (`net_fallback`).

    `prefer`: `netlink` (default: fall back when refused), or `proc` (always /proc/net; the bench
    uses it to compare the two). Netlink is tried again every `retry_every` reads while on the fallback.
    """

    def __init__(self, proc_root: str = "/proc", *, prefer: str = "netlink", retry_every: int = 60) -> None:
        self.proc_root = proc_root
        self.prefer = prefer
        self.retry_every = retry_every
        self._netlink: NetlinkSocketReader | None = None
        self._proc = ProcSocketReader(proc_root)
        self._refusal = ""
        self._reads = 0

    def read(self) -> SocketRead:
        self._reads += 1
        if self.prefer == "proc":
            return self._proc.read()
        if self._netlink is None and (self._reads == 1 or self._reads % self.retry_every == 0):
            try:
                self._netlink = NetlinkSocketReader(self.proc_root)
            except NetlinkRefused as exc:
                self._refusal = exc.strerror or str(exc)
        if self._netlink is not None:
            try:
                return self._netlink.read()
            except NetlinkRefused as exc:
                self._refusal = exc.strerror or str(exc)
                self._netlink.close()
                self._netlink = None
        result = self._proc.read()
        result.errors.insert(
            0,
            error(
                SensorErrorKind.NET_FALLBACK,
                f"netlink sock_diag refused ({self._refusal}): sockets read from /proc/net, without byte counts "
                "or SCTP",
            ),
        )
        return result

    def close(self) -> None:
        if self._netlink is not None:
            self._netlink.close()
            self._netlink = None


__all__ = ["NetlinkRefused", "NetlinkSocketReader", "ProcSocketReader", "SensorError", "SocketSource"]
