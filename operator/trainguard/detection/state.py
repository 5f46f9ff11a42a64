"""The engine's state as a small JSON document: what must survive an operator restart.

Kept: the standing violations and the findings being debounced (their counts, first and last
seen, evidence, action), each pod's last seq, and the job's escalation counts (occurrences and
distinct rules). Not kept, and rebuilt from the next samples: the GPU windows of the mining
signature (a miner gains up to one window, 60 s, after a restart) and the gap history. A restored
pod's silence clock starts at the restore. The operator keeps the document in the job's status.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from trainguard.api.v1alpha1 import Action
from trainguard.detection.violation import EvidenceValue

STATE_VERSION: Literal[1] = 1


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrackState(_Doc):
    """A finding being followed for one pod: pending (debouncing) or standing (a violation)."""

    rule: str
    identity: str
    first_seen: float = Field(alias="firstSeen")
    last_seen: float = Field(alias="lastSeen")
    evidence: dict[str, EvidenceValue] = Field(default_factory=dict)
    count: int = Field(ge=0)
    clean: int = Field(default=0, ge=0)
    clean_since: float = Field(default=0.0, alias="cleanSince")
    standing: bool = False
    occurrence: int = Field(default=0, ge=0)
    action: Action = "Alert"


class PodState(_Doc):
    seq: int | None = None
    tracks: list[TrackState] = Field(default_factory=list)


class EngineState(_Doc):
    """The whole document."""

    version: Literal[1] = STATE_VERSION
    occurrences: int = Field(default=0, ge=0)
    distinct_rules: list[str] = Field(default_factory=list, alias="distinctRules")
    pods: dict[str, PodState] = Field(default_factory=dict)
