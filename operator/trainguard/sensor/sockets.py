"""The pod's sockets from the /proc/net tables, and how any socket becomes a sample's entry.

The pod has one network namespace, so these tables are the pod's. The netlink reader
(`sockdiag.py`) is the first choice; these tables are its fallback where netlink is refused, and
the source of what the kernel has no socket diagnostics for (ICMP echo sockets always, raw sockets
where the kernel lacks raw_diag). A line of tcp, udp, raw or icmp (and their `6` tables) looks like

    sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
     0: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 41234 ...

Addresses are the kernel's `__be32` words printed as host-order integers (`%08X`): on a
little-endian machine each 32-bit word reads byte-reversed. Ports are plain hex. The owning pid
comes from the socket's inode, found in some /proc/<pid>/fd (see `processes.scan`).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from trainguard.api.sample import Connection, Endpoint, ListeningSocket, UnconnectedSocket
from trainguard.sensor.errors import SensorError, SensorErrorKind, error

TABLES = ("tcp", "tcp6", "udp", "udp6", "raw", "raw6", "icmp", "icmp6")
"""The tables with the tcp/udp columns; their names are the contract's `proto` values."""

TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}
LISTEN = 10
CLOSE = 7

MAX_TABLE_BYTES = 64 * 1024 * 1024
"""A /proc/net table is read up to this size (about 400,000 sockets); the socket cap applies after."""

Byteorder = Literal["little", "big"]
HOST_ORDER: Byteorder = "little" if sys.byteorder == "little" else "big"


class SocketEntry(NamedTuple):
    """One line of a /proc/net table, decoded."""

    proto: str
    local_address: str
    local_port: int
    remote_address: str
    remote_port: int
    state: int
    inode: int


@dataclass(slots=True)
class SocketScan:
    """The pod's sockets at one tick."""

    listening: list[ListeningSocket] = field(default_factory=list)
    connections: list[Connection] = field(default_factory=list)
    unconnected: list[UnconnectedSocket] = field(default_factory=list)
    errors: list[SensorError] = field(default_factory=list)


def _unhex(text: str, size: int) -> bytes:
    """Exactly `size` bytes from 2*size hex digits; ValueError for anything else (signs, 0x, spaces)."""
    raw = bytes.fromhex(text)
    if len(raw) != size or len(text) != 2 * size:
        raise ValueError(f"{text!r} is not {2 * size} hex digits")
    return raw


def decode_address(hex_address: str, byteorder: Byteorder = HOST_ORDER) -> str:
    """The textual IP address of a /proc/net hex address (8 hex digits IPv4, 32 IPv6).

    Each 32-bit word is in host byte order. IPv6 comes out as inet_ntop writes it: compressed, with
    IPv4-mapped addresses as `::ffff:10.0.0.5`.
    """
    if len(hex_address) == 8:
        raw = _unhex(hex_address, 4)
        return socket.inet_ntop(socket.AF_INET, raw[::-1] if byteorder == "little" else raw)
    if len(hex_address) == 32:
        raw = _unhex(hex_address, 16)
        if byteorder == "little":
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        return socket.inet_ntop(socket.AF_INET6, raw)
    raise ValueError(f"address {hex_address!r} is neither 8 nor 32 hex digits")


def _endpoint(text: str, byteorder: Byteorder) -> tuple[str, int]:
    address, sep, port = text.partition(":")
    if not sep:
        raise ValueError(f"bad endpoint {text!r}")
    return decode_address(address, byteorder), int.from_bytes(_unhex(port, 2), "big")


def parse_line(line: str, proto: str, byteorder: Byteorder = HOST_ORDER) -> SocketEntry:
    """One data line of a /proc/net table; ValueError when it is not one."""
    return parse_fields(line.split(), proto, byteorder)


def parse_fields(fields: list[str], proto: str, byteorder: Byteorder = HOST_ORDER) -> SocketEntry:
    """A data line of a /proc/net table, split on whitespace; ValueError when it is not one."""
    if len(fields) < 10 or not fields[0].endswith(":"):
        raise ValueError(f"{len(fields)} fields, want at least 10")
    local_address, local_port = _endpoint(fields[1], byteorder)
    remote_address, remote_port = _endpoint(fields[2], byteorder)
    state = _unhex(fields[3], 1)[0]
    if not (fields[9].isascii() and fields[9].isdigit()):
        raise ValueError(f"bad inode {fields[9]!r}")
    inode = int(fields[9])
    return SocketEntry(proto, local_address, local_port, remote_address, remote_port, state, inode)


EntryKey = tuple[str, str, str, str, str]
"""(proto, local, remote, state, inode) as the table spells them: what identifies a parsed line."""


def parse_table(
    text: str,
    proto: str,
    byteorder: Byteorder = HOST_ORDER,
) -> tuple[list[SocketEntry], list[SensorError]]:
    """Every data line of a table (the first line is the header); bad lines become errors."""
    entries: list[SocketEntry] = []
    errors: list[SensorError] = []
    lines = text.splitlines()
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        try:
            entry = parse_fields(fields, proto, byteorder)
        except ValueError as exc:
            errors.append(error(SensorErrorKind.NET_READ, f"/proc/net/{proto} line {number}: unparsable ({exc})"))
            continue
        entries.append(entry)
    return entries, errors


_STREAM = frozenset({"tcp", "tcp6", "sctp", "sctp6"})
"""Protocols whose sockets listen; every other kind of socket can send without a peer."""

_NO_PORT = frozenset({"raw", "raw6", "packet"})
"""Protocols without ports: the kernel writes the IP protocol (raw) or nothing in the port column."""


def _is_unspecified(address: str) -> bool:
    return address in ("0.0.0.0", "::", "")


SocketObject = ListeningSocket | Connection | UnconnectedSocket | None
"""What one entry with one owner becomes in a sample (None: a stream socket neither listening nor connected)."""

Counters = tuple[int, int]
"""(bytes acknowledged by the peer, bytes received): tcp_info's bytes_acked and bytes_received."""


def kind_of(entry: SocketEntry) -> str:
    """Which list of the sample an entry belongs to: `listening`, `connection`, `unconnected`, or `none`.

    Stream sockets (TCP, SCTP): LISTEN is listening; any other state with a remote is a connection
    (TIME_WAIT ones have no inode, so no owner); bound but neither is none. Every other socket (UDP,
    raw, ICMP echo, packet) with a remote is a connection (the kernel says ESTABLISHED), without one it
    is unconnected: it can still send with sendto(), so it is never a listener.
    """
    no_remote = entry.remote_port == 0 and _is_unspecified(entry.remote_address)
    if entry.proto in _STREAM:
        if entry.state == LISTEN:
            return "listening"
        return "none" if no_remote else "connection"
    return "unconnected" if no_remote else "connection"


def _local(entry: SocketEntry) -> Endpoint:
    port = 0 if entry.proto in _NO_PORT else entry.local_port
    return Endpoint(address=entry.local_address, port=port)


def to_object(
    entry: SocketEntry,
    pid: int | None,
    counters: Counters | None = None,
    first_seen: float | None = None,
) -> SocketObject:
    """The sample's view of one socket (see `kind_of`)."""
    kind = kind_of(entry)
    inode = entry.inode or None
    if kind == "listening":
        return ListeningSocket(proto=entry.proto, local=_local(entry), pid=pid, inode=inode)
    if kind == "unconnected":
        return UnconnectedSocket(proto=entry.proto, local=_local(entry), pid=pid, inode=inode)
    if kind == "none":
        return None
    remote_port = 0 if entry.proto in _NO_PORT else entry.remote_port
    return Connection(
        proto=entry.proto,
        local=_local(entry),
        remote=Endpoint(address=entry.remote_address, port=remote_port),
        state=TCP_STATES.get(entry.state, "CLOSE"),
        pid=pid,
        inode=inode,
        bytes_sent=None if counters is None else counters[0],
        bytes_received=None if counters is None else counters[1],
        first_seen=first_seen,
    )


def classify(
    entries: list[SocketEntry],
    owners: dict[int, int],
    *,
    max_sockets: int,
) -> SocketScan:
    """Split entries into the sample's lists with owners (no counters, no first sighting); at most max_sockets of
    each."""
    return _split(
        (to_object(entry, owners.get(entry.inode) if entry.inode else None) for entry in entries), max_sockets
    )


def _split(objects: Iterable[SocketObject], max_sockets: int) -> SocketScan:
    result = SocketScan()
    dropped = {"listening": 0, "connections": 0, "unconnected": 0}
    for obj in objects:
        if obj is None:
            continue
        if isinstance(obj, Connection):
            target, name = result.connections, "connections"
        elif isinstance(obj, ListeningSocket):
            target, name = result.listening, "listening"  # type: ignore[assignment]
        else:
            target, name = result.unconnected, "unconnected"  # type: ignore[assignment]
        if len(target) >= max_sockets:
            dropped[name] += 1
        else:
            target.append(obj)  # type: ignore[arg-type]
    if any(dropped.values()):
        result.errors.append(
            error(
                SensorErrorKind.CONNECTION_CAP,
                f"more than {max_sockets} sockets of one kind: "
                + ", ".join(f"{count} {name}" for name, count in dropped.items() if count)
                + " left out",
            )
        )
    return result


@dataclass(slots=True)
class SocketRead:
    """What one reader saw at one tick."""

    reader: str
    """`netlink` or `proc` (the contract's `sensor.reader`)."""
    entries: list[SocketEntry] = field(default_factory=list)
    counters: list[Counters | None] = field(default_factory=list)
    """Per entry (same order), its byte counts where the reader has them (netlink TCP), else None."""
    errors: list[SensorError] = field(default_factory=list)

    def inodes(self) -> set[int]:
        return {entry.inode for entry in self.entries if entry.inode}


AgeKey = tuple[str, str, int, str, int, int]


class SocketBook:
    """Turns each tick's read into the sample's lists, remembering when each connection was first seen.

    `firstSeen` is when *this sensor* first saw a connection (the kernel keeps no start time for a
    socket): a sensor restart sees every connection anew. A connection is the same while its protocol,
    endpoints and inode are (a state change keeps its first sighting; ESTABLISHED -> TIME_WAIT, which
    drops the inode, is a new one). An object is reused while its entry, owner and byte counts are the
    same (its JSON is then reused too): an idle connection costs a few dictionary look-ups per tick.
    Only what the last tick saw is remembered.
    """

    def __init__(self, *, max_sockets: int = 4096, clock: Callable[[], float] = time.time) -> None:
        self.max_sockets = max_sockets
        self._clock = clock
        self._first_seen: dict[AgeKey, float] = {}
        self._reused: dict[int, tuple[SocketEntry, int | None, Counters | None, SocketObject]] = {}
        """id(entry) -> (entry, owner, counters, object) of the last tick. The readers hand over the very same
        entry objects for a socket they saw before; the entry is kept, so its id cannot be another's."""

    def classify(self, read: SocketRead, owners: dict[int, int]) -> SocketScan:
        now = round(self._clock(), 3)
        last_seen, last_reused = self._first_seen, self._reused.get
        first_seen: dict[AgeKey, float] = {}
        reused: dict[int, tuple[SocketEntry, int | None, Counters | None, SocketObject]] = {}
        objects: list[SocketObject] = []
        append = objects.append
        owner = owners.get
        counters = read.counters or [None] * len(read.entries)
        for entry, counted in zip(read.entries, counters, strict=True):
            pid = owner(entry.inode) if entry.inode else None
            hit = last_reused(id(entry))
            if hit is not None and hit[0] is entry and hit[1] == pid and hit[2] == counted:
                obj = hit[3]
                if isinstance(obj, Connection):
                    first_seen[(entry.proto, *entry[1:5], entry.inode)] = obj.first_seen  # type: ignore[assignment]
            elif kind_of(entry) == "connection":
                key: AgeKey = (entry.proto, *entry[1:5], entry.inode)
                seen = last_seen.get(key, now)
                first_seen[key] = seen
                obj = to_object(entry, pid, counted, seen)
            else:
                obj = to_object(entry, pid)
            reused[id(entry)] = (entry, pid, counted, obj)
            append(obj)
        self._first_seen, self._reused = first_seen, reused
        result = _split(objects, self.max_sockets)
        result.errors[:0] = read.errors
        return result


def _read_bounded(path: str, limit: int) -> bytes:
    """The file's bytes, at most limit of them, read in chunks (a procfs file has no useful size)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks: list[bytes] = []
        total = 0
        while total < limit:
            chunk = os.read(fd, min(1 << 17, limit - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_tables(
    proc_root: str, errors: list[SensorError], tables: Iterable[str] = TABLES
) -> Iterator[tuple[str, str, bytes]]:
    """(proto, path, raw bytes) of each table that exists; a missing one (no IPv6) is skipped, an unreadable
    one becomes an error entry."""
    for proto in tables:
        path = f"{proc_root}/net/{proto}"
        try:
            raw = _read_bounded(path, MAX_TABLE_BYTES)
        except FileNotFoundError:
            continue
        except OSError as exc:
            errors.append(error(SensorErrorKind.NET_READ, f"{path}: {exc.strerror or exc}"))
            continue
        yield proto, path, raw


def read_tables(
    proc_root: str = "/proc",
    byteorder: Byteorder = HOST_ORDER,
) -> tuple[list[SocketEntry], list[SensorError]]:
    """Every entry of the tables (TABLES and /proc/net/packet); a missing table (no IPv6) is not an error."""
    entries: list[SocketEntry] = []
    errors: list[SensorError] = []
    for proto, _path, raw in _read_tables(proc_root, errors):
        found, bad = parse_table(raw.decode("ascii", "replace"), proto, byteorder)
        entries.extend(found)
        errors.extend(bad)
    entries.extend(read_packet_table(proc_root, errors))
    return entries, errors


def parse_packet_table(text: str, path: str = "/proc/net/packet") -> tuple[list[SocketEntry], list[SensorError]]:
    """/proc/net/packet: `sk RefCnt Type Proto Iface R Rmem User Inode`, one packet socket a line."""
    entries: list[SocketEntry] = []
    errors: list[SensorError] = []
    for number, line in enumerate(text.splitlines()[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 9 or not (fields[8].isascii() and fields[8].isdigit()):
            errors.append(error(SensorErrorKind.NET_READ, f"{path} line {number}: unparsable"))
            continue
        entries.append(packet_entry(int(fields[8])))
    return entries, errors


def packet_entry(inode: int) -> SocketEntry:
    """An AF_PACKET socket: no address, no port, no peer."""
    return SocketEntry("packet", "", 0, "", 0, CLOSE, inode)


def read_packet_table(proc_root: str, errors: list[SensorError]) -> list[SocketEntry]:
    path = f"{proc_root}/net/packet"
    try:
        raw = _read_bounded(path, MAX_TABLE_BYTES)
    except FileNotFoundError:
        return []
    except OSError as exc:
        errors.append(error(SensorErrorKind.NET_READ, f"{path}: {exc.strerror or exc}"))
        return []
    entries, bad = parse_packet_table(raw.decode("ascii", "replace"), path)
    errors.extend(bad)
    return entries


class _Slot:
    """One socket as the watcher remembers it: the decoded line."""

    __slots__ = ("entry", "key")

    def __init__(self, entry: SocketEntry, key: EntryKey) -> None:
        self.entry = entry
        self.key = key


@dataclass(slots=True)
class _Table:
    """One /proc/net table as the watcher read it at the last tick."""

    raw: bytes = b""
    lines: dict[str, _Slot] = field(default_factory=dict)
    """Raw line -> its socket: an idle socket prints the very same line tick after tick."""
    keys: dict[EntryKey, _Slot] = field(default_factory=dict)
    entries: list[SocketEntry] = field(default_factory=list)
    """In table order."""
    errors: list[SensorError] = field(default_factory=list)


class SocketWatcher:
    """Reads /proc/net tables once per tick, decoding only lines that are new.

    A table byte for byte the same as at the last tick is not even split into lines. A line the same
    as one of the last tick's is not split into fields. A line whose queue, timer or retransmit columns
    changed (most ESTABLISHED sockets, every tick) is split once and known by its addresses, state and
    inode: only a line with a new one of those is decoded. Memory is bounded: only the current tick's
    sockets are kept. `tables` are the tcp-style tables to read; `packet` adds /proc/net/packet.
    """

    def __init__(
        self,
        proc_root: str = "/proc",
        *,
        tables: Iterable[str] = TABLES,
        packet: bool = True,
        byteorder: Byteorder = HOST_ORDER,
    ) -> None:
        self.proc_root = proc_root
        self.tables = tuple(tables)
        self.packet = packet
        self.byteorder = byteorder
        self._tables: dict[str, _Table] = {}

    def read(self) -> SocketRead:
        """This tick's sockets from the tables (no byte counts: /proc/net has none)."""
        result = SocketRead("proc")
        entries, errors = result.entries, result.errors
        tables: dict[str, _Table] = {}
        for proto, path, raw in _read_tables(self.proc_root, errors, self.tables):
            table = self._tables.get(proto)
            if table is None or table.raw != raw:
                table = self._parse(proto, path, raw, table or _Table())
            tables[proto] = table
            entries += table.entries
            errors += table.errors
        self._tables = tables
        if self.packet:
            entries += read_packet_table(self.proc_root, errors)
        return result

    def _parse(self, proto: str, path: str, raw: bytes, last: _Table) -> _Table:
        """This tick's table, reusing what `last` (the last tick's) decoded."""
        table = _Table(raw)
        lines_now, keys, errors = table.lines, table.keys, table.errors
        append = table.entries.append
        seen_get, previous_get = last.lines.get, last.keys.get
        for number, line in enumerate(raw.decode("ascii", "replace").splitlines()[1:], start=2):
            slot = seen_get(line)
            if slot is None:
                # Addresses and state are the 2nd to 4th fields, the inode the 10th, split on
                # whitespace (not at fixed columns); the rest is left unsplit.
                fields = line.split(None, 10)
                if len(fields) < 10:
                    if fields:
                        errors.append(
                            error(SensorErrorKind.NET_READ, f"{path} line {number}: {len(fields)} fields, want 10")
                        )
                    continue
                key = (proto, fields[1], fields[2], fields[3], fields[9])
                slot = previous_get(key) or keys.get(key)
                if slot is None:
                    try:
                        slot = _Slot(parse_fields(fields, proto, self.byteorder), key)
                    except ValueError as exc:
                        errors.append(error(SensorErrorKind.NET_READ, f"{path} line {number}: unparsable ({exc})"))
                        continue
            lines_now[line] = slot
            keys[slot.key] = slot
            append(slot.entry)
        return table
