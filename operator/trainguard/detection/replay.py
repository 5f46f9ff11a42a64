"""`trainguard replay`: run the detection engine over recorded traces.

    trainguard replay --policy job.yaml trace.jsonl [trace.jsonl ...] [--output json]

Samples from all traces are merged in time order and fed to one engine (one job), with a clock
that follows the samples; `tick` runs once a second of trace time, so a pod whose samples stop
while others continue is found silent. The timeline shows every decision (time, pod, rule, evidence,
action), then a summary.

Exit status: 0 when no violation was found, 3 when violations were found, 2 on bad input: a
policy that does not load or validate, a trace that cannot be read, or malformed lines in a
trace (each reported on stderr with its file and line, skipped, and the replay goes on; found
violations still win and exit 3).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml
from pydantic import ValidationError

from trainguard.api import validation
from trainguard.api.sample import Sample
from trainguard.api.v1alpha1 import AgentTrainingJob
from trainguard.detection.context import EngineContext
from trainguard.detection.engine import Engine, ManualClock
from trainguard.detection.trace import LineError, read_samples
from trainguard.detection.violation import Decision, iso

EXIT_CLEAN = 0
EXIT_BAD_INPUT = 2
EXIT_VIOLATIONS = 3
#: Seconds of trace time between two `Engine.tick` calls.
TICK_SECONDS = 1.0


class BadInput(Exception):
    """Input that stops the replay before it starts; the message names the file (and line)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (__doc__ or "").split("\n\n")[0]
    parser.epilog = "exit status: 0 no violation, 3 violations found, 2 bad input"
    parser.add_argument("--policy", required=True, type=Path, help="an AgentTrainingJob YAML file")
    parser.add_argument("traces", nargs="+", type=Path, help="JSON Lines traces, one sample per line")
    parser.add_argument("--output", choices=("text", "json"), default="text", help="text timeline or JSON lines")
    parser.add_argument(
        "--dns-resolver",
        action="append",
        default=[],
        metavar="IP",
        help="the cluster DNS resolver (repeatable); default: port 53 to any address is DNS",
    )
    parser.add_argument(
        "--pod-ip",
        action="append",
        default=[],
        metavar="IP",
        help="an IP of the job's pods (repeatable); the local addresses in the traces are learned too",
    )
    parser.add_argument("--sensor-port", type=int, default=9400, help="the sensor's own port (default 9400)")


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


# --- the traces ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    ts: float
    order: int
    sample: Sample


def load_traces(paths: Sequence[Path]) -> tuple[list[_Entry], list[LineError]]:
    entries: list[_Entry] = []
    errors: list[LineError] = []
    for path in paths:
        try:
            with path.open("rb") as fh:
                for _, item in read_samples(fh, str(path)):
                    if isinstance(item, LineError):
                        errors.append(item)
                    else:
                        entries.append(_Entry(item.ts, len(entries), item))
        except OSError as err:
            raise BadInput(f"{path}: cannot read the trace: {err.strerror or err}") from err
    entries.sort(key=lambda e: (e.ts, e.order))
    return entries, errors


# --- the run ---------------------------------------------------------------------------------


def replay(job: AgentTrainingJob, samples: Sequence[Sample], context: EngineContext) -> list[Decision]:
    """Every decision the engine makes over the samples (already in time order)."""
    clock = ManualClock()
    engine = Engine(job.spec.policy, context, clock, job.spec.monitoring)
    decisions: list[Decision] = []
    last_tick: float | None = None
    for sample in samples:
        clock.set(max(clock.now, sample.ts))
        # The clock ticks once a second of trace time, as the operator's would.
        if last_tick is None or sample.ts >= last_tick + TICK_SECONDS:
            decisions.extend(engine.tick(sample.ts))
            last_tick = sample.ts
        decisions.extend(engine.observe(sample))
    return decisions


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
        entries, errors = load_traces(args.traces)
        context = EngineContext(
            dns_resolvers=frozenset(args.dns_resolver),
            job_pod_ips=frozenset(args.pod_ip),
            sensor_port=args.sensor_port,
        )
        samples = [e.sample for e in entries]
        decisions = replay(job, samples, context)
    except (BadInput, ValueError) as problem:
        # ValueError: a --pod-ip that is not an address, a bad `re:` pattern in the policy.
        print(f"trainguard replay: {problem}", file=err)
        return EXIT_BAD_INPUT
    for line_error in errors:
        print(f"trainguard replay: {line_error}", file=err)
    pods = len({s.pod for s in samples})
    summary = _summary(decisions, len(samples), pods, len(errors))
    if args.output == "json":
        for d in decisions:
            record: dict[str, Any] = d.to_dict()
            out.write(json.dumps(record, sort_keys=False) + "\n")
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
