"""trainguard's Grafana dashboard, as code (grafana-foundation-sdk).

    python dashboards/trainguard.py          # write charts/trainguard/files/dashboards/trainguard.json
    python dashboards/trainguard.py --check  # exit 1 if that file differs from this code

(`make dashboards` and `make dashboards-check`, which `make test` runs.)

The chart ships the JSON in a ConfigMap for Grafana's dashboard sidecar (dashboard.enabled). The queries use the
operator's metrics (operator/trainguard/api/metrics.py) and the sensor's (operator/trainguard/sensor/metrics.py,
scraped by the chart's PodMonitor, with `job` relabelled to the AgentTrainingJob); tests/unit/test_observability.py
checks that every expression parses and names a metric the project exports. Never edit the JSON by hand.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "charts" / "trainguard" / "files" / "dashboards" / "trainguard.json"
UID = "trainguard-overview"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
#: The selector every query of a job's series carries (the dashboard's two variables).
JOB = 'namespace=~"$namespace", job=~"$job"'
#: Metrics whose label values fill the namespace and job variables: the operator's and the sensor's.
VARIABLE_SOURCE = '{__name__=~"trainguard_violations_total|trainguard_sensor_samples_total"%s}'


def query(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend or "__auto").ref_id(ref).datasource(DATASOURCE)


def series(title: str, description: str, unit: str, *queries: prometheus.Dataquery) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(8)
        .span(12)
        .legend(common_builder.VizLegendOptions().display_mode(common.LegendDisplayMode.TABLE).show_legend(True))
    )
    for q in queries:
        panel = panel.with_target(q)
    return panel


def single(title: str, description: str, expr: str, red_at: float | None) -> stat.Panel:
    """A single figure; red from `red_at` on (None: always neutral)."""
    steps = [Threshold(value=None, color="green" if red_at is not None else "blue")]
    if red_at is not None:
        steps.append(Threshold(value=red_at, color="red"))
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(query(expr))
        .height(4)
        .span(6)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.AREA)
        .thresholds(
            dashboard.ThresholdsConfig()
            .mode(ThresholdsMode.ABSOLUTE)
            .steps(steps)
        )
    )


def variable(name: str, label: str, source: str) -> dashboard.QueryVariable:
    return (
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(f"label_values({source}, {name})")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(VariableOption(selected=True, text="All", value="$__all"))
    )


def quantiles(metric: str, by: str = "") -> list[prometheus.Dataquery]:
    group = f"sum by ({by + ', ' if by else ''}le)"
    prefix = f"{{{{{by}}}}} " if by else ""
    return [
        query(
            f"histogram_quantile({q}, {group} (rate({metric}_bucket[$__rate_interval])))",
            f"{prefix}p{round(q * 100)}",
            ref,
        )
        for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
    ]


def build() -> dashboard.Dashboard:
    board = (
        dashboard.Dashboard("trainguard")
        .uid(UID)
        .description("AgentTrainingJobs kept inside their declared GPU, process and network behaviour.")
        .tags(["trainguard", "security", "gpu"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .with_variable(
            dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
        )
        .with_variable(variable("namespace", "Namespace", VARIABLE_SOURCE % ""))
        .with_variable(variable("job", "AgentTrainingJob", VARIABLE_SOURCE % ', namespace=~"$namespace"'))
    )

    board = (
        board.with_row(dashboard.Row("Violations and enforcement"))
        .with_panel(
            single(
                "Quarantined pods",
                "Pods labelled trainguard.io/quarantined now: network cut, offending processes stopped, kept for "
                "forensics.",
                'sum(trainguard_quarantined_pods{namespace=~"$namespace"}) or vector(0)',
                1,
            )
        )
        .with_panel(
            single(
                "Violations (range)",
                "Violations found in the selected jobs over the dashboard's time range.",
                f"sum(increase(trainguard_violations_total{{{JOB}}}[$__range])) or vector(0)",
                1,
            )
        )
        .with_panel(
            single(
                "Monitored pods",
                "Running pods of guarded jobs the operator watches (all namespaces).",
                "sum(trainguard_monitored_pods)",
                None,
            )
        )
        .with_panel(
            single(
                "Sensor streams not streaming",
                "Streams to sensors that are connecting or backing off (all namespaces); a lasting non-zero is a "
                "sensor down, frozen or replaced.",
                'sum(trainguard_sensor_streams{state!="streaming"}) or vector(0)',
                1,
            )
        )
        .with_panel(
            series(
                "Violations by rule and job",
                "New violations per interval, by job and rule (trainguard_violations_total).",
                "short",
                query(
                    f"sum by (namespace, job, rule) (increase(trainguard_violations_total{{{JOB}}}[$__rate_interval]))",
                    "{{namespace}}/{{job}} {{rule}}",
                ),
            )
        )
        .with_panel(
            series(
                "Enforcement actions",
                "Actions taken per interval by action and outcome; unconfirmed means the sensor did not confirm a "
                "cut (then the pod is deleted).",
                "short",
                query(
                    "sum by (namespace, job, action, outcome) "
                    f"(increase(trainguard_enforcement_actions_total{{{JOB}}}[$__rate_interval]))",
                    "{{namespace}}/{{job}} {{action}} {{outcome}}",
                ),
            )
        )
        .with_panel(
            series(
                "Quarantined pods by namespace",
                "Pods held in quarantine over time.",
                "short",
                query('sum by (namespace) (trainguard_quarantined_pods{namespace=~"$namespace"})', "{{namespace}}"),
            )
        )
        .with_panel(
            series(
                "Detection to enforcement",
                "From a first violating sample to the API server accepting the action (all jobs). The goal is a "
                "p99 of at most 1 s.",
                "s",
                *quantiles("trainguard_detection_to_enforcement_seconds"),
            )
        )
    )

    board = (
        board.with_row(dashboard.Row("GPU use per job (sensor metrics)"))
        .with_panel(
            series(
                "GPU utilization",
                "Mean SM utilization of the job's GPUs, as each pod's sensor reads it from NVML.",
                "percentunit",
                query(
                    f"avg by (namespace, job) (trainguard_sensor_gpu_utilization_ratio{{{JOB}}})",
                    "{{namespace}}/{{job}}",
                ),
            )
        )
        .with_panel(
            series(
                "GPU memory used",
                "Framebuffer memory in use on the job's GPUs.",
                "bytes",
                query(
                    f"sum by (namespace, job) (trainguard_sensor_gpu_memory_used_bytes{{{JOB}}})",
                    "{{namespace}}/{{job}}",
                ),
            )
        )
        .with_panel(
            series(
                "GPU power",
                "Power drawn by the job's GPUs. Mining shows as high power at a steady SM clock with little "
                "memory traffic.",
                "watt",
                query(
                    f"sum by (namespace, job) (trainguard_sensor_gpu_power_watts{{{JOB}}})", "{{namespace}}/{{job}}"
                ),
            )
        )
        .with_panel(
            series(
                "GPU profile: SM clock",
                "Mean SM clock of the job's GPUs.",
                "hertz",
                query(
                    f"avg by (namespace, job) (trainguard_sensor_gpu_sm_clock_hertz{{{JOB}}})", "{{namespace}}/{{job}}"
                ),
            )
        )
        .with_panel(
            series(
                "GPU profile: pipe activity",
                "What the job's GPUs compute (NVML GPM), mean share of time per pipe. Training keeps the tensor "
                "pipes busy, physics simulation FP32; a hash loop busies the integer pipes and DRAM with the "
                "tensor and floating-point pipes idle (docs/detection.md, gpu.mining-signature).",
                "percentunit",
                query(
                    f"avg by (namespace, job, pipe) (trainguard_sensor_gpu_pipe_active_ratio{{{JOB}}})",
                    "{{namespace}}/{{job}} {{pipe}}",
                ),
            )
        )
        .with_panel(
            series(
                "GPU profile: SM occupancy",
                "Resident warps as a share of the SMs' maximum on the job's GPUs (NVML GPM).",
                "percentunit",
                query(
                    f"avg by (namespace, job) (trainguard_sensor_gpu_sm_occupancy_ratio{{{JOB}}})",
                    "{{namespace}}/{{job}}",
                ),
            )
        )
        .with_panel(
            series(
                "GPU processes and unattributed ones",
                "Compute processes on the job's GPUs, and those the sensor could not tie to a process of the pod "
                "(another pod's, or hidden).",
                "short",
                query(
                    f"sum by (namespace, job) (trainguard_sensor_gpu_processes{{{JOB}}})",
                    "{{namespace}}/{{job}} all",
                    "A",
                ),
                query(
                    f"sum by (namespace, job) (trainguard_sensor_gpu_unattributed_processes{{{JOB}}})",
                    "{{namespace}}/{{job}} unattributed",
                    "B",
                ),
            )
        )
    )

    board = (
        board.with_row(dashboard.Row("Sensor health"))
        .with_panel(
            series(
                "Sensor streams by state",
                "The operator's streams to the sensors (all namespaces).",
                "short",
                query("sum by (state) (trainguard_sensor_streams)", "{{state}}"),
            )
        )
        .with_panel(
            series(
                "Sensor findings",
                "Sensor silence, gaps, restarts and forged samples, as the operator judged them.",
                "short",
                query(
                    "sum by (namespace, job, rule) "
                    f'(increase(trainguard_violations_total{{{JOB}, rule=~"sensor\\\\..*"}}[$__rate_interval]))',
                    "{{namespace}}/{{job}} {{rule}}",
                ),
            )
        )
        .with_panel(
            series(
                "Samples per second",
                "Samples each job's sensors emit (1 per pod per interval when healthy).",
                "short",
                query(
                    f"sum by (namespace, job) (rate(trainguard_sensor_samples_total{{{JOB}}}[$__rate_interval]))",
                    "{{namespace}}/{{job}}",
                ),
            )
        )
        .with_panel(
            series(
                "Sensor errors by kind",
                "Errors reported in samples (a part of the pod the sensor could not read).",
                "short",
                query(
                    "sum by (namespace, job, kind) "
                    f"(increase(trainguard_sensor_errors_total{{{JOB}}}[$__rate_interval]))",
                    "{{namespace}}/{{job}} {{kind}}",
                ),
            )
        )
        .with_panel(
            series(
                "Sample duration",
                "Wall time the sensors take to build one sample.",
                "s",
                *quantiles("trainguard_sensor_sample_duration_seconds"),
            )
        )
    )

    return (
        board.with_row(dashboard.Row("Operator"))
        .with_panel(
            series(
                "Reconciles by outcome",
                "Reconciles of AgentTrainingJobs per second.",
                "reqps",
                query("sum by (outcome) (rate(trainguard_reconciles_total[$__rate_interval]))", "{{outcome}}"),
            )
        )
        .with_panel(
            series(
                "Reconcile duration",
                "Wall time of one reconcile.",
                "s",
                *quantiles("trainguard_reconcile_duration_seconds"),
            )
        )
        .with_panel(
            series(
                "Watched jobs",
                "AgentTrainingJobs the operator watches, and its build.",
                "short",
                query("sum(trainguard_watched_jobs)", "watched jobs", "A"),
                query("count by (version) (trainguard_build_info)", "build {{version}}", "B"),
            )
        )
    )


def render() -> str:
    return json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if the JSON differs from the code")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"where to write (default {OUTPUT})")
    args = parser.parse_args(argv)
    want = render()
    path: Path = args.output
    have = path.read_text() if path.exists() else ""
    if args.check:
        if have == want:
            return 0
        diff = difflib.unified_diff(have.splitlines(True), want.splitlines(True), str(path), "generated", n=1)
        print(f"{path}: differs from dashboards/trainguard.py; run `make dashboards`", file=sys.stderr)
        sys.stderr.writelines(list(diff)[:40])
        return 1
    if have != want:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(want)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
