"""The wheel's package list (pyproject.toml) against the tree: a new sub-package left out of it would be missing
from every non-editable install, while the editable checkout kept working."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
REPO = Path(__file__).resolve().parents[2]


def test_every_package_of_the_tree_is_in_the_wheel():
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = tool["package-dir"]
    listed = set(tool["packages"])
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for top in ("trainer", "models", "data", "optim")
        for init in (REPO / top).rglob("__init__.py")
    }
    assert found | set(mapped) == listed
    for package, folder in mapped.items():  # configs/ and scripts/templates/ are packages of their own in the wheel
        assert (REPO / folder / "__init__.py").is_file(), package
        assert tool["package-data"][package]
