"""Package data: the label schema, build config, price table, training presets and report templates
are files inside ``classifier/`` read with ``importlib.resources``, so an installed wheel has them.

A wheel only carries the non-Python files that ``[tool.setuptools.package-data]`` in pyproject.toml
names: every such file under ``classifier/`` must match one of its patterns, or an installed
``tierwise`` would lose it while the checkout still works.
"""

from __future__ import annotations

import fnmatch
from importlib.resources import files
from pathlib import Path

import pytest

from classifier.data.builder import DEFAULT_CONFIG
from classifier.data.schema import DEFAULT_SCHEMA_PATH, LabelSchema
from classifier.evaluation.prices import DEFAULT_PRICES_PATH, Prices
from classifier.training.config import PRESET_DIR

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")


def test_every_data_file_of_the_package_is_in_package_data() -> None:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        package_data = tomllib.load(fh)["tool"]["setuptools"]["package-data"]
    package_dir = ROOT / "classifier"
    data_files = [p for p in package_dir.rglob("*") if p.is_file() and p.suffix not in {".py", ".pyc"}
                  and "__pycache__" not in p.parts]
    assert len(data_files) >= 12
    unlisted = []
    for path in data_files:
        rel = path.relative_to(ROOT)
        listed = any(
            rel.parts[: len(pkg.split("."))] == tuple(pkg.split("."))
            and any(fnmatch.fnmatch("/".join(rel.parts[len(pkg.split(".")):]), pattern) for pattern in patterns)
            for pkg, patterns in package_data.items()
        )
        if not listed:
            unlisted.append(str(rel))
    assert not unlisted, f"add these to [tool.setuptools.package-data] in pyproject.toml: {unlisted}"


def test_defaults_are_package_files_read_through_importlib_resources() -> None:
    assert DEFAULT_SCHEMA_PATH == Path(str(files("classifier.data") / "schema.yaml"))
    assert LabelSchema.from_yaml(DEFAULT_SCHEMA_PATH).head_names == ["tier", "task", "sensitivity"]
    assert "llmrouter/cheap-pool" in Prices.from_yaml(DEFAULT_PRICES_PATH)
    assert DEFAULT_CONFIG.is_file() and {p.stem for p in PRESET_DIR.glob("*.yaml")} == {"default", "quick"}
    templates = files("classifier.evaluation") / "templates"
    assert {"report.html.j2", "report.md.j2", "drift.html.j2", "drift.md.j2"} <= {t.name for t in templates.iterdir()}
