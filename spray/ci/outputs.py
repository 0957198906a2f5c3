"""The CI outputs of a verdict: the table, JUnit XML, Markdown, GitHub annotations and the
verdict lines printed after a run."""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from spray.ci.evidence import (
    _CONTROL,
    VOUCHED,
    _finite,
    _num,
    _plain,
    _reason,
    _suspect_size,
    failing,
)


def _verdict(e: dict) -> str:
    if e.get("watch") and not e.get("flagged"):
        return "watch"
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
        lines.append(f"{_plain(e['name'])[:20]:<20} {e.get('n_samples') or 0:>7} {score:>8} "
                     f"{_verdict(e):>9} {'' if size is None else size:>8}")
    return "\n".join(lines)


def junit(summary: dict, path: Path) -> None:
    """One test case per class: failure = flagged (new/worse with a baseline), error = failed."""
    fails = failing(summary)
    errors = [e for e in summary["classes"] if e.get("status") not in VOUCHED]
    skipped = [e for e in summary["classes"] if e.get("status") == "skipped"]
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
        if e.get("watch"):
            ET.SubElement(case, "system-out").text = (
                f"watch: score {_num(e.get('score'))} within {summary.get('watch_margin')} of the "
                f"threshold {e.get('threshold')}")
        if id(e) in fail_ids:
            ET.SubElement(case, "failure", message=_reason(e), type="CleverHans").text = \
                json.dumps([cl for cl in e["clusters"] if cl.get("suspect")], indent=1)[:20000]
        elif e.get("status") not in VOUCHED:  # failed, incomplete: the gate cannot vouch
            ET.SubElement(case, "error", message=f"analysis {e.get('status')}: "
                                                 f"{e.get('reason', '')}")
        elif e.get("status") != "ok":
            ET.SubElement(case, "skipped", message=f"{e.get('status')}: {e.get('reason', '')}")
        elif e.get("flagged"):
            ET.SubElement(case, "system-out").text = "accepted in the baseline: " + _reason(e)
    for node in suite.iter():
        node.attrib = {k: _plain(v) for k, v in node.attrib.items()}
        if node.text:
            node.text = _CONTROL.sub("?", node.text)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>&~])")


def _md(text) -> str:
    """Markdown table cell: plain text, Markdown punctuation backslash-escaped (no HTML entities,
    no links or markup from class names), one line."""
    return _MD_SPECIAL.sub(r"\\\1", _plain(text))


def ci_run_url(env=None) -> str | None:
    """The URL of the CI job that runs the check (GitHub Actions, GitLab CI), if any."""
    env = os.environ if env is None else env
    if env.get("GITHUB_SERVER_URL") and env.get("GITHUB_REPOSITORY") and env.get("GITHUB_RUN_ID"):
        return (f"{env['GITHUB_SERVER_URL'].rstrip('/')}/{env['GITHUB_REPOSITORY']}/actions/runs/"
                f"{env['GITHUB_RUN_ID']}")
    return env.get("CI_JOB_URL") or None


def markdown(summary: dict, report_link: str | None = None, ci_url: str | None = None) -> str:
    fails = failing(summary)
    with_baseline = "baseline_counts" in summary
    problems = summary.get("gate_problems") or []
    if problems:
        head = f"**The run cannot be vouched for** ({len(problems)} problem(s))"
    elif fails:
        why = " (new or worse than the baseline)" if with_baseline else ""
        head = f"**{len(fails)} class(es) flagged{why}**"
    else:
        head = "**No class flagged**" if not summary.get("flagged") else \
            "**No new or worse flags** (all flags accepted in the baseline)"
    lines = ["## spray: Clever-Hans check", "", head, ""]
    if problems:
        lines += [f"- {_md(p)}" for p in problems] + [""]
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
    watch = [e for e in summary["classes"] if e.get("watch")]
    if watch:
        lines += ["", f"### Watch (within {summary.get('watch_margin')} below the threshold)"]
        lines += [f"- {_md(_watch_line(e))}" for e in watch]
    if ci_url:
        lines += ["", f"Report: in the artifacts of [this CI run]({ci_url})"
                  + (f" (`{_plain(report_link)}`)" if report_link else "")]
    elif report_link:
        lines += ["", f"Report: `{_plain(report_link)}`"]
    return "\n".join(lines) + "\n"


def _watch_line(e: dict) -> str:
    best = max((cl for cl in e.get("clusters", []) if _finite(cl.get("score"))),
               key=lambda cl: cl["score"], default=None)
    shown = (f"; best candidate: cluster {best.get('id')} of {best.get('size')} samples"
             if best else "")
    return (f"class {_plain(e['name'])} ({e['class']}): score {_num(e.get('score'))}, threshold "
            f"{e.get('threshold')}{shown}")


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
            text = f"class {_plain(e['name'])}: {e.get('reason', '')}"
            out.append(f"::warning title=spray: analysis failed::{_gh_escape(text)}")
    return out


def verdict_lines(summary: dict, report_dir: Path | None = None, best: int = 3) -> list[str]:
    """The verdict in a few lines: flagged classes (score, suspect size, class page), the
    watch band and the next-best classes."""
    def page(e):
        name = f"class_{e['class']}.html"
        return f" — {report_dir / name}" if report_dir else ""

    flagged = [e for e in summary["classes"] if e.get("flagged")]
    lines = []
    for e in flagged:
        against = ("below" if e.get("score") is not None and e.get("threshold") is not None
                   and e["score"] < e["threshold"] else "≥")
        gate = ("" if e.get("gate_score") is None or e.get("score") is None
                or e["gate_score"] <= e["score"] else
                f" (gate score {_num(e['gate_score'])}: the transplant test's effect lies "
                f"{_num(e['gate_score'] - e['threshold'])} errors past its bar)")
        lines.append(f"flagged: {_plain(e['name'])} ({e['class']}): score {_num(e['score'])} "
                     f"{against} {e.get('threshold')}{gate}, suspect group of "
                     f"{_suspect_size(e)} of {e.get('n_samples')} samples{page(e)}")
    for e in summary["classes"]:
        if e.get("watch"):
            lines.append(f"watch: {_watch_line(e)}{page(e)}")
    rest = sorted((e for e in summary["classes"] if not e.get("flagged") and not e.get("watch")
                   and e.get("score") is not None), key=lambda e: -e["score"])[:best]
    if rest:
        lines.append("next best: " + ", ".join(f"{_plain(e['name'])} {_num(e['score'])}"
                                               for e in rest))
    if not flagged:
        lines.insert(0, "verdict: no class flagged")
    return lines
