from __future__ import annotations

import threading

from trainguard.api.sample import (
    Connection,
    Endpoint,
    GpuProcess,
    GpuSample,
    ListeningSocket,
    ProcessInfo,
    Sample,
    SensorError,
    SensorInfo,
    StdStream,
    UnconnectedSocket,
)
from trainguard.sensor.stream import SampleEncoder, SampleHub


def sample(seq: int) -> Sample:
    return Sample(ts=float(seq), pod="a/b", seq=seq)


def test_a_slow_reader_loses_its_oldest_lines_and_blocks_nobody() -> None:
    hub = SampleHub(queue_size=3)
    slow = hub.subscribe()
    fast = hub.subscribe()
    assert slow is not None and fast is not None
    seen_fast: list[bytes] = []
    for seq in range(10):
        hub.publish(sample(seq))
        seen_fast += fast.take(timeout=0)
    assert len(seen_fast) == 10
    kept = slow.take(timeout=0)
    assert [Sample.model_validate_json(line).seq for line in kept] == [7, 8, 9]
    assert slow.dropped == 7


def test_a_new_reader_starts_with_the_latest_sample() -> None:
    hub = SampleHub()
    assert hub.latest_line is None and hub.seconds_since_publish() is None
    hub.publish(sample(4))
    sub = hub.subscribe()
    assert sub is not None
    assert Sample.model_validate_json(sub.take(timeout=0)[0]).seq == 4


def test_reader_count_is_capped() -> None:
    hub = SampleHub(max_subscribers=2)
    a, b = hub.subscribe(), hub.subscribe()
    assert hub.subscribe() is None
    assert a is not None and b is not None
    hub.unsubscribe(a)
    assert hub.subscribe() is not None


def test_close_wakes_waiting_readers() -> None:
    hub = SampleHub()
    sub = hub.subscribe()
    assert sub is not None
    got: list[list[bytes]] = []
    reader = threading.Thread(target=lambda: got.append(sub.take(timeout=30)))
    reader.start()
    hub.close()
    reader.join(5)
    assert not reader.is_alive() and got == [[]] and sub.closed


def _encoder_pool() -> tuple[list[ProcessInfo], list[ListeningSocket], list[Connection]]:
    procs = [
        ProcessInfo(
            pid=p,
            ppid=1,
            name=f"w{p}",
            argv=["python", "tr\u00e4in.py", "--rank", str(p), '"q"'],
            exe="/usr/bin/python3",
            uid=p % 3,
            cpu_seconds=p * 1.5,
            stdin=StdStream(kind="socket", target="socket:[77]", inode=77) if p == 3 else None,
        )
        for p in range(8)
    ]
    listening = [
        ListeningSocket(proto="tcp6", local=Endpoint(address="::", port=9400 + n), pid=n or None) for n in range(4)
    ]
    conns = [
        Connection(
            proto="tcp",
            local=Endpoint(address="10.0.0.5", port=40000 + n),
            remote=Endpoint(address="2001:db8::1", port=22),
            state="ESTABLISHED",
            pid=n,
            bytes_sent=n * 1000,
            first_seen=1.7e9 + n / 3,
        )
        for n in range(6)
    ]
    return procs, listening, conns


def test_encoder_writes_what_pydantic_writes_as_items_come_go_and_repeat() -> None:
    procs, listening, conns = _encoder_pool()
    encoder = SampleEncoder()
    gpu = GpuSample(index=0, uuid="GPU-1", utilization=0.5, sm_clock_mhz=1410, processes=[GpuProcess(pid=4, name="w4")])
    samples = [
        Sample(ts=0.0, pod="a/b", seq=0),
        Sample(ts=1.25, pod="a/b", seq=1, processes=procs[:4], listening=listening, connections=conns[:3]),
        Sample(ts=2.5, pod="a/b", seq=2, processes=procs[:4], listening=listening, connections=conns[:3]),  # same
        Sample(ts=3.0, pod="a/b", seq=3, processes=procs[1:5], listening=listening[::-1], connections=conns[2:]),
        Sample(ts=4.0, pod="a/b", seq=4, processes=[procs[0], procs[0]], gpus=[gpu], dcgm={"x": 1.5}),
        # Equal to earlier items but other objects: still right.
        Sample(ts=5.0, pod="a/b", seq=5, processes=[p.model_copy() for p in procs[:4]], connections=conns[:3]),
        Sample(
            ts=1e16,
            pod='n\u00e4me/"q"',
            seq=6,
            processes=procs,
            sensor=SensorInfo(version="1", reader="netlink", errors=[SensorError(kind="proc_read", message="x")]),
        ),
        Sample(ts=7.0, pod="a/b", seq=7, unconnected=[UnconnectedSocket(proto="icmp", local=Endpoint(address="::"))]),
    ]
    for sample in samples:
        assert encoder.encode(sample) == sample.model_dump_json(by_alias=True).encode()


def test_encoder_reuses_the_json_of_an_unchanged_list() -> None:
    procs, listening, conns = _encoder_pool()
    encoder = SampleEncoder()
    first = Sample(ts=1.0, pod="a/b", seq=1, processes=procs, listening=listening, connections=conns)
    encoder.encode(first)
    cached = encoder._lists["connections"][2]
    again = Sample(ts=2.0, pod="a/b", seq=2, processes=procs, listening=listening, connections=conns)
    assert encoder.encode(again) == again.model_dump_json(by_alias=True).encode()
    assert encoder._lists["connections"][2] is cached
    # One item replaced by another: only it is serialised; the others' JSON is reused.
    changed = [*conns[:-1], conns[-1].model_copy(update={"state": "CLOSE_WAIT"})]
    third = Sample(ts=3.0, pod="a/b", seq=3, processes=procs, listening=listening, connections=changed)
    assert encoder.encode(third) == third.model_dump_json(by_alias=True).encode()
    assert b"CLOSE_WAIT" in encoder._lists["connections"][2]


def test_hub_publishes_the_encoders_line() -> None:
    procs, listening, conns = _encoder_pool()
    hub = SampleHub()
    for seq in range(3):
        s = Sample(ts=float(seq), pod="a/b", seq=seq, processes=procs[seq:], listening=listening, connections=conns)
        hub.publish(s)
        assert hub.latest_line == s.model_dump_json(by_alias=True).encode() + b"\n"
