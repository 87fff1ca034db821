"""The package layout: every import between comgen's packages points downwards, and there is no cycle.

Why a test: the layers (docs/architecture.md) are what lets a reader follow the data flow; an upward import is easy
to add by accident and hard to see in a review.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "comgen"

# lower number = lower layer; a module may import its own package and any lower layer
LAYERS = {
    "errors": 0, "config": 0, "io": 0, "progress": 0, "runtime": 0, "compiled": 0, "tensor_ops": 0, "records": 0,
    "rundir": 0,
    "data": 1,
    "features": 2,
    "components": 3,
    "evaluate": 3,
    "generate": 4, "masks": 4, "detect": 4, "export_runtime": 4,
    "peers": 5,
    "pipeline": 6, "serve": 6,
    "benchmarks": 7,
    "cli": 8,
}
CORE = {name for name, layer in LAYERS.items() if layer == 0}  # one floor: its modules may import each other
# CLI glue: each stage's commands.py registers its commands and may import upwards (lazily)
COMMANDS = "commands.py"
# records.Sample reads its image through the data layer, lazily (a convenience of the record, not a dependency)
ALLOWED = {("records", "data")}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported comgen package, at module level?) for every import of a comgen module in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("comgen."):
            out.append((node.module.split(".")[1], id(node) in top))
        elif isinstance(node, ast.Import):
            out += [(a.name.split(".")[1], id(node) in top) for a in node.names if a.name.startswith("comgen.")]
    return out


def _package(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def test_every_package_has_a_layer():
    packages = {_package(p) for p in SRC.rglob("*.py") if p.name != "__init__.py" or p.parent != SRC}
    assert packages - {"__init__"} <= set(LAYERS), sorted(packages - set(LAYERS))


def test_imports_point_downwards():
    upward = []
    for path in SRC.rglob("*.py"):
        if path.name == COMMANDS or path.parent == SRC and path.name == "__init__.py":
            continue
        own = _package(path)
        for target, _ in _imports(path):
            if target == own or (own, target) in ALLOWED or {own, target} <= CORE:
                continue
            if LAYERS[target] >= LAYERS[own]:
                upward.append(f"{path.relative_to(SRC)} imports comgen.{target}")
    assert not upward, "\n".join(sorted(upward))


def test_stage_packages_import_each_other_nowhere():
    stages = {"generate", "masks", "detect"}
    crossing = [f"{p.relative_to(SRC)} -> {t}" for p in SRC.rglob("*.py") if _package(p) in stages
                and p.name != COMMANDS for t, _ in _imports(p) if t in stages and t != _package(p)]
    assert not crossing, crossing
