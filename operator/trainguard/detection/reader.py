"""Reading a pod's stream of sample lines: what `Sample.model_validate_json` returns, for less.

A pod's processes, listeners and connections rarely change from one sampling tick to the next;
its time, seq, GPU readings and DCGM metrics change at every one. Parsing a whole line with
pydantic costs about three times what its changing part costs, so `SampleReader` splits the line
at its top level first (msgspec's C scanner, which hands each top-level value back as its raw
bytes without decoding it) and then:

- validates everything but the three slow-changing sections with pydantic, as one JSON object;
- for each of `processes`, `listening` and `connections`: when its bytes are those of the same
  pod's previous sample, takes that sample's parsed list (the same list object, shared); else
  validates it with pydantic.

**The same result, exactly.** The sample returned is equal to `Sample.model_validate_json(line)`,
field for field, fields-set included, and a line that the model refuses raises the model's own
`ValidationError` for the whole line (the reader then parses the line the ordinary way, so the
message and its locations are those of a plain parse). Only a line written compactly (its top-level
object as msgspec writes it back, byte for byte: how the sensor and `model_dump_json` write
samples; a trailing newline is fine) is read in parts; any other (spaced, a key repeated or spelled
with escapes) is parsed whole. In a compact line every byte is checked by pydantic, by msgspec's
scanner (the top-level braces, keys and commas) or, for a section whose bytes are unchanged, was
accepted by pydantic in an earlier line: a JSON value's meaning does not depend on what surrounds
it. `tests/unit/detection/test_reader.py` checks the equivalence on generated lines, broken ones
included.

**Shared sections.** Samples from one reader share unchanged sections: the list objects are the
same. Samples are frozen models and nothing in trainguard changes a list it is given; a caller
must not either. The detection engine notices shared sections (`Engine.observe`'s fast path),
which is where most of the saving is: a pod whose contents did not change costs it one identity
test per section instead of a comparison of every field.

One reader reads any number of pods; it remembers one line's sections per pod, for at most
`max_pods` pods (then it starts afresh: correct, slower for a tick). `forget(pod)` drops a pod.
"""

from __future__ import annotations

from typing import Any

import msgspec
from pydantic import TypeAdapter, ValidationError

from trainguard.api.sample import Connection, ListeningSocket, ProcessInfo, Sample

#: The top level of a line: each key's value as raw JSON bytes (scanned, not decoded).
_TOP = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ENCODE = msgspec.json.Encoder().encode
#: The sections validated on their own (and reused when unchanged), in the model's field order.
SECTIONS: tuple[tuple[str, TypeAdapter[Any]], ...] = (
    ("processes", TypeAdapter(list[ProcessInfo])),
    ("listening", TypeAdapter(list[ListeningSocket])),
    ("connections", TypeAdapter(list[Connection])),
)
_NAMES = tuple(name for name, _ in SECTIONS)
assert all(Sample.model_fields[n].alias == n for n in _NAMES), "a section's JSON key is not its field name"

#: A pod's remembered sections: for each of `SECTIONS`, the raw bytes last read and their parse.
_Known = list[tuple[msgspec.Raw, list[Any]] | None]


class SampleReader:
    """Parse sample lines (JSON, one sample each) as `Sample.model_validate_json` does, reusing
    the parse of a section that is byte for byte the one in the same pod's previous line."""

    __slots__ = ("_known", "max_pods")

    def __init__(self, max_pods: int = 10_000) -> None:
        self.max_pods = max_pods
        self._known: dict[str, _Known] = {}

    def read(self, line: str | bytes) -> Sample:
        """One sample from one line; raises pydantic's `ValidationError` as the model would."""
        try:
            data = line if isinstance(line, bytes) else line.encode()
            top = _TOP.decode(data)
        except (msgspec.MsgspecError, ValueError):
            # Not an object, not JSON, not UTF-8 (UnicodeError): the model says so in its own
            # words (or, were msgspec ever stricter than pydantic-core about a line, parses it).
            return Sample.model_validate_json(line)
        if not data.startswith(_ENCODE(top)):
            # Only a line that is its top-level object written compactly (as the sensor and
            # `model_dump_json` write samples; a newline may follow) is read in parts: such a line
            # repeats no key, and a repeated key's first value, which the decoding above skips
            # over unchecked, is all that pydantic would not see. Any other line is parsed whole.
            return Sample.model_validate_json(line)
        raws = [top.pop(name, None) for name in _NAMES]
        try:
            sample = Sample.model_validate_json(_ENCODE(top))
        except ValidationError:
            return Sample.model_validate_json(line)  # the error located in the whole line
        known = self._known.get(sample.pod)
        if known is None:
            if len(self._known) >= self.max_pods:
                self._known.clear()
            known = self._known[sample.pod] = [None] * len(SECTIONS)
        # Each present section as (index, (raw bytes, parse)): the remembered entry when the bytes
        # are unchanged, a new one otherwise.
        entries: list[tuple[int, tuple[msgspec.Raw, list[Any]]]] = []
        for i, raw in enumerate(raws):
            if raw is None:
                continue  # absent: the default (an empty list), not in the fields set, as a parse leaves it
            seen = known[i]
            if seen is None or seen[0] != raw:
                try:
                    seen = (raw, SECTIONS[i][1].validate_json(bytes(raw)))
                except ValidationError:
                    return Sample.model_validate_json(line)  # and nothing of the line is remembered
            entries.append((i, seen))
        # The sample is new and nobody else holds it: its sections are filled in place, as a
        # parse of the whole line would have filled them (frozen models are frozen to callers).
        fields = sample.__dict__
        fields_set = sample.__pydantic_fields_set__
        for i, entry in entries:
            name = _NAMES[i]
            fields[name] = entry[1]
            fields_set.add(name)
            known[i] = entry
        return sample

    def forget(self, pod: str) -> None:
        """Drop what is remembered of a pod (it is gone)."""
        self._known.pop(pod, None)

    def __len__(self) -> int:
        """Pods remembered."""
        return len(self._known)
