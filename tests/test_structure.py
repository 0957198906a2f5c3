"""The package layout: stages import only to their left, parameters have one home."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "spray"
#: the data flow; a stage may import itself, the shared leaf modules and the stages before it
ORDER = ["errors", "config", "data", "lrp", "analysis", "verdict", "store", "report", "export",
         "run", "ci", "cli"]
#: leaf modules every stage may use (they import no other part of spray)
SHARED = {"errors", "progress"}
#: stages that are peers (neither before the other)
PEERS = [{"data", "lrp", "analysis"}, {"report", "export"}]


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "spray" else None


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno


def _allowed(src: str, dst: str) -> bool:
    if src == dst or dst in SHARED:
        return True
    if any({src, dst} <= group for group in PEERS):
        return False
    return ORDER.index(dst) < ORDER.index(src)


def test_no_stage_imports_a_stage_to_its_right():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        src = _stage("spray." + ".".join(path.relative_to(ROOT).with_suffix("").parts))
        if src in SHARED:
            assert not [m for m, _ in _imports(path) if _stage(m) and _stage(m) != src], path
            continue
        if src not in ORDER:
            continue
        for module, line in _imports(path):
            dst = _stage(module)
            if dst in ORDER and not _allowed(src, dst):
                wrong.append(f"{path.relative_to(ROOT.parent)}:{line} ({src} imports {module})")
    assert not wrong, "imports against the data flow:\n" + "\n".join(wrong)


@pytest.mark.parametrize("stage", ["analysis", "verdict"])
def test_parameters_are_read_from_the_typed_preset_sections(stage):
    """Defaults are written once, in spray/config/presets.py: no ``params.get(key, default)``."""
    found = []
    for path in sorted((ROOT / stage).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "get" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id.endswith("params") and len(node.args) == 2):
                found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}")
    assert not found, "defaults outside the preset schema: " + ", ".join(found)
