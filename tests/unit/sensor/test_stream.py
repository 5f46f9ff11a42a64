from __future__ import annotations

import threading

from trainguard.api.sample import Sample
from trainguard.sensor.stream import SampleHub


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
