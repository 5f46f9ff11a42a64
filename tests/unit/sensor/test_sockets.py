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
