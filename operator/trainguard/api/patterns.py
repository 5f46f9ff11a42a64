"""The policy's process pattern language, compiled with RE2 (linear time on any input).

A pattern is either a shell-style glob (`*`, `?`, `[...]`, case-insensitive) or, after `re:`, a
regular expression in RE2 syntax. Patterns run on text the workload writes (its executable's path,
its name, its arguments), so they are compiled with RE2 (`google-re2`), whose matching time is
linear in the input whatever the pattern: `re:(a|aa)+$` cannot stall the engine. Python's `re` is
never used on such text. RE2 refuses what it cannot run in linear time (backreferences,
lookaround): such a pattern is invalid, and the API model refuses it naming the field.

Where each kind of pattern is matched (the allow-lists against the executable, the denied list
against everything the process shows) is the detection engine's business: docs/detection.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import re2

REGEX_PREFIX = "re:"


def _options(case_sensitive: bool) -> Any:
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = case_sensitive
    options.dot_nl = True
    return options


def glob_to_re2(glob: str) -> str:
    """A shell glob as an RE2 pattern for the whole text: `*` any run, `?` one character, `[...]` a class
    (`[!...]` negated), everything else literal."""
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i
            if j < n and glob[j] in "!^":
                j += 1
            if j < n and glob[j] == "]":
                j += 1
            while j < n and glob[j] != "]":
                j += 1
            if j >= n:
                out.append(re2.escape("["))  # an unclosed bracket is a literal, as in fnmatch
                continue
            body = glob[i:j]
            i = j + 1
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            body = body.replace("\\", "\\\\").replace("[", "\\[")
            out.append(f"[{'^' if negate else ''}{body}]")
        else:
            out.append(re2.escape(c))
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Pattern:
    """One compiled pattern and the text it was written as (kept for evidence)."""

    text: str
    #: True for a glob (matches a whole text), False for `re:` (searched in a text).
    is_glob: bool
    regex: Any

    def matches(self, text: str) -> bool:
        """Whether the pattern matches this text: a glob the whole of it, a regular expression anywhere in it."""
        if self.is_glob:
            return self.regex.fullmatch(text) is not None
        return self.regex.search(text) is not None


def _why(err: Exception) -> str:
    arg = err.args[0] if err.args else err
    return arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)


def compile_pattern(text: str) -> Pattern:
    """Compile one pattern; raises ValueError saying why when it is not valid."""
    if text.startswith(REGEX_PREFIX):
        source = text[len(REGEX_PREFIX) :]
        if not source:
            raise ValueError(f"pattern {text!r}: an empty regular expression")
        try:
            return Pattern(text, False, re2.compile(source, _options(case_sensitive=True)))
        except re2.error as err:
            raise ValueError(f"pattern {text!r} is not a valid RE2 regular expression: {_why(err)}") from err
    if not text:
        raise ValueError("an empty pattern")
    try:
        return Pattern(text, True, re2.compile(glob_to_re2(text), _options(case_sensitive=False)))
    except re2.error as err:  # a class such as [z-a]
        raise ValueError(f"pattern {text!r} is not a valid glob: {_why(err)}") from err


def check_pattern(text: str) -> str:
    """A pydantic validator: the pattern itself, or ValueError when it does not compile."""
    compile_pattern(text)
    return text
