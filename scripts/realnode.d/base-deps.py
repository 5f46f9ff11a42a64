"""Print `name==version` for every distribution the base install of trainguard needs, as the venv has them.

The transitive closure of trainguard's requirements without extras, evaluated for this interpreter: what the sensor
image of the Dockerfile installs (`pip install .`). `scripts/realnode` builds its sensor image from this list, so that
a new base dependency can never be missing there (the hand-kept list once lacked msgspec and the sensor died on import).
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys

from packaging.requirements import Requirement


def closure(root: str) -> dict[str, str]:
    seen: dict[str, str] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        dist = md.distribution(name)
        for line in dist.requires or ():
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            key = re.sub(r"[-_.]+", "-", req.name).lower()
            if key not in seen:
                seen[key] = md.version(req.name)
                todo.append(req.name)
    return seen


def main() -> int:
    for name, version in sorted(closure("trainguard").items()):
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
