from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.sensor.conftest import real_listener_pid
from trainguard.api.sample import Connection, ListeningSocket
from trainguard.sensor import processes, sockets
from trainguard.sensor.errors import ErrorKind


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


def test_handmade_tables(handmade: str) -> None:
    scan = _handmade(handmade)
    assert scan.listening == [
        ListeningSocket(proto="tcp", address="0.0.0.0", port=8080, pid=7),
        ListeningSocket(proto="tcp6", address="::", port=9400, pid=None),
        ListeningSocket(proto="udp", address="0.0.0.0", port=5353, pid=7),
    ]
    assert Connection(proto="tcp", local="10.0.0.5:41234", remote="203.0.113.9:22", state="ESTABLISHED", pid=9) in (
        scan.connections
    )
    assert (
        Connection(proto="tcp6", local="[::ffff:10.0.0.5]:50000", remote="[2001:db8::1]:3333", state="SYN_SENT", pid=12)
        in scan.connections
    )
    assert Connection(proto="tcp", local="10.0.0.5:45057", remote="203.0.113.9:443", state="TIME_WAIT", pid=None) in (
        scan.connections
    )
    assert Connection(proto="udp6", local="[::1]:40000", remote="[::1]:53", state="ESTABLISHED", pid=None) in (
        scan.connections
    )
    assert len(scan.connections) == 5  # the bound-only TCP socket (state CLOSE, no peer) is neither
    assert [e.kind for e in scan.errors] == [ErrorKind.NET_READ]
    assert "line 6" in scan.errors[0].message


def test_real_capture(real: str) -> None:
    pid = real_listener_pid()
    owners = processes.ProcessWatcher(real).scan().socket_owners
    entries, errors = sockets.read_tables(real, "little")
    scan = sockets.classify(entries, owners, max_sockets=100)
    assert errors == []
    assert ListeningSocket(proto="tcp", address="127.0.0.1", port=47123, pid=pid) in scan.listening
    assert ListeningSocket(proto="tcp6", address="::1", port=47124, pid=pid) in scan.listening
    assert ListeningSocket(proto="udp", address="0.0.0.0", port=47125, pid=pid) in scan.listening
    ours = [c for c in scan.connections if c.pid == pid]
    assert len(ours) == 2 and {c.state for c in ours} == {"ESTABLISHED"}
    assert any(c.remote == "127.0.0.1:47123" for c in ours)


def test_cap_on_sockets_is_reported(handmade: str) -> None:
    entries, _ = sockets.read_tables(handmade, "little")
    scan = sockets.classify(entries, {}, max_sockets=1)
    assert len(scan.listening) == 1 and len(scan.connections) == 1
    assert [e.kind for e in scan.errors] == [ErrorKind.CONNECTION_CAP]


def test_watcher_agrees_with_the_pure_functions_tick_after_tick(handmade: str, tmp_path: Path) -> None:
    owners = processes.ProcessWatcher(handmade).scan().socket_owners
    watcher = sockets.SocketWatcher(handmade, max_sockets=100, byteorder="little")
    expected = _handmade(handmade)
    for _ in range(3):
        inodes, errors = watcher.read()
        assert inodes == {1001, 1002, 1003, 0, 1007, 1006, 1004, 1005, 1008}
        scan = watcher.classify(owners)
        assert (scan.listening, scan.connections) == (expected.listening, expected.connections)
        assert [e.kind for e in errors] == [ErrorKind.NET_READ]
    # An owner that changes is picked up; the rest is reused.
    watcher.read()
    changed = watcher.classify({**owners, 1006: 15})
    assert ListeningSocket(proto="tcp6", address="::", port=9400, pid=15) in changed.listening


def test_missing_ipv6_tables_are_not_errors(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tcp").write_text("header\n")
    entries, errors = sockets.read_tables(str(tmp_path))
    assert entries == [] and errors == []


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


def _connections(watcher: sockets.SocketWatcher, owners: dict[int, int]) -> list[Connection]:
    watcher.read()
    return watcher.classify(owners).connections


def test_watcher_with_churning_columns_reuses_the_socket_and_agrees_with_a_fresh_parse(tmp_path: Path) -> None:
    watcher = sockets.SocketWatcher(str(tmp_path), byteorder="little")
    seen = []
    for tick in range(3):
        _write_tcp(
            tmp_path, _tcp_line(0, "097100CB:0016", "01", 5001, tick), _tcp_line(1, "097100CB:0017", "01", 5002, tick)
        )
        conns = _connections(watcher, {5001: 7})
        entries, errors = sockets.read_tables(str(tmp_path), "little")
        assert errors == [] and conns == sockets.classify(entries, {5001: 7}, max_sockets=100).connections
        seen.append(conns)
    assert seen[0][0].remote == "203.0.113.9:22" and seen[0][0].pid == 7
    assert all(a is b for a, b in zip(seen[0], seen[2], strict=True))  # same objects: nothing re-decoded


def test_watcher_sees_a_state_change_of_the_same_socket(tmp_path: Path) -> None:
    watcher = sockets.SocketWatcher(str(tmp_path), byteorder="little")
    _write_tcp(tmp_path, _tcp_line(0, "097100CB:0016", "01", 5001, 1))
    assert [c.state for c in _connections(watcher, {5001: 7})] == ["ESTABLISHED"]
    _write_tcp(tmp_path, _tcp_line(0, "097100CB:0016", "08", 5001, 2))  # the peer closed: CLOSE_WAIT
    assert [(c.state, c.pid) for c in _connections(watcher, {5001: 7})] == [("CLOSE_WAIT", 7)]


def test_watcher_sees_a_reused_inode_for_a_new_connection(tmp_path: Path) -> None:
    watcher = sockets.SocketWatcher(str(tmp_path), byteorder="little")
    _write_tcp(tmp_path, _tcp_line(0, "097100CB:0016", "01", 5001, 1))
    assert [c.remote for c in _connections(watcher, {5001: 7})] == ["203.0.113.9:22"]
    _write_tcp(tmp_path, _tcp_line(0, "0900000A:01BB", "01", 5001, 2))  # inode numbers are recycled
    assert [(c.remote, c.pid) for c in _connections(watcher, {5001: 9})] == [("10.0.0.9:443", 9)]


def test_watcher_reuses_an_identical_table_and_sees_every_change_after_it(tmp_path: Path) -> None:
    watcher = sockets.SocketWatcher(str(tmp_path), byteorder="little")
    a = _tcp_line(0, "097100CB:0016", "01", 5001, 1)
    b = _tcp_line(1, "097100CB:0017", "01", 5002, 1)
    _write_tcp(tmp_path, a, b)
    first = _connections(watcher, {5001: 7})
    again = _connections(watcher, {5001: 7})  # the same table, byte for byte
    assert again == first and again is not first
    # The owners changed, the table did not.
    assert [c.pid for c in _connections(watcher, {5001: 7, 5002: 8})] == [7, 8]
    # A table read but not classified in between: the next classify is of the latest table.
    _write_tcp(tmp_path, b)
    watcher.read()
    assert [c.local for c in _connections(watcher, {5001: 7, 5002: 8})] == ["10.0.0.5:41234"]
    assert [c.pid for c in watcher.classify({5002: 8}).connections] == [8]
    _write_tcp(tmp_path, a, b, "   2: garbled\n")
    inodes, errors = watcher.read()
    assert inodes == {5001, 5002} and [e.kind for e in errors] == [ErrorKind.NET_READ]
    assert watcher.read()[1] == errors  # an unchanged table repeats its errors
