"""Where the operator reads GPU facts from outside the pod, over I/O that is not the Kubernetes API.

`trainguard.sources.dcgm`: the DCGM exporter's series for one pod, from the Prometheus named in
`spec.monitoring.prometheus`, and their merge into the pod's samples. Layering (`.importlinter`):
beside `trainguard.k8s`, above `detection`, `builders` and `api`; never kopf, the Kubernetes
client, or the sensor.
"""

from trainguard.sources.dcgm import DcgmGpu, DcgmSource, GpuKey, PrometheusError, merge_dcgm

__all__ = ["DcgmGpu", "DcgmSource", "GpuKey", "PrometheusError", "merge_dcgm"]
