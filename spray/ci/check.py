"""``spray check``: turn a run's summary into a CI verdict (table, exit code, JUnit, Markdown).

Without a baseline every flagged class fails the check (exit 1). With ``--baseline OLD_RUN``
(an accepted earlier run: its folder, its ``report/`` folder or its ``summary.json``) a flagged
class fails only when it is

* ``new``: not flagged in the baseline (or absent from it), or flagged there for a *different*
  group of samples (suspect members overlap by less than :data:`SAME_SUSPECT_JACCARD` in
  Jaccard index, when both runs list members), or
* ``worse``: flagged in both, but its score rose by more than the margin (``--baseline-margin``,
  default :data:`DEFAULT_MARGIN`, in score units) or its suspect cluster grew by more than
  :data:`GROWTH` (relative size).

Otherwise it is ``accepted`` (known and no worse: reported, not failed). Classes flagged in the
baseline but not any more are reported as ``resolved``. Classes whose analysis failed are shown
as errors in the JUnit file and the table but do not change the exit code.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

from spray.errors import SprayError, StoreError

#: score rise (in score units) above which an accepted flag counts as worse
DEFAULT_MARGIN = 0.5
#: relative growth of the suspect cluster above which an accepted flag counts as worse
GROWTH = 0.5
#: suspect clusters with a member Jaccard index below this are different findings
SAME_SUSPECT_JACCARD = 0.3

FAILING = ("new", "worse")


def _summary_path(run_dir: str | Path) -> Path:
    p = Path(run_dir)
    if p.is_file():
        return p
    if (p / "summary.json").is_file() and not (p / "report").exists():
        return p / "summary.json"
    return p / "report" / "summary.json"


def load_summary(run_dir: str | Path, rebuild: bool = True) -> dict:
    """The run's ``summary.json`` (rebuilt from the store when it is missing and ``rebuild``)."""
    path = _summary_path(run_dir)
    if not path.is_file():
        if not rebuild:
            raise StoreError(f"{run_dir}: no run summary found (expected {path}); give the "
                             f"folder of a finished run or its summary.json")
        from spray.report.summary import write_summary

        write_summary(run_dir)  # rebuild from the store (raises StoreError if there is none)
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise StoreError(f"{path}: cannot read the run summary: {err}") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("classes"), list):
        raise StoreError(f"{path}: not a spray run summary (no 'classes' list)")
    return summary


def _suspects(entry: dict) -> list[dict]:
    """The suspect clusters of a class, the best (``suspect_cluster``) first."""
    found = [cl for cl in entry.get("clusters", []) if cl.get("suspect")]
    return sorted(found, key=lambda cl: cl.get("id") != entry.get("suspect_cluster"))


def _suspect(entry: dict) -> dict | None:
    found = _suspects(entry)
    return found[0] if found else None


def _suspect_size(entry: dict):
    """Samples in all suspect clusters of the class (None without a suspect)."""
    found = _suspects(entry)
    return sum(cl.get("size") or 0 for cl in found) if found else None


def _suspect_members(entry: dict) -> list | None:
    found = [cl["members"] for cl in _suspects(entry) if cl.get("members") is not None]
    return [m for members in found for m in members] if found else None


def _reason(entry: dict) -> str:
    cl = _suspect(entry) or {}
    size = cl.get("size")
    bits = [f"class {entry['name']} ({entry['class']}): score {entry['score']:.2f} >= threshold "
            f"{entry.get('threshold')}; suspect cluster {cl.get('id')} of {size} samples "
            f"({100 * float(cl.get('fraction', 0)):.0f} %) whose relevance is tightly grouped "
            f"although their inputs are not"]
    ev = []
    if "conductance_relevance" in cl:
        ev.append(f"conductance relevance {cl['conductance_relevance']:.3g} vs input "
                  f"{cl.get('conductance_input', float('nan')):.3g}")
    if cl.get("input_randomness") is not None:
        ev.append(f"input conductance {cl['input_randomness']:.2f} x random")
    if cl.get("concentration") is not None:
        ev.append(f"{100 * cl['concentration']:.0f} % of its relevance difference in "
                  f"{100 * float((entry.get('flag_params') or {}).get('concentration_area', 0.1)):.0f}"
                  f" % of the area")
    if cl.get("split_from") is not None:
        ev.append(f"split off cluster {cl['split_from']} by its spectral bisection")
    if ev:
        bits.append("(" + "; ".join(ev) + ")")
    more = _suspects(entry)[1:]
    if more:
        bits.append("; also suspect: " + ", ".join(
            f"cluster {m.get('id')} ({m.get('size')} samples, score {_num(m.get('score'))})"
            for m in more))
    if entry.get("baseline"):
        bits.append(f"[baseline: {entry['baseline']}"
                    + (f" — {entry['baseline_reason']}" if entry.get("baseline_reason") else "")
                    + "]")
    return " ".join(bits)


def _jaccard(a, b) -> float | None:
    if not a or not b:
        return None
    a, b = set(a), set(b)
    return len(a & b) / len(a | b)


def compare(summary: dict, baseline: dict, margin: float = DEFAULT_MARGIN) -> dict:
    """Mark every class of ``summary`` with ``baseline`` status; returns counts by status.

    Adds to each entry ``baseline`` (``new``, ``worse``, ``accepted``, ``resolved`` or None for
    classes that are not flagged in either run) and ``baseline_reason``.
    """
    old = {int(e["class"]): e for e in baseline.get("classes", [])}
    counts = {"new": 0, "worse": 0, "accepted": 0, "resolved": 0}
    for e in summary["classes"]:
        prev = old.get(int(e["class"]))
        status, why = None, ""
        if e.get("flagged"):
            if prev is None or not prev.get("flagged"):
                status = "new"
                why = "not in the baseline" if prev is None else \
                    f"not flagged in the baseline (score there {_num(prev.get('score'))})"
            else:
                jac = _jaccard(_suspect_members(e), _suspect_members(prev))
                cur_size, old_size = _suspect_size(e) or 0, _suspect_size(prev) or 0
                rise = float(e["score"]) - float(prev.get("score") or 0.0)
                grow = cur_size / max(1, old_size) - 1.0
                if jac is not None and jac < SAME_SUSPECT_JACCARD:
                    status = "new"
                    why = (f"a different suspect group than the accepted one (member overlap "
                           f"{jac:.2f})")
                elif rise > margin:
                    status = "worse"
                    why = f"score {prev.get('score'):.2f} → {e['score']:.2f} (margin {margin})"
                elif old_size and grow > GROWTH:
                    status = "worse"
                    why = f"suspect group grew {old_size} → {cur_size}"
                else:
                    status = "accepted"
                    why = f"flagged in the baseline too (score {prev.get('score'):.2f})"
        elif prev is not None and prev.get("flagged"):
            status, why = "resolved", f"flagged in the baseline (score {_num(prev.get('score'))})"
        e["baseline"], e["baseline_reason"] = status, why
        if status:
            counts[status] += 1
    summary["baseline_counts"] = counts
    return counts


def _num(v) -> str:
    return "—" if v is None else f"{float(v):.2f}"


def failing(summary: dict) -> list[dict]:
    """Entries that fail the check: flagged (and, with a baseline, new or worse)."""
    with_baseline = "baseline_counts" in summary
    return [e for e in summary["classes"] if e.get("flagged")
            and (not with_baseline or e.get("baseline") in FAILING)]


def _verdict(e: dict) -> str:
    if e.get("flagged"):
        return {"accepted": "accepted", "new": "NEW", "worse": "WORSE"}.get(e.get("baseline"),
                                                                            "FLAGGED")
    if e.get("status") == "ok":
        return "resolved" if e.get("baseline") == "resolved" else "ok"
    return str(e.get("status"))


def table(summary: dict) -> str:
    lines = [f"{'class':<20} {'n':>7} {'score':>8} {'verdict':>9} {'suspect':>8}"]
    for e in summary["classes"]:
        score = "" if e.get("score") is None else f"{e['score']:.3f}"
        size = _suspect_size(e) if e.get("flagged") else None
        lines.append(f"{str(e['name'])[:20]:<20} {e.get('n_samples') or 0:>7} {score:>8} "
                     f"{_verdict(e):>9} {'' if size is None else size:>8}")
    return "\n".join(lines)


def junit(summary: dict, path: Path) -> None:
    """One test case per class: failure = flagged (new/worse with a baseline), error = failed."""
    fails = failing(summary)
    errors = [e for e in summary["classes"] if e.get("status") == "failed"]
    skipped = [e for e in summary["classes"] if e.get("status") not in ("ok", "failed")]
    suite = ET.Element("testsuite", name="spray.clever-hans", tests=str(len(summary["classes"])),
                       failures=str(len(fails)), errors=str(len(errors)),
                       skipped=str(len(skipped)))
    props = ET.SubElement(suite, "properties")
    for key in ("spray_version", "config_hash", "created"):
        ET.SubElement(props, "property", name=key, value=str(summary.get(key)))
    fail_ids = {id(e) for e in fails}
    for e in summary["classes"]:
        case = ET.SubElement(suite, "testcase", classname="spray.ci.check",
                             name=f"class {e['name']} ({e['class']})")
        if id(e) in fail_ids:
            ET.SubElement(case, "failure", message=_reason(e), type="CleverHans").text = \
                json.dumps([cl for cl in e["clusters"] if cl.get("suspect")], indent=1)[:20000]
        elif e.get("status") == "failed":
            ET.SubElement(case, "error", message=f"analysis failed: {e.get('reason', '')}")
        elif e.get("status") != "ok":
            ET.SubElement(case, "skipped", message=f"{e.get('status')}: {e.get('reason', '')}")
        elif e.get("flagged"):
            ET.SubElement(case, "system-out").text = "accepted in the baseline: " + _reason(e)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def _md(text) -> str:
    """Markdown table cell: escape pipes, drop newlines, neutralise HTML."""
    return (str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
            .replace("<", "&lt;").replace(">", "&gt;"))


def markdown(summary: dict, report_link: str | None = None) -> str:
    fails = failing(summary)
    with_baseline = "baseline_counts" in summary
    if fails:
        why = " (new or worse than the baseline)" if with_baseline else ""
        head = f"**{len(fails)} class(es) flagged{why}**"
    else:
        head = "**No class flagged**" if not summary.get("flagged") else \
            "**No new or worse flags** (all flags accepted in the baseline)"
    lines = ["## spray: Clever-Hans check", "", head, ""]
    if with_baseline:
        c = summary["baseline_counts"]
        lines += [f"Baseline: {c['new']} new, {c['worse']} worse, {c['accepted']} accepted, "
                  f"{c['resolved']} resolved.", ""]
    lines += ["| class | n | score | threshold | verdict | suspect cluster size |",
              "|---|---|---|---|---|---|"]
    ranked = sorted(summary["classes"], key=lambda e: -(e.get("score") if e.get("score") is not None
                                                         else -1e9))
    for e in ranked:
        score = "" if e.get("score") is None else f"{e['score']:.3f}"
        verdict = _verdict(e)
        if e in fails:
            verdict = "🚩 " + verdict.lower()
        size = _suspect_size(e) if e.get("flagged") else None
        lines.append(f"| {_md(e['name'])} | {e.get('n_samples') or ''} | {score} | "
                     f"{_md(e.get('threshold', ''))} | {_md(verdict)} | "
                     f"{'' if size is None else size} |")
    if fails:
        lines += ["", "### Why"] + [f"- {_md(_reason(e))}" for e in fails]
    if report_link:
        lines += ["", f"Report: {report_link}"]
    return "\n".join(lines) + "\n"


def _gh_escape(text: str) -> str:
    return str(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def github_annotations(summary: dict) -> list[str]:
    """GitHub Actions workflow commands: an error per failing class, a notice per accepted one."""
    out = []
    fail_ids = {id(e) for e in failing(summary)}
    for e in summary["classes"]:
        if id(e) in fail_ids:
            out.append(f"::error title={_gh_escape('spray: Clever-Hans candidate')}::"
                       f"{_gh_escape(_reason(e))}")
        elif e.get("flagged"):
            out.append(f"::notice title=spray: accepted Clever-Hans flag::{_gh_escape(_reason(e))}")
        elif e.get("status") == "failed":
            text = f"class {e['name']}: {e.get('reason', '')}"
            out.append(f"::warning title=spray: analysis failed::{_gh_escape(text)}")
    return out


def check(run_dir: str | Path, junit_path: str | None = None, markdown_path: str | None = None,
          baseline: str | None = None, margin: float = DEFAULT_MARGIN) -> int:
    """Print the verdict table; write the requested CI files; return the exit code (1 = flags)."""
    summary = load_summary(run_dir)
    if baseline:
        compare(summary, load_summary(baseline, rebuild=False), margin=margin)
    print(table(summary))
    if junit_path:
        try:
            junit(summary, Path(junit_path))
        except OSError as err:
            raise SprayError(f"--junit {junit_path}: cannot write the JUnit file: "
                             f"{err.strerror or err}") from None
    if markdown_path:
        report = Path(run_dir) / "report" / "index.html"
        step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
        mode = "a" if step_summary and Path(step_summary) == Path(markdown_path) else "w"
        try:
            with open(markdown_path, mode, encoding="utf-8") as fh:  # job summaries are appended to
                fh.write(markdown(summary, str(report) if report.is_file() else None))
        except OSError as err:
            raise SprayError(f"--markdown {markdown_path}: cannot write the Markdown summary: "
                             f"{err.strerror or err}") from None
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for line in github_annotations(summary):
            print(line)
    fails = failing(summary)
    if baseline:
        c = summary["baseline_counts"]
        print(f"baseline {baseline}: {c['new']} new, {c['worse']} worse, {c['accepted']} "
              f"accepted, {c['resolved']} resolved")
    if fails:
        print(f"flagged: {', '.join(str(e['name']) for e in fails)}")
        return 1
    print("no class flagged" if not summary.get("flagged") else
          "no new or worse flags than the baseline")
    return 0
