from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.sensor.conftest import real_listener_pid
from trainguard.api.sample import Connection, Endpoint, ListeningSocket, UnconnectedSocket
from trainguard.sensor import processes, sockets
from trainguard.sensor.errors import SensorErrorKind


@pytest.mark.parametrize(
    ("hex_address", "text"),
    [
        ("0100007F", "127.0.0.1"),
        ("00000000", "0.0.0.0"),
        ("097100CB", "203.0.113.9"),
        ("00000000000000000000000001000000", "::1"),
        ("B80D0120000000000000000001000000", "2001:db8::1"),
        ("0000000000000000FFFF00000500000A", "::ffff:10.0.0.5"),
    ],
)
def test_decode_address_little_endian_words(hex_address: str, text: str) -> None:
    assert sockets.decode_address(hex_address, "little") == text


def test_decode_address_big_endian_host() -> None:
    assert sockets.decode_address("7F000001", "big") == "127.0.0.1"


@pytest.mark.parametrize("bad", ["", "0100007", "-100007F", "0x00007F", "0100 07F", "ZZ00007F", "01" * 15])
def test_decode_address_rejects_bad_hex(bad: str) -> None:
    with pytest.raises(ValueError):
        sockets.decode_address(bad, "little")


def test_parse_line() -> None:
    line = "   1: 0500000A:A112 097100CB:0016 01 00000000:00000000 00:00000000 00000000  1000        0 1002 1 0 20 4"
    entry = sockets.parse_line(line, "tcp", "little")
    assert entry == sockets.SocketEntry("tcp", "10.0.0.5", 41234, "203.0.113.9", 22, 1, 1002)


def _handmade(handmade: str) -> sockets.SocketScan:
    owners = processes.ProcessWatcher(handmade).scan().socket_owners
    entries, errors = sockets.read_tables(handmade, "little")
    scan = sockets.classify(entries, owners, max_sockets=100)
    scan.errors[:0] = errors
    return scan


def ep(address: str, port: int = 0) -> Endpoint:
    return Endpoint(address=address, port=port)


def test_handmade_tables(handmade: str) -> None:
    scan = _handmade(handmade)
    assert scan.listening == [
        ListeningSocket(proto="tcp", local=ep("0.0.0.0", 8080), pid=7, inode=1001),
        ListeningSocket(proto="tcp6", local=ep("::", 9400), pid=None, inode=1006),
    ]
    # An unbound-peer UDP socket can sendto() anywhere: it is unconnected, never a listener; so are raw,
    # ICMP echo and packet sockets.
    assert scan.unconnected == [
        UnconnectedSocket(proto="udp", local=ep("0.0.0.0", 5353), pid=7, inode=1005),
        UnconnectedSocket(proto="raw", local=ep("0.0.0.0"), pid=None, inode=1009),
        UnconnectedSocket(proto="icmp", local=ep("10.0.0.5", 7979), pid=None, inode=1010),
        UnconnectedSocket(proto="packet", local=ep(""), pid=None, inode=1011),
    ]
    established = Connection(
        proto="tcp", local=ep("10.0.0.5", 41234), remote=ep("203.0.113.9", 22), state="ESTABLISHED", pid=9, inode=1002
    )
    assert established in scan.connections
    assert (
        Connection(
            proto="tcp6",
            local=ep("::ffff:10.0.0.5", 50000),
            remote=ep("2001:db8::1", 3333),
            state="SYN_SENT",
            pid=12,
            inode=1004,
        )
        in scan.connections
    )
    time_wait = Connection(proto="tcp", local=ep("10.0.0.5", 45057), remote=ep("203.0.113.9", 443), state="TIME_WAIT")
    assert time_wait in scan.connections
    assert (
        Connection(proto="udp6", local=ep("::1", 40000), remote=ep("::1", 53), state="ESTABLISHED", inode=1008)
        in scan.connections
    )
    assert len(scan.connections) == 5  # the bound-only TCP socket (state CLOSE, no peer) is neither
    assert all(c.bytes_sent is None and c.first_seen is None for c in scan.connections)  # no counts in /proc/net
    assert [e.kind for e in scan.errors] == [SensorErrorKind.NET_READ]
    assert "line 6" in scan.errors[0].message


def test_real_capture(real: str) -> None:
    pid = real_listener_pid()
    owners = processes.ProcessWatcher(real).scan().socket_owners
    entries, errors = sockets.read_tables(real, "little")
    scan = sockets.classify(entries, owners, max_sockets=100)
    assert errors == []
    assert ("tcp", ep("127.0.0.1", 47123), pid) in [(s.proto, s.local, s.pid) for s in scan.listening]
    assert ("tcp6", ep("::1", 47124), pid) in [(s.proto, s.local, s.pid) for s in scan.listening]
    assert ("udp", ep("0.0.0.0", 47125), pid) in [(s.proto, s.local, s.pid) for s in scan.unconnected]
    ours = [c for c in scan.connections if c.pid == pid]
    assert len(ours) == 2 and {c.state for c in ours} == {"ESTABLISHED"}
    assert any(c.remote == ep("127.0.0.1", 47123) for c in ours)


def test_cap_on_sockets_is_reported(handmade: str) -> None:
    entries, _ = sockets.read_tables(handmade, "little")
    scan = sockets.classify(entries, {}, max_sockets=1)
    assert len(scan.listening) == 1 and len(scan.connections) == 1 and len(scan.unconnected) == 1
    assert [e.kind for e in scan.errors] == [SensorErrorKind.CONNECTION_CAP]
    assert "1 listening, 4 connections, 3 unconnected left out" in scan.errors[0].message


def _classify(read: sockets.SocketRead, owners: dict[int, int]) -> sockets.SocketScan:
    return sockets.classify(read.entries, owners, max_sockets=100)


def test_watcher_agrees_with_the_pure_functions_tick_after_tick(handmade: str, tmp_path: Path) -> None:
    owners = processes.ProcessWatcher(handmade).scan().socket_owners
    watcher = sockets.SocketWatcher(handmade, byteorder="little")
    expected = _handmade(handmade)
    for _ in range(3):
        read = watcher.read()
        assert read.reader == "proc"
        assert read.inodes() == {1001, 1002, 1003, 1007, 1006, 1004, 1005, 1008, 1009, 1010, 1011}
        scan = _classify(read, owners)
        assert (scan.listening, scan.connections, scan.unconnected) == (
            expected.listening,
            expected.connections,
            expected.unconnected,
        )
        assert [e.kind for e in read.errors] == [SensorErrorKind.NET_READ]


def test_missing_ipv6_tables_are_not_errors(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tcp").write_text("header\n")
    entries, errors = sockets.read_tables(str(tmp_path))
    assert entries == [] and errors == []


def test_packet_table_lines_that_do_not_parse_are_errors() -> None:
    entries, errors = sockets.parse_packet_table("header\nffff 3 3 0003 0 1 0 0 77\ngarbled\n")
    assert entries == [sockets.packet_entry(77)]
    assert [e.kind for e in errors] == [SensorErrorKind.NET_READ] and "line 3" in errors[0].message


HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def _tcp_line(sl: int, remote: str, state: str, inode: int, tick: int) -> str:
    """A /proc/net/tcp line whose queue, timer and retransmit columns (and cwnd) differ at each tick."""
    return (
        f"{sl:4d}: 0500000A:A112 {remote} {state} {tick:08X}:{tick * 3:08X} 02:{tick:08X} {tick % 5:08X}  1000"
        f"        0 {inode} 1 0000000000000000 20 4 30 {10 + tick} -1\n"
    )


def _write_tcp(root: Path, *lines: str) -> None:
    (root / "net").mkdir(exist_ok=True)
    (root / "net" / "tcp").write_text(HEADER + "".join(lines))


def test_watcher_with_churning_columns_reuses_the_entry_and_agrees_with_a_fresh_parse(tmp_path: Path) -> None:
    watcher = sockets.SocketWatcher(str(tmp_path), byteorder="little")
    seen = []
    for tick in range(3):
        _write_tcp(
            tmp_path, _tcp_line(0, "097100CB:0016", "01", 5001, tick), _tcp_line(1, "097100CB:0017", "01", 5002, tick)
        )
        read = watcher.read()
        entries, errors = sockets.read_tables(str(tmp_path), "little")
        assert errors == [] and read.entries == entries
        seen.append(read.entries)
    assert seen[0][0].remote_address == "203.0.113.9" and seen[0][0].remote_port == 22
    assert all(a is b for a, b in zip(seen[0], seen[2], strict=True))  # same entries: nothing re-decoded


def test_watcher_sees_a_state_change_and_a_reused_inode(tmp_path: Path) -> None:
    watcher = sockets.SocketWatcher(str(tmp_path), byteorder="little")
    _write_tcp(tmp_path, _tcp_line(0, "097100CB:0016", "01", 5001, 1))
    assert [e.state for e in watcher.read().entries] == [1]
    _write_tcp(tmp_path, _tcp_line(0, "097100CB:0016", "08", 5001, 2))  # the peer closed: CLOSE_WAIT
    assert [e.state for e in watcher.read().entries] == [8]
    _write_tcp(tmp_path, _tcp_line(0, "0900000A:01BB", "01", 5001, 2))  # inode numbers are recycled
    assert [(e.remote_address, e.remote_port) for e in watcher.read().entries] == [("10.0.0.9", 443)]


def test_watcher_repeats_the_errors_of_an_unchanged_table(tmp_path: Path) -> None:
    watcher = sockets.SocketWatcher(str(tmp_path), byteorder="little")
    _write_tcp(tmp_path, _tcp_line(0, "097100CB:0016", "01", 5001, 1), "   2: garbled\n")
    first = watcher.read()
    assert first.inodes() == {5001} and [e.kind for e in first.errors] == [SensorErrorKind.NET_READ]
    assert watcher.read().errors == first.errors


def _read(*entries: sockets.SocketEntry, counters: list[sockets.Counters | None] | None = None) -> sockets.SocketRead:
    return sockets.SocketRead("netlink", list(entries), counters or [None] * len(entries))


def test_book_remembers_when_it_first_saw_a_connection_and_reuses_what_did_not_change() -> None:
    now = [100.0]
    book = sockets.SocketBook(clock=lambda: now[0])
    conn = sockets.SocketEntry("tcp", "10.0.0.5", 41234, "203.0.113.9", 443, 1, 5001)
    udp = sockets.SocketEntry("udp", "0.0.0.0", 5353, "0.0.0.0", 0, 7, 5002)
    first = book.classify(_read(conn, udp, counters=[(10, 20), None]), {5001: 7})
    assert [(c.first_seen, c.bytes_sent, c.bytes_received, c.pid) for c in first.connections] == [(100.0, 10, 20, 7)]
    now[0] = 101.0
    idle = book.classify(_read(conn, udp, counters=[(10, 20), None]), {5001: 7})
    assert idle.connections[0] is first.connections[0] and idle.unconnected[0] is first.unconnected[0]
    now[0] = 102.5
    closing = conn._replace(state=8)  # CLOSE_WAIT: the same connection, first seen at 100
    second = book.classify(_read(closing, udp, counters=[(10, 900), None]), {5001: 7})
    assert [(c.state, c.first_seen, c.bytes_received) for c in second.connections] == [("CLOSE_WAIT", 100.0, 900)]
    assert second.unconnected[0] is first.unconnected[0]
    now[0] = 103.0
    again = book.classify(_read(closing, counters=[(10, 900)]), {5001: 8})  # another owner: a new object
    assert again.connections[0].pid == 8 and again.connections[0].first_seen == 100.0
    reborn = conn._replace(inode=6001)  # another socket on the same ports
    assert [c.first_seen for c in book.classify(_read(reborn), {}).connections] == [103.0]
