"""The edges: endpoints as the sensor writes them, trace lines, evidence summaries, escalation alone."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainguard.api.v1alpha1 import EnforcementPolicy
from trainguard.detection.endpoints import parse_endpoint
from trainguard.detection.escalation import Standing, choose_action
from trainguard.detection.trace import LineError, read_samples
from trainguard.detection.violation import summarize


@pytest.mark.parametrize(
    ("text", "ip", "port"),
    [
        ("10.0.0.1:443", "10.0.0.1", 443),
        ("[2001:db8::1]:22", "2001:db8::1", 22),
        ("[::ffff:10.0.0.1]:80", "10.0.0.1", 80),
        ("[fe80::1%eth0]:53", "fe80::1", 53),
    ],
)
def test_endpoints(text: str, ip: str, port: int) -> None:
    ep = parse_endpoint(text)
    assert (str(ep.ip), ep.port) == (ip, port)


@pytest.mark.parametrize("text", ["2001:db8::1:22", "host:80", "10.0.0.1", "10.0.0.1:99999", "[::1]80", "*:*"])
def test_bad_endpoints(text: str) -> None:
    with pytest.raises(ValueError, match=r"not an endpoint|does not appear"):
        parse_endpoint(text)


@given(st.ip_addresses(), st.integers(min_value=0, max_value=65535))
def test_endpoints_round_trip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> None:
    text = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    ep = parse_endpoint(text)
    assert ep.port == port
    expected = ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else ip
    assert ep.ip == expected


def test_trace_lines_bad_ones_are_reported_with_their_number_and_skipped() -> None:
    lines = [
        '{"ts": 1, "pod": "a/b", "seq": 0, "futureField": {"x": 1}}',  # unknown fields are ignored
        "",
        "{oops",
        '{"ts": 2, "pod": "a/b", "seq": -1}',
        '{"ts": 3, "pod": "a/b", "seq": 1, "connections": [{"proto": "tcp", "local": "[::1]:1", "remote": "[::1]:2"}]}',
    ]
    items = list(read_samples(lines, "t.jsonl"))
    assert [n for n, _ in items] == [1, 3, 4, 5]
    errors = [i for _, i in items if isinstance(i, LineError)]
    assert [(e.line, e.source) for e in errors] == [(3, "t.jsonl"), (4, "t.jsonl")]
    assert "seq" in errors[1].message
    assert str(errors[0]).startswith("t.jsonl:3: ")


def test_summary_is_one_bounded_line() -> None:
    assert summarize({"a": 1, "b": 0.123456, "c": ["x", "y"], "d": None}) == "a=1 b=0.123 c=x,y d=None"
    assert len(summarize({"cmdline": "x" * 10000}, limit=100)) == 100


def test_escalation_without_steps_is_the_base_action() -> None:
    s = Standing(persisted_seconds=1e9, occurrences=100, distinct_rules=10, severity="Critical")
    assert choose_action(EnforcementPolicy(action="Quarantine"), s) == "Quarantine"


def test_escalation_all_conditions_of_a_step_must_hold() -> None:
    enf = EnforcementPolicy.model_validate(
        {"escalation": [{"action": "Suspend", "persistsSeconds": 60, "minSeverity": "High"}]}
    )
    assert (
        choose_action(enf, Standing(persisted_seconds=61, occurrences=1, distinct_rules=1, severity="Medium"))
        == "Alert"
    )
    assert (
        choose_action(enf, Standing(persisted_seconds=59, occurrences=1, distinct_rules=1, severity="High")) == "Alert"
    )
    assert (
        choose_action(enf, Standing(persisted_seconds=60, occurrences=1, distinct_rules=1, severity="High"))
        == "Suspend"
    )
