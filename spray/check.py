"""``spray check``: turn a run's summary into a CI verdict (table, exit code, JUnit, Markdown)."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

from spray.errors import StoreError


def load_summary(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "report" / "summary.json"
    if not path.is_file():
        from spray.report import write_report

        write_report(run_dir)  # rebuild from the store (raises StoreError if there is none)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise StoreError(f"{path}: cannot read the run summary: {err}") from None


def _suspect_size(entry: dict):
    return next((cl["size"] for cl in entry.get("clusters", []) if cl.get("suspect")), None)


def _reason(entry: dict) -> str:
    size = _suspect_size(entry)
    return (f"class {entry['name']} ({entry['class']}): score {entry['score']:.2f} >= threshold "
            f"{entry.get('threshold')}; suspect cluster of {size} samples whose relevance is "
            f"tightly grouped although their inputs are not")


def table(summary: dict) -> str:
    lines = [f"{'class':<20} {'n':>7} {'score':>8} {'verdict':>9} {'suspect':>8}"]
    for e in summary["classes"]:
        score = "" if e.get("score") is None else f"{e['score']:.3f}"
        verdict = "FLAGGED" if e["flagged"] else ("ok" if e["status"] == "ok" else e["status"])
        size = _suspect_size(e)
        lines.append(f"{str(e['name'])[:20]:<20} {e.get('n_samples') or 0:>7} {score:>8} "
                     f"{verdict:>9} {'' if size is None else size:>8}")
    return "\n".join(lines)


def junit(summary: dict, path: Path) -> None:
    suite = ET.Element("testsuite", name="spray.clever-hans", tests=str(len(summary["classes"])),
                       failures=str(len(summary["flagged"])))
    for e in summary["classes"]:
        case = ET.SubElement(suite, "testcase", classname="spray.check", name=f"class {e['name']}")
        if e["flagged"]:
            ET.SubElement(case, "failure", message=_reason(e)).text = json.dumps(
                [cl for cl in e["clusters"] if cl.get("suspect")], indent=1)[:20000]
        elif e["status"] != "ok":
            ET.SubElement(case, "skipped", message=f"{e['status']}: {e.get('reason', '')}")
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def markdown(summary: dict) -> str:
    head = ("## spray: Clever-Hans check\n\n"
            + (f"**{len(summary['flagged'])} flagged class(es)**\n\n" if summary["flagged"]
               else "**No class flagged**\n\n")
            + "| class | n | score | verdict | suspect cluster size |\n|---|---|---|---|---|\n")
    rows = []
    for e in summary["classes"]:
        score = "" if e.get("score") is None else f"{e['score']:.3f}"
        verdict = "🚩 flagged" if e["flagged"] else e["status"]
        rows.append(f"| {e['name']} | {e.get('n_samples') or ''} | {score} | {verdict} | "
                    f"{_suspect_size(e) or ''} |")
    return head + "\n".join(rows) + "\n"


def check(run_dir: str | Path, junit_path: str | None = None, markdown_path: str | None = None) -> int:
    """Print the verdict table; write the requested CI files; return the exit code (1 = flags)."""
    summary = load_summary(run_dir)
    print(table(summary))
    if junit_path:
        junit(summary, Path(junit_path))
    if markdown_path:
        Path(markdown_path).write_text(markdown(summary))
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for e in summary["classes"]:
            if e["flagged"]:
                print(f"::error title=spray Clever-Hans candidate::{_reason(e)}")
    if summary["flagged"]:
        print(f"flagged: {', '.join(str(e['name']) for e in summary['classes'] if e['flagged'])}")
        return 1
    print("no class flagged")
    return 0
