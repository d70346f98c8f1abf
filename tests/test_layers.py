"""The layer contract (docs/design.md, "Layers"; ``[tool.importlinter]`` in pyproject.toml).

``make lint`` runs ``lint-imports``; these tests run it too, so that ``make test`` (and CI) catch a
broken layer, and they check that every module of the package sits in some layer: a new module
that no layer names would be unchecked.
"""

from __future__ import annotations

import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import classifier

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")


def _contracts() -> list[dict]:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["tool"]["importlinter"]["contracts"]


def _layer_modules() -> list[str]:
    (layers,) = [c for c in _contracts() if c["type"] == "layers"]
    return [m.strip() for layer in layers["layers"] for m in layer.replace(":", "|").split("|")]


def test_every_module_is_in_a_layer() -> None:
    layered = _layer_modules()
    # packages whose __init__ holds only a docstring; their modules are what the layers name
    containers = {"classifier", "classifier.evaluation"}
    modules = [m.name for m in pkgutil.walk_packages(classifier.__path__, "classifier.")]
    assert "classifier.serving.runtime" in modules
    unplaced = [m for m in modules if m not in containers
                and not any(m == layer or m.startswith(layer + ".") for layer in layered)]
    assert not unplaced, f"add these modules to a layer in pyproject.toml [tool.importlinter]: {unplaced}"


@pytest.mark.slow
def test_import_contracts_are_kept() -> None:
    pytest.importorskip("importlinter")
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe is not None
    out = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert f"Contracts: {len(_contracts())} kept, 0 broken." in out.stdout
