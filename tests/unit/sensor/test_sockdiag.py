"""The netlink reader against this machine's kernel, on sockets the test opens (sock_diag needs no privilege)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.polling import wait_for
from trainguard.sensor import sockdiag, sockets
from trainguard.sensor.errors import SensorErrorKind


def _inode(s: socket.socket) -> int:
    return os.stat(f"/proc/self/fd/{s.fileno()}").st_ino


def _find(read: sockets.SocketRead, inode: int) -> tuple[sockets.SocketEntry, sockets.Counters | None] | None:
    return next(((e, c) for e, c in zip(read.entries, read.counters, strict=True) if e.inode == inode), None)


def test_netlink_reads_tcp_with_byte_counts_udp_and_ipv6() -> None:
    reader = sockdiag.NetlinkSocketReader()
    with socket.socket() as listener, socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp6:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        udp6.bind(("::1", 0))
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        with client, server:
            client.sendall(b"x" * 1000)
            assert server.recv(2000)

            def counted() -> tuple[sockets.SocketEntry, sockets.Counters | None] | None:
                found = _find(reader.read(), _inode(client))
                # The connecting side's bytes_acked counts its SYN (one sequence number) as well.
                return found if found and found[1] and found[1][0] in (1000, 1001) else None

            entry, counters = wait_for(counted, 5, "the client's acknowledged bytes")
            read = reader.read()
            assert read.reader == "netlink" and not read.errors
            assert (
                entry.proto == "tcp"
                and entry.state == 1
                and (entry.remote_address, entry.remote_port)
                == (
                    "127.0.0.1",
                    listener.getsockname()[1],
                )
            )
            assert counters is not None and counters[1] == 0
            server_side = _find(read, _inode(server))
            assert server_side is not None and server_side[1] == (0, 1000)
            listening = _find(read, _inode(listener))
            assert listening is not None and sockets.kind_of(listening[0]) == "listening"
            v6 = _find(read, _inode(udp6))
            assert v6 is not None and v6[0].proto == "udp6" and v6[0].local_address == "::1"
            assert sockets.kind_of(v6[0]) == "unconnected" and v6[1] is None
            # The same socket at the next read is the same entry object (decoded once).
            again = _find(reader.read(), _inode(listener))
            assert again is not None and again[0] is listening[0]
    reader.close()


def test_socket_source_can_be_told_to_read_proc_only(tmp_path: Path) -> None:
    source = sockdiag.SocketSource(str(tmp_path), prefer="proc")
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tcp").write_text(
        "  sl  local_address rem_address   st\n"
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 4242 1\n"
    )
    read = source.read()
    assert read.reader == "proc" and [e.inode for e in read.entries] == [4242] and read.errors == []


def test_a_refused_netlink_is_a_fallback_named_in_every_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # What the kernel says under a seccomp filter (the namespace test installs a real one): EPERM at socket().
    def refused(*_args: object) -> None:
        raise sockdiag.NetlinkRefused(1, "netlink sock_diag socket: Operation not permitted")

    monkeypatch.setattr(sockdiag.SockDiag, "__init__", refused)
    (tmp_path / "net").mkdir()
    source = sockdiag.SocketSource(str(tmp_path))
    for _ in range(2):
        read = source.read()
        assert read.reader == "proc"
        assert [e.kind for e in read.errors] == [SensorErrorKind.NET_FALLBACK]
        assert "Operation not permitted" in read.errors[0].message


@pytest.mark.parametrize("one_dump", [True, False], ids=["tcpdiag-both-families", "v2-per-family"])
def test_tcp_of_both_families_in_one_dump_or_one_per_family(one_dump: bool) -> None:
    reader = sockdiag.NetlinkSocketReader()
    if not one_dump:  # as on a kernel that refuses the legacy request
        reader._unsupported.add(sockdiag.TCP_BOTH.proto)
    with socket.socket(socket.AF_INET6) as v6, socket.socket() as v4:
        v6.bind(("::1", 0))
        v6.listen(1)
        v4.bind(("127.0.0.1", 0))
        v4.listen(1)
        read = reader.read()
        six, four = _find(read, _inode(v6)), _find(read, _inode(v4))
        assert six is not None and (six[0].proto, six[0].local_address) == ("tcp6", "::1")
        assert four is not None and (four[0].proto, four[0].local_address) == ("tcp", "127.0.0.1")
        inodes = [e.inode for e in read.entries if e.inode]
        assert len(inodes) == len(set(inodes))  # no socket twice
    reader.close()
