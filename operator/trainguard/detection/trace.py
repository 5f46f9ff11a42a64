"""Recorded traces: JSON Lines, one `Sample` a line. Parsing happens here, at the edge.

A malformed line is reported with its line number and skipped; it never stops the reading (nor
the engine). Blank lines are skipped silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pydantic import ValidationError

from trainguard.api import validation
from trainguard.api.sample import Sample
from trainguard.detection.reader import SampleReader


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
    """(line number, sample or error) for each non-blank line.

    Lines are read by a `SampleReader`: each sample is the one `Sample.model_validate_json`
    returns, and a pod's sections that did not change since its previous line are that line's
    (shared, read-only).
    """
    reader = SampleReader()
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            yield number, reader.read(text)
        except ValidationError as err:
            yield number, LineError(source, number, describe(err))
