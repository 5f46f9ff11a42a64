"""AgentTrainingJob, trainguard.io/v1alpha1: the API as pydantic models.

These models are the single source of truth. `trainguard crdgen` turns them into the
CustomResourceDefinition (crds/ and the chart's copy); every rule the API server should enforce
is written here twice, side by side: as a CEL rule in `x-kubernetes-validations` (so
`kubectl apply` refuses a bad object) and as a pydantic validator (so the operator and
`trainguard replay` refuse the same object with the same words). The contract tests check that
every invalid example is refused by both.

The pod template is typed only as far as trainguard reasons about it (labels, annotations,
containers' names, images and security context, the host namespaces). Everything else in it is
kept as written (`x-kubernetes-preserve-unknown-fields`) and validated by the API server when the
Job is created. Embedding the full PodSpec schema (as Kubeflow does) would tie the CRD to one
Kubernetes minor version and add ~10,000 lines that trainguard never reads.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from trainguard.api import sample
from trainguard.api.base import ApiModel
from trainguard.api.patterns import check_pattern

GROUP = "trainguard.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "AgentTrainingJob"
PLURAL = "agenttrainingjobs"
SINGULAR = "agenttrainingjob"
SHORT_NAMES = ["atj"]
CATEGORIES = ["trainguard"]

#: How many violations `status.violations` keeps (the latest).
MAX_STATUS_VIOLATIONS = 20

Action = Literal["Alert", "Quarantine", "Suspend", "Delete"]
Severity = Literal["Low", "Medium", "High", "Critical"]
Phase = Literal["Pending", "Running", "Suspended", "Succeeded", "Failed"]
ConditionType = Literal["Ready", "Enforcing", "Violating", "Degraded"]
Protocol = Literal["TCP", "UDP", "SCTP"]
Port = Annotated[int, Field(ge=1, le=65535)]
#: A CIDR as written in a policy; bounded so that the API server can cost the CEL rules over it.
Cidr = Annotated[str, Field(max_length=64)]

#: The name of the sensor's container in every pod of a job (reserved: a workload container may not take it).
#: The detection engine exempts the processes of this container from the process allow-list.
SENSOR_CONTAINER = sample.SENSOR_CONTAINER
#: A process pattern (a glob, or `re:` and an RE2 expression), refused when it does not compile.
ProcessPattern = Annotated[str, AfterValidator(check_pattern)]
#: Kinds of socket that can send without a peer (`network.unconnectedSockets`).
UnconnectedKind = Literal["udp", "icmp", "raw", "packet", "sctp"]

#: Actions from mildest to strongest.
ACTION_ORDER: tuple[Action, ...] = ("Alert", "Quarantine", "Suspend", "Delete")


def cel(*rules: tuple[str, str] | tuple[str, str, str]) -> dict[str, Any]:
    """`x-kubernetes-validations` for a schema: (rule, message) or (rule, message, fieldPath)."""
    out = []
    for r in rules:
        entry = {"rule": r[0], "message": r[1]}
        if len(r) == 3:
            entry["fieldPath"] = r[2]
        out.append(entry)
    return {"x-kubernetes-validations": out}


def _is_cidr(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return "/" in value


# --- selectors -------------------------------------------------------------------------------


class LabelSelectorRequirement(ApiModel):
    """One requirement of a label selector (as in metav1.LabelSelectorRequirement)."""

    key: str = Field(description="The label key the requirement applies to.", min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="How the key relates to the values: In, NotIn, Exists or DoesNotExist."
    )
    values: list[str] = Field(
        default_factory=list,
        description="Values for In and NotIn; must be empty for Exists and DoesNotExist.",
    )


class LabelSelector(ApiModel):
    """A label query over namespaces or pods (as in metav1.LabelSelector); empty selects all."""

    match_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels that must all be present with these values."
    )
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, description="Requirements that must all hold."
    )


# --- network policy --------------------------------------------------------------------------


class PortSpec(ApiModel):
    """A port or port range and its protocol."""

    port: int = Field(ge=1, le=65535, description="The port, or the first port of a range.")
    end_port: int | None = Field(
        default=None, ge=1, le=65535, description="The last port of a range (inclusive); unset for one port."
    )
    protocol: Protocol = Field(default="TCP", description="TCP, UDP or SCTP.")

    model_config = ConfigDict(
        json_schema_extra=cel(
            ("!has(self.endPort) || self.endPort >= self.port", "endPort must not be below port", ".endPort")
        )
    )

    @model_validator(mode="after")
    def _range(self) -> PortSpec:
        if self.end_port is not None and self.end_port < self.port:
            raise ValueError("endPort must not be below port")
        return self


class EgressRule(ApiModel):
    """Where the workload may connect: a CIDR (with exceptions) or namespace/pod selectors, on ports.

    Set either `cidr` or one or both selectors, not both kinds.
    """

    cidr: Cidr | None = Field(
        default=None,
        description="Destination network in CIDR notation, e.g. 203.0.113.0/24 or 2001:db8::/32.",
    )
    except_: list[Cidr] = Field(
        default_factory=list,
        alias="except",
        max_length=32,
        description="Networks inside `cidr` that stay forbidden. Only with `cidr`.",
    )
    namespace_selector: LabelSelector | None = Field(
        default=None, description="Namespaces whose pods may be reached (with podSelector: pods in them)."
    )
    pod_selector: LabelSelector | None = Field(
        default=None,
        description="Pods that may be reached (in the job's namespace unless namespaceSelector).",
    )
    ports: list[PortSpec] = Field(
        default_factory=list, max_length=64, description="Destination ports; empty allows every port."
    )

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "has(self.cidr) != (has(self.namespaceSelector) || has(self.podSelector))",
                "set exactly one of cidr or namespaceSelector/podSelector",
            ),
            ("!has(self.cidr) || isCIDR(self.cidr)", "cidr must be a CIDR such as 10.0.0.0/8", ".cidr"),
            ("!has(self.except) || size(self.except) == 0 || has(self.cidr)", "except needs cidr"),
            (
                "!has(self.except) || self.except.all(e, isCIDR(e))",
                "every except entry must be a CIDR",
            ),
            (
                "!has(self.except) || !has(self.cidr) || !isCIDR(self.cidr)"
                " || self.except.all(e, !isCIDR(e) || cidr(self.cidr).containsCIDR(e))",
                "every except entry must lie inside cidr",
            ),
        )
    )

    @model_validator(mode="after")
    def _one_kind(self) -> EgressRule:
        has_selector = self.namespace_selector is not None or self.pod_selector is not None
        if (self.cidr is not None) == has_selector:
            raise ValueError("set exactly one of cidr or namespaceSelector/podSelector")
        if self.cidr is not None and not _is_cidr(self.cidr):
            raise ValueError(f"cidr must be a CIDR such as 10.0.0.0/8, got {self.cidr!r}")
        if self.except_ and self.cidr is None:
            raise ValueError("except needs cidr")
        for e in self.except_:
            if not _is_cidr(e):
                raise ValueError(f"every except entry must be a CIDR, got {e!r}")
        if self.cidr is not None:
            outer = ipaddress.ip_network(self.cidr, strict=False)
            for e in self.except_:
                inner = ipaddress.ip_network(e, strict=False)
                if inner.version != outer.version or not inner.subnet_of(outer):  # type: ignore[arg-type]
                    raise ValueError(f"every except entry must lie inside cidr, got {e!r} outside {self.cidr!r}")
        return self


class NetworkPolicySpec(ApiModel):
    """What the workload may do on the network."""

    egress: list[EgressRule] = Field(
        default_factory=list,
        max_length=128,
        description="Destinations the workload may connect to. Everything else is denied (default deny).",
    )
    allow_dns: bool = Field(
        default=True,
        alias="allowDNS",
        description="Allow DNS to the cluster resolver (kube-system, port 53).",
    )
    allow_intra_job: bool = Field(
        default=True, description="Allow traffic between the pods of this job (e.g. NCCL, rendezvous)."
    )
    listen_ports: list[Port] = Field(
        default_factory=list,
        max_length=256,
        description="Ports the workload may listen on (TCP or UDP). Any other listening socket is a violation.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    forbid_tunnels: bool = Field(
        default=True,
        description="Treat outbound SSH (port 22), miner-pool ports and tunnel tools as violations.",
    )
    unconnected_sockets: list[UnconnectedKind] = Field(
        default_factory=list,
        max_length=5,
        description=(
            "Kinds of socket without a peer the workload may hold: udp (unconnected UDP, sendto), icmp (ping "
            "sockets), raw, packet, sctp. Any other such socket is a violation, except a UDP socket bound to a "
            "port in listenPorts (a declared UDP server)."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )

    @model_validator(mode="after")
    def _unique_ports(self) -> NetworkPolicySpec:
        seen: set[int] = set()
        for port in self.listen_ports:
            if port in seen:
                raise ValueError(f"listenPorts: duplicate port {port}")
            seen.add(port)
        return self


# --- gpu and process policy ------------------------------------------------------------------


class GpuPolicy(ApiModel):
    """Bounds on GPU use and which processes may use the GPUs."""

    max_utilization: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Highest sustained SM utilization allowed, 0..1."
    )
    max_memory_bytes: int | None = Field(
        default=None, ge=0, description="Highest GPU memory use allowed per GPU, in bytes."
    )
    max_power_watts: float | None = Field(
        default=None, gt=0.0, description="Highest sustained power draw allowed per GPU, in watts."
    )
    allowed_processes: list[ProcessPattern] | None = Field(
        default=None,
        description=(
            "Executables allowed on the GPUs: globs (a glob with a / matches the whole executable path, one "
            "without matches its file name) or re: and an RE2 expression searched in the path; unset allows any."
        ),
    )
    max_processes_per_gpu: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Most compute processes allowed on one GPU at once (a data-parallel trainer runs one per GPU); "
            "more is gpu.processes.exceeded. Unset allows any number."
        ),
    )
    mining_signature: bool = Field(
        default=True, description="Detect GPU use that looks like mining rather than training."
    )


class ProcessPolicy(ApiModel):
    """Which processes may run in the pod.

    A pattern is a shell-style glob (case-insensitive) or, after `re:`, an RE2 regular expression.
    `denied` patterns are matched against everything a process shows: its executable's path and file
    name, its name and its command line (arguments joined by spaces). `allowed` patterns are matched
    against the executable only (what the process cannot choose): a glob with a `/` against the whole
    path, one without against the file name; `re:` is searched in the path. docs/detection.md says more.
    """

    denied: list[ProcessPattern] = Field(
        default_factory=list, description="Patterns of processes that must not run (globs, or re: and RE2)."
    )
    use_default_denied: bool = Field(
        default=True,
        description="Also deny trainguard's shipped list of known miners and tunnel tools.",
    )
    allowed: list[ProcessPattern] | None = Field(
        default=None,
        description=(
            "When set, an allow-list of executables: a process whose executable matches none of these patterns "
            "is a violation (the sensor's container is exempt)."
        ),
    )


# --- enforcement -----------------------------------------------------------------------------


class EscalationStep(ApiModel):
    """Move to a stronger action when a condition holds. Set at least one condition; all set must hold."""

    action: Action = Field(description="The action from this step on: Alert, Quarantine, Suspend or Delete.")
    persists_seconds: int | None = Field(
        default=None, ge=1, description="A violation has been standing for at least this many seconds."
    )
    occurrences: int | None = Field(
        default=None, ge=1, description="At least this many violation occurrences in the job so far."
    )
    distinct_rules: int | None = Field(
        default=None, ge=1, description="At least this many different rules are violated in the job."
    )
    min_severity: Severity | None = Field(
        default=None, description="A violation of at least this severity: Low, Medium, High or Critical."
    )

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "has(self.persistsSeconds) || has(self.occurrences) || has(self.distinctRules)"
                " || has(self.minSeverity)",
                "an escalation step needs a condition: persistsSeconds, occurrences, distinctRules or minSeverity",
            )
        )
    )

    @model_validator(mode="after")
    def _has_condition(self) -> EscalationStep:
        if all(v is None for v in (self.persists_seconds, self.occurrences, self.distinct_rules, self.min_severity)):
            raise ValueError(
                "an escalation step needs a condition: persistsSeconds, occurrences, distinctRules or minSeverity"
            )
        return self


class Debounce(ApiModel):
    """How long a rule must be violated before it counts: N consecutive samples or T seconds."""

    samples: int = Field(default=3, ge=1, le=3600, description="Consecutive violating samples.")
    seconds: float | None = Field(
        default=None, gt=0, le=3600, description="Or: seconds a violation has stood, whichever comes first."
    )


class EnforcementPolicy(ApiModel):
    """What trainguard does about a violation."""

    action: Action = Field(default="Alert", description="The first action: Alert, Quarantine, Suspend or Delete.")
    escalation: list[EscalationStep] = Field(
        default_factory=list,
        description="Ordered steps to stronger actions; the last step whose condition holds wins.",
        json_schema_extra={"maxItems": 8},
    )
    debounce: Debounce = Field(
        default_factory=Debounce,
        description="How long a rule must be violated before it counts.",
        json_schema_extra={"default": {}},
    )
    dry_run: bool = Field(
        default=False, description="Record what would be done (status, Events, metrics) but do not act."
    )


#: Capabilities trainguard drops from every workload container unless the policy keeps them: with them a root
#: container forges socket addresses (IP_TRANSPARENT, raw sockets) or rewrites its own network.
DROPPED_CAPABILITIES: tuple[str, ...] = ("NET_RAW", "NET_ADMIN")
#: Capabilities a container may add (Pod Security "baseline" list plus the two above, which only count when kept).
SAFE_CAPABILITIES: tuple[str, ...] = (
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
)


class WorkloadPolicy(ApiModel):
    """What the workload's pods are given beyond the defaults."""

    keep_capabilities: list[Literal["NET_RAW", "NET_ADMIN"]] = Field(
        default_factory=list,
        max_length=2,
        description="Capabilities not to drop from the workload (NET_RAW, NET_ADMIN); both are dropped by default.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    mount_service_account_token: bool = Field(
        default=False,
        description="Mount an API token of the job's ServiceAccount into its pods (default: no API credentials).",
    )


class Policy(ApiModel):
    """The behaviour the job declares; anything else is a violation."""

    network: NetworkPolicySpec = Field(
        default_factory=NetworkPolicySpec,
        description="Network behaviour: allowed egress, listening ports, tunnels. Egress not declared is denied.",
        json_schema_extra={"default": {}},
    )
    gpu: GpuPolicy = Field(
        default_factory=GpuPolicy,
        description="GPU behaviour: utilization, memory and power bounds, allowed GPU processes, mining signature.",
        json_schema_extra={"default": {}},
    )
    processes: ProcessPolicy = Field(
        default_factory=ProcessPolicy,
        description="Processes: denied patterns (plus the shipped miner and tunnel list) and an optional allow-list.",
        json_schema_extra={"default": {}},
    )
    enforcement: EnforcementPolicy = Field(
        default_factory=EnforcementPolicy,
        description="What to do on a violation: the action, an escalation ladder, debounce and dry run.",
        json_schema_extra={"default": {}},
    )
    workload: WorkloadPolicy = Field(
        default_factory=WorkloadPolicy,
        description="Capabilities kept and API credentials given to the workload (default: neither).",
        json_schema_extra={"default": {}},
    )


# --- monitoring ------------------------------------------------------------------------------


class PrometheusSource(ApiModel):
    """A Prometheus server that scrapes DCGM exporter metrics for the job's GPUs."""

    url: str = Field(
        description="Base URL of the Prometheus HTTP API, e.g. http://prometheus.monitoring:9090.",
        pattern=r"^https?://",
    )


class Monitoring(ApiModel):
    """How the job is watched."""

    sample_interval_seconds: int = Field(
        default=1, ge=1, le=60, description="Seconds between two samples of the sensor."
    )
    sensor_silence_seconds: int = Field(
        default=10, ge=2, le=3600, description="Seconds without a sample before the sensor counts as silent."
    )
    sensor_gap_tolerance_seconds: int = Field(
        default=10,
        ge=1,
        le=3600,
        description=(
            "Seconds of gaps between samples (time beyond the sample interval) tolerated within "
            "sensorGapWindowSeconds; more is sensor.gap (a sensor frozen for part of every few seconds)."
        ),
    )
    sensor_gap_window_seconds: int = Field(
        default=60, ge=2, le=86400, description="The window, in seconds, over which gaps between samples add up."
    )
    sensor_cap_severity: Severity = Field(
        default="Critical",
        description=(
            "Severity of sensor.capped: a sample past one of the sensor's caps (processes, sockets, fd links), "
            "which hides whatever the pod holds past it. Critical by default, so that hiding costs no less than "
            "what it hides; lower it for a job that legitimately holds thousands of sockets (TIME_WAIT counts)."
        ),
    )
    prometheus: PrometheusSource | None = Field(
        default=None, description="Where to read DCGM metrics; unset uses only the sensor."
    )

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "self.sensorSilenceSeconds > self.sampleIntervalSeconds",
                "sensorSilenceSeconds must be longer than sampleIntervalSeconds",
                ".sensorSilenceSeconds",
            ),
            (
                "self.sensorGapToleranceSeconds < self.sensorGapWindowSeconds",
                "sensorGapToleranceSeconds must be shorter than sensorGapWindowSeconds",
                ".sensorGapToleranceSeconds",
            ),
        )
    )

    @model_validator(mode="after")
    def _silence(self) -> Monitoring:
        if self.sensor_silence_seconds <= self.sample_interval_seconds:
            raise ValueError("sensorSilenceSeconds must be longer than sampleIntervalSeconds")
        if self.sensor_gap_tolerance_seconds >= self.sensor_gap_window_seconds:
            raise ValueError("sensorGapToleranceSeconds must be shorter than sensorGapWindowSeconds")
        return self


# --- pod template ----------------------------------------------------------------------------


class Capabilities(ApiModel):
    """Capabilities added to or dropped from a container."""

    add: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list,
        max_length=64,
        description="Capabilities to add; only the Pod Security baseline list, NET_RAW and NET_ADMIN are allowed.",
    )
    drop: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list, max_length=64, description="Capabilities to drop."
    )


class SecurityContext(ApiModel):
    """The parts of a container's securityContext that trainguard checks; the rest is kept."""

    model_config = ConfigDict(extra="allow")

    privileged: bool | None = Field(
        default=None, description="Must not be true: a privileged container escapes the sensor."
    )
    capabilities: Capabilities | None = Field(default=None, description="Capabilities; added ones are bounded.")


#: Every container list of a pod, as the CEL rules and the validator walk them.
CONTAINER_LISTS: tuple[str, ...] = ("containers", "initContainers", "ephemeralContainers")
_ALLOWED_ADD = (*SAFE_CAPABILITIES, *DROPPED_CAPABILITIES)
_CEL_ALLOWED_ADD = "[" + ", ".join(f"'{c}'" for c in _ALLOWED_ADD) + "]"


def _all_containers(rule: str) -> str:
    """A CEL condition over every container `c` of every container list of `self` (a PodSpec)."""
    return " && ".join(f"(!has(self.{lst}) || self.{lst}.all(c, {rule}))" for lst in CONTAINER_LISTS)


class Container(ApiModel):
    """A container of the workload; fields beyond these are kept as written (see core/v1 Container)."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=63, description="Container name, unique in the pod.")
    image: str = Field(min_length=1, max_length=4096, description="Container image.")
    security_context: SecurityContext | None = Field(
        default=None, description="Security context; privileged is refused, added capabilities are bounded."
    )


class Volume(ApiModel):
    """A volume of the pod; fields beyond the name are kept as written (see core/v1 Volume)."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=63, description="Volume name.")
    host_path: dict[str, Any] | None = Field(
        default=None,
        description="Must be unset: a hostPath volume reaches the node and the sensor's files.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class PodSpec(ApiModel):
    """The workload's pod spec; fields beyond these are kept as written (see core/v1 PodSpec)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra=cel(
            (
                _all_containers(
                    "!has(c.securityContext) || !has(c.securityContext.privileged) || !c.securityContext.privileged"
                ),
                "privileged containers are not allowed in any container list: they escape the sensor",
                ".containers",
            ),
            (
                _all_containers(f"c.name != '{SENSOR_CONTAINER}'"),
                f"the container name {SENSOR_CONTAINER} is reserved for the sensor",
                ".containers",
            ),
            (
                _all_containers(
                    "!has(c.securityContext) || !has(c.securityContext.capabilities)"
                    " || !has(c.securityContext.capabilities.add)"
                    f" || c.securityContext.capabilities.add.all(x, x in {_CEL_ALLOWED_ADD})"
                ),
                "capabilities.add may only name " + ", ".join(_ALLOWED_ADD),
                ".containers",
            ),
            (
                "!has(self.volumes) || self.volumes.all(v, !has(v.hostPath))",
                "hostPath volumes are not allowed: use a persistentVolumeClaim, emptyDir or configMap",
                ".volumes",
            ),
        ),
    )

    containers: list[Container] = Field(
        min_length=1, max_length=64, description="The workload's containers (at least one)."
    )
    init_containers: list[Container] = Field(
        default_factory=list, max_length=64, description="Init containers (and native sidecars) of the workload."
    )
    ephemeral_containers: list[Container] = Field(
        default_factory=list, max_length=64, description="Ephemeral containers (normally added later, by debug)."
    )
    volumes: list[Volume] = Field(default_factory=list, max_length=256, description="Volumes; hostPath is refused.")
    host_network: bool = Field(
        default=False,
        description="Must be false: a pod on the host network is outside every NetworkPolicy.",
        json_schema_extra={"enum": [False]},
    )
    host_pid: bool = Field(
        default=False,
        alias="hostPID",
        description="Must be false: the sensor could not tell the workload's processes apart.",
        json_schema_extra={"enum": [False]},
    )
    host_ipc: bool = Field(
        default=False,
        alias="hostIPC",
        description="Must be false.",
        json_schema_extra={"enum": [False]},
    )

    def all_containers(self) -> list[Container]:
        return [*self.containers, *self.init_containers, *self.ephemeral_containers]

    @model_validator(mode="after")
    def _no_escape(self) -> PodSpec:
        for field in ("host_network", "host_pid", "host_ipc"):
            if getattr(self, field):
                alias = type(self).model_fields[field].alias or field
                raise ValueError(f"{alias} must be false: it takes the pod outside trainguard's sensor and policy")
        for c in self.all_containers():
            sc = c.security_context
            if sc is not None and sc.privileged:
                raise ValueError(
                    f"containers: {c.name} is privileged; privileged containers are not allowed in any container"
                    " list: they escape the sensor"
                )
            if c.name == SENSOR_CONTAINER:
                raise ValueError(f"containers: the container name {SENSOR_CONTAINER} is reserved for the sensor")
            if sc is not None and sc.capabilities is not None:
                bad = [x for x in sc.capabilities.add if x not in _ALLOWED_ADD]
                if bad:
                    raise ValueError(
                        f"containers: {c.name} adds {', '.join(bad)}; capabilities.add may only name "
                        + ", ".join(_ALLOWED_ADD)
                    )
        for v in self.volumes:
            if v.host_path is not None:
                raise ValueError(
                    f"volumes: {v.name} is a hostPath volume; hostPath volumes are not allowed: use a"
                    " persistentVolumeClaim, emptyDir or configMap"
                )
        return self


class PodTemplateMetadata(ApiModel):
    """Labels and annotations for the job's pods."""

    labels: dict[str, str] = Field(default_factory=dict, description="Labels for the pods.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations for the pods.")


class PodTemplate(ApiModel):
    """The pod template of the workload (core/v1 PodTemplateSpec, typed where trainguard checks it)."""

    metadata: PodTemplateMetadata = Field(
        default_factory=PodTemplateMetadata, description="Labels and annotations for the pods."
    )
    spec: PodSpec = Field(description="The pod spec.")


# --- spec and status -------------------------------------------------------------------------


class AgentTrainingJobSpec(ApiModel):
    """A training workload and the behaviour it declares."""

    replicas: int = Field(default=1, ge=1, le=10000, description="Number of pods (workers) to run in parallel.")
    template: PodTemplate = Field(description="The pod template of each worker.")
    backoff_limit: int | None = Field(
        default=None, ge=0, description="Retries before the Job is marked failed (Job.spec.backoffLimit)."
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Seconds the job may run before it is stopped."
    )
    suspend: bool = Field(default=False, description="Suspend the job: no pods run while true.")
    policy: Policy = Field(
        default_factory=Policy,
        description="The declared behaviour: network, GPU, processes and enforcement.",
        json_schema_extra={"default": {}},
    )
    monitoring: Monitoring = Field(
        default_factory=Monitoring,
        description="How the job is watched.",
        json_schema_extra={"default": {}},
    )


class Condition(ApiModel):
    """A condition of the job, in the shape of metav1.Condition."""

    type: ConditionType = Field(description="Ready, Enforcing, Violating or Degraded.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="A CamelCase reason for the last transition.", min_length=1, max_length=1024)
    message: str = Field(default="", description="A human-readable message.", max_length=32768)
    last_transition_time: str = Field(
        description="When the status last changed (RFC 3339).", json_schema_extra={"format": "date-time"}
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the condition was set for."
    )


class ViolationRecord(ApiModel):
    """One violation as kept in status (the latest are kept)."""

    time: str = Field(description="When it was first seen (RFC 3339).", json_schema_extra={"format": "date-time"})
    pod: str = Field(description="The pod's name.")
    rule: str = Field(description="The detection rule, e.g. net.tunnel.")
    severity: Severity = Field(description="Low, Medium, High or Critical.")
    evidence: str = Field(default="", description="A summary of the evidence.", max_length=4096)
    action: Action = Field(description="The action taken (or that would be taken in dry run).")
    dry_run: bool = Field(default=False, description="True when the action was only recorded.")


class AgentTrainingJobStatus(ApiModel):
    """What trainguard observed and did."""

    phase: Phase = Field(default="Pending", description="Pending, Running, Suspended, Succeeded or Failed.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Enforcing, Violating and Degraded conditions, one per type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the status was computed for."
    )
    replicas: int = Field(default=0, ge=0, description="Pods of the job that exist.")
    monitored_pods: int = Field(default=0, ge=0, description="Pods whose sensor reported recently.")
    quarantined_pods: list[str] = Field(default_factory=list, description="Names of quarantined pods.")
    violations: list[ViolationRecord] = Field(
        default_factory=list,
        description=f"The latest {MAX_STATUS_VIOLATIONS} violations, oldest first.",
        json_schema_extra={"maxItems": MAX_STATUS_VIOLATIONS},
    )
    violation_count: int = Field(default=0, ge=0, description="Violations seen since the job was created.")
    last_violation_time: str | None = Field(
        default=None,
        description="When the last violation was seen (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    detection: dict[str, Any] | None = Field(
        default=None,
        description=(
            "The detection engine's state (debounce counts, standing violations, escalation counts), checkpointed"
            " by the operator and restored when it starts; at most 256 KiB of JSON. Not for users."
        ),
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class ObjectMeta(ApiModel):
    """The parts of metadata trainguard reads; the rest is kept."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(default="", description="Name.")
    namespace: str = Field(default="", description="Namespace.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations.")


class AgentTrainingJob(ApiModel):
    """An AI-agent training job and the GPU, process and network behaviour it declares."""

    api_version: Literal["trainguard.io/v1alpha1"] = Field(
        default="trainguard.io/v1alpha1", description="trainguard.io/v1alpha1."
    )
    kind: Literal["AgentTrainingJob"] = Field(default="AgentTrainingJob", description="AgentTrainingJob.")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard object metadata.")
    spec: AgentTrainingJobSpec = Field(description="The workload and its policy.")
    status: AgentTrainingJobStatus | None = Field(default=None, description="Observed state.")


#: Printer columns for `kubectl get atj`.
PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "The job's phase."},
    {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas", "description": "Desired pods."},
    {
        "name": "Monitored",
        "type": "integer",
        "jsonPath": ".status.monitoredPods",
        "description": "Pods whose sensor reported recently.",
    },
    {
        "name": "Violations",
        "type": "integer",
        "jsonPath": ".status.violationCount",
        "description": "Violations seen since the job was created.",
    },
    {
        "name": "Quarantined",
        "type": "string",
        "jsonPath": ".status.quarantinedPods",
        "description": "Quarantined pods.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
