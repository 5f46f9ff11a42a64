"""The DCGM exporter's series for one pod, read from Prometheus' HTTP API, and merged into samples.

dcgm-exporter (with its Kubernetes mapping on) labels each series with the `namespace`, `pod` and
`container` the GPU is allocated to, the GPU's `UUID` and, for a MIG instance, `GPU_I_ID` (the GPU
instance id; the UUID label is then the parent GPU's). A Prometheus scrape without
`honor_labels` renames labels the target's own labels clash with, so `exported_namespace` and
`exported_pod` match too. One instant query per pod asks for every series below.

Why the operator trusts these more than the sensor's own GPM reading: the exporter runs on the
node, outside the pod; the sensor shares the pod with the workload (docs/threat-model.md). Where
both give a value, DCGM's is used; the sensor's fills what DCGM lacks.

Units: the DCGM_FI_PROF_* series are ratios 0..1, DCGM_FI_DEV_GPU_UTIL a percentage,
DCGM_FI_DEV_FB_USED MiB, DCGM_FI_DEV_POWER_USAGE watts.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainguard.api.sample import GpuProfile, GpuSample, Sample

#: DCGM profiling series -> the GpuProfile field each fills (a ratio 0..1).
PROFILE_SERIES: Mapping[str, str] = {
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": "tensor_active",
    "DCGM_FI_PROF_DRAM_ACTIVE": "dram_active",
    "DCGM_FI_PROF_PIPE_INT_ACTIVE": "int_active",
    "DCGM_FI_PROF_PIPE_FP16_ACTIVE": "fp16_active",
    "DCGM_FI_PROF_PIPE_FP32_ACTIVE": "fp32_active",
    "DCGM_FI_PROF_PIPE_FP64_ACTIVE": "fp64_active",
    "DCGM_FI_PROF_SM_ACTIVE": "sm_active",
    "DCGM_FI_PROF_SM_OCCUPANCY": "sm_occupancy",
}
GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"
FB_USED = "DCGM_FI_DEV_FB_USED"
POWER_USAGE = "DCGM_FI_DEV_POWER_USAGE"
SERIES: tuple[str, ...] = (*PROFILE_SERIES, GPU_UTIL, FB_USED, POWER_USAGE)
MIB = 1024 * 1024

#: A Kubernetes namespace or pod name (a DNS subdomain): what may be put in a query's label matcher.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class PrometheusError(Exception):
    """Prometheus could not be asked, or answered something that is not an instant vector."""


@dataclass(frozen=True, slots=True, order=True)
class GpuKey:
    """A GPU as DCGM names it: the (parent) GPU's UUID and, for a MIG instance, its GPU instance id."""

    uuid: str
    gpu_instance: int | None = None


@dataclass(frozen=True, slots=True)
class DcgmGpu:
    """What DCGM says of one GPU (or MIG instance) of the pod; None where it has no fresh series."""

    key: GpuKey
    profile: GpuProfile
    utilization: float | None = None
    memory_used_bytes: int | None = None
    power_watts: float | None = None
    #: Every series read, by name (as in `Sample.dcgm`).
    series: Mapping[str, float] = field(default_factory=dict)


def dcgm_query(namespace: str, pod: str) -> str:
    """The PromQL instant query for the pod's DCGM series; ValueError for a name that is not a Kubernetes name."""
    for what, name in (("namespace", namespace), ("pod", pod)):
        if not _NAME.match(name):
            raise ValueError(f"{what} {name!r} is not a Kubernetes name")
    names = "|".join(SERIES)
    return (
        f'{{__name__=~"{names}",namespace="{namespace}",pod="{pod}"}}'
        f' or {{__name__=~"{names}",exported_namespace="{namespace}",exported_pod="{pod}"}}'
    )


def dcgm_pods_query(namespace: str, pods: Sequence[str]) -> str:
    """The PromQL instant query for the DCGM series of several pods of one namespace (one job's pods): one
    query per job and scrape interval instead of one per pod. ValueError for a name that is not a Kubernetes name."""
    if not pods:
        raise ValueError("no pods to ask for")
    for what, name in (("namespace", namespace), *(("pod", p) for p in pods)):
        if not _NAME.match(name):
            raise ValueError(f"{what} {name!r} is not a Kubernetes name")
    # A name is [a-z0-9.-]: only the dot is special in a regular expression. `\\.` in the PromQL string is `\.`.
    alternatives = "|".join(p.replace(".", "\\\\.") for p in sorted(set(pods)))
    names = "|".join(SERIES)
    return (
        f'{{__name__=~"{names}",namespace="{namespace}",pod=~"{alternatives}"}}'
        f' or {{__name__=~"{names}",exported_namespace="{namespace}",exported_pod=~"{alternatives}"}}'
    )


def _key(labels: Mapping[str, str]) -> GpuKey | None:
    uuid = labels.get("UUID") or labels.get("uuid") or ""
    if not uuid:
        return None
    gi = labels.get("GPU_I_ID", "")
    try:
        return GpuKey(uuid, int(gi) if gi != "" else None)
    except ValueError:
        return None


def parse_dcgm(body: Any, *, now: float, max_age_s: float) -> dict[GpuKey, DcgmGpu]:
    """The GPUs of an instant-query answer (Prometheus' JSON, decoded); series older than max_age_s are left out.

    PrometheusError when the answer is not a successful instant vector. A series without a UUID, or
    with a value that is not a finite number, is left out; of two series for one GPU and name (two
    exporters), the newer is kept.
    """
    return _gpus(_vector(body), now=now, max_age_s=max_age_s)


def parse_dcgm_pods(body: Any, *, now: float, max_age_s: float) -> dict[str, dict[GpuKey, DcgmGpu]]:
    """As `parse_dcgm`, grouped by pod name: `exported_pod` where the scrape renamed the exporter's label, else
    `pod`. Series without either are left out."""
    result = _vector(body)
    by_pod: dict[str, list[Any]] = {}
    for item in result:
        metric = item.get("metric", {}) if isinstance(item, dict) else {}
        pod = metric.get("exported_pod") or metric.get("pod") or ""
        if pod:
            by_pod.setdefault(str(pod), []).append(item)
    return {pod: gpus for pod, items in by_pod.items() if (gpus := _gpus(items, now=now, max_age_s=max_age_s))}


def _vector(body: Any) -> list[Any]:
    if not isinstance(body, dict) or body.get("status") != "success":
        why = body.get("error", "no status") if isinstance(body, dict) else "not a JSON object"
        raise PrometheusError(f"query failed: {why}")
    data = body.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
        raise PrometheusError("the answer is not an instant vector")
    result: list[Any] = data["result"]
    return result


def _gpus(result: list[Any], *, now: float, max_age_s: float) -> dict[GpuKey, DcgmGpu]:
    newest: dict[tuple[GpuKey, str], tuple[float, float]] = {}
    for item in result:
        if not isinstance(item, dict):
            continue
        metric, value = item.get("metric", {}), item.get("value")
        name = metric.get("__name__", "")
        key = _key(metric)
        if name not in SERIES or key is None or not isinstance(value, list) or len(value) != 2:
            continue
        try:
            ts, v = float(value[0]), float(value[1])
        except (TypeError, ValueError):
            continue
        if not math.isfinite(v) or now - ts > max_age_s:
            continue
        if (key, name) not in newest or newest[(key, name)][0] < ts:
            newest[(key, name)] = (ts, v)
    by_gpu: dict[GpuKey, dict[str, float]] = {}
    for (key, name), (_, v) in newest.items():
        by_gpu.setdefault(key, {})[name] = v
    out: dict[GpuKey, DcgmGpu] = {}
    for key, series in sorted(by_gpu.items()):
        profile = GpuProfile.model_validate(
            {f: min(max(series[n], 0.0), 1.0) for n, f in PROFILE_SERIES.items() if n in series}
        )
        util = series.get(GPU_UTIL)
        fb = series.get(FB_USED)
        power = series.get(POWER_USAGE)
        out[key] = DcgmGpu(
            key=key,
            profile=profile,
            utilization=None if util is None else min(max(util / 100.0, 0.0), 1.0),
            memory_used_bytes=None if fb is None else max(int(fb * MIB), 0),
            power_watts=None if power is None else max(power, 0.0),
            series=series,
        )
    return out


class DcgmSource:
    """Reads one pod's DCGM series from the Prometheus HTTP API at `url` (`spec.monitoring.prometheus.url`).

    Blocking (urllib, one GET per read, `timeout_s`): call it from a thread in async code
    (`asyncio.to_thread`). Series older than `max_age_s` (an exporter that stopped) are left out.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        max_age_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"Prometheus URL {url!r}: needs http:// or https:// and a host")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_age_s = max_age_s
        self._clock = clock

    def read(self, namespace: str, pod: str) -> dict[GpuKey, DcgmGpu]:
        """The pod's GPUs as DCGM sees them; PrometheusError (saying what and where) when Prometheus fails."""
        body = self._query(dcgm_query(namespace, pod))
        try:
            return parse_dcgm(body, now=self._clock(), max_age_s=self.max_age_s)
        except PrometheusError as exc:
            raise PrometheusError(f"Prometheus at {self.url}: {exc}") from exc

    def read_pods(self, namespace: str, pods: Sequence[str]) -> dict[str, dict[GpuKey, DcgmGpu]]:
        """The GPUs of several pods of one namespace, by pod name, in one query (a POST: a thousand pod names do
        not fit in a URL). Pods without fresh series are absent. PrometheusError as `read`."""
        body = self._query(dcgm_pods_query(namespace, pods))
        try:
            found = parse_dcgm_pods(body, now=self._clock(), max_age_s=self.max_age_s)
        except PrometheusError as exc:
            raise PrometheusError(f"Prometheus at {self.url}: {exc}") from exc
        wanted = set(pods)
        return {pod: gpus for pod, gpus in found.items() if pod in wanted}

    def _query(self, query: str) -> Any:
        form = urllib.parse.urlencode({"query": query}).encode()
        request = urllib.request.Request(
            f"{self.url}/api/v1/query",
            data=form,
            headers={"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                raw = answer.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode("utf-8", "replace")
            raise PrometheusError(f"Prometheus at {self.url}: HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PrometheusError(f"Prometheus at {self.url}: {reason}") from exc
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise PrometheusError(f"Prometheus at {self.url}: not JSON ({exc})") from exc


def _merged_gpu(g: GpuSample, d: DcgmGpu) -> GpuSample:
    mine = g.profile.model_dump() if g.profile is not None else {}
    theirs = d.profile.model_dump(exclude_none=True)
    profile = GpuProfile.model_validate({**mine, **theirs})
    update: dict[str, Any] = {"profile": profile}
    if g.utilization is None and d.utilization is not None:
        update["utilization"] = d.utilization
    if g.memory_used_bytes is None and d.memory_used_bytes is not None:
        update["memory_used_bytes"] = d.memory_used_bytes
    if g.power_watts is None and d.power_watts is not None:
        update["power_watts"] = d.power_watts
    return g.model_copy(update=update)


def merge_dcgm(sample: Sample, gpus: Mapping[GpuKey, DcgmGpu], mig: Mapping[str, GpuKey] | None = None) -> Sample:
    """The sample with DCGM's readings merged into its GPUs, matched by UUID.

    A full GPU matches `GpuKey(uuid)`. A MIG instance (the sensor reports its `MIG-...` UUID) is
    matched through `mig`: MIG UUID -> (parent GPU UUID, GPU instance id), which the caller takes
    from the node's MIG layout. DCGM's profile values replace the sensor's; utilization, memory and
    power fill only readings the sensor could not take (null). GPUs DCGM does not know are unchanged.
    """
    if not gpus:
        return sample
    mig = mig or {}
    merged = []
    changed = False
    for g in sample.gpus:
        key = mig.get(g.uuid) or GpuKey(g.uuid)
        d = gpus.get(key)
        if d is None:
            merged.append(g)
        else:
            merged.append(_merged_gpu(g, d))
            changed = True
    return sample.model_copy(update={"gpus": merged}) if changed else sample


def single_mig(sample: Sample, gpus: Mapping[GpuKey, DcgmGpu]) -> dict[str, GpuKey]:
    """The MIG map `merge_dcgm` needs, where it is unambiguous without the node's MIG layout: the sample has
    exactly one MIG instance (a `MIG-...` UUID) and DCGM exactly one for the pod (dcgm-exporter's pod label says
    the instance is allocated to this pod). Otherwise empty: the instances stay unmatched rather than guessed."""
    migs = [g.uuid for g in sample.gpus if g.uuid.startswith("MIG-")]
    instances = [k for k in gpus if k.gpu_instance is not None]
    if len(migs) == 1 and len(instances) == 1:
        return {migs[0]: instances[0]}
    return {}
