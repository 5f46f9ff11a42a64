"""`SampleReader` returns what `Sample.model_validate_json` returns, and raises what it raises.

The reader validates a line in parts and reuses a pod's unchanged sections (see its module). These
tests hold it to the plain parse: on the example traces, on generated streams whose sections
repeat, change and break (broken values, broken JSON, repeated keys, unknown fields, other key
orders and spacing), a sample equal to the plain parse with the same fields-sets, or the same
errors.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from trainguard.api.sample import Sample
from trainguard.detection.reader import SampleReader
from trainguard.detection.trace import LineError, read_samples

from .samples import conn, gpu, listen, proc

TRACES = sorted((Path(__file__).parents[3] / "examples" / "traces").glob("*.jsonl"))


def fields_sets(model: Any) -> Any:
    """Every model's fields-set in a sample, nested as the sample is."""
    if isinstance(model, BaseModel):
        return (type(model).__name__, frozenset(model.model_fields_set), [fields_sets(v) for v in vars(model).values()])
    if isinstance(model, list):
        return [fields_sets(v) for v in model]
    return None


NAN = object()


def canonical(value: Any) -> Any:
    """`value` with models opened up and every NaN float made one marker, so that equal parses compare equal.

    A damaged line may carry `NaN`, which the parse accepts; NaN is never equal to itself, so the
    same error (or sample) from the two parsers would otherwise compare unequal.
    """
    if isinstance(value, BaseModel):
        return type(value).__name__, canonical(vars(value))
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(canonical(v) for v in value)
    if isinstance(value, float) and math.isnan(value):
        return NAN
    return value


def test_canonical_makes_nan_equal_and_keeps_differences() -> None:
    nan = float("nan")
    assert (nan,) != (float("nan"),)
    assert canonical(("error", [{"input": nan}])) == canonical(("error", [{"input": float("nan")}]))
    assert canonical([{"input": nan}]) != canonical([{"input": 1.0}])
    assert canonical(gpu(0, util=0.5)) != canonical(gpu(0, util=0.6))
    assert canonical(gpu(0, util=0.5)) == canonical(gpu(0, util=0.5))


def outcome(read: Any, line: str | bytes) -> tuple[str, Any]:
    """("ok", (sample, its fields-sets)) or ("error", the errors); compare two through `canonical`."""
    try:
        s = read(line)
    except ValidationError as err:
        return "error", (err.title, err.errors(include_url=False))
    return "ok", (s, fields_sets(s))


def test_the_example_traces_read_as_they_parse() -> None:
    reader = SampleReader()
    lines = 0
    for trace in TRACES:
        for line in trace.read_text().splitlines():
            if line.strip():
                lines += 1
                read, parsed = outcome(reader.read, line), outcome(Sample.model_validate_json, line)
                assert canonical(read) == canonical(parsed), (trace, line)
    assert lines > 1000


def dumps(obj: Any) -> str:
    """A line as the sensor writes it: compact."""
    return json.dumps(obj, separators=(",", ":"))


def test_unchanged_sections_are_shared_changed_ones_are_not() -> None:
    base = {
        "ts": 1.0,
        "pod": "ns/a",
        "seq": 1,
        "processes": [proc(1, "python3")],
        "listening": [listen(8080)],
        "connections": [conn("203.0.113.9:443")],
    }
    reader = SampleReader()
    a = reader.read(dumps(base))
    b = reader.read(dumps(base | {"ts": 2.0, "seq": 2}))
    assert b.processes is a.processes and b.listening is a.listening and b.connections is a.connections
    c = reader.read(dumps(base | {"ts": 3.0, "seq": 3, "connections": [conn("203.0.113.9:443", local_port=1)]}))
    assert c.processes is a.processes and c.connections is not a.connections
    assert c.connections[0].local.endswith(":1")
    # Another pod with the same contents shares nothing with the first.
    other = reader.read(dumps(base | {"pod": "ns/b"}))
    assert other.processes == a.processes and other.processes is not a.processes
    # A forgotten pod starts afresh.
    reader.forget("ns/a")
    assert reader.read(dumps(base)).processes is not a.processes
    # The default of an absent section is not a remembered one, and not in the fields-set.
    d = reader.read(dumps({k: v for k, v in base.items() if k != "listening"}))
    assert d.listening == [] and "listening" not in d.model_fields_set


def test_a_reader_remembers_a_bounded_number_of_pods() -> None:
    reader = SampleReader(max_pods=3)
    for i in range(10):
        reader.read(dumps({"ts": 1.0, "pod": f"ns/p{i}", "seq": 1, "processes": [proc(1, "x")]}))
        assert len(reader) <= 3


def test_a_line_not_written_compactly_is_parsed_whole() -> None:
    # Spaced, or a key repeated (its first value is never seen by pydantic when read in parts):
    # parsed the plain way, sharing nothing, and equal to the plain parse.
    base = {"ts": 1.0, "pod": "ns/a", "seq": 1, "processes": [proc(1, "python3")]}
    reader = SampleReader()
    first = reader.read(dumps(base) + "\n")
    assert reader.read(dumps(base)).processes is first.processes  # compact: shared
    spaced = json.dumps(base)
    assert reader.read(spaced).processes is not first.processes
    repeated = '{"processes":[{"pid":1,"name":"\\q"}],' + dumps(base)[1:]
    with pytest.raises(ValidationError, match="JSON"):
        Sample.model_validate_json(repeated)
    assert canonical(outcome(reader.read, repeated)) == canonical(outcome(Sample.model_validate_json, repeated))


def test_a_broken_section_raises_the_plain_parse_error_even_after_a_good_one() -> None:
    reader = SampleReader()
    good = {"ts": 1.0, "pod": "ns/a", "seq": 1, "listening": [listen(8080)]}
    reader.read(dumps(good))
    bad = dumps(good | {"listening": [listen(70000)]})
    with pytest.raises(ValidationError) as err:
        reader.read(bad)
    assert err.value.errors(include_url=False) == outcome(Sample.model_validate_json, bad)[1][1]
    assert err.value.errors()[0]["loc"] == ("listening", 0, "port")


def test_trace_reading_uses_the_reader_and_still_names_bad_lines() -> None:
    good = json.dumps({"ts": 1.0, "pod": "ns/a", "seq": 1, "processes": [proc(1, "x")]})
    items = list(read_samples([good, "{not json", good.replace('"seq": 1', '"seq": -1')], "t.jsonl"))
    assert [n for n, _ in items] == [1, 2, 3]
    assert isinstance(items[0][1], Sample)
    assert isinstance(items[1][1], LineError) and isinstance(items[2][1], LineError)
    assert "seq" in items[2][1].message


# --- generated streams ---------------------------------------------------------------------------

#: Small pools, so that a pod's sections repeat from line to line (the reuse path) and change.
PROCESS_LISTS = [
    [proc(1, "torchrun", "torchrun train.py", ppid=0), proc(27, "python3", "python3 -u train.py")],
    [proc(1, "torchrun", "torchrun train.py", ppid=0)],
    [],
    [proc(7, "xmrig", "./xmrig -o stratum+tcp://pool:3333") | {"uid": 1000}],
    [{"pid": "8", "name": "coerced pid"}],
    [{"pid": 9, "name": 5}],  # a name that is not a string
    [{"name": "no pid"}],
    "not a list",
    None,
]
LISTENER_LISTS = [[listen(29500)], [listen(29500), listen(9400)], [], [listen(-1)], [listen(8080) | {"extra": 1}]]
CONNECTION_LISTS = [
    [conn("203.0.113.9:443")],
    [conn("203.0.113.9:443"), conn("[2001:db8::1]:22", local_ip="fd00::5")],
    [],
    [{"proto": "tcp", "local": "10.0.0.1:1"}],  # no remote
    [conn("10.0.0.2:53", proto="udp") | {"pid": None}],
]
SECTION_POOLS = {"processes": PROCESS_LISTS, "listening": LISTENER_LISTS, "connections": CONNECTION_LISTS}

#: A line's other fields, right and wrong.
HEADS = [
    {"ts": 1767225600.5, "pod": "ns/a", "seq": 3},
    {"ts": 1767225601, "pod": "ns/a", "seq": 4, "gpus": [gpu(0)], "dcgm": {"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": 0.2}},
    {"ts": "1767225602.0", "pod": "ns/b", "seq": "5", "sensor": {"version": "0.1.0", "errors": ["no driver"]}},
    {"ts": 1.0, "pod": "ns/a", "seq": -1},
    {"ts": 1.0, "seq": 2},
    {"ts": 1.0, "pod": "ns/a", "seq": 2, "gpus": [gpu(0) | {"utilization": 2.0}]},
    {"ts": 1.0, "pod": "ns/a", "seq": 2, "unknown": {"nested": [1, 2, {"processes": "ignored"}]}},
    {"ts": 1.0, "pod": "ns/a", "seq": 2, "dcgm": {"DCGM_FI_PROF_SM_ACTIVE": "x"}},
]

#: One line: a head, each section from its pool or absent, in some key order, spaced some way.
line_parts = st.fixed_dictionaries(
    {
        "head": st.one_of(st.integers(0, 2), st.integers(0, len(HEADS) - 1)).map(HEADS.__getitem__),
        "sections": st.fixed_dictionaries(
            {
                # Mostly the well-formed entries at the front of each pool.
                name: st.one_of(st.none(), st.integers(0, 1), st.integers(0, 2), st.integers(0, len(pool) - 1))
                for name, pool in SECTION_POOLS.items()
            }
        ),
        "order": st.randoms(use_true_random=False),
        # Compact (read in parts) mostly; spaced (parsed whole) too.
        "separators": st.sampled_from([(",", ":"), (",", ":"), (",", ":"), (", ", ": "), (" ,\n", " :\t")]),
        # A key written twice (the first one loses) or not.
        "repeat": st.one_of(st.none(), st.sampled_from(["processes", "connections", "pod", "seq"])),
        # A broken line: bytes cut off, changed or put in at a position (as a fraction of the length).
        "damage": st.one_of(
            st.none(),
            st.none(),
            st.none(),
            st.tuples(
                st.sampled_from(["cut", "change", "insert"]),
                st.floats(min_value=0.0, max_value=1.0),
                st.sampled_from([b" ", b"}", b"]", b",", b'"', b"\\", b"0", b"\xff", b"\x00", b"NaN"]),
            ),
        ),
    }
)


def render(parts: dict[str, Any]) -> bytes:
    body: dict[str, Any] = dict(parts["head"])
    for name, index in parts["sections"].items():
        if index is not None:
            body[name] = SECTION_POOLS[name][index]
    keys = list(body)
    parts["order"].shuffle(keys)
    items = [(k, body[k]) for k in keys]
    if parts["repeat"] is not None:
        items.insert(0, (parts["repeat"], [proc(99, "loser")] if parts["repeat"] != "pod" else "ns/loser"))
    item_sep, key_sep = parts["separators"]
    text = "{" + item_sep.join(json.dumps(k) + key_sep + json.dumps(v) for k, v in items) + "}"
    data = text.encode()
    if parts["damage"] is not None:
        how, where, what = parts["damage"]
        at = int(where * len(data))
        if how == "cut":
            data = data[:at]
        elif how == "change":
            data = data[:at] + what + data[at + 1 :]
        else:
            data = data[:at] + what + data[at:]
    return data


#: A stream: lines, each either new or keeping the previous line's sections (with another head,
#: key order, spacing, damage), which is when the reader reuses them.
streams = st.lists(st.tuples(st.sampled_from([True, True, False]), line_parts), min_size=1, max_size=12)


@settings(max_examples=400, deadline=None)
@given(streams, st.booleans())
def test_a_stream_reads_exactly_as_each_line_parses(stream: list[tuple[bool, dict[str, Any]]], as_text: bool) -> None:
    reader = SampleReader()
    previous: dict[str, Any] | None = None
    for keep, drawn in stream:
        parts = drawn | {"sections": previous["sections"]} if keep and previous is not None else drawn
        previous = parts
        data = render(parts)
        line: str | bytes = data
        if as_text:
            try:
                line = data.decode()
            except UnicodeDecodeError:
                line = data
        assert canonical(outcome(reader.read, line)) == canonical(outcome(Sample.model_validate_json, line)), line


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=64))
def test_any_bytes_read_as_they_parse(data: bytes | str) -> None:
    assert canonical(outcome(SampleReader().read, data)) == canonical(outcome(Sample.model_validate_json, data))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ns/a", "ns/b"]),
            st.fixed_dictionaries({name: st.integers(0, len(pool) - 1) for name, pool in SECTION_POOLS.items()}),
        ),
        min_size=2,
        max_size=16,
    )
)
def test_compact_lines_share_exactly_the_sections_unchanged_since_the_pods_last_line(
    stream: list[tuple[str, dict[str, int]]],
) -> None:
    # The reuse path, on purpose: compact lines of two pods whose sections come from small pools
    # (well-formed and not), so that they repeat. Each line reads as it parses; a section is the
    # same list object as in the pod's last sample exactly when its bytes are those of the pod's
    # last line that was read (a refused line leaves nothing behind that could be shared).
    reader = SampleReader()
    last: dict[str, tuple[dict[str, int], Sample]] = {}
    for t, (pod, sections) in enumerate(stream):
        body = {"ts": float(t), "pod": pod, "seq": t} | {n: SECTION_POOLS[n][i] for n, i in sections.items()}
        line = dumps(body)
        got = outcome(reader.read, line)
        assert canonical(got) == canonical(outcome(Sample.model_validate_json, line))
        if got[0] != "ok":
            continue
        sample = got[1][0]
        if pod in last:
            before, previous = last[pod]
            for name in SECTION_POOLS:
                assert (getattr(sample, name) is getattr(previous, name)) == (before[name] == sections[name])
        last[pod] = (sections, sample)
