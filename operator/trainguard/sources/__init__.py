"""Where the operator reads GPU facts from outside the pod, over I/O that is not the Kubernetes API.

`trainguard.sources.dcgm`: the DCGM exporter's series for a job's pods, from the Prometheus named in
`spec.monitoring.prometheus`, and their merge into the pod's samples. `trainguard.sources.poller`: the guard's
cache of them (one query per job per interval, in threads of its own, a bound age). Layering (`.importlinter`):
beside `trainguard.k8s`, above `detection`, `builders` and `api`; never kopf, the Kubernetes
client, or the sensor.
"""

from trainguard.sources.dcgm import DcgmGpu, DcgmSource, GpuKey, PrometheusError, merge_dcgm, single_mig
from trainguard.sources.poller import DcgmCache, DcgmPoller, DcgmSettings

__all__ = [
    "DcgmCache",
    "DcgmGpu",
    "DcgmPoller",
    "DcgmSettings",
    "DcgmSource",
    "GpuKey",
    "PrometheusError",
    "merge_dcgm",
    "single_mig",
]
