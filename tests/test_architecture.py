"""The import rule (README "Architecture"): dependencies point one way, bottom to top.

Every module of the project is parsed (not executed) and each import it makes, at the top or inside a
function, is checked against the rooms it may use. A new upward import fails here with the module,
the line and the room it reached.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# top-level packages, bottom to top; a package may import those listed for it (and itself)
PACKAGE_MAY_IMPORT = {
    "feature_gen": set(),
    "trainer": {"feature_gen"},
    "spark_jobs": {"feature_gen"},
    "export": {"feature_gen"},
    "ranker_integration": {"feature_gen"},
    "hllm": {"feature_gen", "trainer", "spark_jobs", "export", "ranker_integration"},
}

# rooms inside feature_gen: config <- model <- data <- inference <- evaluation, streaming; store <- config
ROOM_MAY_IMPORT = {
    "config": set(),
    "model": {"config"},
    "data": {"config", "model"},
    "inference": {"config", "model", "data"},
    "evaluation": {"config", "model", "data", "inference"},
    "store": {"config"},
    "streaming": {"config", "model", "data", "inference", "store"},
    # the public API (feature_gen/api.py): the top of feature_gen; reaches the store through a Protocol
    "api": {"config", "model", "data", "inference", "evaluation"},
    "logs": set(),
}
# feature_gen/logs.py (the logging setup and progress reporter) imports nothing of the project: any room may use it
for _allowed in ROOM_MAY_IMPORT.values():
    _allowed.add("logs")


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGE_MAY_IMPORT for p in (REPO / pkg).rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) for every import in the file; a relative one (`from ..streaming import x`)
    is resolved against the file's own package, so it cannot slip past the rule."""
    found = []
    package = list(path.relative_to(REPO).with_suffix("").parts)[:-1]  # the package the file is in
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - (node.level - 1)] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            if not module:
                continue
            found.append((node.lineno, module))
            if module == "feature_gen" or (node.level and not node.module):  # `from feature_gen import data`,
                found += [(node.lineno, f"{module}.{a.name}") for a in node.names]  # `from .. import data`: rooms
    return found


def _room(parts: tuple[str, ...]) -> str | None:
    if parts[0] != "feature_gen" or len(parts) < 2:
        return None
    return parts[1].removesuffix(".py")


def violations() -> list[str]:
    bad = []
    for path in _modules():
        rel = path.relative_to(REPO)
        pkg, own_room = rel.parts[0], _room(rel.parts)
        for line, module in _imports(path):
            parts = tuple(module.split("."))
            target = parts[0]
            if target not in PACKAGE_MAY_IMPORT or target == pkg and pkg != "feature_gen":
                continue
            if target != pkg and target not in PACKAGE_MAY_IMPORT[pkg]:
                bad.append(f"{rel}:{line} imports {module} ({pkg} may import {sorted(PACKAGE_MAY_IMPORT[pkg])})")
                continue
            if pkg == "feature_gen" and own_room not in (None, "__init__"):
                room = _room(parts)
                if room and room != own_room and room not in ROOM_MAY_IMPORT[own_room]:
                    bad.append(f"{rel}:{line} imports {module} (feature_gen/{own_room} may import "
                               f"{sorted(ROOM_MAY_IMPORT[own_room])})")
    return bad


def test_every_room_of_feature_gen_is_declared():
    rooms = {p.name.removesuffix(".py") for p in (REPO / "feature_gen").iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.name != "__init__.py")}
    assert rooms == set(ROOM_MAY_IMPORT), f"rooms on disk {sorted(rooms)} vs the rule {sorted(ROOM_MAY_IMPORT)}"


def test_imports_point_one_way():
    assert violations() == []


def test_the_rule_catches_an_upward_import(tmp_path, monkeypatch):
    # the checker itself must be able to fail: plant an upward import and expect it reported
    fake = REPO / "feature_gen" / "config_upward_probe.py"
    assert not fake.exists()
    fake.write_text("from hllm.cli import main\nfrom feature_gen.streaming import refresh\nfrom .streaming import events\n")
    try:
        monkeypatch.setitem(ROOM_MAY_IMPORT, "config_upward_probe", {"config"})
        found = violations()
    finally:
        fake.unlink()
    assert any("config_upward_probe.py:1 imports hllm.cli" in v for v in found)
    assert any("config_upward_probe.py:2 imports feature_gen.streaming" in v for v in found)
    assert any("config_upward_probe.py:3 imports feature_gen.streaming" in v for v in found)  # relative, resolved


@pytest.mark.parametrize("package", ["feature_gen", "trainer", "spark_jobs", "export", "ranker_integration"])
def test_nothing_imports_the_front_door(package):
    for path in (REPO / package).rglob("*.py"):
        assert not [m for _, m in _imports(path) if m.split(".")[0] == "hllm"], path
