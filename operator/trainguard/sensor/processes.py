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
from dataclasses import dataclass, field

from trainguard.api.sample import ProcessInfo
from trainguard.sensor.errors import ErrorKind, SensorError

MAX_CMDLINE_BYTES = 4096
"""A command line is read up to this many bytes (a process can make its own arbitrarily long)."""

MAX_FILE_BYTES = 65536
"""stat and status are read up to this many bytes; real ones are about 300 and 1,500."""

_DEVICE_PREFIX = "/dev/nvidia"
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


def parse_stat(text: str) -> tuple[int, str, int, int]:
    """(pid, comm, ppid, starttime) from /proc/<pid>/stat; ValueError when it is not one.

    comm sits between the first '(' and the last ')' and may itself contain spaces and parentheses.
    """
    open_paren = text.find("(")
    close_paren = text.rfind(")")
    if open_paren <= 0 or close_paren < open_paren:
        raise ValueError("no (comm) field")
    pid = int(text[:open_paren])
    comm = text[open_paren + 1 : close_paren]
    rest = text[close_paren + 1 :].split(None, 21)
    # rest[0] is the state (field 3); ppid is field 4, starttime field 22.
    if len(rest) < 20:
        raise ValueError(f"{len(rest) + 2} fields, want at least 22")
    if len(rest[0]) != 1:
        raise ValueError(f"bad state {rest[0]!r}")
    ppid = int(rest[1])
    starttime = int(rest[19])
    if pid < 0 or ppid < 0 or starttime < 0:
        raise ValueError("negative pid, ppid or starttime")
    return pid, comm, ppid, starttime


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


def parse_cmdline(raw: bytes) -> str:
    """The arguments of /proc/<pid>/cmdline (NUL-separated) joined by spaces; undecodable bytes replaced."""
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")


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


def stat_signature(text: str) -> tuple[str, str, str]:
    """What `parse_stat` reads, unconverted: (pid and comm up to the last ')', ppid, starttime).

    Two stat texts of which `parse_stat` accepts the first have equal signatures only if it returns
    the same for both (the state field aside: check that it is one character). The other fields (CPU
    times, memory) change all the time and are not compared. ("", "", "") when there are too few fields.
    """
    cut = text.rfind(")")
    rest = text[cut + 1 :].split(None, 20)
    if len(rest) < 20:
        return ("", "", "")
    return (text[:cut], rest[1], rest[19])


@dataclass(slots=True)
class _Known:
    """What the watcher remembers of one process between ticks."""

    record: ProcessRecord
    comm: str
    fd_count: int
    """st_size of /proc/<pid>/fd at the last fd scan: the number of open fds (Linux 6.2+; else constant)."""
    sockets: tuple[int, ...] = ()
    devices: tuple[str, ...] = ()
    denied: bool = False
    stat_fd: int = -1
    """/proc/<pid>/stat kept open: re-read with pread, no path lookup; ESRCH once the process is gone."""
    dir_fd: int = -1
    """/proc/<pid>/fd kept open: fstat gives the fd count, links are read relative to it."""
    stat_sig: tuple[str, str, str] = ("", "", "")
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
    ) -> None:
        self.proc_root = proc_root
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
            result.errors.append(SensorError(ErrorKind.PROC_READ, f"{self.proc_root}: {exc.strerror or exc}"))
            return result
        result.seen = len(pids)
        if len(pids) > self.max_processes:
            result.errors.append(
                SensorError(
                    ErrorKind.PROCESS_CAP,
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
                    rest = text[cut + 1 :].split(None, 20)
                    sig = prev.stat_sig
                    if (
                        len(rest) >= 20
                        and rest[19] == sig[2]
                        and rest[1] == sig[1]
                        and text[:cut] == sig[0]
                        and len(rest[0]) == 1
                        and self._held <= self.max_held
                    ):
                        try:
                            fd_count = fstat(prev.dir_fd).st_size
                        except OSError:
                            fd_count = -2  # _check_fds finds it gone
                        if fd_count == prev.fd_count:
                            known[pid] = prev
                            continue
                        checked = self._check_fds(pid, prev, budget, fresh, result.errors)
                        if checked is not None:
                            known[pid] = checked
                        continue
            entry = self._observe(
                pid, prev, refresh=pid % every == phase, budget=budget, fresh=fresh, errors=result.errors, raw=raw
            )
            if entry is not None:
                known[pid] = entry
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
                SensorError(
                    ErrorKind.FD_CAP,
                    f"more than {self.max_fds} open files: some socket and GPU owners unknown",
                )
            )
        denied = [pid for pid, entry in known.items() if entry.denied]
        if denied:
            shown = ", ".join(str(p) for p in denied[:8]) + (", ..." if len(denied) > 8 else "")
            result.errors.append(
                SensorError(
                    ErrorKind.PROC_PERMISSION,
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
                    errors.append(SensorError(ErrorKind.PROC_READ, f"{base}/stat: {exc.strerror}"))
                return None
        text = raw.decode("utf-8", "replace")
        try:
            _, comm, ppid, starttime = parse_stat(text)
        except ValueError as exc:
            self._close(opened)
            errors.append(SensorError(ErrorKind.PROC_READ, f"{base}/stat: unparsable ({exc})"))
            return None
        reread = True
        if prev is not None and prev.record.starttime == starttime:
            entry = prev
            reread = refresh or prev.comm != comm  # the rolling refresh, or an exec
            if reread:
                info = self._read_info(pid, comm, ppid, errors, prev.record.info)
                if info is None:
                    self._close(opened)
                    return None
                if info is not prev.record.info:
                    entry.record = ProcessRecord(info, starttime)
                entry.comm, entry.fd_count = comm, -1
            elif prev.record.info.ppid != ppid:  # reparented: its parent exited
                entry.record = ProcessRecord(prev.record.info.model_copy(update={"ppid": ppid}), starttime)
        else:
            if prev is not None:
                self._release(prev)
            info = self._read_info(pid, comm, ppid, errors)
            if info is None:
                self._close(opened)
                return None
            entry = _Known(ProcessRecord(info, starttime), comm, -1)
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
                    errors.append(SensorError(ErrorKind.PROC_READ, f"{self.proc_root}/{pid}/fd: {exc.strerror}"))
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

    def _read_info(
        self, pid: int, comm: str, ppid: int, errors: list[SensorError], last: ProcessInfo | None = None
    ) -> ProcessInfo | None:
        """pid's entry, or None when it is gone; `last` itself when nothing changed (so that its JSON,
        cached by the SampleEncoder, is reused)."""
        base = f"{self.proc_root}/{pid}"
        try:
            status_text = _read_file(f"{base}/status", MAX_FILE_BYTES).decode("utf-8", "replace")
            cmdline_raw = _read_file(f"{base}/cmdline", MAX_CMDLINE_BYTES)
        except OSError as exc:
            if exc.errno not in _GONE:
                errors.append(SensorError(ErrorKind.PROC_READ, f"{base}: {exc.strerror}"))
            return None
        try:
            uid = parse_status_uid(status_text)
        except ValueError as exc:
            errors.append(SensorError(ErrorKind.PROC_READ, f"{base}/status: unparsable ({exc})"))
            uid = -1
        cmdline = parse_cmdline(cmdline_raw)
        fields = (pid, ppid, comm, cmdline, uid)
        if last is not None and (last.pid, last.ppid, last.name, last.cmdline, last.uid) == fields:
            return last
        return ProcessInfo(pid=pid, ppid=ppid, name=comm, cmdline=cmdline, uid=uid)

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
                    errors.append(SensorError(ErrorKind.PROC_READ, f"{self.proc_root}/{pid}/fd: {exc.strerror}"))
                if entry.sockets or entry.devices:
                    entry.sockets, entry.devices = (), ()
                    self._dirty = True
                return
        sockets: list[int] = []
        devices: list[str] = []
        readlink = os.readlink
        count_devices = pid != self.exclude_device_holder
        tried = 0
        try:
            names = os.listdir(fd_dir)
            if len(names) > budget.left:
                names = names[: max(budget.left, 0)]
            for fd_name in names:
                tried += 1
                try:
                    target = readlink(fd_name, dir_fd=fd_dir)
                except OSError as exc:
                    if exc.errno in (errno.EACCES, errno.EPERM):
                        entry.denied = True
                        break
                    continue  # closed since the listing, or not a link in a fake tree
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
