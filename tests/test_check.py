"""`spray check`: table, exit codes, JUnit, Markdown, GitHub annotations and --baseline."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from conftest import run_cli

from spray.ci import check as chk
from spray.ci import evidence
from spray.errors import IncompleteRunError
from spray.skill import chance_test


def _entry(c, score, flagged, members=None, size=None, status="ok", name=None):
    clusters = [{"id": 0, "size": 80, "fraction": 0.8}]
    if flagged or members:
        members = members if members is not None else list(range(100 * c, 100 * c + 20))
        clusters.append({"id": 1, "size": size or len(members), "fraction": 0.2,
                         "conductance_relevance": 0.01, "conductance_input": 0.4,
                         "score": score, "concentration": 0.5, "suspect": flagged,
                         "members": members})
    return {"class": c, "name": name or f"digit {c}", "n_samples": 100, "status": status,
            "eigenvalues": [0.0, 0.01], "eigengaps": [0.01], "n_clusters": len(clusters),
            "score": score, "threshold": 2.0, "flagged": flagged,
            "suspect_cluster": 1 if flagged else None, "clusters": clusters}


FINGERPRINTS = {"model": "m1", "data": "d1", "model_code": "mc", "dataset": "ds",
                "classes": "cl", "pipeline": "pl"}


#: six classes of 100 samples, 90 of each predicted right, the rest as the next class
LEARNT = chance_test(np.repeat(np.arange(6), 100),
                     np.concatenate([np.r_[[c] * 90, [(c + 1) % 6] * 10] for c in range(6)]))


def _summary(entries, **fingerprints):
    return {"spray_version": "0.1.0", "config_hash": "abc", "created": "2026-01-01T00:00:00",
            "run_state": "finished", "run_id": "r1", "model_skill": LEARNT,
            "fingerprints": {**FINGERPRINTS, **fingerprints},
            "classes": entries, "flagged": [e["class"] for e in entries if e["flagged"]]}


def _write(tmp_path, name, summary):
    run = tmp_path / name
    (run / "report").mkdir(parents=True)
    (run / "report" / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture
def runs(tmp_path):
    old = _summary([_entry(0, 0.3, False), _entry(1, 3.0, True), _entry(2, 2.5, True),
                    _entry(4, 2.2, True)])
    new = _summary([
        _entry(0, 2.4, True),                                # new flag
        _entry(1, 3.2, True),                                # accepted (same group, small rise)
        _entry(2, 3.4, True),                                # worse (score rose by 0.9)
        _entry(3, 0.1, False, status="failed"),              # analysis failed
        _entry(4, 0.5, False),                               # resolved
        _entry(5, 2.1, True, name="five <b>&|x"),            # not in the baseline: new
    ])
    new["classes"][3]["reason"] = "class 3, rows 0..9: LRP failed"
    return _write(tmp_path, "old", old), _write(tmp_path, "new", new)


def test_table_and_exit_code_without_baseline(runs, capsys):
    _, new = runs
    with pytest.raises(IncompleteRunError, match="class digit 3 \\(3\\) is failed"):
        chk.check(new)  # a failed class: the gate cannot vouch for the run
    assert chk.check(new, allow_incomplete=True) == 1
    out = capsys.readouterr().out
    assert "FLAGGED" in out and "failed" in out
    lines = [ln for ln in out.splitlines() if ln.startswith("digit 1 ")]
    assert lines and lines[0].split()[-1] == "20"  # suspect cluster size column


def test_clean_run_exits_0(tmp_path, capsys):
    run = _write(tmp_path, "clean", _summary([_entry(0, 0.2, False), _entry(1, 1.9, False)]))
    assert chk.check(run) == 0
    assert "no class flagged" in capsys.readouterr().out


def test_baseline_statuses(runs):
    old, new = runs
    summary = chk.load_summary(new)
    counts = chk.compare(summary, chk.load_summary(old))
    status = {e["class"]: e["baseline"] for e in summary["classes"]}
    assert status == {0: "new", 1: "accepted", 2: "worse", 3: None, 4: "resolved", 5: "new"}
    assert counts == {"new": 2, "worse": 1, "accepted": 1, "resolved": 1}
    assert [e["class"] for e in chk.failing(summary)] == [0, 2, 5]


def test_baseline_different_suspect_group_is_new(tmp_path):
    old = _summary([_entry(1, 3.0, True, members=list(range(20)))])
    new = _summary([_entry(1, 3.0, True, members=list(range(50, 70)))])
    summary = copy.deepcopy(new)
    chk.compare(summary, old)
    assert summary["classes"][0]["baseline"] == "new"
    assert "different suspect group" in summary["classes"][0]["baseline_reason"]


def test_baseline_growth_is_worse():
    old = _summary([_entry(1, 3.0, True, members=list(range(20)))])
    new = _summary([_entry(1, 3.1, True, members=list(range(40)))])
    chk.compare(new, old)
    assert new["classes"][0]["baseline"] == "worse"


def test_baseline_accepts_everything_known(tmp_path):
    run = _write(tmp_path, "a", _summary([_entry(0, 0.1, False), _entry(1, 3.0, True)]))
    assert chk.check(run) == 1
    assert chk.check(run, baseline=str(run)) == 0
    # the baseline may also be given as the summary.json file itself
    assert chk.check(run, baseline=str(run / "report" / "summary.json")) == 0


def test_junit_and_markdown_files(runs, tmp_path):
    old, new = runs
    junit, md = tmp_path / "j.xml", tmp_path / "s.md"
    assert chk.check(new, junit_path=str(junit), markdown_path=str(md), baseline=str(old),
                     allow_incomplete=True) == 1
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuite"
    cases = root.findall("testcase")
    assert len(cases) == 6 and root.get("tests") == "6"
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failed == ["class digit 0 (0)", "class digit 2 (2)", "class five <b>&|x (5)"]
    assert root.get("failures") == "3" and root.get("errors") == "1"
    msg = cases[2].find("failure").get("message")
    assert "score 3.40" in msg and "worse" in msg and "suspect cluster 1 of 20 samples" in msg
    assert cases[3].find("error") is not None                  # failed analysis
    assert cases[1].find("failure") is None and "accepted" in cases[1].find("system-out").text
    text = md.read_text()
    assert text.startswith("## spray: Clever-Hans check")
    assert "2 new, 1 worse, 1 accepted, 1 resolved" in text
    assert "five \\<b\\>\\&\\|x" in text and "<b>" not in text  # a cell cannot break the table
    assert "&lt;" not in text and "&gt;" not in text and "&amp;" not in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert rows[0].startswith("| class |") and len(rows) == 7
    assert all(ln.count(" | ") == rows[0].count(" | ") for ln in rows)
    # ranked by score: digit 2 (3.4) first
    assert rows[1].startswith("| digit 2 |") and "🚩" in rows[1]


def test_markdown_appends_to_github_step_summary(runs, tmp_path, monkeypatch):
    _, new = runs
    step = tmp_path / "step.md"
    step.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    chk.check(new, markdown_path=str(step), allow_incomplete=True)
    text = step.read_text()
    assert text.startswith("earlier step\n") and "## spray: Clever-Hans check" in text


def test_github_annotations(runs):
    old, new = runs
    proc = run_cli("check", new, "--baseline", old, "--allow-incomplete",
                   env={"GITHUB_ACTIONS": "true"}, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    errors = [ln for ln in lines if ln.startswith("::error ")]
    notices = [ln for ln in lines if ln.startswith("::notice ")]
    warnings = [ln for ln in lines if ln.startswith("::warning ")]
    assert len(errors) == 3 and len(notices) == 1 and len(warnings) == 1
    assert all("\n" not in ln for ln in errors)
    assert "title=spray: Clever-Hans candidate::class digit 0 (0): score 2.40" in errors[0]
    no_gh = run_cli("check", new, "--allow-incomplete", env={"GITHUB_ACTIONS": ""}, timeout=120)
    assert no_gh.returncode == 1 and "::error" not in no_gh.stdout


def test_cli_baseline_exit_codes(tmp_path):
    run = _write(tmp_path, "a", _summary([_entry(1, 3.0, True)]))
    assert run_cli("check", run, timeout=120).returncode == 1
    ok = run_cli("check", run, "--baseline", run, timeout=120)
    assert ok.returncode == 0 and "1 accepted" in ok.stdout
    worse = run_cli("check", run, "--baseline", run, "--baseline-margin", "-1", timeout=120)
    assert worse.returncode == 1 and "WORSE" in worse.stdout
    missing = run_cli("check", run, "--baseline", tmp_path / "nope", timeout=120)
    assert missing.returncode == 2 and "no run summary found" in missing.stderr
    bad_dir = run_cli("check", run, "--junit", tmp_path / "no" / "such" / "dir.xml", timeout=120)
    assert bad_dir.returncode == 2 and "--junit" in bad_dir.stderr
    assert "Traceback" not in bad_dir.stderr
    not_a_run = run_cli("check", tmp_path / "nothing-here", timeout=120)
    assert not_a_run.returncode == 2 and "Traceback" not in not_a_run.stderr


def test_two_suspect_clusters_are_one_suspect_group(tmp_path):
    """An artefact split over two clusters: the reason names both, the size counts both, and the
    baseline compares the union of their members."""
    def two(score, first, second):
        e = _entry(1, score, True, members=first)
        e["clusters"][0]["size"] = 60
        e["clusters"].append({"id": 2, "size": len(second), "fraction": 0.2, "score": score - 0.3,
                              "suspect": True, "members": second})
        e["suspect_clusters"] = [1, 2]
        return e

    a, b = list(range(20)), list(range(20, 40))
    old = _summary([two(3.0, a, b)])
    same = _summary([two(3.1, b, a)])                 # the same group, clusters swapped
    split = _summary([_entry(1, 3.1, True, members=a)])
    assert evidence._suspect_size(old["classes"][0]) == 40
    reason = evidence._reason(old["classes"][0])
    assert "suspect cluster 1 of 20 samples" in reason and "also suspect: cluster 2 (20" in reason
    chk.compare(same, copy.deepcopy(old))
    assert same["classes"][0]["baseline"] == "accepted"
    chk.compare(split, copy.deepcopy(old))            # half of the accepted group: overlap 0.5
    assert split["classes"][0]["baseline"] == "accepted"
    other = _summary([two(3.1, list(range(50, 70)), list(range(70, 90)))])
    chk.compare(other, copy.deepcopy(old))
    assert other["classes"][0]["baseline"] == "new"
    assert "different suspect group" in other["classes"][0]["baseline_reason"]


def test_reason_names_a_suspect_split_off_its_cluster():
    e = _entry(1, 3.0, True)
    e["clusters"][1]["id"] = 2
    e["clusters"][1]["split_from"] = 0
    e["suspect_cluster"] = 2
    reason = evidence._reason(e)
    assert "suspect cluster 2 of 20 samples" in reason
    assert "split off cluster 0 by its spectral bisection" in reason
    assert "split off" not in evidence._reason(_entry(1, 3.0, True))


def test_reason_says_a_suspect_below_the_threshold_is_followed(tmp_path):
    """A class flagged below the threshold (the model follows its suspect): the reason says
    so, with the transplant test's numbers, and the check fails it like any flagged class."""
    e = _entry(1, 1.2, True)
    assert "score 1.20 ≥ threshold 2.0" in evidence._reason(e)
    suspect = e["clusters"][1]
    suspect.update(followed_below=True, decision="followed", transplant=[
        {"region": "place", "members": 0.31, "rest": 0.02, "effect": 0.29, "z": 8.9},
        {"region": "peak", "members": 0.1, "rest": 0.05, "effect": 0.05, "z": 2.0}])
    reason = evidence._reason(e)
    assert ("score 1.20 (its suspect 1.20) below threshold 2.0, flagged as the model follows "
            "the suspect") in reason
    assert "its pieces turn 31 % of other classes' images to the class, the rest's 2 %, z 8.9" \
        in reason
    run = _write(tmp_path, "below", _summary([_entry(0, 0.2, False), e]))
    assert chk.check(run) == 1


def test_reason_names_the_hot_spot_separation_when_measured():
    e = _entry(1, 3.0, True)
    suspect = next(c for c in e["clusters"] if c["id"] == e["suspect_cluster"])
    assert "hot-spot separation" not in evidence._reason(e)
    suspect["hot_spot_separation"] = 0.9712
    assert "hot-spot separation 0.97" in evidence._reason(e)


def test_incomplete_classes_are_errors_not_skips(tmp_path):
    """A run killed before its analyses: the classes are 'incomplete'; the check exits 3 and the
    JUnit file reports them as errors (it used to skip them and pass)."""
    entries = [_entry(0, None, False, status="incomplete"), _entry(1, 0.2, False),
               _entry(2, None, False, status="skipped")]
    run = _write(tmp_path, "killed", _summary(entries))
    junit = tmp_path / "j.xml"
    with pytest.raises(IncompleteRunError, match=r"class digit 0 \(0\) is incomplete"):
        chk.check(run, junit_path=str(junit))
    root = ET.parse(junit).getroot()
    assert root.get("errors") == "1" and root.get("skipped") == "1" and root.get("failures") == "0"
    assert chk.check(run, allow_incomplete=True) == 0
    proc = run_cli("check", run, timeout=120)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr


def test_markdown_escapes_links_and_control_characters():
    e = _entry(1, 3.0, True, name="[click](http://evil.example) \x1b[31m*bold*")
    text = chk.markdown(_summary([e]))
    assert "](http" not in text and "\\[click\\]\\(http" in text
    assert "\x1b" not in text and "\\*bold\\*" in text


# ---------------------------------------------------------------- a model that learnt nothing


def _at_chance(n=600, classes=6, seed=0):
    """Predictions that ignore the label: drawn from the model's favourite three classes."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n // classes)
    return chance_test(labels, rng.choice([1, 2, 4], size=len(labels), p=[0.5, 0.3, 0.2]))


def test_a_model_at_chance_is_not_vouched_for(tmp_path, capsys):
    """A clean-looking run of a model at chance exits 3 naming its accuracy and chance; the
    same run of a model that learnt passes; --allow-incomplete checks the classes anyway."""
    entries = [_entry(c, 0.3, False) for c in range(6)]
    good = _write(tmp_path, "good", _summary(entries))
    assert chk.check(good) == 0
    bad = _summary(copy.deepcopy(entries))
    bad["model_skill"] = _at_chance()
    assert bad["model_skill"]["p_value"] > 0.01
    run = _write(tmp_path, "bad", bad)
    with pytest.raises(IncompleteRunError, match=r"has not learnt: accuracy 0\.\d+ on 600 "
                                                 r"samples of 6 classes against chance"):
        chk.check(run)
    assert chk.check(run, allow_incomplete=True) == 0
    assert "has not learnt" in capsys.readouterr().out
    proc = run_cli("check", run)
    assert proc.returncode == 3 and "has not learnt" in proc.stderr


def test_the_chance_level_is_the_presets(tmp_path):
    """``health.max_chance_p`` decides: a weak model passes at a lenient level and fails at a
    strict one; a summary without a skill record (an older spray) fails closed."""
    labels = np.repeat(np.arange(6), 100)
    pred = np.where(np.arange(600) % 100 < 25, labels, (labels + 1) % 6)  # 25 % right
    weak = chance_test(labels, pred)
    assert 1e-9 < weak["p_value"] < 1e-3
    summary = _summary([_entry(c, 0.3, False) for c in range(6)])
    summary["model_skill"] = weak
    for level, problems in ((1e-3, 0), (1e-9, 1)):
        summary["health_limits"] = {"max_chance_p": level}
        assert len(chk.skill_problems(summary)) == problems, level
    del summary["model_skill"]
    assert chk.skill_problems(summary) == [
        "the summary records no model skill (made by an older spray); rebuild it with "
        "'spray report'"]
    one_class = chance_test(np.zeros(50, int), np.zeros(50, int))
    summary["model_skill"] = one_class  # one class: the question cannot be asked
    assert one_class["p_value"] is None and chk.skill_problems(summary) == []
