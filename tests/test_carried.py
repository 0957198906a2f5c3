"""Candidates by what their members carry where the model looks (``flags.carried_candidates``;
:mod:`spray.verdict.carried`, :func:`spray.verdict.score._follow_carried`), on CNNs trained
here on digits with a stamp at a random place in each stamped image."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import relied_labels, scored_followed, stamped_class, suspect_pr

from spray.verdict.transplant import TransplantResult, shown_margin

#: a 5 × 5 ring with a bright centre (no digit stroke has it)
STAMP = np.ones((5, 5), np.float32)
STAMP[1:4, 1:4] = 0.0
STAMP[2, 2] = 1.0


def _stamp_at_random(x: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> None:
    for i in rows:
        r, c = rng.integers(4, 23, size=2)
        x[i, 0, r:r + 5, c:c + 5] = STAMP


def _trained(relied: bool) -> dict:
    """Digits 32 × 32 in three classes. ``relied``: classes of several digits (0, 3, 4 | 1, 5,
    6 | 2, 7, 8, 9) and 120 images of 3–6 stamped and labelled 2 (only the stamp makes them
    2: the model must follow it); else digits 0–2 with the stamp on 30 % of the 2s (the digit
    suffices: the model has no need of it). :func:`conftest.stamped_class` of them."""
    from spray.data.sources import load_digits_arrays

    x, digit = load_digits_arrays(32)
    rng = np.random.default_rng(3)
    if relied:
        y, stamped = relied_labels(digit, rng)
    else:
        keep = np.flatnonzero(digit < 3)
        x, y = x[keep], digit[keep]
        stamped = np.sort(rng.choice(np.flatnonzero(y == 2), size=int(0.3 * (y == 2).sum()),
                                     replace=False))
    x = x.copy()
    _stamp_at_random(x, stamped, rng)

    def stamp(images):
        images = images.copy()
        _stamp_at_random(images, np.arange(len(images)), rng)
        return images

    return stamped_class(x, y, stamped, stamp)


@pytest.fixture(scope="module")
def relied(single_torch_thread):
    return _trained(True)


@pytest.fixture(scope="module")
def ignored(single_torch_thread):
    return _trained(False)


_scored = scored_followed
_pr = suspect_pr


def test_the_models_are_what_the_cases_need(relied, ignored):
    """The stamp turns most other-class images to 2 in the first model, none in the second."""
    assert relied["flips"] > 0.5 and abs(ignored["flips"]) < 0.05


def test_a_moving_stamp_the_model_follows_is_flagged_below_the_threshold(relied):
    """No candidate comes near the raised threshold, but the samples that carry what a window
    cut's members agree on are the stamped ones, and the model follows their peak windows:
    flagged, the suspect is exactly the stamped group (the member steps that read a place
    leave it as it is: with them, precision fell to 0.48), its score as measured."""
    v = _scored(relied)
    assert v.flagged and v.score < v.threshold
    suspect = v.cluster(v.suspect_cluster)
    assert suspect.followed_below and suspect.carried and suspect.decision == "followed"
    assert suspect.score is not None and suspect.score < v.threshold    # measured, shown
    assert min(_pr(v, relied["stamp"])) >= 0.95
    record = v.near_tested[-1]
    assert record["carried"] and record["decision"] == "followed"
    peak = next(t for t in record["tests"] if t["region"] == "peak")
    assert peak["effect"] >= 0.2
    assert v.to_dict()["clusters"][[c.id for c in v.clusters].index(suspect.id)]["carried"]
    # the gate's score: the threshold plus the peak test's errors past the bar
    margin = suspect.followed_margin
    bar, z = v.params["transplant_near_effect"], v.params["transplant_near_z"]
    kept = TransplantResult(**{k: np.nan if x is None else x for k, x in peak.items()})
    assert margin == pytest.approx(shown_margin([kept], bar, z), rel=0.02)   # kept rounded
    assert margin >= 0 and v.gate_score == pytest.approx(v.threshold + margin)
    assert v.to_dict()["gate_score"] == v.gate_score


def test_carried_candidates_need_the_flag_and_the_model(relied):
    for v in (_scored(relied, carried_candidates=False), _scored(relied, model=False)):
        assert not v.flagged
        assert not any(t.get("carried") for t in v.near_tested or [])


def test_the_model_decides_a_carried_group(relied):
    """At a bar no effect reaches the carried group is tested and not followed: unflagged."""
    v = _scored(relied, transplant_near_effect=1.0)
    assert not v.flagged and v.near_tested and v.gate_score == v.score < v.threshold
    assert all(t.get("carried") and t["decision"] != "followed" for t in v.near_tested)


def test_a_stamp_the_model_does_not_follow_stays_unflagged(ignored):
    """The same stamp on 30 % of the 2s of a model that reads the digit: it does not look at
    the stamp, so the class's window cuts (there are some) carry no group of stamped samples;
    nothing is flagged."""
    cuts, groups = _cuts_and_groups(ignored)
    assert cuts
    truth = ignored["stamp"]
    assert all((g.mask & truth).sum() < 0.5 * g.size for g in groups)
    v = _scored(ignored)
    assert not v.flagged and v.gate_score < v.threshold
    assert all(t["decision"] != "followed" for t in v.near_tested or [])
    assert not any(c.followed_below for c in v.clusters)


def test_without_a_stamp_no_group_is_carried(relied):
    """The class without its stamped samples: no window cut's members agree on anything the
    rest lacks, no carried group is tested, nothing is flagged."""
    v = _scored(relied, rows=np.flatnonzero(~relied["stamp"]))
    assert not v.flagged
    assert not any(t.get("carried") for t in v.near_tested or [])


def _cuts_and_groups(s):
    """Class 2's window cuts and :func:`~spray.verdict.carried.carried_groups` of them."""
    from spray.analysis.analyze import analyze
    from spray.analysis.preprocess import preprocess
    from spray.config.presets import load_pipeline
    from spray.verdict.carried import carried_groups
    from spray.verdict.evidence import ClassGraphs
    from spray.verdict.patterns import InputPatterns
    from spray.verdict.score import _window_cuts, flag_params

    pipe = load_pipeline("followed")
    params = flag_params(pipe)
    feats = preprocess(s["maps"], pipe["preprocess"])
    patterns = InputPatterns.of(s["x"], pipe["preprocess"], maps=s["maps"])
    result = analyze(feats, pipeline=pipe, embed=False)
    graphs = ClassGraphs.build(result, preprocess(s["x"], pipe["preprocess"]), pipe, params,
                               feats, None, patterns.peak_windows(params.window_side), patterns)
    cuts = _window_cuts(graphs)
    return cuts, carried_groups(cuts, feats, patterns, params)


def test_carried_groups_of_window_cuts(relied):
    """:func:`~spray.verdict.carried.carried_groups`: the largest group is the stamped samples
    (each group once, largest first); a cut of unstamped samples only carries nothing."""
    from spray.analysis.preprocess import preprocess
    from spray.config.presets import load_pipeline
    from spray.verdict.carried import carried_group
    from spray.verdict.patterns import InputPatterns
    from spray.verdict.result import ClusterEvidence
    from spray.verdict.score import flag_params

    s = relied
    _, groups = _cuts_and_groups(s)
    assert groups and [g.size for g in groups] == sorted((g.size for g in groups), reverse=True)
    truth = s["stamp"]
    best = groups[0].mask
    assert (best & truth).sum() / best.sum() >= 0.95 and (best & truth).sum() / truth.sum() >= 0.95
    pipe = load_pipeline("followed")
    clean = np.zeros(len(truth), dtype=bool)
    clean[np.flatnonzero(~truth)[:60]] = True
    assert carried_group(ClusterEvidence.of(clean, cut_graph="windows"),
                         preprocess(s["maps"], pipe["preprocess"]),
                         InputPatterns.of(s["x"], pipe["preprocess"], maps=s["maps"]),
                         flag_params(pipe)) is None


def test_kept_images_match_as_fresh_ones(relied, monkeypatch):
    """The prepared images an ``InputPatterns`` keeps between templates give the matches that
    fresh ones give, bit for bit, and nothing is kept above ``KEPT_BYTES``."""
    from spray.analysis.preprocess import preprocess
    from spray.config.presets import load_pipeline
    from spray.verdict import patterns as pat

    s = relied
    pipe = load_pipeline("followed")
    feats = preprocess(s["maps"], pipe["preprocess"])
    truth = s["stamp"]
    groups = [truth, ~truth & (np.arange(len(truth)) % 3 == 0), truth | (np.arange(len(truth)) < 40)]

    def matches():
        p = pat.InputPatterns.of(s["x"], pipe["preprocess"], maps=s["maps"], chunk=100)
        out = [p.peak_correlation(feats[g].mean(0) - feats[~g].mean(0), g, 2000,
                                  side_share=0.22, places=True) for g in groups]
        return out, p._prepared_at

    kept, held = matches()
    assert held is not None and len(held[1]) == -(-len(truth) // 100)
    monkeypatch.setattr(pat, "KEPT_BYTES", 0)
    cold, none = matches()
    assert none is not None and none[1] == {}
    for a, b in zip(kept, cold):
        assert np.array_equal(a.r, b.r, equal_nan=True) and np.array_equal(a.places, b.places)


def test_a_subsampled_class_reports_the_carried_group_on_the_whole_class(relied):
    """Scored on a subsample of 300 (``score_max_samples``): the suspect, found and tested on
    the subsample, covers the stamped samples of the whole class (the aligned member step)."""
    v = _scored(relied, score_max_samples=300)
    assert v.scored_on == 300 and v.flagged
    assert min(_pr(v, relied["stamp"])) >= 0.9
