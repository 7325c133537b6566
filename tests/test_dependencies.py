"""The dependency spec: every import is declared, and requirements.lock pins what pyproject.toml allows."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata

from packaging.requirements import Requirement

from helpers import REPO

# The project's own packages (what pyproject.toml installs) and the benchmarks beside them.
PACKAGES = (*tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"], "bench")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _requirements(extra: str | None = None) -> list[Requirement]:
    project = _project()
    reqs = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return [Requirement(r) for r in reqs]


def _lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line):
            pins[_norm(m[1])] = m[2]
    return pins


def _imported_top_levels(folders) -> dict[str, str]:
    """Top-level modules imported anywhere under ``folders`` (absolute imports): name -> a file importing it."""
    found = {}
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def _undeclared(folders, declared: set[str], local: set[str]) -> list[str]:
    dists = metadata.packages_distributions()
    missing = []
    for name, where in sorted(_imported_top_levels(folders).items()):
        if name in sys.stdlib_module_names or name in local or name == "__future__":
            continue
        providers = {_norm(d) for d in dists.get(name, [])}
        if not providers & declared:
            missing.append(f"{name} ({where}; provided by {', '.join(sorted(providers)) or 'nothing installed'})")
    return missing


def test_every_import_of_the_packages_is_a_declared_dependency():
    declared = {_norm(r.name) for r in _requirements()}
    assert _undeclared(PACKAGES, declared, set(PACKAGES)) == []


def test_every_import_of_the_tests_is_declared_with_the_dev_extra():
    declared = {_norm(r.name) for r in _requirements() + _requirements("dev")}
    local = set(PACKAGES) | {p.stem for p in (REPO / "tests").rglob("*.py")}
    assert _undeclared(["tests"], declared, local) == []


def test_the_lock_pins_every_dependency_within_its_declared_range():
    pins = _lock()
    wrong = []
    for req in _requirements() + _requirements("dev"):
        pin = pins.get(_norm(req.name))
        if pin is None or not req.specifier.contains(pin, prereleases=True):
            wrong.append(f"{req} (lock: {pin})")
    assert wrong == [], "pyproject.toml and requirements.lock disagree: run `make lock`"


def test_the_installed_runtime_dependencies_are_the_locked_versions():
    """The tests run with the versions the lock records (what `make install` installs)."""
    pins = _lock()
    drift = []
    for req in _requirements():
        installed = metadata.version(req.name)
        if installed.split("+")[0] != pins.get(_norm(req.name)):
            drift.append(f"{req.name} {installed} (lock: {pins.get(_norm(req.name))})")
    assert drift == [], "the environment differs from requirements.lock: run `make install`"
