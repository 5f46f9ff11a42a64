"""Listening sockets and connections of the pod, from /proc/net/{tcp,tcp6,udp,udp6}.

The pod has one network namespace, so these tables are the pod's. A line looks like

    sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
     0: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 41234 ...

Addresses are the kernel's `__be32` words printed as host-order integers (`%08X`): on a
little-endian machine each 32-bit word reads byte-reversed. Ports are plain hex. The owning pid
comes from the socket's inode, found in some /proc/<pid>/fd (see `processes.scan`).
"""

from __future__ import annotations

import operator
import os
import socket
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from trainguard.api.sample import Connection, ListeningSocket
from trainguard.sensor.errors import ErrorKind, SensorError

TABLES = ("tcp", "tcp6", "udp", "udp6")

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
            errors.append(SensorError(ErrorKind.NET_READ, f"/proc/net/{proto} line {number}: unparsable ({exc})"))
            continue
        entries.append(entry)
    return entries, errors


def _is_unspecified(address: str) -> bool:
    return address in ("0.0.0.0", "::")


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


SocketObject = ListeningSocket | Connection | None
"""What one entry with one owner becomes in a sample (None: neither listening nor connected)."""


def to_object(entry: SocketEntry, pid: int | None) -> SocketObject:
    """The sample's view of one socket.

    TCP: LISTEN is listening; any other state with a remote is a connection (TIME_WAIT ones have no
    inode, so no owner). UDP: bound with no remote is listening; a remote makes it a connection (the
    kernel says ESTABLISHED). A TCP socket bound but neither listening nor connected is None.
    """
    is_tcp = entry.proto.startswith("tcp")
    no_remote = entry.remote_port == 0 and _is_unspecified(entry.remote_address)
    if (is_tcp and entry.state == LISTEN) or (not is_tcp and no_remote):
        return ListeningSocket(proto=entry.proto, address=entry.local_address, port=entry.local_port, pid=pid)
    if no_remote:
        return None
    return Connection(
        proto=entry.proto,
        local=_hostport(entry.local_address, entry.local_port),
        remote=_hostport(entry.remote_address, entry.remote_port),
        state=TCP_STATES.get(entry.state, f"0x{entry.state:02X}"),
        pid=pid,
    )


def classify(
    entries: list[SocketEntry],
    owners: dict[int, int],
    *,
    max_sockets: int,
) -> SocketScan:
    """Split entries into listening sockets and connections with owners; at most max_sockets of each."""
    return _split(
        (to_object(entry, owners.get(entry.inode) if entry.inode else None) for entry in entries), max_sockets
    )


def _split(objects: Iterable[SocketObject], max_sockets: int) -> SocketScan:
    result = SocketScan()
    dropped_listening = dropped_connections = 0
    for obj in objects:
        if obj is None:
            continue
        if isinstance(obj, ListeningSocket):
            if len(result.listening) >= max_sockets:
                dropped_listening += 1
            else:
                result.listening.append(obj)
        elif len(result.connections) >= max_sockets:
            dropped_connections += 1
        else:
            result.connections.append(obj)
    if dropped_listening or dropped_connections:
        result.errors.append(
            SensorError(
                ErrorKind.CONNECTION_CAP,
                f"more than {max_sockets} sockets: {dropped_listening} listening and "
                f"{dropped_connections} connections left out",
            )
        )
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


def _read_tables(proc_root: str, errors: list[SensorError]) -> Iterator[tuple[str, str, bytes]]:
    """(proto, path, raw bytes) of each table that exists; a missing one (no IPv6) is skipped, an unreadable
    one becomes an error entry."""
    for proto in TABLES:
        path = f"{proc_root}/net/{proto}"
        try:
            raw = _read_bounded(path, MAX_TABLE_BYTES)
        except FileNotFoundError:
            continue
        except OSError as exc:
            errors.append(SensorError(ErrorKind.NET_READ, f"{path}: {exc.strerror or exc}"))
            continue
        yield proto, path, raw


def read_tables(
    proc_root: str = "/proc",
    byteorder: Byteorder = HOST_ORDER,
) -> tuple[list[SocketEntry], list[SensorError]]:
    """Every entry of proc_root/net/{tcp,tcp6,udp,udp6}; a missing table (no IPv6) is not an error."""
    entries: list[SocketEntry] = []
    errors: list[SensorError] = []
    for proto, _path, raw in _read_tables(proc_root, errors):
        found, bad = parse_table(raw.decode("ascii", "replace"), proto, byteorder)
        entries.extend(found)
        errors.extend(bad)
    return entries, errors


class _Slot:
    """One socket as the watcher remembers it: the decoded line and the object built for its owner."""

    __slots__ = ("entry", "inode", "key", "obj", "pid")

    def __init__(self, entry: SocketEntry, key: EntryKey) -> None:
        self.entry = entry
        self.key = key
        self.inode = entry.inode
        self.pid: int | None = -1  # no object built yet
        self.obj: SocketObject = None


@dataclass(slots=True)
class _Table:
    """One /proc/net table as the watcher read it at the last tick."""

    raw: bytes = b""
    lines: dict[str, _Slot] = field(default_factory=dict)
    """Raw line -> its socket: an idle socket prints the very same line tick after tick."""
    keys: dict[EntryKey, _Slot] = field(default_factory=dict)
    slots: list[_Slot] = field(default_factory=list)
    """In table order."""
    errors: list[SensorError] = field(default_factory=list)


class SocketWatcher:
    """Reads the tables once per tick, decoding only lines and building only objects that are new.

    A table byte for byte the same as at the last tick is not even split into lines. A line the same
    as one of the last tick's is not split into fields. A line whose queue, timer or retransmit columns
    changed (most ESTABLISHED sockets, every tick) is split once and known by its addresses, state and
    inode: only a line with a new one of those is decoded. When the tick's sockets are the last tick's,
    in the same order, and their owners are too, the last tick's lists are returned again (copies of
    them, holding the same objects). Memory is bounded: only the current tick's sockets are kept.
    """

    def __init__(self, proc_root: str = "/proc", *, max_sockets: int = 4096, byteorder: Byteorder = HOST_ORDER) -> None:
        self.proc_root = proc_root
        self.max_sockets = max_sockets
        self.byteorder = byteorder
        self._tables: dict[str, _Table] = {}
        self._current: list[_Slot] = []
        self._inodes: set[int] = set()
        self._same = False
        """The last read found the very same sockets as the one before, in the same order."""
        self._classified: tuple[list[int | None], int, SocketScan] | None = None
        """The owners (per socket of _current), max_sockets and the result of the last classify of
        these sockets (None when the sockets changed since)."""

    def read(self) -> tuple[set[int], list[SensorError]]:
        """Read the tables; returns the socket inodes now (the process scan finds their owners)."""
        current: list[_Slot] = []
        errors: list[SensorError] = []
        tables: dict[str, _Table] = {}
        for proto, path, raw in _read_tables(self.proc_root, errors):
            table = self._tables.get(proto)
            if table is None or table.raw != raw:
                table = self._parse(proto, path, raw, table or _Table())
            tables[proto] = table
            current += table.slots
            errors += table.errors
        self._tables = tables
        self._same = len(current) == len(self._current) and all(map(operator.is_, current, self._current))
        if not self._same:
            self._inodes = {slot.inode for slot in current}
            self._classified = None
        self._current = current
        return set(self._inodes), errors

    def _parse(self, proto: str, path: str, raw: bytes, last: _Table) -> _Table:
        """This tick's table, reusing what `last` (the last tick's) decoded."""
        table = _Table(raw)
        lines_now, keys, errors = table.lines, table.keys, table.errors
        slots = table.slots
        append = slots.append
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
                            SensorError(ErrorKind.NET_READ, f"{path} line {number}: {len(fields)} fields, want 10")
                        )
                    continue
                key = (proto, fields[1], fields[2], fields[3], fields[9])
                slot = previous_get(key) or keys.get(key)
                if slot is None:
                    try:
                        slot = _Slot(parse_fields(fields, proto, self.byteorder), key)
                    except ValueError as exc:
                        errors.append(SensorError(ErrorKind.NET_READ, f"{path} line {number}: unparsable ({exc})"))
                        continue
            lines_now[line] = slot
            keys[slot.key] = slot
            append(slot)
        return table

    def classify(self, owners: dict[int, int]) -> SocketScan:
        """The sockets of the last read as listening sockets and connections, with owners."""
        pids = [owners.get(slot.inode) if slot.inode else None for slot in self._current]
        last = self._classified
        if last is not None and last[0] == pids and last[1] == self.max_sockets:
            done = last[2]
            return SocketScan(list(done.listening), list(done.connections), list(done.errors))
        result = _split(self._objects(pids), self.max_sockets)
        self._classified = (pids, self.max_sockets, result)
        return SocketScan(list(result.listening), list(result.connections), list(result.errors))

    def _objects(self, pids: list[int | None]) -> Iterator[SocketObject]:
        for slot, pid in zip(self._current, pids, strict=True):
            if slot.pid != pid:
                slot.obj = to_object(slot.entry, pid)
                slot.pid = pid
            yield slot.obj
