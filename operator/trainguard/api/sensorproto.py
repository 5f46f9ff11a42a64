"""The protocol between the operator and a pod's sensor: authenticated both ways.

One key per AgentTrainingJob lives in a Secret (`<job>-sensor-key`, data key SECRET_KEY_NAME; the key is the
value's bytes exactly, nothing stripped) that is mounted into the sensor container only (never into the
workload's containers; the admission policy keeps it so). From it:

- **The operator's credential, per pod.** Every request to a sensor carries
  `Authorization: Bearer <pod_credential(key, pod)>`, where `pod` is `namespace/name`. The sensor computes the same
  value from its own pod name and refuses (401) anything else. A workload that kills the sensor and takes its port
  does not have the key, so it can neither pass as the sensor nor learn a credential that works for another pod.
- **Signed samples.** Each line of the stream `GET /v2/samples` (and the body of `GET /v2/sample`) is
  `<sample JSON bytes> TAB <hex HMAC-SHA256(key, b"sample\\0" + sample JSON bytes)> LF`. JSON never holds a raw tab,
  so the line splits unambiguously at its last tab. A line whose MAC does not verify is the finding
  `sensor.identity` (forged), never a sample.
- **Commands.** `POST /v2/cut` carries a JSON `CutCommand` as its body and the header
  `X-Trainguard-Signature: <hex HMAC-SHA256(key, b"cut\\0" + body bytes)>`; it is refused (401) unless the bearer
  credential and the signature verify, and (409) when its `issuedAt` is more than `MAX_COMMAND_AGE_SECONDS` from the
  sensor's clock or its `nonce` was seen before (replay). The sensor answers with a JSON `CutReport` signed the same
  way (`b"report\\0"`), so that the operator can trust a confirmation. A report is `confirmed` only when
  nothing it had to cut is still open and nothing it was asked failed (`errors`: a pid refused or not signalled).

Pure functions only (hmac, hashlib, json): both the sensor and the operator import this module.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

from pydantic import Field

from trainguard.api.base import WireModel
from trainguard.api.sample import Endpoint, Proto

#: The Secret key (file name in the mounted Secret volume) holding the job's sensor key.
SECRET_KEY_NAME = "sensor.key"
#: Where the sensor container mounts the Secret (read-only).
SECRET_MOUNT_PATH = "/var/run/secrets/trainguard.io/sensor"
#: Header carrying a body's MAC on commands and reports.
SIGNATURE_HEADER = "X-Trainguard-Signature"
#: A command older or newer than this (sensor's clock against issuedAt) is refused.
MAX_COMMAND_AGE_SECONDS = 30.0
#: Paths.
SAMPLES_PATH = "/v2/samples"
SAMPLE_PATH = "/v2/sample"
CUT_PATH = "/v2/cut"

_SAMPLE = b"sample\0"
_CUT = b"cut\0"
_REPORT = b"report\0"
_CREDENTIAL = b"credential\0"


def _mac(key: bytes, domain: bytes, data: bytes) -> str:
    return hmac.new(key, domain + data, hashlib.sha256).hexdigest()


def pod_credential(key: bytes, pod: str) -> str:
    """The bearer credential the operator presents to the sensor of `pod` (namespace/name)."""
    return _mac(key, _CREDENTIAL, pod.encode())


def credential_ok(key: bytes, pod: str, authorization: str | None) -> bool:
    """Whether an Authorization header carries `pod`'s credential (constant-time compare)."""
    if not authorization or not authorization.startswith("Bearer "):
        return False
    return hmac.compare_digest(authorization[len("Bearer ") :].strip(), pod_credential(key, pod))


def sign_sample(key: bytes, sample_json: bytes) -> bytes:
    """One stream line: the sample's JSON bytes, a tab, their MAC, a newline."""
    return sample_json + b"\t" + _mac(key, _SAMPLE, sample_json).encode() + b"\n"


class BadSignature(ValueError):
    """A line or body whose MAC does not verify (or that has none)."""


def verify_sample(key: bytes, line: bytes) -> bytes:
    """The sample JSON bytes of a signed stream line; raises BadSignature when it is unsigned or forged."""
    body, sep, mac = line.rstrip(b"\r\n").rpartition(b"\t")
    if not sep:
        raise BadSignature("the line carries no signature")
    if not hmac.compare_digest(mac, _mac(key, _SAMPLE, body).encode()):
        raise BadSignature("the line's signature does not verify")
    return body


def sign_command(key: bytes, body: bytes) -> str:
    return _mac(key, _CUT, body)


def command_ok(key: bytes, body: bytes, signature: str | None) -> bool:
    return signature is not None and hmac.compare_digest(signature, sign_command(key, body))


def sign_report(key: bytes, body: bytes) -> str:
    return _mac(key, _REPORT, body)


def report_ok(key: bytes, body: bytes, signature: str | None) -> bool:
    return signature is not None and hmac.compare_digest(signature, sign_report(key, body))


class AllowedPeer(WireModel):
    """A remote the pod may stay connected to through a cut: an address range and optional ports."""

    cidr: str = Field(description="IPv4 or IPv6 CIDR.")
    ports: list[int] = Field(default_factory=list, description="Remote ports; empty means any.")


class CutCommand(WireModel):
    """Cut what is already open: destroy the pod's sockets that the policy does not allow, stop the offenders."""

    pod: str = Field(description="namespace/name the command is for (the sensor refuses another pod's).")
    nonce: str = Field(min_length=8, max_length=128, description="Unique per command (replays are refused).")
    issued_at: float = Field(description="Unix time the operator issued it.")
    keep: list[AllowedPeer] = Field(
        default_factory=list,
        description=(
            "Remotes whose connections survive the cut (the policy's allowed egress, the job's own pods, DNS, the "
            "operator's sensor connection). Every other socket with a remote, in any state, is destroyed."
        ),
    )
    pids: list[int] = Field(default_factory=list, description="Processes to stop (pids in the pod's namespace).")
    signal: Literal["STOP", "KILL"] = Field(
        default="STOP", description="STOP keeps the processes for forensics (the documented default); KILL ends them."
    )


class CutSocket(WireModel):
    """A socket the cut destroyed, or failed to."""

    proto: Proto
    local: Endpoint
    remote: Endpoint
    pid: int | None = None
    error: str = Field(default="", description="Empty when destroyed; the kernel's error otherwise.")


class CutReport(WireModel):
    """What the sensor did for a CutCommand, and what is still open afterwards (read back from the kernel)."""

    pod: str
    nonce: str
    destroyed: list[CutSocket] = Field(default_factory=list)
    failed: list[CutSocket] = Field(default_factory=list)
    stopped: list[int] = Field(default_factory=list, description="Pids signalled.")
    remaining: list[CutSocket] = Field(
        default_factory=list, description="Sockets not kept by the command that are still open after the cut."
    )
    errors: list[str] = Field(
        default_factory=list,
        description="What the sensor could not do (a pid it refused or could not signal, a socket read that failed).",
    )

    @property
    def confirmed(self) -> bool:
        """The cut is confirmed when nothing it had to cut is still open and nothing it was asked failed."""
        return not self.remaining and not self.failed and not self.errors
