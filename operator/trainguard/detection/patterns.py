"""Process patterns: the `ProcessPolicy` pattern language, compiled, and the shipped default list.

A pattern is a shell-style glob, matched case-insensitively against the process name and against
the whole command line; a pattern that starts with `re:` is a regular expression searched in the
command line (as written: add `(?i)` for case-insensitivity). Matching is cached per (name,
command line), because the same processes are seen again at every tick.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

REGEX_PREFIX = "re:"

#: The executable at the start of a command line or after a path separator or a shell word break,
#: so that `/opt/x/xmrig --donate-level 1` and `sh -c ./xmrig` both name `xmrig`.
_EXE = r"(?:^|[\s/;&|'\"])"


def _exe(names: str) -> str:
    """A regex pattern for an executable named one of `names` (a regex alternation) in a cmdline."""
    return f"re:(?i){_EXE}(?:{names})[\\w.-]*(?:\\s|$)"


#: Known GPU/CPU miners, by name (glob) and as the executable in a command line (regex).
MINER_NAMES: tuple[str, ...] = (
    "xmrig",
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
)

#: Mining pool URLs in a command line: any miner, however it is named, that is given a pool.
STRATUM = r"re:(?i)\bstratum2?\+(?:tcp|ssl|tls)://"

#: Tunnel tools by name, the executable in a command line, and the tunnel-making uses of ssh,
#: socat and ncat. These are also what `net.tunnel` looks for in the process list.
TUNNEL_NAMES: tuple[str, ...] = ("ngrok", "chisel", "frpc", "autossh")
#: ssh with a port forward (-R remote, -L local, -D dynamic SOCKS) or a tun device (-w), options
#: possibly combined (`-fNR`).
SSH_FORWARD = r"re:(?:^|[\s/;&|])ssh\s(?:[^|;&]*\s)?-[A-Za-z]*[RLDw]"
#: socat with an EXEC: or SYSTEM: address: a shell on a socket.
SOCAT_EXEC = r"re:(?i)(?:^|[\s/;&|])socat\s.*\b(?:exec|system):"
#: ncat / nc / netcat executing a program for the peer (-e, -c, --exec, --sh-exec, --lua-exec).
NCAT_EXEC = r"re:(?i)(?:^|[\s/;&|])(?:ncat|nc|netcat)\s(?:.*\s)?(?:-e|-c|--exec|--sh-exec|--lua-exec)(?:\s|=|$)"
#: cloudflared's quick tunnels (`cloudflared tunnel --url ...`) publish a local port to the internet.
CLOUDFLARED = r"re:(?i)(?:^|[\s/;&|])cloudflared\s(?:.*\s)?tunnel\b"


def _names_alternation(names: Iterable[str]) -> str:
    return "|".join(re.escape(n) for n in names)


DEFAULT_TUNNEL_PATTERNS: tuple[str, ...] = (
    *TUNNEL_NAMES,
    _exe(_names_alternation(TUNNEL_NAMES)),
    SSH_FORWARD,
    SOCAT_EXEC,
    NCAT_EXEC,
    CLOUDFLARED,
)

DEFAULT_MINER_PATTERNS: tuple[str, ...] = (
    *(f"{n}*" for n in MINER_NAMES),
    _exe(_names_alternation(MINER_NAMES)),
    STRATUM,
)

#: The shipped default denied list (`ProcessPolicy.useDefaultDenied`).
DEFAULT_DENIED: tuple[str, ...] = (*DEFAULT_MINER_PATTERNS, *DEFAULT_TUNNEL_PATTERNS)


@dataclass(frozen=True, slots=True)
class Pattern:
    """One compiled pattern and the text it was written as (kept for evidence)."""

    text: str
    regex: re.Pattern[str]
    #: True for a glob (matched against name and whole cmdline), False for `re:` (searched in cmdline).
    is_glob: bool

    def matches(self, name: str, cmdline: str) -> bool:
        if self.is_glob:
            return self.regex.match(name) is not None or self.regex.match(cmdline) is not None
        return self.regex.search(cmdline) is not None


def compile_pattern(text: str) -> Pattern:
    """Compile one pattern; raises `ValueError` naming the pattern when a `re:` pattern is invalid."""
    if text.startswith(REGEX_PREFIX):
        try:
            return Pattern(text, re.compile(text[len(REGEX_PREFIX) :]), is_glob=False)
        except re.error as err:
            raise ValueError(f"pattern {text!r} is not a valid regular expression: {err}") from err
    return Pattern(text, re.compile(fnmatch.translate(text), re.IGNORECASE | re.DOTALL), is_glob=True)


class PatternSet:
    """An ordered set of patterns with a bounded cache of (name, cmdline) -> first matching pattern."""

    #: Entries kept before the cache is emptied; bounds memory against an endless stream of new cmdlines.
    CACHE_LIMIT = 8192

    __slots__ = ("_cache", "patterns")

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns: tuple[Pattern, ...] = tuple(compile_pattern(p) for p in patterns)
        self._cache: dict[tuple[str, str], Pattern | None] = {}

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def first_match(self, name: str, cmdline: str) -> Pattern | None:
        """The first pattern that matches the process, or None."""
        key = (name, cmdline)
        try:
            return self._cache[key]
        except KeyError:
            pass
        found = next((p for p in self.patterns if p.matches(name, cmdline)), None)
        if len(self._cache) >= self.CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = found
        return found
