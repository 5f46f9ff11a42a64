"""The per-job sensor key and its Secret (issue 13), pure.

The key is derived, never stored by the operator: `HMAC-SHA256(master, "job\\0" + the AgentTrainingJob's uid)`.
The operator holds one master key (a file the kubelet mounts into its own pod, `--sensor-master-key-file`); it applies
each job's Secret and computes the key again when it needs it, so it never reads a Secret back (the chart's RBAC
gives it create/patch on Secrets only). A new AgentTrainingJob of the same name has a new uid, hence a new key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from trainguard.api.sensorproto import SECRET_KEY_NAME
from trainguard.builders import names
from trainguard.builders.workload import owner_reference

#: Shortest master key accepted, in bytes.
MIN_MASTER_BYTES = 32


def job_key(master: bytes, uid: str) -> bytes:
    """The sensor key of the AgentTrainingJob with this uid."""
    if len(master) < MIN_MASTER_BYTES:
        raise ValueError(f"the sensor master key must hold at least {MIN_MASTER_BYTES} bytes, got {len(master)}")
    if not uid:
        raise ValueError("the AgentTrainingJob has no uid yet")
    return hmac.new(master, b"job\0" + uid.encode(), hashlib.sha256).digest()


def sensor_key_secret(atj: Mapping[str, Any], key: bytes) -> dict[str, Any]:
    """The job's Secret: owned by the AgentTrainingJob (garbage-collected with it), one key file."""
    meta = atj["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": names.sensor_key_secret_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": names.job_labels(meta["name"], names.SENSOR_KEY_COMPONENT),
            "ownerReferences": [owner_reference(dict(atj))],
        },
        "type": "Opaque",
        "immutable": False,
        "data": {SECRET_KEY_NAME: base64.b64encode(key).decode()},
    }
