"""The edges: endpoints as the sensor writes them, trace lines, evidence summaries, escalation alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from trainguard.api.v1alpha1 import EnforcementPolicy
from trainguard.detection.endpoints import parse_ip
from trainguard.detection.escalation import Standing, choose_action
from trainguard.detection.trace import LineError, read_samples
from trainguard.detection.violation import summarize


@pytest.mark.parametrize(
    ("text", "ip"),
    [("10.0.0.1", "10.0.0.1"), ("::ffff:10.0.0.1", "10.0.0.1"), ("fe80::1%eth0", "fe80::1"), ("::1", "::1")],
)
def test_addresses_parse_unmapped_and_without_zone(text: str, ip: str) -> None:
    parsed = parse_ip(text)
    assert parsed is not None and str(parsed) == ip


@pytest.mark.parametrize("text", ["", "example.com", "10.0.0.256", "1.2.3.4:80"])
def test_what_is_not_an_address_is_none(text: str) -> None:
    assert parse_ip(text) is None


def test_trace_lines_bad_ones_are_reported_with_their_number_and_skipped() -> None:
    lines = [
        '{"ts": 1, "pod": "a/b", "seq": 0, "futureField": {"x": 1}}',  # unknown fields are ignored
        "",
        "{oops",
        '{"ts": 2, "pod": "a/b", "seq": -1}',
        '{"ts": 3, "pod": "a/b", "seq": 1, "connections": [{"proto": "tcp", "local": "[::1]:1", "remote": "[::1]:2"}]}',
        '{"version": 3, "ts": 4, "pod": "a/b", "seq": 2}',
    ]
    items = list(read_samples(lines, "t.jsonl"))
    assert [n for n, _ in items] == [1, 3, 4, 5, 6]
    errors = [i for _, i in items if isinstance(i, LineError)]
    # Line 5 is version 1 (no version) and converted; line 6 names a version that does not exist.
    assert [(e.line, e.source) for e in errors] == [(3, "t.jsonl"), (4, "t.jsonl"), (6, "t.jsonl")]
    assert "version" in errors[2].message
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


def test_no_python_re_runs_in_detection() -> None:
    """Patterns run on text the workload writes: RE2 only. Python's `re` (and `fnmatch`, built on it)
    backtracks, so neither may be imported by detection or the pattern module."""
    root = Path(__file__).resolve().parents[3] / "operator" / "trainguard"
    files = [*(root / "detection").rglob("*.py"), root / "api" / "patterns.py"]
    assert len(files) > 10
    offenders = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("re", "fnmatch")]
    assert offenders == []
