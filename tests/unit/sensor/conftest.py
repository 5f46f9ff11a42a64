from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "proc"


@pytest.fixture
def handmade() -> str:
    return str(FIXTURES / "handmade")


@pytest.fixture
def real() -> str:
    return str(FIXTURES / "real")


def real_listener_pid() -> int:
    """The captured listener process (the non-1 pid in the real capture)."""
    return next(int(p.name) for p in (FIXTURES / "real").iterdir() if p.name.isdigit() and p.name != "1")
