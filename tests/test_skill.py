"""The model's skill against chance (spray/skill.py): the statistic, and where the gate and the
summary read it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from spray.ci import check as chk
from spray.errors import StoreError
from spray.skill import chance_test, learnt, model_skill


def test_a_model_that_answers_the_majority_class_is_at_chance():
    """Chance uses the model's own prediction shares: always answering the class of 80 % of
    the samples is right 80 % of the time and learnt nothing (a uniform 1 / K, or the label
    shares alone, would call it skilled)."""
    skill = chance_test(np.r_[[0] * 800, [1] * 200], np.zeros(1000, int))
    assert skill["accuracy"] == pytest.approx(0.8) and skill["chance"] == pytest.approx(0.8)
    assert skill["kappa"] == pytest.approx(0.0) and learnt(skill, 1e-3) is False


def test_predictions_of_classes_not_analysed_count_as_wrong_and_not_as_chance():
    labels = np.r_[[0] * 500, [1] * 500]
    pred = np.r_[[0] * 300, [7] * 200, [7] * 500]           # 7: a class outside the run
    skill = chance_test(labels, pred)
    assert skill["chance"] == pytest.approx(0.5 * 0.3) and skill["accuracy"] == pytest.approx(0.3)
    never = chance_test(labels, np.full(1000, 7))             # never one of the run's classes
    assert never["chance"] == 0 and never["p_value"] == 1.0 and learnt(never, 1e-3) is False


def test_unknown_predictions_are_left_out():
    labels = np.repeat(np.arange(3), 100)
    pred = labels.copy()
    pred[::2] = -1                                           # an attribution file without them
    skill = chance_test(labels, pred)
    assert skill["samples"] == 150 and skill["accuracy"] == 1.0
    assert chance_test(labels, np.full(300, -1))["p_value"] is None


def test_the_level_is_inclusive_and_tiny_runs_cannot_tell():
    skill = chance_test(np.repeat(np.arange(3), 10),
                        np.r_[[0] * 10, [1] * 5, [2] * 5, [2] * 10])
    assert learnt(skill, skill["p_value"]) is True
    assert learnt(skill, skill["p_value"] * 0.999) is False
    tiny = chance_test(np.r_[[0] * 4, [1] * 4], np.r_[[0] * 4, [1] * 4])   # right on all 8
    assert tiny["p_value"] == pytest.approx(0.5 ** 8)
    assert learnt(tiny, 1e-3) is None and learnt(tiny, 0.01) is True
    assert learnt(None, 1e-3) is None


def _group(pred, done=True):
    return {"prediction": np.asarray(pred), "done": np.array([done, True])}


def test_model_skill_reads_the_runs_finished_classes():
    """Only the classes of the run's config count, and only those whose chunks are all
    written; without a class list every stored class counts."""
    classes = {"0": _group([0] * 20), "1": _group([1] * 20), "2": _group([0] * 30),
               "3": _group([0] * 40, done=False)}
    skill = model_skill(classes, [0, 1, 3])
    assert skill["samples"] == 40 and skill["classes"] == 2 and skill["accuracy"] == 1.0
    assert model_skill(classes, None)["samples"] == 70
    assert model_skill({}, None)["p_value"] is None


@pytest.fixture(scope="module")
def finished(small_problem, tmp_path_factory):
    from conftest import run_cli

    root = tmp_path_factory.mktemp("skill")
    for name in ("data.npz", "weights.pt", "smallnet.py"):
        shutil.copy(small_problem["root"] / name, root / name)
    cfg = dict(small_problem["raw_config"], output="out")
    import yaml

    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_cli("run", root / "config.yaml", "--quiet")
    assert proc.returncode == 0, proc.stderr
    return root / "out"


def test_a_store_without_the_record_gets_it_from_its_predictions(finished, tmp_path):
    """A store made before runs recorded the model's skill: its rebuilt summary computes the
    record from the stored predictions (it used to hold null, which the gate let pass)."""
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    recorded = json.loads((out / "report" / "summary.json").read_text())["model_skill"]
    group = zarr.open_group(str(out / "spray.zarr"), mode="a")
    del group.attrs["model_skill"]
    (out / "report" / "summary.json").unlink()
    summary = chk.load_summary(out)
    assert summary["model_skill"] == recorded and recorded["p_value"] < 1e-30
    assert chk.skill_problems(summary) == []


@pytest.mark.parametrize("record", [None, {"p_value": 0.5}, "n/a",
                                    {"samples": 9, "classes": 3, "correct": 3, "accuracy": 0.3,
                                     "chance": 0.3, "kappa": 0.0, "p_value": "0.5"}])
def test_a_damaged_record_is_named(finished, tmp_path, record):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    path = out / "report" / "summary.json"
    summary = json.loads(path.read_text())
    summary["model_skill"] = record
    path.write_text(json.dumps(summary))
    if record is None:   # no record: the gate fails closed
        assert chk.skill_problems(chk.load_summary(out)) == [
            "the summary records no model skill (made by an older spray); rebuild it with "
            "'spray report'"]
        return
    with pytest.raises(StoreError, match="'model_skill' is invalid"):
        chk.load_summary(out)


def test_code_digest_follows_the_json_files(tmp_path):
    """The clean-score reference decides verdicts too: a byte of it changes the digest."""
    import spray
    from spray.run.tasks import code_digest

    root = tmp_path / "spray"
    shutil.copytree(Path(spray.__file__).parent / "verdict", root / "verdict",
                    ignore=shutil.ignore_patterns("__pycache__"))
    first = code_digest(root, ("verdict",))
    ref = root / "verdict" / "clean_scores.json"
    ref.write_text(ref.read_text() + " ")
    assert code_digest(root, ("verdict",)) != first
