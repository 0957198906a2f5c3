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
baseline but not any more are reported as ``resolved``. A baseline must come from the same model
code, kind of data, class list and analysis pipeline (:data:`BASELINE_FINGERPRINTS`); another is
refused (exit 2) unless ``baseline_any``.

The check fails closed: a run that did not finish, a class whose analysis failed or is missing,
a model that does not beat chance on the analysed samples (``health.max_chance_p``,
:mod:`spray.skill`) and a summary that is not the one of the store's last run exit with
code 3
(:class:`~spray.errors.IncompleteRunError`) unless ``allow_incomplete``. Classes within the watch
margin below the threshold are listed as ``watch`` and never fail.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from spray.ci.evidence import (
    VOUCHED,
    _finite,
    _num,
    _plain,
    _suspect_members,
    _suspect_size,
    failing,
)
from spray.ci.outputs import (
    ci_run_url,
    github_annotations,
    junit,
    markdown,
    table,
)
from spray.errors import IncompleteRunError, SprayError, StoreError
from spray.skill import learnt, max_chance_p, skill_text

#: score rise (in score units) above which an accepted flag counts as worse
DEFAULT_MARGIN = 0.5
#: relative growth of the suspect cluster above which an accepted flag counts as worse
GROWTH = 0.5
#: suspect clusters with a member Jaccard index below this are different findings
SAME_SUSPECT_JACCARD = 0.3

#: fingerprints a baseline run must share with the checked one (weights and samples may differ)
BASELINE_FINGERPRINTS = ("model_code", "dataset", "classes", "pipeline")


def _summary_path(run_dir: str | Path) -> Path:
    p = Path(run_dir)
    if p.is_file():
        return p
    if (p / "summary.json").is_file() and not (p / "report").exists():
        return p / "summary.json"
    return p / "report" / "summary.json"


def _rebuild(run_dir: Path) -> None:
    """Write ``RUN_DIR/report/summary.json`` from the store (nothing is written without one)."""
    from spray.report.summary import write_summary
    from spray.store import OwnedFiles, adopt_legacy_run, open_store

    open_store(run_dir)  # a mistyped path is refused before anything is created
    adopt_legacy_run(run_dir)
    files = OwnedFiles(run_dir)
    if not files.owns("report"):
        raise StoreError(f"{run_dir / 'report'} was not written by spray; refusing to write the "
                         f"run summary into it")
    files.claim_folder("report")
    write_summary(run_dir)


def load_summary(run_dir: str | Path, rebuild: bool = True) -> dict:
    """The run's ``summary.json`` (rebuilt from the store when it is missing and ``rebuild``)."""
    path = _summary_path(run_dir)
    if not path.is_file():
        if not rebuild or not Path(run_dir).is_dir():
            raise StoreError(f"{run_dir}: no run summary found (expected {path}); give the "
                             f"folder of a finished run or its summary.json")
        _rebuild(Path(run_dir))
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StoreError(f"{path}: cannot read the run summary: {err}") from None
    _validate_summary(summary, path)
    if "watch_margin" not in summary:
        from spray.report.summary import mark_watch

        summary["watch_margin"] = mark_watch(summary["classes"])
        summary["watch"] = [e["class"] for e in summary["classes"] if e.get("watch")]
    return summary


def _rate_ok(rate) -> bool:
    """A ``clean_rate`` entry the reason can be written from."""
    return isinstance(rate, dict) and all(_finite(rate.get(k)) for k in ("rate", "upper")) \
        and all(isinstance(rate.get(k), int) for k in ("exceeded", "of"))


def _validate_summary(summary, path: Path) -> None:
    """A summary the gate can read: every class entry with its number, name, status, a finite
    score (or none) and a boolean flag."""
    if not isinstance(summary, dict) or not isinstance(summary.get("classes"), list):
        raise StoreError(f"{path}: not a spray run summary (no 'classes' list)")
    for i, e in enumerate(summary["classes"]):
        where = f"{path}: class entry {i}"
        if not isinstance(e, dict) or not isinstance(e.get("class"), int) \
                or isinstance(e.get("class"), bool):
            raise StoreError(f"{where} has no class number; the summary is damaged or not "
                             f"spray's (rebuild it with 'spray report')")
        where = f"{path}: class {e['class']}"
        for key, ok in (("name", lambda v: v is not None),
                        ("status", lambda v: isinstance(v, str)),
                        ("flagged", lambda v: isinstance(v, bool)),
                        ("score", lambda v: v is None or _finite(v)),
                        ("threshold", lambda v: v is None or _finite(v)),
                        ("clusters", lambda v: isinstance(v, list)),
                        ("clean_rate", _rate_ok)):
            if key in ("threshold", "clean_rate") and key not in e:
                continue
            if key not in e or not ok(e[key]):
                raise StoreError(f"{where}: key '{key}' is missing or invalid "
                                 f"({e.get(key)!r}); the summary is damaged or not spray's")
        if not all(isinstance(cl, dict) for cl in e["clusters"]):
            raise StoreError(f"{where}: key 'clusters' holds a non-mapping entry")
    if "model_skill" in summary and not _skill_ok(summary["model_skill"]):
        raise StoreError(f"{path}: key 'model_skill' is invalid ({summary['model_skill']!r}); "
                         f"the summary is damaged or not spray's (rebuild it with 'spray "
                         f"report')")


def _skill_ok(skill) -> bool:
    """A ``model_skill`` record the gate can read: none (:func:`skill_problems` names it), or
    counts and either no test (``p_value`` None) or finite accuracy, chance, kappa and p-value."""
    if skill is None:
        return True
    if not isinstance(skill, dict) or not all(
            isinstance(skill.get(k), int) and not isinstance(skill.get(k), bool)
            for k in ("samples", "classes")):
        return False
    if skill.get("p_value") is None:
        return True
    return all(_finite(skill.get(k)) for k in ("accuracy", "chance", "kappa", "p_value"))


def gate_problems(summary: dict, run_dir: str | Path | None = None) -> list[str]:
    """Why the gate cannot vouch for this run (empty when it can).

    The run must have finished (``run_state``), its summary must be the one of the store's last
    run (when the store is there to compare with), and every class must be analysed (or skipped
    for having too few samples).
    """
    problems = []
    state = summary.get("run_state")
    store = _store_attrs(run_dir)
    if store is not None and store.get("run_state") != "finished" and state == "finished":
        problems.append(f"the run did not finish: the store was last written by a run in state "
                        f"'{store.get('run_state')}' and the summary is older; rerun the same "
                        f"command to resume it")
    elif state is None:
        problems.append("the summary records no run state (made by an older spray, or not a "
                        "run summary); rerun 'spray run'")
    elif state != "finished":
        problems.append(f"the run did not finish (state '{state}'); rerun the same command to "
                        f"resume it")
    elif store is not None and store.get("run_id") != summary.get("run_id"):
        problems.append(f"the summary is stale: it belongs to run {summary.get('run_id')} but "
                        f"the store was last written by run {store.get('run_id')}; rebuild it "
                        f"with 'spray report'")
    problems += skill_problems(summary)
    for e in summary["classes"]:
        if e.get("status") not in VOUCHED:
            why = f": {e['reason']}" if e.get("reason") else ""
            problems.append(f"class {_plain(e['name'])} ({e['class']}) is {e.get('status')}{why}")
    return problems


def skill_problems(summary: dict) -> list[str]:
    """The model does not beat chance on the analysed samples (``health.max_chance_p``), or the
    summary does not say (made by an older spray). None when it cannot be asked: fewer than
    two classes with known predictions (:mod:`spray.skill`)."""
    if not summary.get("model_skill"):
        return ["the summary records no model skill (made by an older spray); rebuild it with "
                "'spray report'"]
    skill, max_p = summary["model_skill"], max_chance_p(summary.get("health_limits"))
    if learnt(skill, max_p) is False:
        return [f"the model has not learnt: {skill_text(skill)}, above health.max_chance_p "
                f"{max_p:g}; relevance of a model at chance explains no decision, so no "
                f"verdict on it can be vouched for"]
    return []


def health_problems(summary: dict) -> list[str]:
    """Classes whose relevance health crosses the preset's ``health`` limits (``--fail-on
    health``); a class without health figures fails too (the gate cannot vouch for it)."""
    problems = []
    for e in summary["classes"]:
        if e.get("status") != "ok":
            continue  # not analysed: gate_problems names it
        name, h = f"class {_plain(e['name'])} ({e['class']})", e.get("health")
        limits = (h or {}).get("limits") or summary.get("health_limits")
        if not h or h.get("unrecorded") or not limits or "outside" not in h:
            missing = h.get("unrecorded") if h else None
            problems.append(f"{name}: relevance health not recorded"
                            f"{f' for {missing} samples' if missing else ''} (maps from an "
                            f"older spray or an attribution file); rerun with --overwrite")
            continue
        if h["nonfinite_samples"] > limits["max_nonfinite"]:
            problems.append(f"{name}: {h['nonfinite_samples']} of {h['samples']} relevance maps "
                            f"hold NaN/Inf (health.max_nonfinite {limits['max_nonfinite']})")
        if h["zero_maps"] > limits.get("max_zero_maps", 0):
            problems.append(f"{name}: {h['zero_maps']} of {h['samples']} relevance maps are all "
                            f"zero (health.max_zero_maps {limits.get('max_zero_maps', 0)})")
        share = h["outside"] / max(h["samples"], 1)
        if share > limits["max_outside"]:
            median = h.get("conservation_median")
            problems.append(
                f"{name}: conservation (relevance sum / explained logit) outside "
                f"[{limits['conservation_min']:g}, {limits['conservation_max']:g}] for "
                f"{h['outside']} of {h['samples']} samples ({share:.0%} > health.max_outside "
                f"{limits['max_outside']:.0%}; median "
                f"{'undefined' if median is None else f'{median:.3g}'})")
    return problems


def _print_health(summary: dict) -> list[str]:
    """Print the :func:`health_problems` of the run (``--fail-on health``); return them."""
    problems = health_problems(summary)
    for line in problems:
        print(f"health: {line}")
    if problems:
        print(f"relevance health fails for {len(problems)} check(s) (--fail-on health)")
    return problems


def _store_attrs(run_dir) -> dict | None:
    """Run state and id of the store the summary at ``run_dir`` belongs to (None without one).

    ``run_dir`` is a run folder, its ``report/`` folder or a ``summary.json`` (of a run folder
    when it lies in ``report/``).
    """
    if run_dir is None:
        return None
    p = Path(run_dir)
    folder = p if p.is_dir() else p.parent
    if folder.name == "report" and not (folder / "spray.zarr").exists():
        folder = folder.parent
    if not (folder / "spray.zarr").exists():
        return None
    from spray.store import open_store

    attrs = open_store(folder).attrs
    return {"run_id": attrs.get("run_id"), "run_state": attrs.get("run_state")}


def check_baseline(summary: dict, baseline: dict) -> None:
    """Refuse a baseline of another model, dataset, class list or pipeline (names the
    fingerprint that differs)."""
    ours, theirs = summary.get("fingerprints") or {}, baseline.get("fingerprints") or {}
    differ = [k for k in BASELINE_FINGERPRINTS
              if ours.get(k) is None or theirs.get(k) is None or ours.get(k) != theirs.get(k)]
    if differ:
        shown = ", ".join(f"{k} ({theirs.get(k) or 'unknown'} in the baseline, "
                          f"{ours.get(k) or 'unknown'} now)" for k in differ)
        raise SprayError(f"the baseline is not comparable: its fingerprints differ: {shown}. "
                         f"A baseline must come from the same model code, kind of data, class "
                         f"list and pipeline; pass --baseline-any to compare anyway")


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


def check(run_dir: str | Path, junit_path: str | None = None, markdown_path: str | None = None,
          baseline: str | None = None, margin: float = DEFAULT_MARGIN,
          allow_incomplete: bool = False, baseline_any: bool = False,
          fail_on: tuple[str, ...] = ()) -> int:
    """Print the verdict table; write the requested CI files; return the exit code.

    0: nothing (new) flagged; 1: flagged classes, or (``"health" in fail_on``) classes whose
    relevance health crosses the preset's limits (:func:`health_problems`); 3: the run cannot
    be vouched for (did not finish, failed or missing classes, stale summary) unless
    ``allow_incomplete``.
    """
    summary = load_summary(run_dir)
    if baseline:
        old = load_summary(baseline, rebuild=False)
        if not baseline_any:
            check_baseline(summary, old)
        compare(summary, old, margin=margin)
    problems = gate_problems(summary, run_dir)
    summary["gate_problems"] = [] if allow_incomplete else problems
    print(table(summary))
    if junit_path:
        try:
            junit(summary, Path(junit_path))
        except OSError as err:
            raise SprayError(f"--junit {junit_path}: cannot write the JUnit file: "
                             f"{err.strerror or err}") from None
    if markdown_path:
        report = _summary_path(run_dir).parent / "index.html"
        step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
        mode = "a" if step_summary and Path(step_summary) == Path(markdown_path) else "w"
        try:
            with open(markdown_path, mode, encoding="utf-8") as fh:  # job summaries are appended to
                fh.write(markdown(summary, str(report) if report.is_file() else None,
                                  ci_run_url()))
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
    watch = [e for e in summary["classes"] if e.get("watch")]
    if watch:
        print(f"watch (within {summary.get('watch_margin')} below the threshold, not failing): "
              f"{', '.join(_plain(e['name']) for e in watch)}")
    if fails:
        print(f"flagged: {', '.join(_plain(e['name']) for e in fails)}")
    if problems:
        text = "; ".join(problems)
        if not allow_incomplete:
            raise IncompleteRunError(f"the gate cannot vouch for {run_dir}: {text}. Pass "
                                     f"--allow-incomplete to check the finished classes anyway "
                                     f"(a model at chance included)")
        print(f"incomplete (allowed): {text}")
    unhealthy = _print_health(summary) if "health" in fail_on else []
    if fails or unhealthy:
        return 1
    print("no class flagged" if not summary.get("flagged") else
          "no new or worse flags than the baseline")
    return 0
