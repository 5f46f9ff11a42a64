"""Reading AgentTrainingJobs from untrusted input, with errors that name the field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from trainguard.api.v1alpha1 import AgentTrainingJob


class InvalidResource(ValueError):
    """An object that is not a valid AgentTrainingJob. `problems` has one 'field.path: message' each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def field_path(loc: tuple[int | str, ...]) -> str:
    """('spec', 'policy', 'egress', 0, 'cidr') -> 'spec.policy.egress[0].cidr'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def describe(error: ValidationError) -> list[str]:
    """One line per problem, 'camelCase.path: message', in the order pydantic found them."""
    lines = []
    for e in error.errors(include_url=False):
        loc = tuple(e["loc"])
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            message = "unknown field"
        lines.append(f"{field_path(loc)}: {message}")
    return lines


def parse_agent_training_job(obj: Mapping[str, Any]) -> AgentTrainingJob:
    """Validate a decoded AgentTrainingJob (e.g. from YAML or the API); raise InvalidResource."""
    if not isinstance(obj, Mapping):
        raise InvalidResource([f"<root>: expected an object, got {type(obj).__name__}"])
    try:
        return AgentTrainingJob.model_validate(obj)
    except ValidationError as e:
        raise InvalidResource(describe(e)) from None
