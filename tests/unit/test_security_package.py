"""The security package ships its data, is type-checked, and depends on no other layer."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "security"


def test_the_package_is_in_the_wheel_and_checked_by_mypy():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "security" in config["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert "security" in config["tool"]["mypy"]["packages"]


def test_no_forced_inclusion_duplicates_a_file_that_a_package_already_ships():
    # hatchling refuses to build a wheel holding the same path twice.
    targets = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"][
        "targets"
    ]["wheel"]
    packages = targets["packages"]
    for source in targets.get("force-include", {}):
        assert not any(source == p or source.startswith(p + "/") for p in packages), source


def test_the_common_password_list_lives_inside_the_package_with_its_licence():
    data = PACKAGE / "data"
    assert (data / "common-passwords.txt").stat().st_size > 100_000
    assert "BSD" in (data / "README.md").read_text()
    assert "Redistribution" in (data / "LICENSE.common-passwords").read_text()


def test_security_imports_nothing_from_the_ingress_workers_projections_or_infra():
    forbidden = ("app", "workers", "projections", "infra", "events", "telemetry")
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"


def test_modules_stay_small():
    for path in PACKAGE.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 220, path.name
