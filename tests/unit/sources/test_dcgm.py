"""The parts of the DCGM source that need no server: the query, the answer's parsing, the merge.
The source against a real Prometheus: tests/integration/test_dcgm_prometheus.py."""

from __future__ import annotations

from typing import Any

import pytest

from trainguard.api.sample import Sample
from trainguard.sources import DcgmSource, GpuKey, PrometheusError, merge_dcgm, single_mig
from trainguard.sources.dcgm import SERIES, dcgm_pods_query, dcgm_query, parse_dcgm, parse_dcgm_pods

NOW = 1000.0


def answer(*series: tuple[dict[str, str], float, Any]) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": m, "value": [ts, v]} for m, ts, v in series]},
    }


def m(name: str, uuid: str = "GPU-a", **labels: str) -> dict[str, str]:
    return {"__name__": name, "UUID": uuid, **labels}


def test_the_query_asks_for_every_series_by_both_label_spellings() -> None:
    q = dcgm_query("agents", "worker-0")
    assert 'namespace="agents",pod="worker-0"' in q and 'exported_namespace="agents",exported_pod="worker-0"' in q
    assert all(name in q for name in SERIES) and len(SERIES) == 11
    for bad in ("Agents", 'x"}', "a b", ""):
        with pytest.raises(ValueError, match="not a Kubernetes name"):
            dcgm_query(bad, "p")


def test_stale_odd_and_duplicate_series() -> None:
    gpus = parse_dcgm(
        answer(
            (m("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"), NOW - 100, "0.9"),  # an exporter that stopped: too old
            (m("DCGM_FI_PROF_PIPE_INT_ACTIVE"), NOW - 2, "0.4"),
            (m("DCGM_FI_PROF_PIPE_INT_ACTIVE"), NOW - 1, "0.6"),  # a second exporter, newer: kept
            (m("DCGM_FI_PROF_DRAM_ACTIVE"), NOW, "NaN"),
            (m("DCGM_FI_PROF_SM_ACTIVE"), NOW, "1.7"),  # out of range: clamped
            (m("DCGM_FI_DEV_POWER_USAGE", uuid=""), NOW, "300"),  # no UUID: whose?
            (m("DCGM_FI_DEV_GPU_UTIL", GPU_I_ID="x"), NOW, "50"),  # a broken instance id
            (m("DCGM_FI_DEV_SM_CLOCK"), NOW, "1980"),  # not asked for
        ),
        now=NOW,
        max_age_s=30,
    )
    assert list(gpus) == [GpuKey("GPU-a")]
    g = gpus[GpuKey("GPU-a")]
    assert g.profile.tensor_active is None and g.profile.int_active == 0.6 and g.profile.dram_active is None
    assert g.profile.sm_active == 1.0
    assert g.utilization is None and g.power_watts is None


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"status": "error", "error": "parse error at char 3"}, "parse error at char 3"),
        ([], "not a JSON object"),
        ({"status": "success", "data": {"resultType": "matrix", "result": []}}, "not an instant vector"),
    ],
)
def test_an_answer_that_is_not_an_instant_vector_is_an_error(body: Any, why: str) -> None:
    with pytest.raises(PrometheusError, match=why):
        parse_dcgm(body, now=NOW, max_age_s=30)


def test_a_bad_url_is_refused_when_the_source_is_made() -> None:
    for url in ("prometheus:9090", "ftp://x", "http://"):
        with pytest.raises(ValueError, match="needs http"):
            DcgmSource(url)


def test_merge_leaves_a_sample_without_dcgm_untouched() -> None:
    s = Sample.model_validate({"ts": 1, "pod": "a/b", "seq": 1, "gpus": [{"index": 0, "uuid": "GPU-a"}]})
    assert merge_dcgm(s, {}) is s
    assert merge_dcgm(s, parse_dcgm(answer(), now=NOW, max_age_s=30)) is s


def test_the_pods_query_names_each_pod_exactly_once_escaping_dots() -> None:
    q = dcgm_pods_query("agents", ["w-1", "w.0", "w-1"])
    assert 'namespace="agents",pod=~"w-1|w\\\\.0"' in q
    assert 'exported_namespace="agents",exported_pod=~"w-1|w\\\\.0"' in q
    for bad in (["ok", 'x"}'], [".*"], []):
        with pytest.raises(ValueError, match=r"not a Kubernetes name|no pods"):
            dcgm_pods_query("agents", bad)


def test_an_answer_for_several_pods_is_grouped_by_the_workloads_pod_label() -> None:
    tensor = "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"
    by_pod = parse_dcgm_pods(
        answer(
            (m(tensor, "GPU-a", namespace="agents", pod="w-0"), NOW, "0.5"),
            # Scraped without honor_labels: `pod` is the exporter's own, `exported_pod` the workload's.
            (m(tensor, "GPU-b", pod="dcgm-exporter-x", exported_pod="w-1"), NOW, "0.25"),
            (m(tensor, "GPU-c"), NOW, "0.1"),  # no pod label: nobody's
            (m(tensor, "GPU-d", pod="w-2"), NOW - 100, "0.1"),  # stale: w-2 has nothing
        ),
        now=NOW,
        max_age_s=30,
    )
    assert set(by_pod) == {"w-0", "w-1"}
    assert by_pod["w-0"][GpuKey("GPU-a")].profile.tensor_active == 0.5
    assert by_pod["w-1"][GpuKey("GPU-b")].profile.tensor_active == 0.25


def test_a_single_mig_instance_is_matched_only_when_unambiguous() -> None:
    one = parse_dcgm(answer((m("DCGM_FI_PROF_SM_ACTIVE", "GPU-p", GPU_I_ID="3"), NOW, "0.8")), now=NOW, max_age_s=30)
    two = parse_dcgm(
        answer(
            (m("DCGM_FI_PROF_SM_ACTIVE", "GPU-p", GPU_I_ID="3"), NOW, "0.8"),
            (m("DCGM_FI_PROF_SM_ACTIVE", "GPU-p", GPU_I_ID="5"), NOW, "0.1"),
        ),
        now=NOW,
        max_age_s=30,
    )
    s = Sample.model_validate({"ts": 1.0, "pod": "a/b", "seq": 1, "gpus": [{"index": 0, "uuid": "MIG-x"}]})
    assert single_mig(s, one) == {"MIG-x": GpuKey("GPU-p", 3)}
    merged = merge_dcgm(s, one, mig=single_mig(s, one))
    assert merged.gpus[0].profile is not None and merged.gpus[0].profile.sm_active == 0.8
    assert single_mig(s, two) == {}  # which of two instances is this one: not guessed
    assert merge_dcgm(s, two, mig=single_mig(s, two)) is s
