"""What the sensor writes is contract v2, and what the sensor changed in it (firstSeen) holds at the edge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from trainguard.api.sample import SAMPLE_VERSION, Connection, Endpoint, Sample, parse_sample, upgrade_v1
from trainguard.sensor import sockets

TRACES = Path(__file__).resolve().parents[3] / "examples" / "traces"


def _v2_line(**connection: object) -> str:
    c = {
        "proto": "tcp",
        "local": {"address": "10.0.0.5", "port": 40000},
        "remote": {"address": "10.0.0.9", "port": 443},
    }
    c |= {"state": "ESTABLISHED", **connection}
    return json.dumps({"version": 2, "ts": 10.0, "pod": "a/b", "seq": 0, "connections": [c]})


def test_a_connection_says_when_it_was_first_seen_not_an_age_that_changes_every_tick() -> None:
    sample = parse_sample(_v2_line(firstSeen=4.5, bytesSent=10, bytesReceived=20))
    conn = sample.connections[0]
    assert (conn.first_seen, conn.bytes_sent, conn.bytes_received) == (4.5, 10, 20)
    assert sample.ts - (conn.first_seen or 0) == 5.5  # the age at this sample
    assert "ageSeconds" not in Connection.model_json_schema(by_alias=True)["properties"]


def test_closed_sets_name_the_field() -> None:
    with pytest.raises(ValidationError, match=r"connections\.0\.state"):
        parse_sample(_v2_line(state="LISTENING"))
    with pytest.raises(ValidationError, match=r"connections\.0\.proto"):
        parse_sample(_v2_line(proto="quic"))


def test_what_the_sensor_builds_round_trips_through_the_edge() -> None:
    entry = sockets.SocketEntry("udp6", "::1", 40000, "::1", 53, 1, 77)
    obj = sockets.to_object(entry, 9, None, 1.5)
    assert obj == Connection(
        proto="udp6",
        local=Endpoint(address="::1", port=40000),
        remote=Endpoint(address="::1", port=53),
        state="ESTABLISHED",
        pid=9,
        inode=77,
        first_seen=1.5,
    )
    sample = Sample(ts=2.0, pod="a/b", seq=0, connections=[obj])
    assert parse_sample(sample.model_dump_json(by_alias=True)) == sample
    assert sample.version == SAMPLE_VERSION


#: The version-1 traces (a recorded version-2 trace, with its first sightings, is not one).
V1_TRACES = [p for p in sorted(TRACES.glob("*.jsonl")) if "version" not in json.loads(p.read_text().split("\n", 1)[0])]


@pytest.mark.parametrize("trace", V1_TRACES, ids=lambda p: p.name)
def test_version_1_traces_still_parse_with_no_first_sighting(trace: Path) -> None:
    for line in trace.read_bytes().splitlines()[:5]:
        sample = parse_sample(line)
        assert all(c.first_seen is None for c in sample.connections)
        assert upgrade_v1(json.loads(line))["version"] == SAMPLE_VERSION
