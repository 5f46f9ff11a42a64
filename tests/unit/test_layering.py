"""The import layering is enforced: a wrong-way import makes lint-imports (and so `make test`) fail."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env={"PYTHONPATH": str(tree / "operator"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "operator", tmp_path / "operator", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    return tmp_path


def test_the_layering_holds_today(tree: Path) -> None:
    result = lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        ("api/v1alpha1.py", "import trainguard.detection", "cli > handlers > k8s"),
        ("detection/__init__.py", "import kubernetes", "are pure"),
        ("sensor/__init__.py", "import kopf", "the sensor is its own process"),
        ("handlers/__init__.py", "import kubernetes", "only trainguard.k8s talks to the Kubernetes API"),
    ],
)
def test_a_wrong_way_import_breaks_the_build(tree: Path, module: str, bad_import: str, contract: str) -> None:
    path = tree / "operator" / "trainguard" / module
    path.write_text(path.read_text() + f"\n{bad_import}  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert f"{contract}" in result.stdout and "BROKEN" in result.stdout, result.stdout
