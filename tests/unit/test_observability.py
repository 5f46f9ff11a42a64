"""The alerts and the dashboard query only what the project exports, and promtool agrees.

Every PromQL expression shipped (charts/trainguard/files/prometheus-rules.yaml, the generated dashboard JSON, its
variables' selectors) is parsed with promql-parser; each selector must name a series of the operator's contract
(trainguard.api.metrics) or one the sensor's real registry renders, each label matcher a label the series has (or a
target label Prometheus adds), and each value of a closed label set a value the contract lists. Then promtool parses
every expression (as recording rules: `promtool check rules`) and runs the alerts' unit tests.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import promql_parser
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from trainguard.api import metrics, sample
from trainguard.detection import rules
from trainguard.sensor.metrics import SensorMetrics

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "trainguard"
RULES = CHART / "files" / "prometheus-rules.yaml"
DASHBOARD = CHART / "files" / "dashboards" / "trainguard.json"
PROMTOOL_TESTS = ROOT / "tests" / "promtool" / "alerts_test.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"
TRACE = ROOT / "examples" / "traces" / "profiled-training.jsonl"  # its GPUs have a profile: all families render

#: Labels Prometheus puts on every series of a target: the scrape job and instance, the Kubernetes service
#: discovery's namespace, pod, container, service and endpoint, and the two the chart's ServiceMonitor copies from
#: the Service (targetLabels) and its PodMonitor sets. For the operator's metrics, honorLabels keeps their own
#: `namespace` and `job`.
TARGET_LABELS = frozenset(
    {"job", "instance", "namespace", "pod", "container", "service", "endpoint"}
    | {"app_kubernetes_io_name", "app_kubernetes_io_component"}
)
#: Grafana's variables, replaced by what they stand for before parsing.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$namespace": ".*", "$job": ".*"}


def detection_rule_names() -> frozenset[str]:
    """Every rule the engine can report (its table names them all, the engine's own included)."""
    return frozenset(rules.RULES)


@dataclass(frozen=True)
class Series:
    labels: frozenset[str]
    #: Closed label sets: label -> allowed values.
    values: dict[str, tuple[str, ...]]


def operator_series() -> dict[str, Series]:
    out = {}
    for spec in metrics.OPERATOR:
        values = dict(spec.values)
        if "rule" in spec.labels:
            values["rule"] = tuple(sorted(detection_rule_names()))
        labels = set(spec.labels)
        for name in spec.series():
            out[name] = Series(frozenset(labels | ({"le"} if name.endswith("_bucket") else set())), values)
    return out


def _first_sample() -> sample.Sample:
    line = TRACE.read_text().splitlines()[0]
    parse = getattr(sample, "parse_sample", None)  # contract v2 reads v1 lines through parse_sample
    return parse(line) if parse else sample.Sample.model_validate_json(line)


def sensor_series() -> dict[str, Series]:
    """What the sensor's own registry renders for a sample with a GPU (names and label names, from the text)."""
    latest = _first_sample()
    assert latest.gpus, f"{TRACE}'s first sample has no GPU"
    registry = SensorMetrics(lambda: latest, lambda: 1)
    registry.observe([], 0.003)
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(registry.render().decode()):
        for s in family.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return {name: Series(frozenset(labels), {}) for name, labels in out.items()}


def known_series() -> dict[str, Series]:
    known = {**sensor_series(), **operator_series()}
    known["up"] = Series(frozenset(), {})
    return known


def rule_expressions() -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            yield f"rule {rule.get('alert') or rule.get('record')}", rule["expr"]


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), *(\w+)\)", var["query"])
            assert match, f"variable {var['name']}: not label_values(selector, label): {var['query']}"
            yield f"variable {var['name']}", match.group(1)


def all_expressions() -> list[tuple[str, str]]:
    return [*rule_expressions(), *dashboard_expressions()]


def substitute(expr: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    leftover = re.findall(r"\$\w+", expr.replace('"$1"', ""))
    assert not leftover, f"unknown Grafana variables {leftover} in {expr}"
    return expr


def problems(expr: str, known: dict[str, Series]) -> list[str]:
    """What is wrong with one expression: unknown metrics, labels and closed-set values; [] when nothing."""
    found: list[str] = []
    selectors: list[promql_parser.VectorSelector] = []

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            selectors.append(node)
        return True

    promql_parser.walk(promql_parser.parse(substitute(expr)), visit)
    if not selectors:
        found.append("selects no metric")
    for sel in selectors:
        matchers = list(sel.matchers.matchers)
        if sel.name:
            names = [sel.name]
        else:
            by_name = [m for m in matchers if m.name == "__name__"]
            if len(by_name) != 1 or by_name[0].op not in (promql_parser.MatchOp.Equal, promql_parser.MatchOp.Re):
                found.append(f"{sel}: name the metric (or one __name__ matcher)")
                continue
            names = by_name[0].value.split("|")
        for name in names:
            series = known.get(name)
            if series is None:
                found.append(f"{name}: not a metric the operator or the sensor exports")
                continue
            for m in matchers:
                if m.name == "__name__":
                    continue
                if m.name not in series.labels | TARGET_LABELS:
                    found.append(f"{name}: has no label {m.name!r}")
                allowed = series.values.get(m.name)
                if allowed is None:
                    continue
                if m.op in (promql_parser.MatchOp.Equal, promql_parser.MatchOp.NotEqual) and m.value not in allowed:
                    found.append(f"{name}{{{m.name}}}: {m.value!r} is none of {allowed}")
                if m.op in (promql_parser.MatchOp.Re, promql_parser.MatchOp.NotRe) and not any(
                    re.fullmatch(m.value, v) for v in allowed
                ):
                    found.append(f"{name}{{{m.name}}}: {m.value!r} matches none of {allowed}")
    return found


@pytest.fixture(scope="module")
def known() -> dict[str, Series]:
    return known_series()


def test_there_are_expressions_from_both_sources() -> None:
    exprs = all_expressions()
    assert sum(1 for where, _ in exprs if where.startswith("rule ")) >= 8
    assert sum(1 for where, _ in exprs if where.startswith("panel ")) >= 15


@pytest.mark.parametrize(("where", "expr"), all_expressions(), ids=[w for w, _ in all_expressions()])
def test_each_expression_names_exported_metrics(where: str, expr: str, known: dict[str, Series]) -> None:
    assert problems(expr, known) == [], f"{where}: {expr}"


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("rate(trainguard_violation_total[5m])", "trainguard_violation_total: not a metric"),
        ('trainguard_violations_total{rul="net.tunnel"}', "has no label 'rul'"),
        ('trainguard_enforcement_actions_total{outcome="confirmed"}', "'confirmed' is none of"),
        ('trainguard_violations_total{rule=~"sensor\\\\.silence"}', "matches none of"),
        ('trainguard_sensor_gpu_utilization{job="x"}', "trainguard_sensor_gpu_utilization: not a metric"),
        ('{__name__=~"trainguard_watched_jobs|nope"}', "nope: not a metric"),
        ("vector(1)", "selects no metric"),
    ],
)
def test_the_check_catches_what_it_is_for(expr: str, expected: str, known: dict[str, Series]) -> None:
    assert any(expected in p for p in problems(expr, known)), problems(expr, known)


def test_the_check_knows_the_sensor_gpu_metrics(known: dict[str, Series]) -> None:
    # The sensor's series come from its real registry; a sample without GPUs would hide the GPU families.
    assert {"trainguard_sensor_gpu_utilization_ratio", "trainguard_sensor_samples_total"} <= known.keys()
    assert "trainguard_sensor_errors_total" in known and "kind" in known["trainguard_sensor_errors_total"].labels


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (make tools installs it: Debian package prometheus)")
    return path


def test_promtool_parses_every_expression(tmp_path: Path) -> None:
    exe = promtool()
    records = [
        {"record": f"trainguard_check:expr_{i}", "expr": substitute(expr)}
        for i, (_, expr) in enumerate(all_expressions())
    ]
    path = tmp_path / "expressions.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "every-shipped-expression", "rules": records}]}))
    result = subprocess.run([exe, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(records)} rules found" in result.stdout


def test_promtool_checks_the_shipped_rules_file() -> None:
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", str(PROMTOOL_TESTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_and_has_a_runbook_section() -> None:
    alerts = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]
    cases = [t for case in yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"] for t in case["alert_rule_test"]]
    tested = {t["alertname"] for t in cases}
    firing = {t["alertname"] for t in cases if t.get("exp_alerts")}
    headings = {line[3:].strip() for line in RUNBOOK.read_text().splitlines() if line.startswith("## ")}
    for alert in alerts:
        name = alert["alert"]
        assert name in tested and name in firing, f"{name}: no promtool test where it fires"
        assert name in headings, f"{name}: no `## {name}` section in docs/runbook.md"
        assert alert["annotations"]["runbook_url"].endswith(f"/docs/runbook.md#{name.lower()}"), name
        assert alert["labels"]["severity"] in ("warning", "critical"), name
        assert {"summary", "description"} <= alert["annotations"].keys(), name


def test_the_operators_registry_exports_only_contracted_families() -> None:
    """What the operator's registry renders is in trainguard.api.metrics, with the same type and labels. (The
    enforcement families of issue 13 join it later; the contract lists them already.)"""
    operator_metrics = pytest.importorskip(
        "trainguard.k8s.metrics", reason="the operator's metrics module (issue 12) is not on this branch yet"
    )
    registry = operator_metrics.OperatorMetrics().registry
    contract = {spec.name.removesuffix("_total"): spec for spec in metrics.OPERATOR}
    contract.update({spec.name.removesuffix("_info"): spec for spec in metrics.OPERATOR if spec.name.endswith("_info")})
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        if family.name.endswith("_created"):  # prometheus-client's creation timestamps, in the classic format
            continue
        spec = contract.get(family.name)
        assert spec is not None, f"{family.name}: exported but not in trainguard.api.metrics"
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            assert s.name in spec.series(), f"{s.name}: not a series of {spec.name}"
            assert set(s.labels) - {"le"} <= set(spec.labels), f"{s.name}: labels {sorted(s.labels)}"
            for label, allowed in spec.values.items():
                assert s.labels.get(label, allowed[0]) in allowed, f"{s.name}{{{label}={s.labels[label]}}}"


def test_the_dashboard_json_is_what_its_code_generates() -> None:
    spec = importlib.util.spec_from_file_location("trainguard_dashboard", ROOT / "dashboards" / "trainguard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert DASHBOARD.read_text() == module.render(), "run `make dashboards`"
    board = json.loads(DASHBOARD.read_text())
    assert board["schemaVersion"] >= 39
    titles = {p["title"] for p in board["panels"]}
    assert {"Violations by rule and job", "Quarantined pods", "Detection to enforcement", "GPU utilization"} <= titles
    assert {"Sensor streams by state", "Sensor findings"} <= titles
