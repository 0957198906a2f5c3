"""The evaluation's data generators and models (tests/benchmarks/eval_data.py, eval_models.py):
seeded, deterministic, and each artefact changes exactly the pixels it says it does."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))
import eval_data as ed  # noqa: E402
import eval_models as em  # noqa: E402

SMALL = ed.SceneSpec("digits", train_per_class=6, test_sizes=4)


@pytest.fixture(scope="module")
def scenes():
    return ed.make_scenes(SMALL, seed=3)


def test_scenes_are_seeded(scenes):
    again = ed.make_scenes(SMALL, seed=3)
    for key, value in scenes.items():
        np.testing.assert_array_equal(value, again[key])
    other = ed.make_scenes(SMALL, seed=4)
    assert not np.array_equal(other["x_train"], scenes["x_train"])


def test_scenes_shapes_ranges_and_objects(scenes):
    x, obj = scenes["x_test"], scenes["obj_test"]
    assert x.shape == (40, 3, 32, 32) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert np.bincount(scenes["y_test"]).tolist() == [4] * 10
    assert np.bincount(scenes["y_train"]).tolist() == [6] * 10
    areas = obj.reshape(len(obj), -1).mean(1)
    assert (areas > 0.03).all() and (areas < 0.8).all()     # an object, never the whole image
    assert np.array_equal(scenes["type_test"], scenes["y_test"])   # one type per label


def test_merged_labels_hold_their_object_types():
    spec = ed.SceneSpec("digits", merge=True, train_per_class=30, test_sizes=(5, 6, 7, 8, 9))
    data = ed.make_scenes(spec, seed=0)
    assert np.bincount(data["y_test"]).tolist() == [5, 6, 7, 8, 9]
    for label, group in enumerate(ed.MERGES["digits"]):
        types = set(data["type_train"][data["y_train"] == label].tolist())
        assert types == set(group)       # every sub-population is present, nothing else
    assert ed.class_names("natdm.cnn.adam")[0] == "1+7"


@pytest.mark.parametrize("kind", ed.RGB_ARTEFACTS + ed.GREY_ARTEFACTS)
def test_artefact_changes_its_footprint_only(scenes, kind):
    x, obj = scenes["x_test"], scenes["obj_test"]
    stamped, mask = ed.plant_rgb(x, kind, np.random.default_rng(0), obj)
    again, mask2 = ed.plant_rgb(x, kind, np.random.default_rng(0), obj)
    np.testing.assert_array_equal(stamped, again)
    np.testing.assert_array_equal(mask, mask2)
    changed = (stamped != x).any(axis=1)
    assert mask.any(axis=(1, 2)).all()
    assert not (changed & ~mask).any()                   # nothing outside the footprint
    covered = changed[mask].mean()
    assert covered >= (0.6 if kind == "checker" else 0.97)   # checker: max() with the image
    assert stamped.min() >= 0.0 and stamped.max() <= 1.0
    np.testing.assert_array_equal(x, scenes["x_test"])    # the input is left as it was


def test_fixed_artefacts_sit_at_one_place(scenes):
    for kind in ("text", "frame", "stripes"):
        _, mask = ed.plant_rgb(scenes["x_test"], kind, np.random.default_rng(0))
        assert (mask == mask[0]).all()


def test_patch_on_the_object_and_logo_in_every_corner(scenes):
    x, obj = scenes["x_test"], scenes["obj_test"]
    _, mask = ed.plant_rgb(x, "patch", np.random.default_rng(1), obj)
    assert all(obj[i][mask[i]].mean() > 0.3 for i in range(len(x)))   # mostly on the object
    assert len({tuple(np.argwhere(m).mean(0).round()) for m in mask}) > len(x) // 2
    _, mask = ed.plant_rgb(x, "logo", np.random.default_rng(1))
    corners = {(bool(m[:16].any()), bool(m[:, :16].any())) for m in mask}
    assert corners == {(True, True), (True, False), (False, True), (False, False)}
    with pytest.raises(ValueError):
        ed.plant_rgb(x, "patch", np.random.default_rng(1))


def test_text_watermark_is_the_bitmap_font():
    m = ed.text_mask("wm")
    assert m.shape[0] <= 12 and 8 <= m.shape[1] <= 16 and 0.1 < m.mean() < 0.7


@pytest.mark.parametrize("arch", ["cnn", "resnet", "vit", "vitc"])
def test_architectures_explain_rgb(arch):
    from spray.lrp import attribute

    torch.set_num_threads(1)
    model = em.build(arch, 7, 3, seed=0).eval()
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape == (2, 7)
    rel = attribute(model, x, torch.tensor([1, 2]), composite=em.COMPOSITES[arch])
    assert rel.shape == x.shape and torch.isfinite(rel).all()


@pytest.mark.parametrize(("arch", "recipe"), [("cnn", "adam"), ("resnet", "sgd")])
def test_training_is_seeded(scenes, arch, recipe):
    torch.set_num_threads(1)
    x, y = scenes["x_train"], scenes["y_train"]
    a = em.train(arch, recipe, x, y, seed=5, epochs=1)
    b = em.train(arch, recipe, x, y, seed=5, epochs=1)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    c = em.train(arch, recipe, x, y, seed=6, epochs=1)
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_margin_summary_separates_settings_the_model_ignores():
    import eval_summary as es

    def row(setting, art, c, planted, score, flips, **extra):
        return {"setting": setting, "dataset": "natf.cnn.adam", "artefact": art, "class": c,
                "planted": planted, "score": score, "flip_rates": {"text": flips}, **extra}

    rows = [row("clean", None, 4, False, 1.5, 0.02), row("clean", None, 3, False, 0.5, 0.01),
            row("used", "text", 4, True, 2.5, 0.30, precision=0.95, recall=0.92),
            row("used", "text", 3, False, 2.2, 0.0),
            row("ignored", "text", 3, True, 0.1, 0.03)]
    s = es.summarize(rows, threshold=2.0)
    (g,) = s["groups"]
    assert g["relied_settings"]["used"]["reliance"] == pytest.approx(0.28)
    assert g["detected"] == 1 and g["planted_checks"] == 1
    assert set(g["not_relied"]) == {"ignored"}           # 0.02 above the clean model
    assert g["other_checks"] == 3 and g["highest_other"] == 2.2
    assert "ignored (reliance 0.02" in es.margin_table(rows, 2.0)


def test_criteria_count_relied_settings_of_five_percent_and_more():
    import eval_summary as es

    def row(setting, art, c, planted, score, flips, fraction=0.1, **extra):
        return {"setting": setting, "dataset": "natf.cnn.adam", "artefact": art, "class": c,
                "planted": planted, "score": score, "flip_rates": {"text": flips},
                "fraction": fraction, **extra}

    hit = {"precision": 0.95, "recall": 0.92}
    rows = [row("clean", None, 4, False, 0.5, 0.02), row("clean", None, 3, False, 0.2, 0.01)]
    rows += [row("used", "text", 4, True, s, 0.30, **hit) for s in (3.0, 3.2, 2.9, 3.5)]
    rows[4]["gate_score"] = 4.0                  # the score the gate acts on counts
    rows += [row("used", "text", 3, False, 0.9, 0.0)]
    rows += [row("rare", "text", 4, True, 0.0, 0.40, fraction=0.03)]    # below 5 %: not counted
    table = {r["criterion"]: r for r in es.criteria(rows, threshold=1.7)}
    assert table["detected, natf"]["measured"] == "4/4 (100%)"
    assert table["detected, natf"]["met"] == "yes"
    assert table["planted scores, 10th percentile"]["met"] == "yes"        # 3.06 ≥ 2.7
    clean = table["clean and non-planted checks, highest score"]
    assert clean["measured"] == "0.90 (3 checks)" and clean["met"] == "no"  # too few checks
    assert table["settings detected in ≥ 9 of 10 draws"]["measured"] == "1/1"
    found = "detected draws' scores, 10th percentile (misses aside)"
    assert table[found]["measured"] == "3.06 (4 draws)" and table[found]["met"] == "yes"
    rows[2]["precision"] = 0.5                                             # one draw missed
    table = {r["criterion"]: r for r in es.criteria(rows, threshold=1.7)}
    assert table["detected, natf"]["met"] == "no"
    assert table[found]["measured"] == "3.26 (3 draws)"                   # the miss aside
    assert table["settings detected in ≥ 9 of 10 draws"]["met"] == "no"


def test_setting_rows_say_which_settings_count():
    import eval_summary as es

    def row(setting, art, c, planted, score, flips, fraction=0.1, **extra):
        return {"setting": setting, "dataset": "natf.cnn.adam", "artefact": art, "class": c,
                "planted": planted, "score": score, "flip_rates": {"text": flips},
                "fraction": fraction, **extra}

    rows = [row("clean", None, 4, False, 0.5, 0.02),
            row("used", "text", 4, True, 3.0, 0.30, precision=1.0, recall=0.5),
            row("used", "text", 4, True, 1.0, 0.30, precision=1.0, recall=1.0),
            row("rare", "text", 4, True, 2.0, 0.40, fraction=0.03, precision=1.0, recall=1.0)]
    used, rare = es.setting_rows(rows, threshold=1.7)
    assert used["counted"] == "yes" and rare["counted"] == "no"     # 3 % is below 5 %
    assert used["flagged"] == "1/2" and used["detected"] == "0/2"    # flagged with recall 0.5
    assert rare["detected"] == "1/1"


def _rescoring(out: Path, draws: list[tuple]) -> Path:
    """An ``eval_clever_hans.py --rescore`` folder: ``draws`` of (setting, draw, planted
    score, precision, recall) plus one clean class check per draw."""
    import json

    out.mkdir()
    rows, summary = [], []
    for setting, d, score, precision, recall in draws:
        rows += [{"setting": setting, "draw": d, "class": 1, "planted": True, "score": score,
                  "flagged": score >= 1.7},
                 {"setting": setting, "draw": d, "class": 2, "planted": False, "score": -1.0,
                  "flagged": False}]
        summary.append({"setting": setting, "draw": d, "planted_score": score,
                        "precision": precision, "recall": recall, "n_planted": 40})
    (out / "draws.json").write_text(json.dumps(rows))
    (out / "draws_summary.json").write_text(json.dumps({"threshold": 1.7, "draws": summary}))
    return out


def test_rescorings_compared_say_which_settings_changed(tmp_path):
    """Members that join change detections, not scores: the setting whose recall rose is a
    row of the docs table, the unchanged one is not, and no score counts as changed."""
    import compare_rescorings as cr

    before = _rescoring(tmp_path / "before", [("logo", 0, 2.5, 1.0, 0.3),
                                              ("logo", 1, 1.0, 1.0, 0.3),
                                              ("text", 0, 3.0, 1.0, 1.0)])
    after = _rescoring(tmp_path / "after", [("logo", 0, 2.5, 1.0, 1.0),
                                            ("logo", 1, 1.0, 1.0, 1.0),
                                            ("text", 0, 3.0, 1.0, 1.0)])
    results = [cr.compare(before, after)]
    assert results[0]["score_or_flag_changed"] == 0
    rows = cr.setting_rows(results, changed_only=True)
    assert [r["setting"] for r in rows] == ["logo"]
    assert rows[0]["detected"] == "0 → 1" and rows[0]["flagged"] == "1 → 1 of 2"
    assert rows[0]["stamped / unstamped gained"] == "28 / 0"    # 12 → 40 of 40 stamped
    assert len(cr.setting_rows(results)) == 2


def test_a_label_the_generator_lacks_is_refused_before_training():
    """Merged digits have 5 labels: a stamp on label 7 is refused by name, before any model is
    trained (it would have sampled from no members)."""
    with pytest.raises(ValueError, match="labels 0–4"):
        em.collect_scenes(("natdm.cnn.adam", 7, "text", 0.15, 0), None)
