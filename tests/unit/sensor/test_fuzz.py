"""Garbled /proc input yields error entries, never an exception."""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainguard.sensor import processes, sockdiag, sockets
from trainguard.sensor.gpu import NoGpuSource
from trainguard.sensor.sampler import Sampler, SamplerSettings

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

hexish = st.text(alphabet="0123456789ABCDEFabcdef:-x _+ \t²", max_size=40)
one_line_text = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Zl", "Zp", "Cs")), max_size=12)
net_line = st.lists(st.one_of(hexish, one_line_text), min_size=0, max_size=14).map(" ".join)


@FUZZ
@given(st.text(max_size=300))
def test_parse_stat_raises_only_value_error(text: str) -> None:
    try:
        stat = processes.parse_stat(text)
    except ValueError:
        return
    assert stat.pid >= 0 and stat.ppid >= 0 and stat.starttime >= 0 and stat.cpu_ticks >= 0
    assert len(stat.image) in (0, 5)


@FUZZ
@given(st.text(max_size=300))
def test_parse_status_uid_raises_only_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        assert processes.parse_status_uid(text) >= 0


@FUZZ
@given(st.binary(max_size=300))
def test_parse_cmdline_never_raises(raw: bytes) -> None:
    argv = processes.parse_cmdline(raw)
    assert all(isinstance(a, str) for a in argv) and len(argv) <= processes.MAX_ARGS
    if raw.count(b"\0") < processes.MAX_ARGS:
        assert "\0".join(argv).encode() == raw.removesuffix(b"\0").decode("utf-8", "replace").encode()


@FUZZ
@given(st.text(max_size=400))
def test_parse_container_id_never_raises(text: str) -> None:
    found = processes.parse_container_id(text)
    assert found == "" or (len(found) == 64 and found in text)


@FUZZ
@given(st.text(max_size=200))
def test_stream_kind_never_raises(target: str) -> None:
    assert processes.stream_kind(target).target == target


@FUZZ
@given(st.binary(max_size=600))
def test_parse_packet_table_raises_nothing(raw: bytes) -> None:
    entries, errors = sockets.parse_packet_table(raw.decode("ascii", "replace"))
    assert all(e.proto == "packet" for e in entries) and all(e.kind.value == "net_read" for e in errors)


@FUZZ
@given(st.lists(net_line, max_size=20), st.sampled_from(sockets.TABLES))
def test_parse_table_never_raises_and_every_bad_line_is_an_error(lines: list[str], proto: str) -> None:
    text = "header\n" + "\n".join(lines)
    entries, errors = sockets.parse_table(text, proto, "little")
    assert len(entries) + len(errors) == sum(1 for line in lines if line.strip())
    scan = sockets.classify(entries, {}, max_sockets=5)
    assert len(scan.listening) <= 5 and len(scan.connections) <= 5


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["stat", "status", "cmdline"]),
            st.binary(max_size=200),
        ),
        max_size=6,
    ),
    st.lists(net_line, max_size=6),
)
def test_sampler_survives_a_garbled_tree(files: list[tuple[str, bytes]], lines: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        good = "5 (ok) S 1 5 5 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 50 0 0\n"
        for pid in (5, 6):
            (root / str(pid) / "fd").mkdir(parents=True)
            (root / str(pid) / "stat").write_text(good.replace("5 (ok)", f"{pid} (ok)"))
            (root / str(pid) / "status").write_text("Uid:\t1\t1\t1\t1\n")
            (root / str(pid) / "cmdline").write_bytes(b"ok\0")
        for name, content in files:
            (root / "6" / name).write_bytes(content)
        os.symlink("socket:[notanumber]", root / "6" / "fd" / "3")
        (root / "net").mkdir()
        (root / "net" / "tcp").write_text("header\n" + "\n".join(lines))
        sampler = Sampler(
            SamplerSettings(pod="a/b", proc_root=tmp, interval_s=5.0, socket_reader="proc"), NoGpuSource()
        )
        try:
            sample, _ = sampler.tick()
        finally:
            sampler.close()
        assert 5 in [p.pid for p in sample.processes]
        assert sample.seq == 0


@pytest.mark.parametrize("content", [b"", b"\0" * 100, b"(" * 50, b"1 () Z" + b" 9" * 40])
def test_odd_stat_contents(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "3" / "fd").mkdir(parents=True)
    (tmp_path / "3" / "stat").write_bytes(content)
    scan = processes.ProcessWatcher(str(tmp_path)).scan()
    assert all(e.kind.value == "proc_read" for e in scan.errors)


stat_field = st.one_of(st.integers(min_value=0, max_value=10**6).map(str), hexish, one_line_text)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
            st.lists(stat_field, min_size=0, max_size=24),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_a_watcher_that_kept_its_state_agrees_with_a_fresh_one(stats: list[tuple[str, list[str]]]) -> None:
    """Whatever a process's stat turns into, the incremental read equals a read from scratch."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "5" / "fd").mkdir(parents=True)
        (root / "5" / "status").write_text("Uid:\t1\t1\t1\t1\n")
        (root / "5" / "cmdline").write_bytes(b"ok\0")
        (root / "5" / "stat").write_text("5 (ok) S 1 5 5 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 50 0 0\n")
        kept = processes.ProcessWatcher(tmp, refresh_every=1000)
        kept.scan()
        for comm, fields in stats:
            # Mostly a valid line with some fields changed; sometimes anything at all.
            base = [
                "S",
                "1",
                "5",
                "5",
                "0",
                "-1",
                "0",
                "0",
                "0",
                "0",
                "0",
                "0",
                "0",
                "0",
                "0",
                "20",
                "0",
                "1",
                "0",
                "50",
            ]
            text = f"5 ({comm}) " + " ".join(fields + base[len(fields) :]) + "\n"
            (root / "5" / "stat").write_text(text)
            if comm != "ok":
                (root / "5" / "cmdline").write_bytes(comm.encode() + b"\0")  # an exec
            got, fresh = kept.scan(), processes.ProcessWatcher(tmp).scan()
            assert [r.info for r in got.processes] == [r.info for r in fresh.processes]
            assert [e.message for e in got.errors] == [e.message for e in fresh.errors]


@FUZZ
@given(st.binary(max_size=400))
def test_netlink_messages_raise_only_os_error_and_stay_inside_the_read(raw: bytes) -> None:
    try:
        found, _done = sockdiag.messages(raw)
    except OSError:
        return
    assert all(16 <= start <= end <= len(raw) for start, end in found)


def test_netlink_messages_of_a_real_shape() -> None:
    header = struct.Struct("=IHHII")
    diag = header.pack(16 + 72, 20, 2, 1, 0) + bytes(72)
    done = header.pack(20, 3, 2, 1, 0) + struct.pack("=i", 0)
    assert sockdiag.messages(diag + done) == ([(16, 88)], True)
    assert sockdiag.messages(diag) == ([(16, 88)], False)  # the dump goes on in the next read
    refused = header.pack(20, 2, 0, 1, 0) + struct.pack("=i", -errno.EPERM)
    with pytest.raises(sockdiag.NetlinkRefused):
        sockdiag.messages(refused)
    missing = header.pack(20, 3, 2, 1, 0) + struct.pack("=i", -errno.ENOENT)
    with pytest.raises(OSError) as raised:
        sockdiag.messages(missing)
    assert raised.value.errno == errno.ENOENT and not isinstance(raised.value, sockdiag.NetlinkRefused)
