"""The sample's msgspec twin (`read_sample`) reads what pydantic reads, with the same values and errors.

The pydantic models are the contract; the twin is derived from them (`trainguard.api.wire`). Two
properties, on the example traces, on a sample using every model, and on generated lines (the
full sample mutated: values replaced by any JSON, keys dropped or added, snake_case names, NaN,
huge numbers, duplicate keys, truncation):

- whatever the twin's own decoder accepts, pydantic accepts, with the same values and types;
- `read_sample` and `parse_sample` agree on every line: the same sample, or the same error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, field_validator

from trainguard.api import wire
from trainguard.api.base import WireModel
from trainguard.api.sample import (
    Connection,
    Endpoint,
    GpuProcess,
    GpuProfile,
    GpuSample,
    ListeningSocket,
    ProcessInfo,
    Sample,
    SampleStruct,
    SensorError,
    SensorErrorKind,
    SensorInfo,
    StdStream,
    UnconnectedSocket,
    parse_sample,
    read_sample,
)

TRACES = Path(__file__).resolve().parents[2] / "examples" / "traces"
TWIN = msgspec.json.Decoder(SampleStruct)

FULL = Sample(
    ts=1767225600.25,
    pod="ns/worker-0",
    seq=7,
    gpus=[
        GpuSample(
            index=0,
            uuid="GPU-1",
            utilization=0.97,
            memory_used_bytes=2**36,
            memory_total_bytes=2**37,
            power_watts=612.5,
            sm_clock_mhz=1980,
            processes=[
                GpuProcess(pid=4821, name="python3", argv=["python3", "train.py"], exe="/usr/bin/python3.11"),
                GpuProcess(pid=4822, exe_status="unreadable", used_memory_bytes=1024),
            ],
            profile=GpuProfile(tensor_active=0.4, dram_active=0.2, sm_active=0.9, sm_occupancy=0.5),
        ),
        GpuSample(index=1, utilization=None, power_watts=None),
    ],
    processes=[
        ProcessInfo(
            pid=1,
            ppid=0,
            uid=0,
            name="bash",
            exe="/usr/bin/bash",
            argv=["bash", "-i"],
            container_id="containerd://abc",
            container="trainer",
            start_time=1767225000.5,
            cpu_seconds=3.25,
            stdin=StdStream(kind="socket", target="socket:[77]", inode=77),
            stdout=StdStream(kind="socket", target="socket:[77]", inode=77),
            stderr=StdStream(kind="pipe", target="pipe:[9]"),
        ),
        ProcessInfo(pid=2, exe_status="deleted", exe="/tmp/x (deleted)"),
    ],
    listening=[ListeningSocket(proto="tcp6", local=Endpoint(address="::", port=29500), pid=1, inode=5)],
    connections=[
        Connection(
            proto="tcp",
            local=Endpoint(address="10.0.0.5", port=41000),
            remote=Endpoint(address="203.0.113.9", port=443),
            state="TIME_WAIT",
            pid=None,
            inode=0,
            bytes_sent=10,
            bytes_received=20,
            first_seen=1767225500.0,
        )
    ],
    unconnected=[UnconnectedSocket(proto="packet", local=Endpoint(address=""), pid=2, inode=78)],
    dcgm={"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": 0.4, "DCGM_FI_DEV_GPU_UTIL": 97},
    sensor=SensorInfo(
        version="0.2.0",
        reader="netlink",
        errors=[SensorError(kind=SensorErrorKind.FD_CAP, message="budget"), SensorError(kind="gpu_read")],
    ),
)
FULL_LINE = FULL.model_dump_json(by_alias=True)


def same(model_value: Any, twin_value: Any, where: str = "sample") -> None:
    """The twin holds the model's values, field by field, with the same types."""
    if isinstance(model_value, BaseModel):
        assert type(twin_value).__name__ == f"{type(model_value).__name__}Struct", where
        for name in type(model_value).model_fields:
            same(getattr(model_value, name), getattr(twin_value, name), f"{where}.{name}")
    elif isinstance(model_value, list):
        assert isinstance(twin_value, list) and len(twin_value) == len(model_value), where
        for i, (m, t) in enumerate(zip(model_value, twin_value, strict=True)):
            same(m, t, f"{where}.{i}")
    elif isinstance(model_value, dict):
        assert isinstance(twin_value, dict) and list(twin_value) == list(model_value), where
        for k, m in model_value.items():
            same(m, twin_value[k], f"{where}.{k}")
    else:
        assert type(twin_value) is type(model_value), (where, model_value, twin_value)
        if isinstance(model_value, float) and math.isnan(model_value):
            assert math.isnan(twin_value), where
        else:
            assert twin_value == model_value, (where, model_value, twin_value)


def outcome(read: Any, line: str | bytes) -> tuple[Literal["ok"], Any] | tuple[Literal["error"], type, str]:
    try:
        return ("ok", read(line))
    except ValueError as err:  # pydantic.ValidationError, json.JSONDecodeError, UnicodeDecodeError
        return ("error", type(err), str(err))


def check(line: str | bytes) -> bool:
    """Both properties for one line; whether the twin's decoder took it."""
    slow = outcome(parse_sample, line)
    try:
        fast = TWIN.decode(line)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeError):
        fast = None
    if fast is not None:
        assert slow[0] == "ok", f"the twin accepted what pydantic refuses: {slow}"
        same(slow[1], fast)
    read = outcome(read_sample, line)
    assert read[0] == slow[0], (read, slow)
    if slow[0] == "ok":
        same(slow[1], read[1])
    else:
        assert read == slow
    return fast is not None


def test_every_model_is_in_the_full_sample_and_it_takes_the_fast_way() -> None:
    assert check(FULL_LINE)
    assert check(FULL_LINE.encode())
    seen = {type(v).__name__ for v in _walk(FULL)}
    assert {m.__name__ for m in (GpuProfile, GpuProcess, StdStream, UnconnectedSocket, SensorError)} <= seen


def _walk(value: Any) -> list[Any]:
    out = [value]
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            out.extend(_walk(getattr(value, name)))
    elif isinstance(value, list):
        for v in value:
            out.extend(_walk(v))
    return out


@pytest.mark.parametrize("trace", sorted(TRACES.glob("*.jsonl")), ids=lambda p: p.name)
def test_the_traces_read_alike(trace: Path) -> None:
    lines = [line for line in trace.read_bytes().splitlines() if line.strip()]
    fast = [check(line) for line in lines]
    versioned = ["version" in json.loads(line) for line in lines]
    assert fast == versioned  # version-2 lines take the fast way, version-1 lines the long way


@pytest.mark.parametrize(
    "line",
    [
        FULL_LINE.replace('"seq":7', '"seq":"7"'),  # pydantic coerces, the twin declines
        FULL_LINE.replace('"seq":7', '"seq":7.0'),
        FULL_LINE.replace('"seq":7', '"seq":7.5'),
        FULL_LINE.replace('"seq":7', '"seq":true'),
        FULL_LINE.replace('"seq":7', '"seq":-1'),
        FULL_LINE.replace('"seq":7', f'"seq":{2**70}'),
        FULL_LINE.replace('"ts":1767225600.25', '"ts":NaN'),
        FULL_LINE.replace('"ts":1767225600.25', '"ts":1e400'),
        FULL_LINE.replace('"port":443', '"port":65536'),
        FULL_LINE.replace('"utilization":0.97', '"utilization":1.0000001'),
        FULL_LINE.replace('"exeStatus":"deleted"', '"exe_status":"deleted"'),  # wire names only, for both
        FULL_LINE.replace('"state":"TIME_WAIT"', '"state":"LISTENING"'),
        FULL_LINE.replace('"kind":"fd_cap"', '"kind":"FD_CAP"'),
        FULL_LINE.replace('"version":2', '"version":1'),
        FULL_LINE.replace('"version":2', '"version":2.0'),
        FULL_LINE.replace('"version":2', '"version":null'),
        FULL_LINE.replace('"version":2,', ""),  # a version-1 line
        FULL_LINE.replace('{"version":2,', '{"version":2,"seq":8,'),  # a duplicate key: the last wins
        FULL_LINE.replace('"pod":"ns/worker-0"', '"pod":"\\ud800"'),  # a lone surrogate
        FULL_LINE.replace("ns/worker-0", "\ud800"),  # a lone surrogate in the text itself
        FULL_LINE[:-1],
        FULL_LINE + "x",
        " " + FULL_LINE + "\n",
        "[]",
        "null",
        "",
        b"\xff" + FULL_LINE.encode(),
    ],
)
def test_edges_read_alike(line: str | bytes) -> None:
    check(line)


def _paths(value: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key) in a JSON tree."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        out.append((value, key))
        _paths(child, out)
    return out


NAMES = sorted(
    {f.alias or n for m in (Sample, ProcessInfo, Connection, GpuSample, GpuProcess) for n, f in m.model_fields.items()}
    | {n for m in (Sample, ProcessInfo, Connection, GpuSample, GpuProcess) for n in m.model_fields}
)
PLAUSIBLE = st.sampled_from(
    [
        0,
        1,
        2,
        -1,
        65535,
        65536,
        0.5,
        1.0,
        1.5,
        -0.0,
        1e300,
        2**63,
        2**64,
        "",
        "2",
        "80",
        "1.5",
        "true",
        "tcp",
        "udp6",
        "ESTABLISHED",
        "SYN_SENT",
        "netlink",
        "none",
        "gpu_read",
        "ok",
        "deleted",
        "unknown",
        "socket",
        "10.0.0.1",
    ]
)
LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and infinities included: json.dumps writes them as tokens pydantic may take
    st.text(max_size=6),
    PLAUSIBLE,
)
JSON = st.recursive(
    LEAF, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=5
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_generated_lines_read_alike(data: st.DataObject) -> None:
    obj = json.loads(FULL_LINE)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        paths = _paths(obj, [])
        container, key = data.draw(st.sampled_from(paths), label="where")
        op = data.draw(st.sampled_from(["replace", "plausible", "delete", "add"]), label="op")
        if op == "delete":
            del container[key]
        elif op == "add" and isinstance(container, dict):
            container[data.draw(st.sampled_from(NAMES) | st.text(max_size=4), label="name")] = data.draw(JSON)
        else:
            container[key] = data.draw(PLAUSIBLE if op == "plausible" else JSON, label="value")
    check(json.dumps(obj, separators=(",", ":")))


# --- what the derivation refuses ---------------------------------------------------------------------------------


class _Validated(WireModel):
    x: int = 0

    @field_validator("x")
    @classmethod
    def _positive(cls, v: int) -> int:
        return abs(v)


class _Long(WireModel):
    name: str = Field(default="", max_length=3)


class _Pair(WireModel):
    pair: tuple[int, int] = (0, 0)


class _Open(BaseModel, extra="allow"):
    x: int = 0


class _Stripped(WireModel, str_strip_whitespace=True):
    name: str = ""


class _Closed(BaseModel, extra="forbid"):
    x: int = 0


@pytest.mark.parametrize(
    ("model", "why"),
    [
        (_Validated, "field_validators"),
        (_Long, "max_length"),
        (_Pair, "tuple"),
        (_Open, "extra='allow'"),
        (_Stripped, "str_strip_whitespace"),
    ],
)
def test_what_msgspec_would_check_differently_is_refused(model: type[BaseModel], why: str) -> None:
    with pytest.raises(TypeError, match=why):
        wire.twin(model)


def test_a_closed_model_has_a_closed_twin() -> None:
    decoder = msgspec.json.Decoder(wire.twin(_Closed))
    assert decoder.decode(b'{"x":1}').x == 1
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        decoder.decode(b'{"x":1,"y":2}')
