"""What the engine needs to know besides the policy: facts about the cluster and tunable thresholds.

The policy says "allow DNS" and "allow traffic inside the job"; which addresses those are is a fact
about the cluster that the operator knows (and `trainguard replay` takes as flags). Everything here
has a default that works without the cluster: DNS to any address on port 53, the job's pods learned
from the samples themselves (see `learn_pod_ips`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

#: Ports a miner pool commonly listens on (stratum and the pools' TLS variants), and the P2P ports
#: of the big chains (8333 Bitcoin, 30303 Ethereum, 18080/18081 Monero). Left out because real
#: services use them: 8888 (Jupyter), 9000 (MinIO, the S3 port in many clusters), 8008.
MINER_POOL_PORTS: frozenset[int] = frozenset(
    {
        3333,
        3334,
        3335,
        3336,
        3357,
        4444,
        4445,
        5555,
        5556,
        6666,
        7777,
        8333,
        9999,
        10128,
        10343,
        14433,
        14444,
        15555,
        17777,
        18080,
        18081,
        19999,
        20535,
        20580,
        30303,
        45560,
        45700,
    }
)
#: Private, shared and unique-local ranges: where a pod selected by a selector can live.
CLUSTER_CIDRS: tuple[str, ...] = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")


@dataclass(frozen=True, slots=True)
class MiningThresholds:
    """The `gpu.mining-signature` rule's thresholds (see docs/detection.md for why these values)."""

    #: Samples in the window the signature is judged over (at 1 Hz: seconds). The window is the
    #: rule's debounce: nothing is flagged before it is full.
    window_samples: int = 60
    #: Every sample in the window must be at least this busy (SM utilization, 0..1).
    min_utilization: float = 0.90
    #: ... and the window's mean at least this.
    min_mean_utilization: float = 0.95
    #: ... and the standard deviation of utilization at most this: miners do not pause between steps.
    max_utilization_stddev: float = 0.02
    #: Coefficient of variation of power draw at most this (when power is reported): flat power.
    max_power_cv: float = 0.05
    #: Corroboration without DCGM: framebuffer use below this fraction of the GPU's memory.
    max_memory_fraction: float = 0.30
    #: Corroboration with DCGM: tensor-pipe activity (DCGM_FI_PROF_PIPE_TENSOR_ACTIVE) below this.
    max_tensor_active: float = 0.05


#: The DCGM profiling metric for the fraction of cycles the tensor cores were busy.
DCGM_TENSOR_ACTIVE = "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"


@dataclass(frozen=True, slots=True)
class EngineContext:
    """Cluster facts and thresholds for one job's engine."""

    #: The cluster DNS resolver addresses. Empty: with `allowDNS`, port 53 to any address is DNS.
    dns_resolvers: frozenset[str] = frozenset()
    #: The IPs of the job's own pods (for `allowIntraJob`).
    job_pod_ips: frozenset[str] = frozenset()
    #: Also count as the job's pods every local address seen in the job's samples (a pod's own IP
    #: is the local end of its connections). True by default: the operator's list of pod IPs lags
    #: behind new pods, and a worker's first NCCL connection should not be a violation.
    learn_pod_ips: bool = True
    #: For egress rules with a namespace or pod selector, by the rule's index in
    #: `policy.network.egress`: the IPs of the pods it selects. A selector rule without an entry
    #: allows any address inside `cluster_cidrs` on its ports (it cannot be judged from an IP).
    selector_peers: Mapping[int, frozenset[str]] = field(default_factory=dict)
    #: Where pods (and so selector-matched peers) can be.
    cluster_cidrs: tuple[str, ...] = CLUSTER_CIDRS
    #: The sensor's own listening port (never an undeclared listener).
    sensor_port: int = 9400
    #: Listeners on these ports (inclusive range) are not flagged: the kernel's ephemeral range, where
    #: NCCL, Gloo and torch elastic bind their bootstrap sockets to port 0. None flags them too.
    ephemeral_ports: tuple[int, int] | None = (32768, 60999)
    #: Processes that belong to the pod's plumbing, never `process.unexpected` (still checked
    #: against the denied list): the pause container and the trainguard sensor itself.
    infrastructure_processes: frozenset[str] = frozenset({"pause", "trainguard"})
    #: Destination ports that `net.tunnel` treats as miner pools.
    miner_pool_ports: frozenset[int] = MINER_POOL_PORTS
    #: Thresholds of `gpu.mining-signature`.
    mining: MiningThresholds = field(default_factory=MiningThresholds)
