"""Regenerate the benchmark tables in docs/ from the JSON the benchmarks write.

Every benchmark writes its results as JSON under ``docs/benchmarks/`` (the ``--json`` option of
each script). A Markdown file shows one as a table between two markers::

    <!-- table: benchmarks/lrp-vit.json -->
    (generated)
    <!-- /table -->

The path is relative to the Markdown file. The JSON is either a list of rows (objects) or an
object with ``rows`` and optionally ``columns`` (the keys to show, in order), ``command`` (shown
under the table) and ``env`` (machine, load, versions: shown under the table). Run::

    python tests/benchmarks/tables.py            # rewrite every table in docs/
    python tests/benchmarks/tables.py --check    # exit 1 if a table is out of date

``tests/test_docs.py`` runs the check, so a table cannot drift from its JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
MARKER = re.compile(r"(<!-- table: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value).replace("|", "\\|")


def render_table(data) -> str:
    """Markdown for one JSON result (see the module docstring for the accepted shapes)."""
    spec = data if isinstance(data, dict) else {"rows": data}
    rows = spec["rows"]
    columns = spec.get("columns") or list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    notes = []
    if spec.get("command"):
        notes.append(f"Command: `{spec['command']}`.")
    if spec.get("env"):
        notes.append("Measured on: " + ", ".join(f"{k} {v}" for k, v in spec["env"].items()) + ".")
    return "\n".join(lines) + ("\n\n" + " ".join(notes) if notes else "") + "\n"


def render(path: Path) -> str:
    """The text of a Markdown file with every table regenerated from its JSON."""
    text = path.read_text()

    def replace(match: re.Match) -> str:
        source = (path.parent / match.group("path")).resolve()
        table = render_table(json.loads(source.read_text()))
        return f"{match.group(1)}{table}{match.group(4)}"

    return MARKER.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale tables")
    args = parser.parse_args(argv)
    stale = []
    for path in sorted(DOCS.rglob("*.md")):
        new = render(path)
        if new != path.read_text():
            stale.append(path)
            if not args.check:
                path.write_text(new)
    for path in stale:
        print(f"{'stale' if args.check else 'updated'}: {path}", file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
