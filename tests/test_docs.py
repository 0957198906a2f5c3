"""The docs cannot drift from the code or from the measurements they quote."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tables():
    spec = importlib.util.spec_from_file_location("tables", ROOT / "tests/benchmarks/tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_tables_are_generated_from_their_json():
    tables = _tables()
    stale = [str(p) for p in sorted((ROOT / "docs").rglob("*.md"))
             if tables.render(p) != p.read_text()]
    assert not stale, f"regenerate with python tests/benchmarks/tables.py: {stale}"


def test_a_table_marker_is_rendered_from_its_json(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({
        "command": "python bench.py", "columns": ["n", "ratio"],
        "rows": [{"n": 1000, "ratio": 2.3456, "extra": 1}, {"n": 5000, "ratio": None}]}))
    doc = tmp_path / "d.md"
    doc.write_text("before\n<!-- table: r.json -->\nold\n<!-- /table -->\nafter\n")
    text = _tables().render(doc)
    assert "| n | ratio |\n|---|---|\n| 1000 | 2.35 |\n| 5000 | — |" in text
    assert "Command: `python bench.py`." in text and "extra" not in text
    assert text.startswith("before\n") and text.endswith("<!-- /table -->\nafter\n")


def test_readme_is_for_users_and_links_only_existing_files():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 8192
    import re

    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to a missing file: {target}"
