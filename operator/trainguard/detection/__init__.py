"""The detection engine: samples and a policy in, violations and decisions out. Pure, no Kubernetes.

    from trainguard.detection import Decision, Engine, EngineContext, Violation

Everything else in the package (the rules, the compiled policy, the windows, trace reading and
replay) sits behind these names; docs/detection.md describes them.
"""

from trainguard.detection.context import EngineContext
from trainguard.detection.engine import Engine
from trainguard.detection.violation import Decision, Violation

__all__ = ["Decision", "Engine", "EngineContext", "Violation"]
