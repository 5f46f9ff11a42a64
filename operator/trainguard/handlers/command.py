"""`trainguard run`: the operator. Parse flags, wire the reconciler, the work queue, /metrics and kopf, run."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import os
import secrets
import signal

import kopf
from prometheus_client import start_http_server

from trainguard.builders import BuildSettings, SensorSettings, sensorkey
from trainguard.detection import EngineContext
from trainguard.handlers import logs
from trainguard.handlers.operator import WatchSettings, Wiring, registry, work
from trainguard.k8s.client import Api, ApiError, NoCluster, connect
from trainguard.k8s.enforcer import EnforcerSettings
from trainguard.k8s.guard import Guard, GuardSettings
from trainguard.k8s.metrics import OperatorMetrics
from trainguard.k8s.reconcile import Reconciler
from trainguard.k8s.workqueue import WorkQueue

log = logging.getLogger("trainguard.operator")


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults, sensor, watch = BuildSettings(), SensorSettings(), WatchSettings()
    add = parser.add_argument
    add("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, else in-cluster)")
    add(
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch only this namespace (repeat for more); default: every namespace",
    )
    add(
        "--operator-namespace",
        default=os.environ.get("POD_NAMESPACE", defaults.operator_namespace),
        help="the operator's namespace, the only one that may reach a sensor (default: $POD_NAMESPACE or %(default)s)",
    )
    add("--sensor-image", default=sensor.image, help="the sensor's image (default %(default)s)")
    add("--sensor-port", type=int, default=sensor.port, help="the sensor's port in every pod (default %(default)s)")
    add("--sensor-uid", type=int, default=sensor.uid, help="the sensor's own uid and gid (default %(default)s)")
    add("--resync", type=_positive, default=60.0, help="seconds between two reconciles of a quiet job (default 60)")
    add("--workers", type=int, default=4, help="reconciles run at once (default 4)")
    add("--metrics-port", type=int, default=8080, help="port of /metrics, 0 for none (default 8080)")
    add("--metrics-address", default="0.0.0.0", help="address of /metrics (default 0.0.0.0)")
    add("--health-port", type=int, default=0, help="port of kopf's /healthz liveness endpoint, 0 for none")
    add(
        "--admission-policy",
        action="store_true",
        help="apply the ValidatingAdmissionPolicy and its binding (for the watched namespaces) at start",
    )
    add(
        "--admission-user",
        action="append",
        default=[],
        metavar="USER",
        help="who, besides this operator's own identity, may change trainguard.io/ labels on guarded pods",
    )
    add(
        "--peering",
        metavar="NAME",
        help="coordinate replicas through this KopfPeering (the peering CRDs must be installed); default standalone",
    )
    add(
        "--priority",
        type=int,
        default=0,
        help="this replica's peering priority: the highest runs, lower ones pause; give replicas distinct ones",
    )
    add("--watch-server-timeout", type=_positive, default=watch.server_timeout_s, help="seconds (default %(default)s)")
    add("--watch-client-timeout", type=_positive, default=watch.client_timeout_s, help="seconds (default %(default)s)")
    add(
        "--watch-connect-timeout", type=_positive, default=watch.connect_timeout_s, help="seconds (default %(default)s)"
    )
    add(
        "--watch-inactivity-timeout",
        type=_positive,
        default=watch.inactivity_timeout_s,
        help="seconds without any event or bookmark before a watch is reopened (default %(default)s)",
    )
    add(
        "--request-timeout",
        type=_positive,
        default=watch.request_timeout_s,
        help="seconds one API request (not a watch) may take (default %(default)s)",
    )
    add(
        "--sensor-master-key-file",
        default=os.environ.get("TRAINGUARD_SENSOR_MASTER_KEY_FILE"),
        metavar="FILE",
        help="the master key each job's sensor key is derived from, as text (at least 32 characters, e.g. 64 hex"
        " digits; whitespace around it is ignored; the chart mounts it from a"
        " Secret); default $TRAINGUARD_SENSOR_MASTER_KEY_FILE, else a random key for this process only (a warning)",
    )
    add(
        "--dns-ip",
        action="append",
        default=[],
        metavar="IP",
        help="a cluster DNS resolver address (repeat for more); default: the kube-dns Service's ClusterIPs",
    )
    add("--cut-timeout", type=_positive, default=2.0, help="seconds for a sensor to confirm a cut, then Delete")
    add("--stop-signal", choices=("STOP", "KILL"), default="STOP", help="what a cut sends the offending processes")
    add("--no-guard", action="store_true", help="reconcile only: no sensor streams, no detection, no enforcement")
    add("--log-format", choices=("text", "json"), default="text", help="log lines as text (default) or JSON")
    add("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_format, args.log_level)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1` dumps every thread's stack to stderr
    if args.workers < 1:
        log.error("--workers must be at least 1")
        return 2
    settings = BuildSettings(
        sensor=SensorSettings(image=args.sensor_image, port=args.sensor_port, uid=args.sensor_uid),
        operator_namespace=args.operator_namespace,
    )
    try:
        api = Api(connect(args.kubeconfig), timeout=(args.watch_connect_timeout, args.request_timeout))
    except NoCluster as error:
        log.error("cannot reach a cluster: %s", error)
        return 1
    metrics = OperatorMetrics()
    reconciler = Reconciler(api, settings, metrics)
    guard: Guard | None = None
    if not args.no_guard:
        try:
            master = _master_key(args.sensor_master_key_file)
            dns = frozenset(args.dns_ip) or None
            EngineContext(dns_resolvers=dns or frozenset())  # checks the addresses
        except (OSError, ValueError) as error:
            log.error("%s", error)
            return 2
        guard = Guard(
            api,
            metrics,
            GuardSettings(
                master_key=master,
                sensor_port=args.sensor_port,
                dns_ips=dns,
                enforcer=EnforcerSettings(
                    sensor_port=args.sensor_port, cut_timeout_s=args.cut_timeout, signal=args.stop_signal
                ),
            ),
        )
        guard.start()
        reconciler.observer = guard
    namespaces = sorted(set(args.namespace)) or None
    if args.admission_policy:
        try:
            me = api.whoami()
            reconciler.install_admission_policy(namespaces, [me, *args.admission_user])
        except ApiError as error:
            log.error("could not apply the admission policy: %s", error)
            return 1
        log.info("admission policy applied for %s (operator identity %s)", namespaces or "every namespace", me)
    if args.metrics_port:
        try:
            start_http_server(args.metrics_port, addr=args.metrics_address, registry=metrics.registry)
        except OSError as error:
            log.error("cannot serve /metrics on %s:%d: %s", args.metrics_address, args.metrics_port, error.strerror)
            return 1
        log.info("metrics on %s:%d", args.metrics_address, args.metrics_port)
    queues: list[WorkQueue] = []
    queue = WorkQueue(work(reconciler, lambda: queues[0]), workers=args.workers)
    queues.append(queue)
    watch = WatchSettings(
        server_timeout_s=args.watch_server_timeout,
        client_timeout_s=args.watch_client_timeout,
        connect_timeout_s=args.watch_connect_timeout,
        inactivity_timeout_s=args.watch_inactivity_timeout,
        request_timeout_s=args.request_timeout,
    )
    reg = registry(Wiring(reconciler, queue), watch, args.resync, args.workers)
    try:
        asyncio.run(
            kopf.operator(
                registry=reg,
                clusterwide=namespaces is None,
                namespaces=namespaces or (),
                standalone=args.peering is None,
                peering_name=args.peering,
                priority=args.priority,
                liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None,
            )
        )
    finally:
        queue.stop()
        if guard is not None:
            guard.stop()
    return 0


def _master_key(path: str | None) -> bytes:
    if not path:
        log.warning(
            "no --sensor-master-key-file: sensor keys are derived from a random key that dies with this process;"
            " a restart changes every job's key"
        )
        return secrets.token_bytes(32)
    try:
        data = open(path, "rb").read().strip()  # noqa: SIM115
    except OSError as error:
        raise OSError(f"--sensor-master-key-file {path}: {error.strerror}") from None
    if len(data) < sensorkey.MIN_MASTER_BYTES:
        raise ValueError(
            f"--sensor-master-key-file {path}: at least {sensorkey.MIN_MASTER_BYTES} bytes, got {len(data)}"
        )
    return data
