"""The pod's processes and what they hold open, read from /proc.

The pod spec shares one process namespace, so every process of the pod is a /proc/<pid> here.
Parsers are pure functions of a file's text; `scan` walks a `proc_root` (a real /proc or a
checked-in fake tree) and never raises for what it reads: a garbled file is an error entry, a
process that exits between the listing and the read is simply gone.

Files are opened relative to a directory descriptor for /proc/<pid>: it is cheaper than resolving
the full path each time, and every read then refers to the same process even if the pid is reused.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from dataclasses import dataclass, field
from typing import NamedTuple

from trainguard.api.sample import SANDBOX_CONTAINER, SENSOR_CONTAINER, ExeStatus, ProcessInfo, StdStream
from trainguard.sensor.errors import SensorError, SensorErrorKind, error

MAX_CMDLINE_BYTES = 4096
"""A command line is read up to this many bytes (a process can make its own arbitrarily long)."""

MAX_ARGS = 256
"""At most this many arguments are kept (4 KiB of NULs would otherwise be 4,096 empty strings)."""

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
"""stat's times are in these units per second (USER_HZ, 100 on Linux)."""

_DELETED = " (deleted)"

MAX_FILE_BYTES = 65536
"""stat and status are read up to this many bytes; real ones are about 300 and 1,500."""

_DEVICE_PREFIX = "/dev/nvidia"
_STD_FDS = {"0": 0, "1": 1, "2": 2}
_SOCKET_PREFIX = "socket:["

# Errors that mean "the process is gone": normal, never reported.
_GONE = (errno.ENOENT, errno.ESRCH)


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """One process as read from /proc: its sample entry and the start time that names it."""

    info: ProcessInfo
    starttime: int
    """Clock ticks after boot (stat field 22): with the pid, it names one process for its lifetime."""

    @property
    def pid(self) -> int:
        return self.info.pid


@dataclass(slots=True)
class ProcessScan:
    """What one walk of /proc found."""

    processes: list[ProcessRecord] = field(default_factory=list)
    socket_owners: dict[int, int] = field(default_factory=dict)
    """Socket inode -> the lowest pid holding it."""
    device_holders: dict[str, set[int]] = field(default_factory=dict)
    """/dev/nvidia* path -> pids holding it open."""
    errors: list[SensorError] = field(default_factory=list)
    seen: int = 0
    """How many pids /proc listed (before the cap)."""


class Stat(NamedTuple):
    """What the sensor takes from /proc/<pid>/stat."""

    pid: int
    comm: str
    ppid: int
    starttime: int
    """Clock ticks after boot (field 22)."""
    cpu_ticks: int = 0
    """utime + stime (fields 14 and 15), in clock ticks."""
    image: tuple[str, ...] = ()
    """startcode, endcode, startstack, arg_start, arg_end (fields 26-28, 48-49): addresses of the running
    image, new at every exec (ASLR), 0 where the reader may not ptrace the process; () when absent."""


def _image(rest: list[str]) -> tuple[str, ...]:
    # rest[0] is field 3: field N is rest[N - 3].
    if len(rest) < 47:
        return ()
    return (rest[23], rest[24], rest[25], rest[45], rest[46])


def parse_stat(text: str) -> Stat:
    """pid, comm, ppid, starttime, CPU ticks and image addresses from /proc/<pid>/stat; ValueError when it
    is not one.

    comm sits between the first '(' and the last ')' and may itself contain spaces and parentheses.
    """
    open_paren = text.find("(")
    close_paren = text.rfind(")")
    if open_paren <= 0 or close_paren < open_paren:
        raise ValueError("no (comm) field")
    pid = int(text[:open_paren])
    comm = text[open_paren + 1 : close_paren]
    rest = text[close_paren + 1 :].split()
    # rest[0] is the state (field 3); ppid is field 4, utime 14, stime 15, starttime 22.
    if len(rest) < 20:
        raise ValueError(f"{len(rest) + 2} fields, want at least 22")
    if len(rest[0]) != 1:
        raise ValueError(f"bad state {rest[0]!r}")
    ppid = int(rest[1])
    starttime = int(rest[19])
    cpu_ticks = int(rest[11]) + int(rest[12])
    if pid < 0 or ppid < 0 or starttime < 0 or cpu_ticks < 0:
        raise ValueError("negative pid, ppid, CPU time or starttime")
    return Stat(pid, comm, ppid, starttime, cpu_ticks, _image(rest))


def parse_status_uid(text: str) -> int:
    """The real uid from /proc/<pid>/status (`Uid: real effective saved fs`); ValueError when absent."""
    for line in text.splitlines():
        if line.startswith("Uid:"):
            fields = line[4:].split()
            if not fields:
                break
            uid = int(fields[0])
            if uid < 0:
                raise ValueError("negative uid")
            return uid
    raise ValueError("no Uid line")


def parse_cmdline(raw: bytes) -> list[str]:
    """The arguments of /proc/<pid>/cmdline (NUL-separated), boundaries kept, undecodable bytes replaced.

    No guessing: a process that rewrote its arguments as one space-joined string (setproctitle) has one
    argument. At most MAX_ARGS are kept."""
    if not raw:
        return []
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    return [arg.decode("utf-8", "replace") for arg in raw.split(b"\0", MAX_ARGS)[:MAX_ARGS]]


def parse_exe(target: str) -> tuple[str, ExeStatus]:
    """The executable and its status from the text of /proc/<pid>/exe: ` (deleted)` marks a removed file."""
    if target.endswith(_DELETED):
        return target[: -len(_DELETED)], "deleted"
    return target, "ok"


_CONTAINER_ID = re.compile(r"(?:^|[-/:])([0-9a-f]{64})(?:\.scope)?$")
_NOT_A_CONTAINER = ("crio-conmon-",)


def parse_container_id(text: str) -> str:
    """The container id in /proc/<pid>/cgroup, or "" when there is none.

    The id is the 64-hex-digit last component of a cgroup path, in the forms of containerd
    (`.../<id>` under cgroupfs, `cri-containerd-<id>.scope` under systemd), CRI-O (`crio-<id>.scope`)
    and Docker (`docker-<id>.scope`, `/docker/<id>`). The cgroup v2 line (`0::`) is preferred, then the
    first v1 line with one. Inside a private cgroup namespace (the default with cgroup v2) the path is
    `/` and there is no id to find.
    """
    found = ""
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        _controllers, _, path = rest.partition(":")
        last = path.rstrip("/").rsplit("/", 1)[-1]
        if last.startswith(_NOT_A_CONTAINER):
            continue
        match = _CONTAINER_ID.search(last)
        if match is None:
            continue
        if hierarchy == "0":
            return match.group(1)
        found = found or match.group(1)
    return found


def stream_kind(target: str) -> StdStream:
    """What a standard stream is, from the text of its /proc/<pid>/fd/N link."""
    inode = parse_socket_inode(target)
    if inode is not None:
        return StdStream(kind="socket", target=target, inode=inode)
    if target.startswith("pipe:["):
        return StdStream(kind="pipe", target=target)
    if target.startswith(("/dev/pts/", "/dev/tty", "/dev/console", "/dev/ptmx")):
        return StdStream(kind="tty", target=target)
    if target.startswith(("anon_inode:", "socket:")):
        return StdStream(kind="anon" if target.startswith("anon_inode:") else "unknown", target=target)
    return StdStream(kind="file", target=target)


def read_boot_time(proc_root: str) -> float | None:
    """btime (Unix seconds at boot) from proc_root/stat; None where there is none (a fake tree)."""
    try:
        with open(f"{proc_root}/stat", "rb") as f:
            for line in f.read(1 << 20).splitlines():
                if line.startswith(b"btime "):
                    return float(int(line.split()[1]))
    except (OSError, ValueError, IndexError):
        return None
    return None


def parse_socket_inode(target: str) -> int | None:
    """The inode of an fd link target `socket:[12345]`, or None for anything else."""
    if target.startswith(_SOCKET_PREFIX) and target.endswith("]"):
        digits = target[len(_SOCKET_PREFIX) : -1]
        if digits.isascii() and digits.isdigit():
            return int(digits)
    return None


def _read_file(path: str, limit: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


def list_pids(proc_root: str) -> list[int]:
    """The numeric entries of proc_root, ascending."""
    return sorted(int(name) for name in os.listdir(proc_root) if name.isascii() and name.isdigit())


Signature = tuple[str, str, str, tuple[str, ...]]


def stat_signature(text: str) -> Signature:
    """What `parse_stat` reads that names a process image, unconverted: (pid and comm up to the last ')',
    ppid, starttime, image addresses).

    Two stat texts of which `parse_stat` accepts the first have equal signatures only if it returns
    the same pid, comm, ppid, starttime and image for both (the state field aside: check that it is one
    character). CPU times are compared on their own; memory and the rest change all the time and are not
    read. ("", "", "", ()) when there are too few fields.
    """
    cut = text.rfind(")")
    rest = text[cut + 1 :].split()
    if len(rest) < 20:
        return ("", "", "", ())
    return (text[:cut], rest[1], rest[19], _image(rest))


@dataclass(slots=True)
class _Known:
    """What the watcher remembers of one process between ticks."""

    record: ProcessRecord
    comm: str
    fd_count: int
    base: ProcessInfo | None = None
    """The process as _read_info read it (no CPU time, no streams): `record.info` is this plus those."""
    cpu_ticks: int = -1
    streams: tuple[str | None, str | None, str | None] = (None, None, None)
    """The link texts of fd 0, 1 and 2 at the last fd scan; "" for a closed one, None when unreadable."""
    fresh_base: ProcessInfo | None = None
    fresh_streams: tuple[str | None, str | None, str | None] | None = None
    """The base and streams record.info was composed from."""
    """st_size of /proc/<pid>/fd at the last fd scan: the number of open fds (Linux 6.2+; else constant)."""
    sockets: tuple[int, ...] = ()
    devices: tuple[str, ...] = ()
    denied: bool = False
    stat_fd: int = -1
    """/proc/<pid>/stat kept open: re-read with pread, no path lookup; ESRCH once the process is gone."""
    dir_fd: int = -1
    """/proc/<pid>/fd kept open: fstat gives the fd count, links are read relative to it."""
    stat_sig: Signature = ("", "", "", ())
    """`stat_signature` of the stat text this entry was made from."""


@dataclass(slots=True)
class _FdBudget:
    left: int


class ProcessWatcher:
    """Walks a proc_root once per tick, re-reading only what may have changed.

    Every tick reads each process's `stat` (pid, comm, ppid, start time) and the size of its fd
    directory. `status` (uid) and `cmdline` are read when the process is new, when its comm changed
    (an exec), and in a rolling full refresh that re-reads every process once per `refresh_every`
    ticks. The fd links are read when the process is new, when its number of open fds changed, in the
    rolling refresh, and for every process as soon as /proc/net shows a socket inode no known process
    owns. So a new process, a new socket, and an exec are seen at the tick they happen; a process that
    rewrites its own argv (same comm) or swaps one fd for another of the same count is seen within
    `refresh_every` ticks.

    At most `max_processes` processes (the lowest pids) and `max_fds` fd links per tick are read;
    hitting either is an error entry. `exclude_device_holder` (the sensor's own pid: NVML opens the
    device files too) never counts as a holder of a GPU.
    """

    def __init__(
        self,
        proc_root: str = "/proc",
        *,
        max_processes: int = 4096,
        max_fds: int = 65536,
        exclude_device_holder: int | None = None,
        refresh_every: int = 20,
        container_names: dict[str, str] | None = None,
        sensor_pid: int | None = None,
    ) -> None:
        self.proc_root = proc_root
        self.container_names = dict(container_names or {})
        """Container id -> its name in the pod, where the sensor was told (`--container-name`)."""
        self.sensor_pid = sensor_pid
        """The sensor's own pid: it and its container are `trainguard-sensor` (see `container_name`)."""
        self._sensor_container_id: str | None = None
        self._sandbox_container_id = ""
        self._boot_time = read_boot_time(proc_root)
        self._exe_denied: set[int] = set()
        self.max_processes = max_processes
        self.max_fds = max_fds
        self.exclude_device_holder = exclude_device_holder
        self.refresh_every = max(1, refresh_every)
        self._known: dict[int, _Known] = {}
        self._unowned: set[int] = set()
        """Socket inodes that a full fd scan found no owner for: they do not trigger another one."""
        self._tick = 0
        self._owners: dict[int, int] | None = None
        self._dirty = False
        """Some process's sockets or devices changed since the owner maps were built."""
        self._held = 0
        self.max_held = 2 * max_processes
        """At most this many /proc files are kept open between ticks (2 per process)."""
        self._holders: dict[str, set[int]] = {}
        self._listing: tuple[list[str], list[int]] = ([], [])
        """The last listing of proc_root and the pids in it."""

    def scan(self, socket_inodes: set[int] | frozenset[int] = frozenset()) -> ProcessScan:
        """The processes now, with the owners of `socket_inodes` (the inodes in /proc/net) where findable."""
        result = ProcessScan()
        tick = self._tick
        self._tick += 1
        try:
            pids = self._list_pids()
        except OSError as exc:
            result.errors.append(error(SensorErrorKind.PROC_READ, f"{self.proc_root}: {exc.strerror or exc}"))
            return result
        result.seen = len(pids)
        if len(pids) > self.max_processes:
            result.errors.append(
                error(
                    SensorErrorKind.PROCESS_CAP,
                    f"{len(pids)} processes, only the first {self.max_processes} (lowest pids) are reported",
                )
            )
            pids = pids[: self.max_processes]
        budget = _FdBudget(self.max_fds)
        known: dict[int, _Known] = {}
        fresh: set[int] = set()
        every = self.refresh_every
        phase = tick % every
        previous = self._known
        pread, fstat = os.pread, os.fstat
        for pid in pids:
            prev = previous.get(pid)
            raw: bytes | None = None
            if prev is not None and prev.dir_fd >= 0 and prev.stat_fd >= 0 and not prev.denied and pid % every != phase:
                # The common case, inlined: a known process whose pid, comm, ppid and start time are as
                # they were, and whose fd count is too. Anything else goes the long way (_observe).
                try:
                    raw = pread(prev.stat_fd, MAX_FILE_BYTES, 0)
                except OSError:
                    raw = None
                else:
                    text = raw.decode("utf-8", "replace")
                    cut = text.rfind(")")
                    rest = text[cut + 1 :].split()
                    sig = prev.stat_sig
                    if (
                        len(rest) >= 20
                        and rest[19] == sig[2]
                        and rest[1] == sig[1]
                        and text[:cut] == sig[0]
                        and _image(rest) == sig[3]
                        and len(rest[0]) == 1
                        and self._held <= self.max_held
                        and rest[11].isdigit()
                        and rest[12].isdigit()
                    ):
                        prev.cpu_ticks = int(rest[11]) + int(rest[12])
                        try:
                            fd_count = fstat(prev.dir_fd).st_size
                        except OSError:
                            fd_count = -2  # _check_fds finds it gone
                        checked: _Known | None = prev
                        if fd_count != prev.fd_count:
                            checked = self._check_fds(pid, prev, budget, fresh, result.errors)
                        if checked is not None:
                            known[pid] = self._compose(checked)
                        continue
            entry = self._observe(
                pid, prev, refresh=pid % every == phase, budget=budget, fresh=fresh, errors=result.errors, raw=raw
            )
            if entry is not None:
                known[pid] = self._compose(entry)
        changed = self._dirty or known.keys() != self._known.keys()
        self._dirty = False
        for pid, entry in self._known.items():
            if known.get(pid) is not entry:
                self._release(entry)
        self._known = known
        if changed or self._owners is None:
            self._owners, self._holders = _owners(known), _holders(known)
        owners = self._owners
        unknown = set(socket_inodes) - owners.keys() - self._unowned
        unknown.discard(0)
        if unknown:
            for pid, entry in known.items():
                if pid in fresh:
                    continue
                self._rescan_fds(pid, entry, budget, result.errors)
                if not unknown.difference(entry.sockets):
                    break
                unknown.difference_update(entry.sockets)
            owners = _owners(known)
            self._owners, self._holders = owners, _holders(known)
            unknown -= owners.keys()
        self._unowned = (self._unowned & socket_inodes) | unknown
        result.socket_owners = owners
        result.device_holders = self._holders
        result.processes = [entry.record for entry in known.values()]
        if budget.left <= 0:
            result.errors.append(
                error(
                    SensorErrorKind.FD_CAP,
                    f"more than {self.max_fds} open files: some socket and GPU owners unknown",
                )
            )
        exe_denied = sorted(self._exe_denied & known.keys())
        self._exe_denied = set(exe_denied)
        if exe_denied:
            shown = ", ".join(str(p) for p in exe_denied[:8]) + (", ..." if len(exe_denied) > 8 else "")
            result.errors.append(
                error(
                    SensorErrorKind.PROC_PERMISSION,
                    f"cannot read the executable of {len(exe_denied)} processes ({shown}): exeStatus unreadable",
                )
            )
        denied = [pid for pid, entry in known.items() if entry.denied]
        if denied:
            shown = ", ".join(str(p) for p in denied[:8]) + (", ..." if len(denied) > 8 else "")
            result.errors.append(
                error(
                    SensorErrorKind.PROC_PERMISSION,
                    f"cannot read the open files of {len(denied)} processes ({shown}): "
                    "their sockets and GPUs are unattributed",
                )
            )
        return result

    def _list_pids(self) -> list[int]:
        """list_pids, not converted again while the listing is the same as at the last tick."""
        names = os.listdir(self.proc_root)
        if names != self._listing[0]:
            pids = sorted(int(name) for name in names if name.isascii() and name.isdigit())
            self._listing = (names, pids)
        return list(self._listing[1])

    def _observe(
        self,
        pid: int,
        prev: _Known | None,
        *,
        refresh: bool,
        budget: _FdBudget,
        fresh: set[int],
        errors: list[SensorError],
        raw: bytes | None = None,
    ) -> _Known | None:
        """This tick's view of one process; None when it is gone or unreadable.

        `raw`: its stat, already read through prev's held file this tick.
        """
        base = f"{self.proc_root}/{pid}"
        if raw is None and prev is not None and prev.stat_fd >= 0:
            try:
                raw = os.pread(prev.stat_fd, MAX_FILE_BYTES, 0)
            except OSError:  # that process is gone; if the pid is listed, it is another process now
                self._release(prev)
                prev = None
        opened = -1
        if raw is None:
            try:
                opened = os.open(f"{base}/stat", os.O_RDONLY | os.O_CLOEXEC)
                raw = os.read(opened, MAX_FILE_BYTES)
            except OSError as exc:
                self._close(opened)
                if exc.errno not in _GONE:
                    errors.append(error(SensorErrorKind.PROC_READ, f"{base}/stat: {exc.strerror}"))
                return None
        text = raw.decode("utf-8", "replace")
        try:
            stat = parse_stat(text)
        except ValueError as exc:
            self._close(opened)
            errors.append(error(SensorErrorKind.PROC_READ, f"{base}/stat: unparsable ({exc})"))
            return None
        comm, ppid, starttime = stat.comm, stat.ppid, stat.starttime
        reread = True
        if prev is not None and prev.record.starttime == starttime:
            entry = prev
            # the rolling refresh, or an exec: a new comm, or a new image (its addresses change at every exec)
            reread = refresh or prev.comm != comm or prev.stat_sig[3] != stat.image
            if reread:
                info = self._read_info(pid, stat, errors, prev.base)
                if info is None:
                    self._close(opened)
                    return None
                entry.base = info
                entry.comm, entry.fd_count = comm, -1
            elif entry.base is not None and entry.base.ppid != ppid:  # reparented: its parent exited
                entry.base = entry.base.model_copy(update={"ppid": ppid})
        else:
            if prev is not None:
                self._release(prev)
            info = self._read_info(pid, stat, errors)
            if info is None:
                self._close(opened)
                return None
            entry = _Known(ProcessRecord(info, starttime), comm, -1, base=info)
        entry.cpu_ticks = stat.cpu_ticks
        if opened >= 0:
            entry.stat_fd = self._hold(opened)
        entry.stat_sig = stat_signature(text)
        if entry.denied and not reread:
            return entry  # its owner does not change often; the rolling refresh retries
        return self._check_fds(pid, entry, budget, fresh, errors)

    def _check_fds(
        self, pid: int, entry: _Known, budget: _FdBudget, fresh: set[int], errors: list[SensorError]
    ) -> _Known | None:
        """Re-read pid's fd links if their number changed (or was never read)."""
        if entry.dir_fd < 0:
            try:
                entry.dir_fd = self._hold(
                    os.open(f"{self.proc_root}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                )
            except OSError as exc:
                if exc.errno in _GONE:
                    self._release(entry)
                    return None
                if exc.errno in (errno.EACCES, errno.EPERM):
                    entry.denied = True
                    if entry.sockets or entry.devices:
                        entry.sockets, entry.devices = (), ()
                        self._dirty = True
                else:
                    errors.append(error(SensorErrorKind.PROC_READ, f"{self.proc_root}/{pid}/fd: {exc.strerror}"))
                return entry
        try:
            fd_count = os.fstat(entry.dir_fd).st_size
        except OSError:
            self._release(entry)
            return None
        if fd_count != entry.fd_count:
            self._rescan_fds(pid, entry, budget, errors)
            entry.fd_count = fd_count
            fresh.add(pid)
        if entry.dir_fd >= 0 and self._held > self.max_held:
            self._release(entry)  # over the budget of open files: read by path next time
        return entry

    def _hold(self, fd: int) -> int:
        self._held += 1
        return fd

    def _close(self, fd: int) -> None:
        if fd >= 0:
            os.close(fd)

    def _release(self, entry: _Known) -> None:
        """Close what is kept open for entry."""
        for fd in (entry.stat_fd, entry.dir_fd):
            if fd >= 0:
                os.close(fd)
                self._held -= 1
        entry.stat_fd = entry.dir_fd = -1

    def close(self) -> None:
        """Close every file kept open. Call it from the thread that scans, or when no scan runs."""
        for entry in self._known.values():
            self._release(entry)
        self._known = {}

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _compose(self, entry: _Known) -> _Known:
        """entry with record.info brought up to date with its base, CPU time and streams (the very same
        object when nothing changed, so that its JSON, cached by the SampleEncoder, is reused)."""
        base = entry.base
        if base is None:
            return entry
        info = entry.record.info
        cpu = round(entry.cpu_ticks / CLOCK_TICKS, 2) if entry.cpu_ticks >= 0 else None
        streams = entry.streams
        if entry.fresh_base is base and info.cpu_seconds == cpu and entry.fresh_streams is streams:
            return entry
        stdin, stdout, stderr = (
            None if target is None else (StdStream(kind="closed") if target == "" else stream_kind(target))
            for target in streams
        )
        update = {"cpu_seconds": cpu, "stdin": stdin, "stdout": stdout, "stderr": stderr}
        entry.record = ProcessRecord(base.model_copy(update=update), entry.record.starttime)
        entry.fresh_base, entry.fresh_streams = base, streams
        return entry

    def _read_info(
        self, pid: int, stat: Stat, errors: list[SensorError], last: ProcessInfo | None = None
    ) -> ProcessInfo | None:
        """pid's entry without CPU time and streams, or None when it is gone; `last` itself when nothing
        changed."""
        base = f"{self.proc_root}/{pid}"
        try:
            status_text = _read_file(f"{base}/status", MAX_FILE_BYTES).decode("utf-8", "replace")
            cmdline_raw = _read_file(f"{base}/cmdline", MAX_CMDLINE_BYTES)
        except OSError as exc:
            if exc.errno not in _GONE:
                errors.append(error(SensorErrorKind.PROC_READ, f"{base}: {exc.strerror}"))
            return None
        try:
            uid = parse_status_uid(status_text)
        except ValueError as exc:
            errors.append(error(SensorErrorKind.PROC_READ, f"{base}/status: unparsable ({exc})"))
            uid = -1
        exe_status: ExeStatus
        try:
            exe, exe_status = parse_exe(os.readlink(f"{base}/exe"))
            self._exe_denied.discard(pid)
        except OSError as exc:
            exe, exe_status = "", "unreadable"
            if exc.errno in (errno.EACCES, errno.EPERM):
                self._exe_denied.add(pid)
        try:
            container_id = parse_container_id(_read_file(f"{base}/cgroup", MAX_FILE_BYTES).decode("utf-8", "replace"))
        except OSError:
            container_id = ""
        boot = self._boot_time
        fields = {
            "pid": pid,
            "ppid": stat.ppid,
            "uid": uid,
            "name": stat.comm,
            "exe": exe,
            "exe_status": exe_status,
            "argv": parse_cmdline(cmdline_raw),
            "container_id": container_id,
            "container": self.container_name(pid, stat.ppid, container_id),
            "start_time": None if boot is None else round(boot + stat.starttime / CLOCK_TICKS, 2),
        }
        if last is not None and all(getattr(last, k) == v for k, v in fields.items()):
            return last
        return ProcessInfo(**fields)

    def container_name(self, pid: int, ppid: int, container_id: str) -> str:
        """The name of a process's container, where the sensor can tell it without being told.

        `--container-name` first. Then the plumbing, which the engine exempts by container: the
        sensor itself (its own pid, and every process of its own container) is `trainguard-sensor`;
        the pod's sandbox is `POD` (the kubelet's name for it): pid 1 of the pod's shared pid
        namespace, which is the pause process the kubelet started before any container (a workload
        cannot become pid 1 nor replace it), and every process of pid 1's container. Unless pid 1 is
        in the sensor's own container (a pod without a shared pid namespace: then there is no
        sandbox to see). Anything else stays unnamed: a process calling itself `pause` is not the
        sandbox."""
        if container_id and container_id in self.container_names:
            return self.container_names[container_id]
        own = self._own_container_id()
        if pid == self.sensor_pid or (container_id and container_id == own):
            return SENSOR_CONTAINER
        if pid == 1 and ppid == 0:
            self._sandbox_container_id = container_id
            return SANDBOX_CONTAINER
        if container_id and container_id == self._sandbox_container_id:
            return SANDBOX_CONTAINER
        return ""

    def _own_container_id(self) -> str:
        if self._sensor_container_id is None:
            self._sensor_container_id = ""
            if self.sensor_pid is not None:
                try:
                    text = _read_file(f"{self.proc_root}/{self.sensor_pid}/cgroup", MAX_FILE_BYTES)
                    self._sensor_container_id = parse_container_id(text.decode("utf-8", "replace"))
                except OSError:
                    pass
        return self._sensor_container_id

    def _rescan_fds(self, pid: int, entry: _Known, budget: _FdBudget, errors: list[SensorError]) -> None:
        """Read pid's fd links: the sockets and /dev/nvidia* it holds go into entry."""
        entry.denied = False
        fd_dir = entry.dir_fd
        if fd_dir < 0:
            try:
                fd_dir = os.open(f"{self.proc_root}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EPERM):
                    entry.denied = True
                elif exc.errno not in _GONE:
                    errors.append(error(SensorErrorKind.PROC_READ, f"{self.proc_root}/{pid}/fd: {exc.strerror}"))
                entry.streams = (None, None, None)
                if entry.sockets or entry.devices:
                    entry.sockets, entry.devices = (), ()
                    self._dirty = True
                return
        sockets: list[int] = []
        devices: list[str] = []
        streams: list[str | None] = ["", "", ""]
        readlink = os.readlink
        count_devices = pid != self.exclude_device_holder
        tried = 0
        try:
            names = os.listdir(fd_dir)
            if len(names) > budget.left:
                names = names[: max(budget.left, 0)]
                # Over the fd budget: a standard stream not read is unknown, not closed.
                streams = [None if str(fd) not in names else "" for fd in range(3)]
            for fd_name in names:
                tried += 1
                try:
                    target = readlink(fd_name, dir_fd=fd_dir)
                except OSError as exc:
                    if exc.errno in (errno.EACCES, errno.EPERM):
                        entry.denied = True
                        break
                    continue  # closed since the listing, or not a link in a fake tree
                if fd_name in _STD_FDS:
                    streams[_STD_FDS[fd_name]] = target
                if target.startswith(_SOCKET_PREFIX):
                    inode = parse_socket_inode(target)
                    if inode is not None:
                        sockets.append(inode)
                elif count_devices and target.startswith(_DEVICE_PREFIX):
                    devices.append(target)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                entry.denied = True
        finally:
            budget.left -= tried
            if fd_dir != entry.dir_fd:
                os.close(fd_dir)
        if entry.denied:
            streams = [None, None, None]
        found_streams = (streams[0], streams[1], streams[2])
        if found_streams != entry.streams:
            entry.streams = found_streams
        found_sockets, found_devices = tuple(sockets), tuple(sorted(set(devices)))
        if found_sockets != entry.sockets or found_devices != entry.devices:
            entry.sockets, entry.devices = found_sockets, found_devices
            self._dirty = True


def _holders(known: dict[int, _Known]) -> dict[str, set[int]]:
    """/dev/nvidia* path -> the pids holding it."""
    holders: dict[str, set[int]] = {}
    for pid, entry in known.items():
        for device in entry.devices:
            holders.setdefault(device, set()).add(pid)
    return holders


def _owners(known: dict[int, _Known]) -> dict[int, int]:
    """Socket inode -> the lowest pid holding it (known is in pid order)."""
    owners: dict[int, int] = {}
    for pid, entry in known.items():
        for inode in entry.sockets:
            owners.setdefault(inode, pid)
    return owners
