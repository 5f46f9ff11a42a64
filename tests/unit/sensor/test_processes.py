from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.unit.sensor.conftest import real_listener_pid
from trainguard.api.sample import ProcessInfo, StdStream
from trainguard.sensor import processes
from trainguard.sensor.errors import SensorErrorKind


def test_parse_stat_reads_pid_comm_ppid_starttime() -> None:
    text = "7 (python) S 1 7 7 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 200 12345678 300 18446744073709551615\n"
    assert processes.parse_stat(text)[:5] == (7, "python", 1, 200, 8)  # CPU: utime 5 + stime 3 ticks
    assert processes.parse_stat(text).image == ()  # too short to hold the image addresses


def test_parse_stat_comm_may_hold_spaces_and_parentheses() -> None:
    text = "15 ((weird) name )) S 1 15 15 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 500 0 0\n"
    assert processes.parse_stat(text)[:4] == (15, "(weird) name )", 1, 500)


def test_parse_stat_reads_the_image_addresses() -> None:
    fields = ["S", "1"] + ["0"] * 17 + ["200"] + ["0"] * 30
    fields[23], fields[24], fields[25], fields[45], fields[46] = "4194304", "4200000", "140730000", "1407", "1408"
    stat = processes.parse_stat("7 (python) " + " ".join(fields))
    assert stat.image == ("4194304", "4200000", "140730000", "1407", "1408")
    assert processes.stat_signature("7 (python) " + " ".join(fields))[3] == stat.image


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "20 (garbled S 1 2\n",
        "7 (python) S 1 7\n",
        "x (python) S 1" + " 0" * 30,
        "7 (p) SS 1" + " 0" * 30,
    ],
)
def test_parse_stat_rejects_what_is_not_a_stat_line(text: str) -> None:
    with pytest.raises(ValueError):
        processes.parse_stat(text)


def test_parse_status_uid_is_the_real_uid() -> None:
    assert processes.parse_status_uid("Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t1\t1\t1\t1\n") == 1000
    with pytest.raises(ValueError):
        processes.parse_status_uid("Name:\tx\n")


def test_parse_cmdline_keeps_argument_boundaries_and_survives_bad_bytes() -> None:
    assert processes.parse_cmdline(b"python\0train.py\0--epochs\x003\0") == ["python", "train.py", "--epochs", "3"]
    assert processes.parse_cmdline(b"ssh\0-o\0RemoteForward 8080 x:80\0") == ["ssh", "-o", "RemoteForward 8080 x:80"]
    assert processes.parse_cmdline(b"weird\0\xff\0") == ["weird", "\ufffd"]
    assert processes.parse_cmdline(b"one string set by setproctitle") == ["one string set by setproctitle"]
    assert processes.parse_cmdline(b"a\0\0b\0") == ["a", "", "b"]
    assert processes.parse_cmdline(b"") == []
    assert len(processes.parse_cmdline(b"\0" * 4096)) == processes.MAX_ARGS


def test_parse_exe_marks_a_deleted_file() -> None:
    assert processes.parse_exe("/usr/bin/python3.11") == ("/usr/bin/python3.11", "ok")
    assert processes.parse_exe("/tmp/.x/miner (deleted)") == ("/tmp/.x/miner", "deleted")


@pytest.mark.parametrize(
    ("text", "container_id"),
    [
        ("0::/kubepods/burstable/pod1234/" + "a" * 64 + "\n", "a" * 64),
        ("0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-" + "b" * 64 + ".scope\n", "b" * 64),
        ("0::/kubepods.slice/kubepods-pod1.slice/crio-" + "c" * 64 + ".scope\n", "c" * 64),
        ("0::/system.slice/docker-" + "d" * 64 + ".scope\n", "d" * 64),
        ("12:memory:/docker/" + "e" * 64 + "\n11:cpu:/docker/" + "e" * 64 + "\n0::/\n", "e" * 64),
        ("0::/kubepods.slice/crio-conmon-" + "f" * 64 + ".scope\n", ""),
        ("0::/\n", ""),  # a private cgroup namespace: nothing to find
        ("0::/user.slice/session-3.scope\n", ""),
        ("garbage", ""),
    ],
)
def test_parse_container_id(text: str, container_id: str) -> None:
    assert processes.parse_container_id(text) == container_id


@pytest.mark.parametrize(
    ("target", "kind", "inode"),
    [
        ("socket:[4242]", "socket", 4242),
        ("pipe:[12]", "pipe", None),
        ("/dev/pts/3", "tty", None),
        ("/dev/null", "file", None),
        ("/var/log/x.log", "file", None),
        ("anon_inode:[eventfd]", "anon", None),
    ],
)
def test_stream_kind(target: str, kind: str, inode: int | None) -> None:
    stream = processes.stream_kind(target)
    assert (stream.kind, stream.inode, stream.target) == (kind, inode, target)


def test_parse_socket_inode() -> None:
    assert processes.parse_socket_inode("socket:[12345]") == 12345
    assert processes.parse_socket_inode("socket:[²]") is None
    assert processes.parse_socket_inode("pipe:[12]") is None


def test_scan_of_handmade_tree(handmade: str) -> None:
    scan = processes.ProcessWatcher(handmade).scan()
    by_pid = {r.pid: r.info for r in scan.processes}
    assert sorted(by_pid) == [1, 7, 9, 12, 15, 21]  # 20 has a garbled stat, "self" is not a pid
    assert by_pid[7].argv == ["python", "train.py", "--epochs", "3"]
    assert by_pid[7].exe_status == "unreadable" and by_pid[7].exe == ""  # a fake tree has no exe links
    assert by_pid[7].cpu_seconds is not None
    assert (by_pid[7].ppid, by_pid[7].uid, by_pid[7].name) == (1, 1000, "python")
    assert by_pid[12].name == "xmrig"
    assert by_pid[15].name == "(weird) name )"
    assert by_pid[21].uid == -1  # no Uid line
    kinds = [e.kind for e in scan.errors]
    assert kinds.count(SensorErrorKind.PROC_READ) == 2
    assert any("20/stat" in e.message for e in scan.errors)
    assert scan.socket_owners == {1001: 7, 1003: 7, 1005: 7, 1002: 9, 1004: 12}
    assert scan.device_holders["/dev/nvidia0"] == {7, 12}
    assert scan.device_holders["/dev/nvidiactl"] == {7, 12}


def test_scan_of_real_capture(real: str) -> None:
    pid = real_listener_pid()
    scan = processes.ProcessWatcher(real).scan()
    info = {r.pid: r.info for r in scan.processes}
    assert set(info) == {1, pid}
    assert info[pid].name == "python3"
    assert info[pid].argv[-1] == "-"
    assert len(scan.socket_owners) == 5 and set(scan.socket_owners.values()) == {pid}
    assert scan.errors == []


def test_own_pid_is_never_a_gpu_holder(handmade: str) -> None:
    scan = processes.ProcessWatcher(handmade, exclude_device_holder=12).scan()
    assert scan.device_holders["/dev/nvidia0"] == {7}


def test_process_cap_keeps_lowest_pids_and_says_so(handmade: str) -> None:
    scan = processes.ProcessWatcher(handmade, max_processes=2).scan()
    assert [r.pid for r in scan.processes] == [1, 7]
    assert [e.kind for e in scan.errors] == [SensorErrorKind.PROCESS_CAP]
    assert scan.seen == 7


def test_fd_budget_is_reported(handmade: str) -> None:
    scan = processes.ProcessWatcher(handmade, max_fds=3).scan()
    assert SensorErrorKind.FD_CAP in [e.kind for e in scan.errors]


def _copy(src: str, tmp_path: Path) -> Path:
    dst = tmp_path / "proc"
    shutil.copytree(src, dst, symlinks=True)
    return dst


def test_vanished_process_is_not_an_error(handmade: str, tmp_path: Path) -> None:
    root = _copy(handmade, tmp_path)
    (root / "99").mkdir()  # listed, but its files are gone: it exited between listing and reading
    scan = processes.ProcessWatcher(str(root)).scan()
    assert 99 not in [r.pid for r in scan.processes]
    assert not any("99" in e.message for e in scan.errors)


def test_watcher_sees_a_new_socket_of_a_known_process_at_once(handmade: str, tmp_path: Path) -> None:
    root = _copy(handmade, tmp_path)
    watcher = processes.ProcessWatcher(str(root), refresh_every=1000)
    first = watcher.scan({1001, 1002})
    assert 4242 not in first.socket_owners
    os.symlink("socket:[4242]", root / "9" / "fd" / "9")  # same fd count on ext4: only the inode tells
    second = watcher.scan({1001, 1002, 4242})
    assert second.socket_owners[4242] == 9
    # An inode nobody owns is searched for once, not at every tick.
    third = watcher.scan({1001, 4242, 777})
    assert 777 not in third.socket_owners
    assert 777 in watcher._unowned


def test_watcher_rereads_cmdline_after_an_exec(handmade: str, tmp_path: Path) -> None:
    root = _copy(handmade, tmp_path)
    watcher = processes.ProcessWatcher(str(root), refresh_every=1000)
    watcher.scan()
    stat = (root / "9" / "stat").read_text().replace("(ssh)", "(xmrig)")
    (root / "9" / "stat").write_text(stat)
    (root / "9" / "cmdline").write_bytes(b"xmrig\0--donate-level\x001\0")
    info = {r.pid: r.info for r in watcher.scan().processes}
    assert (info[9].name, info[9].argv) == ("xmrig", ["xmrig", "--donate-level", "1"])


def _stat_image(pid: int, comm: str, stack: str) -> str:
    fields = ["S", "7"] + ["0"] * 17 + ["300"] + ["0"] * 30
    fields[25] = stack  # startstack: new at every exec
    return f"{pid} ({comm}) {' '.join(fields)}\n"


def test_an_exec_that_keeps_the_name_is_seen_at_the_next_tick(handmade: str, tmp_path: Path) -> None:
    root = _copy(handmade, tmp_path)
    (root / "9" / "stat").write_text(_stat_image(9, "python", "140730001"))
    (root / "9" / "cmdline").write_bytes(b"python\0train.py\0")
    watcher = processes.ProcessWatcher(str(root), refresh_every=1000)
    assert _info(watcher, 9).argv == ["python", "train.py"]
    (root / "9" / "cmdline").write_bytes(b"python\0-c\0import miner\0")
    assert _info(watcher, 9).argv == ["python", "train.py"]  # same image: not re-read (the cache is real)
    (root / "9" / "stat").write_text(_stat_image(9, "python", "140739999"))  # execve: same pid, same comm
    assert _info(watcher, 9).argv == ["python", "-c", "import miner"]


def test_rolling_refresh_catches_an_argv_rewrite(handmade: str, tmp_path: Path) -> None:
    root = _copy(handmade, tmp_path)
    watcher = processes.ProcessWatcher(str(root), refresh_every=3)
    watcher.scan()
    (root / "9" / "cmdline").write_bytes(b"ssh\0harmless\0")
    seen = [next(r.info.argv for r in watcher.scan().processes if r.pid == 9) for _ in range(3)]
    assert seen[-1] == ["ssh", "harmless"]


def test_missing_proc_root_is_an_error_not_a_crash(tmp_path: Path) -> None:
    scan = processes.ProcessWatcher(str(tmp_path / "nope")).scan()
    assert scan.processes == [] and [e.kind for e in scan.errors] == [SensorErrorKind.PROC_READ]


def test_real_proc_lists_this_process() -> None:
    scan = processes.ProcessWatcher("/proc").scan()
    me = next(r.info for r in scan.processes if r.pid == os.getpid())
    assert me.uid == os.getuid()
    assert any("pytest" in a or "python" in a for a in me.argv)
    assert me.exe_status == "ok" and os.path.samefile(me.exe, "/proc/self/exe")
    assert me.start_time is not None and abs(me.start_time - (os.stat(f"/proc/{os.getpid()}").st_ctime)) < 600
    assert me.cpu_seconds is not None and me.cpu_seconds > 0


def _stat(pid: int, comm: str, ppid: int, starttime: int, utime: int = 5) -> str:
    fields = f"S {ppid} {pid} {pid} 0 -1 4194560 100 0 0 0 {utime} 3 0 0 20 0 1 0 {starttime} 12345678 300 0"
    return f"{pid} ({comm}) {fields}\n"


def _info(watcher: processes.ProcessWatcher, pid: int) -> ProcessInfo:
    return next(r.info for r in watcher.scan().processes if r.pid == pid)


def test_changing_cpu_times_keep_the_entry_but_ppid_start_time_and_exec_are_seen(handmade: str, tmp_path: Path) -> None:
    root = _copy(handmade, tmp_path)
    stat = root / "9" / "stat"
    stat.write_text(_stat(9, "ssh", 7, 300))
    watcher = processes.ProcessWatcher(str(root), refresh_every=1000)
    first = _info(watcher, 9)
    assert _info(watcher, 9) is first  # nothing moved: the very same object
    stat.write_text(_stat(9, "ssh", 7, 300, utime=997))  # only CPU times moved (997 + 3 ticks)
    assert _info(watcher, 9) == first.model_copy(update={"cpu_seconds": 10.0})
    stat.write_text(_stat(9, "ssh", 1, 300, utime=997))  # reparented
    assert _info(watcher, 9) == first.model_copy(update={"ppid": 1, "cpu_seconds": 10.0})
    # Same pid, another start time: another process, read in full although comm is the same.
    (root / "9" / "cmdline").write_bytes(b"ssh\0-N\0other\0")
    stat.write_text(_stat(9, "ssh", 1, 4000))
    assert _info(watcher, 9).argv == ["ssh", "-N", "other"]
    # An exec: comm and cmdline change; CPU times too.
    (root / "9" / "cmdline").write_bytes(b"python\0-c\0pass\0")
    stat.write_text(_stat(9, "python", 1, 4000, utime=7))
    assert (_info(watcher, 9).name, _info(watcher, 9).argv) == ("python", ["python", "-c", "pass"])
    # A stat that stops parsing is an error and the process is left out, as on the first read.
    stat.write_text("9 (python) S 1\n")
    scan = watcher.scan()
    assert 9 not in [r.pid for r in scan.processes] and any("9/stat" in e.message for e in scan.errors)


def test_rolling_refresh_keeps_an_unchanged_entry_as_the_same_object(handmade: str) -> None:
    watcher = processes.ProcessWatcher(handmade, refresh_every=2)
    first = {r.pid: r.info for r in watcher.scan().processes}
    for _ in range(3):
        again = {r.pid: r.info for r in watcher.scan().processes}
        assert all(again[pid] is first[pid] for pid in first)


def test_standard_streams_come_from_fd_0_1_2_and_are_unknown_past_the_fd_budget(handmade: str, tmp_path: Path) -> None:
    root = _copy(handmade, tmp_path)
    fd = root / "9" / "fd"
    for name in os.listdir(fd):
        os.unlink(fd / name)
    os.symlink("socket:[1002]", fd / "0")
    os.symlink("socket:[1002]", fd / "1")
    os.symlink("/dev/pts/0", fd / "2")
    info = _info(processes.ProcessWatcher(str(root)), 9)
    assert info.stdin is not None and (info.stdin.kind, info.stdin.inode) == ("socket", 1002)
    assert info.stdout == info.stdin
    assert info.stderr is not None and info.stderr.kind == "tty"
    starved = next(r.info for r in processes.ProcessWatcher(str(root), max_fds=0).scan().processes if r.pid == 9)
    assert (starved.stdin, starved.stdout, starved.stderr) == (None, None, None)
    os.unlink(fd / "2")
    assert _info(processes.ProcessWatcher(str(root)), 9).stderr == StdStream(kind="closed")


def test_container_id_and_name_from_the_cgroup(handmade: str, tmp_path: Path) -> None:
    root = _copy(handmade, tmp_path)
    ident = "0123456789abcdef" * 4
    (root / "9" / "cgroup").write_text(f"0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ident}.scope\n")
    named = _info(processes.ProcessWatcher(str(root), container_names={ident: "trainer"}), 9)
    assert (named.container_id, named.container) == (ident, "trainer")
    unnamed = _info(processes.ProcessWatcher(str(root)), 9)
    assert (unnamed.container_id, unnamed.container) == (ident, "")
    assert _info(processes.ProcessWatcher(str(root)), 7).container_id == ""  # no cgroup file in the tree


def test_a_standard_stream_swapped_with_the_same_fd_count_is_seen_at_the_next_tick(
    handmade: str, tmp_path: Path
) -> None:
    # dup2(sock, 0); close(sock): the fd count is the same, only fd 0's link tells (the cache's invalidation).
    root = _copy(handmade, tmp_path)
    fd = root / "9" / "fd"
    for name in os.listdir(fd):
        os.unlink(fd / name)
    os.symlink("pipe:[77]", fd / "0")
    os.symlink("socket:[1002]", fd / "5")
    watcher = processes.ProcessWatcher(str(root), refresh_every=1000)
    first = _info(watcher, 9)
    assert first.stdin is not None and first.stdin.kind == "pipe"
    assert _info(watcher, 9) is first  # nothing changed: the cache holds
    os.unlink(fd / "0")
    os.unlink(fd / "5")
    os.symlink("socket:[1002]", fd / "0")
    info = _info(watcher, 9)
    assert info.stdin is not None and (info.stdin.kind, info.stdin.inode) == ("socket", 1002)


def test_a_real_process_that_dup2s_a_socket_onto_stdin_is_seen_at_the_next_tick(tmp_path: Path) -> None:
    # A real process and a real socket pair (no traffic): the fd count of the process stays the same.
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    code = (
        "import os, socket, sys\n"
        "a, b = socket.socketpair()\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "os.dup2(a.fileno(), 0)\n"
        "os.write(1, b'swapped\\n')\n"
        "os.read(b.fileno(), 1)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == b"ready\n"
        watcher = processes.ProcessWatcher("/proc", refresh_every=1000)
        before = next(r.info for r in watcher.scan().processes if r.pid == child.pid)
        assert before.stdin is not None and before.stdin.kind == "pipe"
        count = len(os.listdir(f"/proc/{child.pid}/fd"))
        child.stdin.write(b"go\n")
        child.stdin.flush()
        assert child.stdout.readline() == b"swapped\n"
        assert len(os.listdir(f"/proc/{child.pid}/fd")) == count  # dup2 replaced fd 0: same count
        after = next(r.info for r in watcher.scan().processes if r.pid == child.pid)
        assert after.stdin is not None and after.stdin.kind == "socket"
    finally:
        child.kill()
        child.wait()
