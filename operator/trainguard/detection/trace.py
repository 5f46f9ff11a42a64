"""Recorded traces: JSON Lines, one sample a line, version 1 or 2. Parsing happens here, at the edge.

A version-1 line (no `version` field) is converted by `trainguard.api.sample.upgrade_v1`; nothing
behind this module sees version 1. A malformed line is reported with its line number and skipped;
it never stops the reading (nor the engine). Blank lines are skipped silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pydantic import ValidationError

from trainguard.api import validation
from trainguard.api.sample import Sample, read_sample


@dataclass(frozen=True, slots=True)
class LineError:
    """A line of a trace that is not a sample."""

    source: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.message}"


def describe(err: ValidationError) -> str:
    """A pydantic error as one line: `field.path: message` for each problem (at most three)."""
    parts = validation.describe(err)
    more = len(parts) - 3
    return "; ".join(parts[:3]) + (f" (and {more} more)" if more > 0 else "")


def read_samples(lines: Iterable[str | bytes], source: str) -> Iterator[tuple[int, Sample | LineError]]:
    """(line number, sample or error) for each non-blank line."""
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            yield number, read_sample(text)
        except ValidationError as err:
            yield number, LineError(source, number, describe(err))
        except ValueError as err:  # not JSON (json.JSONDecodeError), not UTF-8 (UnicodeDecodeError)
            yield number, LineError(source, number, f"not a JSON sample: {err}")
