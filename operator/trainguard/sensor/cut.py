"""The cut: destroy the pod's open sockets that a CutCommand does not keep, stop the offending processes, and
report what is still open, read back from the kernel.

Sockets are destroyed through netlink sock_diag (`SOCK_DESTROY`, nlmsg_type 21): the request names the exact
socket (family, protocol, ports, addresses, interface and the kernel's cookie from the dump), and the kernel
aborts it as if the peer had reset it (`ECONNABORTED` for its holder, a RST to the peer for TCP). It needs
CAP_NET_ADMIN in the pod's network namespace and a kernel built with CONFIG_INET_DIAG_DESTROY. Where the kernel
refuses (EOPNOTSUPP: no INET_DIAG_DESTROY; EPERM: no CAP_NET_ADMIN), the only thing that really cuts a socket held
by a process is ending the process: its holders are killed (SIGKILL, never the sensor or pid 1), and the read-back
says whether that worked. Nothing is ever reported destroyed that the read-back still finds.

What is cut: every TCP socket with a remote (any state but LISTEN and TIME_WAIT: a listener has no remote, its
accepted children are sockets of their own and are cut; TIME_WAIT carries no data and the kernel expires it) and
every connected UDP socket, unless its remote is in `keep`, or it is one of the sensor's own sockets (the stream
to the operator and the very request that carries the command). Processes are signalled first, then sockets
destroyed: a stopped process cannot open a fresh connection between the destroy and the stop.
"""

from __future__ import annotations

import collections
import errno
import ipaddress
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from trainguard.api.sample import Endpoint
from trainguard.api.sensorproto import MAX_COMMAND_AGE_SECONDS, AllowedPeer, CutCommand, CutReport, CutSocket
from trainguard.sensor.sockdiag import (
    ALL_STATES,
    NETLINK_SOCK_DIAG,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    SOCK_DIAG_BY_FAMILY,
)

SOCK_DESTROY = 21
NLM_F_ACK = 0x4
TCP_LISTEN = 10
TCP_TIME_WAIT = 6

_HEADER = struct.Struct("=IHHII")
_REQUEST = struct.Struct("=IHHII" + "BBBxI" + "48s")
"""nlmsghdr + inet_diag_req_v2: family, protocol, ext, pad, states, then the 48-byte inet_diag_sockid."""
_MSG = struct.Struct("=BBBB48s5I")
"""inet_diag_msg: family, state, timer, retrans, the sockid, expires, rqueue, wqueue, uid, inode."""
_ERRNO = struct.Struct("=i")

_DUMPS = (
    ("tcp", socket.AF_INET, socket.IPPROTO_TCP),
    ("tcp6", socket.AF_INET6, socket.IPPROTO_TCP),
    ("udp", socket.AF_INET, socket.IPPROTO_UDP),
    ("udp6", socket.AF_INET6, socket.IPPROTO_UDP),
)


class CutRefused(ValueError):
    """A command the sensor will not carry out (stale, replayed, for another pod, unreadable keep)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class DiagSocket:
    """One socket from a sock_diag dump, with the raw identity SOCK_DESTROY needs."""

    proto: str
    family: int
    protocol: int
    state: int
    sockid: bytes
    inode: int
    local: Endpoint
    remote: Endpoint

    @property
    def cookie(self) -> bytes:
        return self.sockid[40:48]


def _decode(proto: str, protocol: int, payload: bytes) -> DiagSocket:
    family, state, _timer, _retrans, sockid, _exp, _rq, _wq, _uid, inode = _MSG.unpack_from(payload)
    width = 4 if family == socket.AF_INET else 16
    local = Endpoint(address=socket.inet_ntop(family, sockid[4 : 4 + width]), port=int.from_bytes(sockid[0:2], "big"))
    remote = Endpoint(
        address=socket.inet_ntop(family, sockid[20 : 20 + width]), port=int.from_bytes(sockid[2:4], "big")
    )
    return DiagSocket(proto, family, protocol, state, sockid, inode, local, remote)


class Netlink:
    """One NETLINK_SOCK_DIAG socket for dumps and destroys (the cut's own, not the sampler's)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def dump(self, proto: str, family: int, protocol: int) -> list[DiagSocket]:
        request = _REQUEST.pack(
            _REQUEST.size, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, self._next(), 0,
            family, protocol, 0, ALL_STATES, bytes(48),
        )  # fmt: skip
        self._sock.send(request)
        found: list[DiagSocket] = []
        while True:
            buf = self._sock.recv(1 << 16)
            off = 0
            while off + 16 <= len(buf):
                length, kind = _HEADER.unpack_from(buf, off)[:2]
                if length < 16 or off + length > len(buf):
                    raise OSError(errno.EPROTO, "netlink: a truncated message")
                if kind == NLMSG_DONE:
                    return found
                if kind == NLMSG_ERROR:
                    code = _ERRNO.unpack_from(buf, off + 16)[0]
                    raise OSError(-code, f"sock_diag {proto} dump: {os.strerror(-code)}")
                if kind == SOCK_DIAG_BY_FAMILY and length - 16 >= _MSG.size:
                    found.append(_decode(proto, protocol, buf[off + 16 : off + length]))
                off += (length + 3) & ~3
            if not buf:
                return found

    def destroy(self, sock: DiagSocket) -> int:
        """SOCK_DESTROY the socket; 0 when the kernel did, else its errno."""
        request = _REQUEST.pack(
            _REQUEST.size, SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, self._next(), 0,
            sock.family, sock.protocol, 0, ALL_STATES, sock.sockid,
        )  # fmt: skip
        try:
            self._sock.send(request)
            buf = self._sock.recv(4096)
        except OSError as exc:
            return exc.errno or errno.EIO
        if len(buf) >= 20 and _HEADER.unpack_from(buf)[1] == NLMSG_ERROR:
            return -int(_ERRNO.unpack_from(buf, 16)[0])
        return errno.EPROTO


def read_sockets() -> list[DiagSocket]:
    """Every TCP and UDP socket of the namespace (OSError when netlink refuses)."""
    with Netlink() as nl:
        out: list[DiagSocket] = []
        for proto, family, protocol in _DUMPS:
            out += nl.dump(proto, family, protocol)
        return out


def must_cut(sock: DiagSocket) -> bool:
    """A socket with a remote that can still carry data: TCP but LISTEN and TIME_WAIT, connected UDP."""
    if sock.remote.port == 0:
        return False
    if sock.protocol == socket.IPPROTO_TCP:
        return sock.state not in (TCP_LISTEN, TCP_TIME_WAIT)
    return True


class Keep:
    """The remotes a command keeps, parsed once (CutRefused for a bad CIDR: nothing is done then)."""

    def __init__(self, peers: Iterable[AllowedPeer]) -> None:
        self._peers: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, frozenset[int]]] = []
        for peer in peers:
            try:
                network = ipaddress.ip_network(peer.cidr, strict=False)
            except ValueError as exc:
                raise CutRefused(400, f"keep: {peer.cidr!r} is not a CIDR: {exc}") from exc
            if any(not 0 < p < 65536 for p in peer.ports):
                raise CutRefused(400, f"keep: {peer.cidr}: ports must be 1-65535, got {peer.ports}")
            self._peers.append((network, frozenset(peer.ports)))

    def keeps(self, remote: Endpoint) -> bool:
        address = ipaddress.ip_address(remote.address)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(
            address.version == network.version and address in network and (not ports or remote.port in ports)
            for network, ports in self._peers
        )


def socket_holders(proc_root: str, inodes: set[int]) -> dict[int, set[int]]:
    """inode -> the pids holding it open (read from /proc/<pid>/fd; unreadable processes are skipped)."""
    found: dict[int, set[int]] = collections.defaultdict(set)
    if not inodes:
        return found
    for name in os.listdir(proc_root):
        if not name.isdigit():
            continue
        fd_dir = f"{proc_root}/{name}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inode = int(link[8:-1])
                if inode in inodes:
                    found[inode].add(int(name))
    return found


class NonceBook:
    """Nonces seen, each kept until no command carrying it could be fresh again; bounded.

    A command is fresh for MAX_COMMAND_AGE_SECONDS either side of the sensor's clock, so a nonce is remembered
    until its issuedAt + that bound has passed. When the book is full of nonces still fresh, new commands are
    refused (503) rather than an old nonce forgotten (which would let it be replayed).
    """

    def __init__(self, capacity: int = 4096, clock: Callable[[], float] = time.time) -> None:
        self.capacity = capacity
        self._clock = clock
        self._seen: collections.OrderedDict[str, float] = collections.OrderedDict()

    def admit(self, nonce: str, issued_at: float) -> None:
        """Record a fresh, unseen nonce; CutRefused (409 stale or replayed, 503 full) otherwise."""
        now = self._clock()
        if abs(now - issued_at) > MAX_COMMAND_AGE_SECONDS:
            raise CutRefused(409, f"stale command: issuedAt is {now - issued_at:+.1f}s from the sensor's clock")
        for old, expires in list(self._seen.items()):
            if expires >= now:
                break
            del self._seen[old]
        if nonce in self._seen:
            raise CutRefused(409, f"replayed command: nonce {nonce!r} was seen before")
        if len(self._seen) >= self.capacity:
            raise CutRefused(503, "too many recent commands: try again shortly")
        self._seen[nonce] = max(issued_at, now) + MAX_COMMAND_AGE_SECONDS
        self._seen.move_to_end(nonce)

    def __len__(self) -> int:
        return len(self._seen)


def _cut_socket(sock: DiagSocket, pid: int | None, error: str = "") -> CutSocket:
    return CutSocket(proto=sock.proto, local=sock.local, remote=sock.remote, pid=pid, error=error)


class Cutter:
    """Carries out CutCommands for one pod, one at a time."""

    def __init__(
        self,
        pod: str,
        *,
        proc_root: str = "/proc",
        nonces: NonceBook | None = None,
        reader: Callable[[], list[DiagSocket]] = read_sockets,
    ) -> None:
        self.pod = pod
        self.proc_root = proc_root
        self.nonces = nonces or NonceBook()
        self._read = reader
        self._lock = threading.Lock()
        self.own_pid = os.getpid()

    def admit(self, command: CutCommand) -> Keep:
        """Check a verified command before anything is done: CutRefused when it must not be carried out."""
        if command.pod != self.pod:
            raise CutRefused(403, f"the command is for pod {command.pod}, this sensor is {self.pod}'s")
        keep = Keep(command.keep)
        self.nonces.admit(command.nonce, command.issued_at)
        return keep

    def cut(self, command: CutCommand) -> CutReport:
        with self._lock:
            keep = self.admit(command)
            return self._cut(command, keep)

    def _cut(self, command: CutCommand, keep: Keep) -> CutReport:
        errors: list[str] = []
        # The offenders' own sockets go whatever their remote: a reverse shell to an allowed address is still the
        # attack (a kept remote spares only the connections of processes the command does not name). Read before
        # the signal: a killed holder's fds are gone, and a child it passed the socket to may still hold it.
        offending = self._offending_inodes(command.pids)
        stopped = self._signal(command.pids, signal.SIGKILL if command.signal == "KILL" else signal.SIGSTOP, errors)
        try:
            before = self._read()
        except OSError as exc:
            errors.append(f"cannot read the pod's sockets through sock_diag: {exc.strerror or exc}")
            return CutReport(pod=self.pod, nonce=command.nonce, stopped=stopped, errors=errors)
        own = _all_inodes(self.proc_root, self.own_pid)
        offending -= own
        targets = [
            s
            for s in before
            if must_cut(s) and s.inode not in own and (s.inode in offending or not keep.keeps(s.remote))
        ]
        holders = socket_holders(self.proc_root, {s.inode for s in targets if s.inode})
        refused: list[tuple[DiagSocket, int]] = []
        try:
            nl = Netlink()
        except OSError as exc:
            refused = [(s, exc.errno or errno.EPERM) for s in targets]
        else:
            with nl:
                for sock in targets:
                    code = nl.destroy(sock)
                    if code not in (0, errno.ENOENT):  # ENOENT: it closed between the dump and the destroy
                        refused.append((sock, code))
        if refused:  # no SOCK_DESTROY here: the one thing that cuts a held socket is ending its holders
            doomed = {pid for sock, _ in refused for pid in holders.get(sock.inode, ())}
            killed = self._signal(sorted(doomed), signal.SIGKILL, errors)
            stopped = sorted(set(stopped) | set(killed))
        try:
            after = self._read()
        except OSError as exc:
            errors.append(f"cannot read the pod's sockets back: {exc.strerror or exc}")
            after = before
        still = {s.cookie for s in after}
        reasons = {s.cookie: code for s, code in refused}
        destroyed, failed = [], []
        for sock in targets:
            pid = min(holders.get(sock.inode, ()), default=None)
            if sock.cookie in still:
                code = reasons.get(sock.cookie, 0)
                failed.append(_cut_socket(sock, pid, os.strerror(code) if code else "still open after the destroy"))
            else:
                destroyed.append(_cut_socket(sock, pid))
        own_after = _all_inodes(self.proc_root, self.own_pid)
        remaining = [
            _cut_socket(s, None)
            for s in after
            if must_cut(s) and s.inode not in own_after and (s.inode in offending or not keep.keeps(s.remote))
        ]
        return CutReport(
            pod=self.pod,
            nonce=command.nonce,
            destroyed=destroyed,
            failed=failed,
            stopped=stopped,
            remaining=remaining,
            errors=errors,
        )

    def _offending_inodes(self, pids: Iterable[int]) -> set[int]:
        """The socket inodes the named processes hold (pid 1 and the sensor are never offenders)."""
        inodes: set[int] = set()
        for pid in pids:
            if pid > 1 and pid != self.own_pid and os.path.isdir(f"{self.proc_root}/{pid}"):
                inodes |= _all_inodes(self.proc_root, pid)
        inodes.discard(0)
        return inodes

    def _signal(self, pids: Iterable[int], signum: int, errors: list[str]) -> list[int]:
        done: list[int] = []
        for pid in pids:
            if pid <= 1 or pid == self.own_pid:
                errors.append(f"pid {pid}: refused (the sensor itself or pid 1 of the sandbox is never signalled)")
                continue
            if not os.path.isdir(f"{self.proc_root}/{pid}"):
                errors.append(f"pid {pid}: no such process in the pod")
                continue
            try:
                os.kill(pid, signum)
            except OSError as exc:
                errors.append(f"pid {pid}: {signal.Signals(signum).name} failed: {exc.strerror or exc}")
                continue
            done.append(pid)
        return done


def _all_inodes(proc_root: str, pid: int) -> set[int]:
    """The socket inodes a process holds."""
    inodes: set[int] = set()
    fd_dir = f"{proc_root}/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return inodes
    for fd in fds:
        try:
            link = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes
