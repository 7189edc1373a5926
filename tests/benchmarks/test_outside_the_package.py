"""The bench and the rounds it studies stay beside the installed package: no module of
``mglightning`` imports or names a module of ``benchmarks``, and setup.py packages none."""

import ast
import re
from pathlib import Path

import pytest

from mglightning.config import SOURCE_CONF_DIR

REPO_ROOT = SOURCE_CONF_DIR.parent
PACKAGE = REPO_ROOT / "mglightning"
BENCHMARKS = re.compile(r"^benchmarks(\.|$)")


def module_names(source: Path) -> set[str]:
    """Every module ``source`` imports, at its top or inside a function, and every string
    that reads as a dotted module path (a ``_target_``, an ``import_module`` argument)."""
    names = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)
    return names


def test_no_module_of_the_package_imports_the_benchmarks():
    named = {path.relative_to(REPO_ROOT): module_names(path) for path in PACKAGE.rglob("*.py")}
    assert "mglightning.models.network" in set().union(*named.values())  # the walk sees imports
    assert not {str(path): sorted(filter(BENCHMARKS.match, names))
                for path, names in named.items() if any(map(BENCHMARKS.match, names))}


def test_no_config_builds_a_part_from_the_benchmarks():
    targets = {line.split("_target_:")[1].strip() for path in SOURCE_CONF_DIR.rglob("*.yaml")
               for line in path.read_text().splitlines() if "_target_:" in line}
    assert "mglightning.federated.local.ProximalSGD" in targets  # the scan reads the targets
    assert not list(filter(BENCHMARKS.match, targets))


def test_the_wheel_packages_no_module_of_the_benchmarks(monkeypatch):
    pytest.importorskip("setuptools")
    from distutils.core import run_setup  # setuptools' copy, once setuptools is imported

    monkeypatch.chdir(REPO_ROOT)
    packages = run_setup("setup.py", stop_after="init").packages
    assert "mglightning.federated" in packages  # setup.py's own list, read
    assert not [package for package in packages if "bench" in package]
