"""What the engine needs to know besides the policy: facts about the cluster, and tunable thresholds.

The policy says "allow DNS" and "allow traffic inside the job"; which addresses those are is a fact
about the cluster that the operator reads from the API server (the job's pods' `status.podIPs`, the
cluster DNS Service, the pods a selector rule selects) and `trainguard replay` takes as flags.
Nothing here is learned from samples: a pod can bind a socket to any address (`IP_TRANSPARENT`), so
what a sample says about addresses proves nothing about who is who. Where an input is missing the
engine fails closed: no resolvers named, no DNS is allowed; no pod IPs, no traffic counts as the
job's own; a selector rule the context does not resolve allows nothing.

The context can change while the engine runs (`Engine.update(context=...)`): pods come and go.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from trainguard.api import sample
from trainguard.api.v1alpha1 import SENSOR_CONTAINER

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

#: The container the kubelet's sandbox (the pause process) is reported under: the name the kubelet
#: itself gives the sandbox container (`k8s_POD_...`); the sensor names pid 1 of the pod so.
SANDBOX_CONTAINER = sample.SANDBOX_CONTAINER


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
    #: Corroboration with profiling: tensor-pipe activity (DCGM_FI_PROF_PIPE_TENSOR_ACTIVE) below this.
    #: With a full profile, also the profile's own bound on the tensor pipes (mean over active samples).
    max_tensor_active: float = 0.05
    #: Profile: the mean activity over the window (utilization, or smActive) at least this. A miner
    #: hashing 7 s of every 10, or at 70% of every second, is at 0.7; below 0.5 it gives up half the GPU.
    min_duty: float = 0.50
    #: Profile: a sample counts as active (its pipe mix is averaged) from this activity on.
    active_floor: float = 0.10
    #: Profile: every floating-point pipe (FP16, FP32, FP64) below this on average over active samples.
    #: Training runs FP16/BF16 and FP32 work beside the matrix multiplies, physics simulation is FP32.
    max_float_active: float = 0.10
    #: Profile: the integer pipes or the memory interface at least this busy on average over active
    #: samples: what a hash loop does (integer rounds, and for Ethash-style hashes DAG reads).
    min_hash_active: float = 0.20


#: The DCGM profiling metric for the fraction of cycles the tensor cores were busy.
DCGM_TENSOR_ACTIVE = "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"


def _ips(what: str, values: frozenset[str]) -> None:
    for v in values:
        try:
            ipaddress.ip_address(v.split("%", 1)[0])
        except ValueError:
            raise ValueError(f"{what}: {v!r} is not an IP address") from None


@dataclass(frozen=True, slots=True)
class EngineContext:
    """Cluster facts and thresholds for one job's engine. Addresses are checked when it is made."""

    #: The cluster DNS resolvers' addresses (the kube-dns Service's cluster IPs). With `allowDNS`,
    #: port 53 (UDP or TCP) to one of them is allowed. Empty: no DNS is allowed (fails closed).
    dns_resolvers: frozenset[str] = frozenset()
    #: The IPs of the job's own pods (`status.podIPs`), for `allowIntraJob`. Empty: none.
    job_pod_ips: frozenset[str] = frozenset()
    #: For egress rules with a namespace or pod selector, by the rule's index in
    #: `policy.network.egress`: the IPs of the pods it selects. A selector rule without an entry
    #: allows nothing (it cannot be judged from an IP).
    selector_peers: Mapping[int, frozenset[str]] = field(default_factory=dict)
    #: Containers whose processes are the pod's plumbing, never `process.unexpected` (still checked
    #: against the denied list and every other rule): the sensor's and the sandbox's.
    plumbing_containers: frozenset[str] = frozenset({SENSOR_CONTAINER, SANDBOX_CONTAINER})
    #: In samples converted from version 1 only (processes with `exeStatus: unknown` and no
    #: container), the plumbing is recognised by these names, as version 1 could not say more.
    v1_plumbing_names: frozenset[str] = frozenset({"pause", "trainguard"})
    #: The sensor's own listening port (never an undeclared listener).
    sensor_port: int = 9400
    #: Listeners on these ports (inclusive range) are not flagged: the kernel's ephemeral range, where
    #: NCCL, Gloo and torch elastic bind their bootstrap sockets to port 0. None flags them too. A
    #: connection on a listener is inbound only when its remote port is in it (a connecting client's
    #: source port; rules/network.py); with None no connection is inbound.
    ephemeral_ports: tuple[int, int] | None = (32768, 60999)
    #: Destination ports that `net.tunnel` treats as miner pools.
    miner_pool_ports: frozenset[int] = MINER_POOL_PORTS
    #: Thresholds of `gpu.mining-signature`.
    mining: MiningThresholds = field(default_factory=MiningThresholds)

    def __post_init__(self) -> None:
        _ips("dns_resolvers", self.dns_resolvers)
        _ips("job_pod_ips", self.job_pod_ips)
        for index, ips in self.selector_peers.items():
            _ips(f"selector_peers[{index}]", ips)
