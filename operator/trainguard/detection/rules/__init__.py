"""The detection rules, one module per family: processes, GPUs, the network, the sensor.

`CHAIN` is every sample rule in the order it runs; `RULES` names every rule, the engine's own
(`sensor.silent`, `sensor.identity`) included.
"""

from __future__ import annotations

from trainguard.detection.rules import gpu, network, process, sensor
from trainguard.detection.rules.base import Check, Rule, RuleInput

CHAIN: tuple[Rule, ...] = (*process.RULES, *gpu.RULES, *network.RULES, *sensor.RULES)
RULES: dict[str, Rule] = {r.name: r for r in (*CHAIN, *sensor.OUTSIDE)}

__all__ = ["CHAIN", "RULES", "Check", "Rule", "RuleInput"]
