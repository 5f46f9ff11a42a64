"""Known tools recognised by their executable and their argument list, never by a regular expression.

A process shows three names: its executable's file name (`exe`, which it cannot choose), the file
name of `argv[0]` and its `name` (comm), the last two chosen freely. For recognising a *bad* tool
any of the three counts (a workload can only incriminate itself by taking such a name); the
allow-lists, which can excuse a process, read the executable alone (`policy.py`).

Arguments are read as the tools read them: ssh's and dbclient's options as their own parsers take
them (an option's value is never mistaken for an option, the command after the destination is
not parsed), socat's addresses, ncat's exec options. Everything here is plain string work, linear
in the size of the command line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Process(Protocol):
    """What the tool checks read of a pod process or a GPU process."""

    @property
    def name(self) -> str: ...
    @property
    def exe(self) -> str: ...
    @property
    def argv(self) -> list[str]: ...


#: GPU and CPU miners, matched as the start of a file name (`xmrig-6.21`, `SRBMiner-MULTI`).
MINERS: tuple[str, ...] = (
    "xmrig",
    "xmr-stak",
    "t-rex",
    "lolminer",
    "gminer",
    "nbminer",
    "ethminer",
    "phoenixminer",
    "nanominer",
    "teamredminer",
    "cgminer",
    "bfgminer",
    "ccminer",
    "nheqminer",
    "srbminer",
    "bzminer",
    "wildrig",
    "kawpowminer",
    "cpuminer",
    "minerd",
    "onezerominer",
    "rigel",
    "z-enemy",
)
#: Pool URLs in any argument: any miner, however it is named, that is given a pool on its command line.
STRATUM_SCHEMES: tuple[str, ...] = ("stratum+tcp://", "stratum+ssl://", "stratum+tls://", "stratum2+tcp://")
#: Tunnel and reverse-proxy tools, matched as a file name, alone or followed by a version or
#: platform suffix (`chisel_1.9.1_linux_amd64`, `frpc.exe`).
TUNNEL_TOOLS: tuple[str, ...] = (
    "ngrok",
    "chisel",
    "frpc",
    "frps",
    "gost",
    "autossh",
    "bore",
    "rathole",
    "iodine",
    "dnscat",
    "dnscat2",
    "ptunnel",
    "ptunnel-ng",
    "sshuttle",
    "inlets",
    "revsocks",
    "ligolo",
    "ligolo-ng",
    "pwnat",
    "udp2raw",
)
_SUFFIX_START = frozenset("-_.0123456789")
#: Shells and interpreters: with a socket on standard input or output, a reverse shell.
SHELLS: frozenset[str] = frozenset(
    {"sh", "bash", "rbash", "dash", "zsh", "ksh", "mksh", "pdksh", "ash", "busybox", "fish", "tcsh", "csh", "yash"}
)
INTERPRETER_PREFIXES: tuple[str, ...] = (
    "python",
    "pypy",
    "perl",
    "ruby",
    "irb",
    "php",
    "node",
    "nodejs",
    "deno",
    "bun",
    "lua",
    "luajit",
    "tclsh",
    "wish",
    "pwsh",
    "awk",
    "gawk",
    "mawk",
    "nawk",
    "java",
    "jshell",
    "Rscript",
    "julia",
)
SSH_CLIENTS = frozenset({"ssh", "dbclient"})
NCAT_NAMES = frozenset({"nc", "ncat", "netcat", "nc.traditional", "nc.openbsd"})

#: Characters that end a word in a shell command line (`sh -c ./xmrig;...`).
_BREAKS = str.maketrans({c: " " for c in "\t\n\r;&|'\"`()<>=,"})


def basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def names(p: Process) -> set[str]:
    """The names a process goes by, lower-cased: its executable's file name, argv[0]'s and its name."""
    out = {p.name.lower()} if p.name else set()
    if p.exe:
        out.add(basename(p.exe).lower())
    if p.argv and p.argv[0]:
        out.add(basename(p.argv[0]).lower())
    return out


def _is_tool(name: str, tool: str) -> bool:
    return name == tool or (name.startswith(tool) and name[len(tool)] in _SUFFIX_START)


def _words(argv: Sequence[str]) -> list[str]:
    """Every shell word of every argument, so that `sh -c "cd /tmp && ./xmrig"` shows `./xmrig`."""
    return " ".join(argv).translate(_BREAKS).split()


def miner(p: Process) -> str | None:
    """Why the process is a known miner (the name it matched, or the pool URL scheme), or None."""
    for n in names(p):
        for m in MINERS:
            if n.startswith(m):
                return m
    for word in _words(p.argv):
        n = basename(word).lower()
        for m in MINERS:
            if n.startswith(m):
                return m
    for arg in p.argv:
        low = arg.lower()
        for scheme in STRATUM_SCHEMES:
            if scheme in low:
                return scheme
    return None


def tunnel(p: Process) -> str | None:
    """Why the process is a tunnel (the tool, or the forwarding option as given), or None."""
    ns = names(p)
    for n in ns:
        for t in TUNNEL_TOOLS:
            if _is_tool(n, t):
                return t
    if "cloudflared" in ns and "tunnel" in p.argv[1:]:
        return "cloudflared tunnel"
    if ns & {"ssh"}:
        found = ssh_forward(p.argv[1:], SSH_OPTIONS_WITH_VALUE, SSH_FORWARDS)
        if found:
            return f"ssh {found}"
    if ns & {"dbclient"}:
        found = ssh_forward(p.argv[1:], DBCLIENT_OPTIONS_WITH_VALUE, DBCLIENT_FORWARDS)
        if found:
            return f"dbclient {found}"
    if "socat" in ns:
        for arg in p.argv[1:]:
            for part in arg.lower().split("!!"):
                if part.startswith(("exec:", "system:")):
                    return f"socat {arg[:64]}"
    if ns & NCAT_NAMES:
        found = ncat_exec(p.argv[1:])
        if found:
            return f"{basename(p.argv[0]) if p.argv else 'nc'} {found}"
    return None


def ssh_config(p: Process) -> str | None:
    """`ssh -F FILE` (or dbclient) with a configuration file other than /dev/null: forwards can be set in
    it and the sample cannot carry the file. The `-F` option as given, or None."""
    if not names(p) & SSH_CLIENTS:
        return None
    for option, value in ssh_options(p.argv[1:], SSH_OPTIONS_WITH_VALUE):
        if option == "F" and value != "/dev/null":
            return f"-F {value}"
    return None


# --- ssh ------------------------------------------------------------------------------------------

#: OpenSSH's options that take a value (ssh.c's getopt string).
SSH_OPTIONS_WITH_VALUE = frozenset("BbcDEeFIiJLlmOoPpQRSWw")
#: Options that forward: -L local, -R remote, -D dynamic (SOCKS), -W stdio, -w a tun device.
SSH_FORWARDS = frozenset("LRDWw")
#: `-o` keywords that forward (lower-case), and Tunnel unless "no".
SSH_FORWARD_KEYWORDS = frozenset({"remoteforward", "localforward", "dynamicforward", "tunnel"})
#: Dropbear's dbclient: options taking a value, and its forwards (-L, -R, -B netcat-alike).
DBCLIENT_OPTIONS_WITH_VALUE = frozenset("pliLRBJcmWKIobs")
DBCLIENT_FORWARDS = frozenset("LRB")


def ssh_options(args: Sequence[str], with_value: frozenset[str]) -> list[tuple[str, str]]:
    """(option letter, value or '') as ssh parses them: options before and after the destination, until
    the command (the first word after the destination that is not an option) or `--`."""
    out: list[tuple[str, str]] = []
    destination = False
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            break
        if len(arg) < 2 or not arg.startswith("-"):
            if destination:
                break  # the command: `ssh host ls -lR` runs `ls -lR`
            destination = True
            continue
        j = 1
        while j < len(arg):
            letter = arg[j]
            j += 1
            if letter in with_value:
                value = arg[j:]
                if not value and i < len(args):
                    value = args[i]
                    i += 1
                out.append((letter, value))
                break
            out.append((letter, ""))
    return out


def ssh_forward(args: Sequence[str], with_value: frozenset[str], forwards: frozenset[str]) -> str | None:
    """The first forwarding option (`-R 2222:localhost:22`, `-o RemoteForward ...`), or None."""
    for letter, value in ssh_options(args, with_value):
        if letter in forwards:
            return f"-{letter} {value}".rstrip()
        if letter == "o":
            key, _, rest = value.replace("=", " ", 1).strip().partition(" ")
            key = key.lower()
            setting = rest.strip().lower()
            if key in SSH_FORWARD_KEYWORDS and not (key == "tunnel" and setting in ("", "no")):
                return f"-o {value}"
    return None


# --- ncat / nc ------------------------------------------------------------------------------------

_NCAT_LONG = ("--exec", "--sh-exec", "--lua-exec")
#: ncat/nc short options that take a value (the rest of the word is that value).
_NCAT_WITH_VALUE = frozenset("pswixXqdgGimOPTV")


def ncat_exec(args: Sequence[str]) -> str | None:
    """ncat/nc/netcat running a program for the peer (-e, -c, --exec, --sh-exec, --lua-exec), or None."""
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            if arg.split("=", 1)[0] in _NCAT_LONG:
                return arg if "=" in arg else " ".join(args[i : i + 2])
            continue
        if not arg.startswith("-"):
            continue
        for letter in arg[1:]:
            if letter in "ec":
                return " ".join(args[i : i + 2])
            if letter in _NCAT_WITH_VALUE:
                break
    return None


# --- shells ---------------------------------------------------------------------------------------


def shell_or_interpreter(p: Process) -> str | None:
    """The shell or interpreter the process is (by any of its names), or None."""
    for n in names(p):
        if n in SHELLS:
            return n
        for prefix in INTERPRETER_PREFIXES:
            if n.startswith(prefix.lower()) and (len(n) == len(prefix) or n[len(prefix)] in _SUFFIX_START):
                return n
    return None
