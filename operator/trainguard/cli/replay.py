"""`trainguard replay`: run the detection engine over recorded traces.

    trainguard replay --policy job.yaml trace.jsonl [trace.jsonl ...] [--output json]
        [--dns-resolver IP ...] [--pod-ip IP ...] [--selector-peer INDEX=IP ...] [--run-on SECONDS]

Samples from all traces (version 1 or 2) are merged in time order and fed to one engine (one job),
with a clock that follows the samples and ticks once a second through the gaps between them
(`trainguard.detection.replay`). What the operator would read from the API server (the job's pod
IPs, the cluster DNS resolvers, the pods a selector rule selects) is taken from flags; what is not
given fails closed, and the replay says on stderr what it assumed. The timeline shows every
decision (time, pod, rule, evidence, action), then a summary.

Exit status: 3 when violations were found; else 2 on bad input: a policy that does not load or
validate, a flag that is not valid, a trace that cannot be read, malformed lines (each reported on
stderr with its file and line, skipped; the replay goes on), or no sample at all; else 0. An error
inside the engine is not bad input: it is raised (a traceback, exit status 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import yaml
from pydantic import ValidationError

from trainguard.api import validation
from trainguard.api.sample import Sample
from trainguard.api.v1alpha1 import AgentTrainingJob
from trainguard.detection import Decision, EngineContext
from trainguard.detection.replay import replay
from trainguard.detection.trace import LineError, read_samples
from trainguard.detection.violation import iso

EXIT_CLEAN = 0
EXIT_BAD_INPUT = 2
EXIT_VIOLATIONS = 3


class BadInput(Exception):
    """Input that stops the replay before it starts; the message names the file (and line) or flag."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (__doc__ or "").split("\n\n")[0]
    parser.epilog = "exit status: 0 no violation, 3 violations found, 2 bad input (or no sample)"
    parser.add_argument("--policy", required=True, type=Path, help="an AgentTrainingJob YAML file")
    parser.add_argument("traces", nargs="+", type=Path, help="JSON Lines traces, one sample per line")
    parser.add_argument("--output", choices=("text", "json"), default="text", help="text timeline or JSON lines")
    parser.add_argument(
        "--dns-resolver",
        action="append",
        default=[],
        metavar="IP",
        help="a cluster DNS resolver (repeatable); none given: no DNS is allowed",
    )
    parser.add_argument(
        "--pod-ip",
        action="append",
        default=[],
        metavar="IP",
        help="an IP of the job's pods (repeatable); none given: no traffic counts as the job's own",
    )
    parser.add_argument(
        "--selector-peer",
        action="append",
        default=[],
        metavar="INDEX=IP",
        help="an IP of a pod selected by egress rule INDEX (repeatable); unresolved selector rules allow nothing",
    )
    parser.add_argument("--sensor-port", type=int, default=9400, help="the sensor's own port (default 9400)")
    parser.add_argument(
        "--run-on",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep the clock running this long past the last sample (a sensor killed at the end is silent)",
    )


# --- the policy ------------------------------------------------------------------------------


def _line_of(node: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """The YAML line (1-based) of the deepest node along a pydantic error location."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node = child
        line = node.start_mark.line + 1
    return line


def load_policy(path: Path) -> AgentTrainingJob:
    """Read and validate an AgentTrainingJob; BadInput names the file, the line and the field path."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise BadInput(f"{path}: cannot read the policy: {err.strerror or err}") from err
    try:
        doc = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise BadInput(f"{where}: not valid YAML: {getattr(err, 'problem', None) or err}") from err
    if not isinstance(doc, dict):
        raise BadInput(f"{path}:1: expected an AgentTrainingJob object, got {type(doc).__name__}")
    try:
        return AgentTrainingJob.model_validate(doc)
    except ValidationError as err:
        lines = [f"{path}:{_line_of(node, p.loc) or 1}: {p}" for p in validation.problems(err)]
        raise BadInput("invalid AgentTrainingJob:\n  " + "\n  ".join(lines)) from err


# --- the traces and the context --------------------------------------------------------------


def load_traces(paths: Sequence[Path]) -> tuple[list[Sample], list[LineError]]:
    """Every sample of the traces in time order (stable), and the malformed lines."""
    entries: list[tuple[float, int, Sample]] = []
    errors: list[LineError] = []
    for path in paths:
        try:
            with path.open("rb") as fh:
                for _, item in read_samples(fh, str(path)):
                    if isinstance(item, LineError):
                        errors.append(item)
                    else:
                        entries.append((item.ts, len(entries), item))
        except OSError as err:
            raise BadInput(f"{path}: cannot read the trace: {err.strerror or err}") from err
    entries.sort(key=lambda e: (e[0], e[1]))
    return [e[2] for e in entries], errors


def make_context(args: argparse.Namespace, job: AgentTrainingJob) -> EngineContext:
    peers: dict[int, set[str]] = {}
    egress = job.spec.policy.network.egress
    for text in args.selector_peer:
        index, sep, ip = text.partition("=")
        if not sep or not index.strip().isdigit():
            raise BadInput(f"--selector-peer {text!r}: expected INDEX=IP, e.g. 2=10.244.3.7")
        i = int(index)
        if i >= len(egress) or egress[i].cidr is not None:
            raise BadInput(f"--selector-peer {text!r}: egress[{i}] is not a selector rule of the policy")
        peers.setdefault(i, set()).add(ip.strip())
    try:
        return EngineContext(
            dns_resolvers=frozenset(args.dns_resolver),
            job_pod_ips=frozenset(args.pod_ip),
            selector_peers={i: frozenset(v) for i, v in peers.items()},
            sensor_port=args.sensor_port,
        )
    except ValueError as err:
        raise BadInput(f"a flag is not valid: {err}") from err


def assumptions(job: AgentTrainingJob, ctx: EngineContext, run_on: float) -> list[str]:
    """What the replay assumed, for the reader (stderr)."""
    net = job.spec.policy.network

    def ips(values: frozenset[str]) -> str:
        return ", ".join(sorted(values))

    lines = ["samples are taken as coming from the pod they name (a recording cannot say which pod was dialled)"]
    if net.allow_dns:
        lines.append(
            f"DNS resolvers: {ips(ctx.dns_resolvers)}"
            if ctx.dns_resolvers
            else "DNS resolvers: none given (--dns-resolver): port 53 is judged as any other egress"
        )
    if net.allow_intra_job:
        lines.append(
            f"the job's pod IPs: {ips(ctx.job_pod_ips)}"
            if ctx.job_pod_ips
            else "the job's pod IPs: none given (--pod-ip): no traffic counts as the job's own"
        )
    for i, rule in enumerate(net.egress):
        if rule.cidr is None:
            peers = ctx.selector_peers.get(i)
            lines.append(
                f"egress[{i}] (selector): {ips(peers)}"
                if peers
                else f"egress[{i}] (selector): unresolved (--selector-peer {i}=IP): allows nothing"
            )
    lines.append(
        f"the clock runs {run_on:g} s past the last sample" if run_on else "the clock stops at the last sample"
    )
    return lines


# --- printing --------------------------------------------------------------------------------


def _text_line(d: Decision) -> str:
    v = d.violation
    action = f"{d.action}{' (dry run)' if d.dry_run else ''}"
    what = v.identity or "-"
    kind = {"new": "NEW    ", "updated": "UPDATED", "cleared": "CLEARED"}[d.kind]
    return f"{iso(d.time)}  {kind} {v.pod:<28} {v.rule:<22} {v.severity:<8} {action:<18} {what}  {v.summary()}"


def _summary(decisions: Sequence[Decision], samples: int, pods: int, errors: int) -> list[str]:
    new = [d for d in decisions if d.kind == "new"]
    lines = [
        f"{samples} samples from {pods} pods; {errors} malformed lines skipped",
        f"{len(new)} violations" + (":" if new else ""),
    ]
    by_rule = Counter((d.violation.rule, d.violation.severity) for d in new)
    for (rule, severity), n in sorted(by_rule.items()):
        actions = Counter(d.action for d in decisions if d.violation.rule == rule and d.kind != "cleared")
        strongest = ", ".join(f"{a} x{c}" for a, c in sorted(actions.items()))
        lines.append(f"  {rule:<24} {severity:<8} {n:>3}  actions: {strongest}")
    return lines


def run(args: argparse.Namespace) -> int:
    out: TextIO = sys.stdout
    err: TextIO = sys.stderr
    try:
        job = load_policy(args.policy)
        context = make_context(args, job)
        samples, errors = load_traces(args.traces)
    except BadInput as problem:
        print(f"trainguard replay: {problem}", file=err)
        return EXIT_BAD_INPUT
    for line_error in errors:
        print(f"trainguard replay: {line_error}", file=err)
    if not samples:
        print("trainguard replay: no sample in the traces: nothing was judged", file=err)
        return EXIT_BAD_INPUT
    for line in assumptions(job, context, args.run_on):
        print(f"trainguard replay: assumed: {line}", file=err)
    until = samples[-1].ts + args.run_on
    decisions = replay(job.spec.policy, samples, context, job.spec.monitoring, until=until)
    pods = len({s.pod for s in samples})
    summary = _summary(decisions, len(samples), pods, len(errors))
    if args.output == "json":
        for d in decisions:
            out.write(json.dumps(d.to_dict()) + "\n")
        for line in summary:
            print(line, file=err)
    else:
        for d in decisions:
            print(_text_line(d), file=out)
        if decisions:
            print(file=out)
        for line in summary:
            print(line, file=out)
    if any(d.kind == "new" for d in decisions):
        return EXIT_VIOLATIONS
    return EXIT_BAD_INPUT if errors else EXIT_CLEAN
