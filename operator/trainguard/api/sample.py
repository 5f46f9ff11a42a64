"""The sample contract: one JSON object per pod per sampling tick.

The sensor streams it (`/v1/samples`), recorded traces store it (JSON Lines, one sample a line),
and replays feed it to the detection engine. Unknown fields are ignored so that a newer sensor
can talk to an older operator. `docs/sample.schema.json` is generated from these models.
"""

from __future__ import annotations

from pydantic import Field

from trainguard.api.base import WireModel


class GpuProcess(WireModel):
    """A compute process that NVML reports on one GPU."""

    pid: int = Field(description="Process id as NVML reports it (a host pid inside a container).")
    name: str = Field(default="", description="Executable name, empty when it could not be attributed.")
    cmdline: str = Field(default="", description="Command line, arguments joined by spaces.")
    used_memory_bytes: int = Field(default=0, ge=0, description="GPU memory the process holds, in bytes.")


class GpuSample(WireModel):
    """One GPU as seen at one tick."""

    index: int = Field(ge=0, description="NVML device index.")
    uuid: str = Field(default="", description="GPU UUID (GPU-...).")
    utilization: float = Field(default=0.0, ge=0.0, le=1.0, description="SM utilization, 0..1.")
    memory_used_bytes: int = Field(default=0, ge=0, description="Framebuffer memory used, in bytes.")
    memory_total_bytes: int = Field(default=0, ge=0, description="Framebuffer memory in total, in bytes.")
    power_watts: float = Field(default=0.0, ge=0.0, description="Power draw, in watts.")
    sm_clock_mhz: int = Field(default=0, ge=0, alias="smClockMHz", description="SM clock, in MHz.")
    processes: list[GpuProcess] = Field(default_factory=list, description="Compute processes on the GPU.")


class ProcessInfo(WireModel):
    """A process visible in the pod's process namespace."""

    pid: int = Field(description="Process id in the pod's pid namespace.")
    ppid: int = Field(default=0, description="Parent process id.")
    name: str = Field(default="", description="Executable name (/proc/<pid>/comm).")
    cmdline: str = Field(default="", description="Command line, arguments joined by spaces.")
    uid: int = Field(default=-1, description="Real user id; -1 when unknown.")


class ListeningSocket(WireModel):
    """A socket in LISTEN state (TCP) or bound without a peer (UDP)."""

    proto: str = Field(description="tcp, tcp6, udp or udp6.")
    address: str = Field(description="Local address the socket is bound to.")
    port: int = Field(ge=0, le=65535, description="Local port.")
    pid: int | None = Field(default=None, description="Owning process id, when it could be found.")


class Connection(WireModel):
    """A socket with a remote peer."""

    proto: str = Field(description="tcp, tcp6, udp or udp6.")
    local: str = Field(description="host:port; IPv6 as [addr]:port.")
    remote: str = Field(description="host:port; IPv6 as [addr]:port.")
    state: str = Field(default="", description="TCP state name, e.g. ESTABLISHED, SYN_SENT.")
    pid: int | None = Field(default=None, description="Owning process id, when it could be found.")


class SensorInfo(WireModel):
    """About the sensor that produced the sample."""

    version: str = Field(default="", description="Sensor version.")
    errors: list[str] = Field(
        default_factory=list,
        description="What the sensor could not read this tick (no driver, a garbled /proc file, a cap hit).",
    )


class Sample(WireModel):
    """One pod at one sampling tick."""

    ts: float = Field(description="Unix time in seconds.")
    pod: str = Field(description="namespace/name of the pod.")
    seq: int = Field(ge=0, description="Increases by 1 per sample; going back means the sensor restarted.")
    gpus: list[GpuSample] = Field(default_factory=list, description="GPUs visible to the pod.")
    processes: list[ProcessInfo] = Field(default_factory=list, description="Processes in the pod.")
    listening: list[ListeningSocket] = Field(default_factory=list, description="Listening sockets.")
    connections: list[Connection] = Field(default_factory=list, description="Sockets with a remote peer.")
    dcgm: dict[str, float] = Field(
        default_factory=dict, description="DCGM exporter metrics for the pod's GPUs, name to value."
    )
    sensor: SensorInfo = Field(default_factory=SensorInfo, description="About the sensor.")
