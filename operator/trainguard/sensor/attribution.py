"""Which of the pod's processes is which GPU process.

NVML reports host pids; the pod sees its own pid namespace. What the pod *can* see is which of its
processes hold `/dev/nvidia<minor>` open. For each GPU (known by its minor number) we compare the
NVML processes with the pod's holders of that device:

* a pair already established at an earlier tick stays while both ends are still there (the pod
  process keeps its pid and start time, NVML still lists the host pid);
* after removing known pairs, one unknown NVML process and one unknown holder are a certain pair;
* otherwise, if there are no more unknown NVML processes than unknown holders and all those holders
  run the same command (torchrun workers, DDP ranks), the name, executable and arguments are certain even if
  the pid pairing is not;
* anything else stays unattributed (empty name, argv and exe) and is counted in an `attribution` error.

All of it assumes that every compute process on a GPU the pod holds belongs to the pod. A GPU shared
with another pod (time-slicing, MPS) breaks that assumption; see docs/sensor.md.
"""

from __future__ import annotations

from collections.abc import Mapping

from trainguard.api.sample import GpuProcess, GpuSample
from trainguard.sensor.errors import SensorError, SensorErrorKind, error
from trainguard.sensor.processes import ProcessRecord

PairKey = tuple[str, int]
"""(GPU uuid, host pid)."""


class GpuAttributor:
    """Fills GPU processes' names, executables and arguments from the pod's processes, remembering certain pairs."""

    def __init__(self) -> None:
        self._pairs: dict[PairKey, tuple[int, int]] = {}
        """(uuid, host pid) -> (pod pid, its starttime)."""

    def attribute(
        self,
        gpus: list[GpuSample],
        minor_numbers: Mapping[int, int],
        device_holders: Mapping[str, set[int]],
        processes: list[ProcessRecord],
    ) -> tuple[list[GpuSample], list[SensorError]]:
        """The GPUs with what could be attributed filled in, and one error entry if something could not."""
        if not any(gpu.processes for gpu in gpus):
            self._pairs = {}
            return gpus, []
        by_pid = {p.pid: p for p in processes}
        pairs: dict[PairKey, tuple[int, int]] = {}
        unattributed = 0
        out: list[GpuSample] = []
        for gpu in gpus:
            minor = minor_numbers.get(gpu.index)
            if minor is None or not gpu.processes:
                out.append(gpu)
                continue
            holders = sorted(pid for pid in device_holders.get(f"/dev/nvidia{minor}", ()) if pid in by_pid)
            matched = self._match(gpu, holders, by_pid, pairs)
            filled: list[GpuProcess] = []
            for proc in gpu.processes:
                who = matched.get(proc.pid)
                if who is None:
                    if not proc.name:
                        unattributed += 1
                        if proc.exe_status == "ok":  # not tied to a pod process: its executable is not known
                            filled.append(proc.model_copy(update={"exe_status": "unreadable"}))
                            continue
                    filled.append(proc)
                else:
                    info = who.info
                    update = {"name": info.name, "argv": info.argv, "exe": info.exe, "exe_status": info.exe_status}
                    filled.append(proc.model_copy(update=update))
            out.append(gpu.model_copy(update={"processes": filled}))
        self._pairs = pairs
        errors = []
        if unattributed:
            errors.append(
                error(
                    SensorErrorKind.ATTRIBUTION,
                    f"{unattributed} GPU processes could not be tied to a process of this pod",
                )
            )
        return out, errors

    def _match(
        self,
        gpu: GpuSample,
        holders: list[int],
        by_pid: Mapping[int, ProcessRecord],
        pairs: dict[PairKey, tuple[int, int]],
    ) -> dict[int, ProcessRecord]:
        """host pid -> the pod process it certainly is (or certainly runs the same command as)."""
        matched: dict[int, ProcessRecord] = {}
        for proc in gpu.processes:
            known = self._pairs.get((gpu.uuid, proc.pid))
            if known is None:
                continue
            pod_pid, starttime = known
            record = by_pid.get(pod_pid)
            if record is not None and record.starttime == starttime and pod_pid in holders:
                matched[proc.pid] = record
                pairs[(gpu.uuid, proc.pid)] = known
        taken = {r.pid for r in matched.values()}
        unknown_host = [p.pid for p in gpu.processes if p.pid not in matched]
        unknown_pod = [by_pid[pid] for pid in holders if pid not in taken]
        if len(unknown_host) == 1 and len(unknown_pod) == 1:
            record = unknown_pod[0]
            matched[unknown_host[0]] = record
            pairs[(gpu.uuid, unknown_host[0])] = (record.pid, record.starttime)
        elif (
            unknown_host
            and len(unknown_host) <= len(unknown_pod)
            and len({(r.info.name, r.info.exe, tuple(r.info.argv)) for r in unknown_pod}) == 1
        ):
            for host_pid in unknown_host:
                matched[host_pid] = unknown_pod[0]
        return matched
