"""Admission webhooks are live: a pod the job controller creates passes through a mutating webhook that this test
serves on 127.0.0.1 over TLS."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.conftest import Cluster
from tests.integration.test_controllers import job_body, job_pods
from tests.polling import wait_for

LABEL = "trainguard.io/mutated"


def _certificates(directory: Path) -> tuple[bytes, Path, Path]:
    """A CA and a serving certificate for 127.0.0.1 signed by it: (CA PEM, cert file, key file)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webhook-test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = directory / "tls.crt", directory / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca.public_bytes(serialization.Encoding.PEM), cert_file, key_file


@dataclass
class LabelWebhook:
    """A mutating webhook that adds LABEL to every object it reviews and records the requests."""

    port: int
    ca_pem: bytes
    requests: list[dict[str, Any]] = field(default_factory=list)


def _handler(webhook: LabelWebhook) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            request = review["request"]
            webhook.requests.append(request)
            labels = request["object"]["metadata"].get("labels")
            patch = (
                [{"op": "add", "path": "/metadata/labels/" + LABEL.replace("/", "~1"), "value": "true"}]
                if labels
                else [{"op": "add", "path": "/metadata/labels", "value": {LABEL: "true"}}]
            )
            answer = {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {
                    "uid": request["uid"],
                    "allowed": True,
                    "patchType": "JSONPatch",
                    "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
                },
            }
            body = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def webhook(tmp_path: Path) -> Iterator[LabelWebhook]:
    ca_pem, cert_file, key_file = _certificates(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    hook = LabelWebhook(port=0, ca_pem=ca_pem)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hook))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    hook.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="label-webhook", daemon=True)
    thread.start()
    yield hook
    server.shutdown()
    server.server_close()


def test_job_pod_passes_through_mutating_webhook(control_plane: Cluster, namespace: str, webhook: LabelWebhook) -> None:
    name = f"{namespace}-label"
    control_plane.admission.create_mutating_webhook_configuration(
        {
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "label.trainguard.io",
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{webhook.port}/mutate",
                        "caBundle": base64.b64encode(webhook.ca_pem).decode(),
                    },
                    "rules": [
                        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}
                    ],
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 5,
                }
            ],
        }
    )
    try:
        probe = {"metadata": {"name": "probe"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}

        def webhook_active() -> bool:
            created = control_plane.core.create_namespaced_pod(namespace, probe, dry_run="All")
            return LABEL in (created.metadata.labels or {})

        wait_for(webhook_active, 30, "the API server does not call the webhook yet")

        control_plane.batch.create_namespaced_job(namespace, job_body("hooked"))
        pod = wait_for(lambda: job_pods(control_plane, namespace, "hooked"), 30, "the job controller made no pod")[0]
        assert pod.metadata.labels.get(LABEL) == "true", pod.metadata.labels
        by_job_controller = [
            r
            for r in webhook.requests
            if not r.get("dryRun") and r["userInfo"]["username"] == "system:serviceaccount:kube-system:job-controller"
        ]
        assert by_job_controller, [r["userInfo"]["username"] for r in webhook.requests]
        assert by_job_controller[0]["kind"] == {"group": "", "version": "v1", "kind": "Pod"}
    finally:
        control_plane.admission.delete_mutating_webhook_configuration(name)
