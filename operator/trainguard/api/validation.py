"""Reading AgentTrainingJobs from untrusted input, with errors that name the field."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: where (pydantic's loc, camelCase names) and what."""

    loc: tuple[int | str, ...]
    message: str

    def __str__(self) -> str:
        return f"{field_path(self.loc)}: {self.message}" if self.loc else self.message


def problems(error: ValidationError) -> list[Problem]:
    """Each problem pydantic found, in its order, with messages a user can act on."""
    out = []
    for e in error.errors(include_url=False):
        message = "unknown field" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        out.append(Problem(tuple(e["loc"]), message))
    return out


def describe(error: ValidationError) -> list[str]:
    """One line per problem, 'camelCase.path: message', in the order pydantic found them."""
    return [str(p) for p in problems(error)]


def parse_agent_training_job(obj: Mapping[str, Any]) -> AgentTrainingJob:
    """Validate a decoded AgentTrainingJob (e.g. from YAML or the API); raise InvalidResource."""
    if not isinstance(obj, Mapping):
        raise InvalidResource([f"<root>: expected an object, got {type(obj).__name__}"])
    try:
        return AgentTrainingJob.model_validate(obj)
    except ValidationError as e:
        raise InvalidResource(describe(e)) from None
