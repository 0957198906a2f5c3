"""The transplant test (spray.verdict.transplant) with a real trained model: the stamped group's
pieces turn other classes' images to the class, a group of unstamped samples' do not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spray.verdict.transplant import (
    TransplantResult,
    pasted_flips,
    peak_boxes,
    place_mask,
    shown_margin,
    transplant_test,
)


def test_peak_boxes_cover_each_maps_largest_window():
    maps = np.zeros((2, 10, 12))
    maps[0, 6:9, 1:4] = 1.0
    maps[1, 0:2, 9:12] = -2.0           # |relevance|: the sign does not matter
    boxes = peak_boxes(maps, 0.3)       # 3 × 3
    assert boxes.sum(axis=(1, 2)).tolist() == [9, 9]
    assert boxes[0, 6:9, 1:4].all()
    assert boxes[1, 0:2, 9:12].all()


def test_place_mask_takes_where_members_exceed_the_rest():
    maps = np.ones((6, 10, 10))
    maps[:3, 0, :] += 9.0                # the members' relevance is on the top row
    members = np.arange(6) < 3
    mask = place_mask(maps, members, 0.1)
    assert mask[0].all() and mask.sum() == 10
    # members alike the rest (after each map is divided by its total) exceed nowhere
    assert not place_mask(np.ones((6, 10, 10)) * np.arange(1, 7)[:, None, None], members,
                          0.1).any()


def _bright_corner(c):
    """A decision rule that answers ``c`` exactly when the top-left 3 × 3 pixels are bright."""
    return lambda x: np.where(np.asarray(x)[:, 0, :3, :3].mean(axis=(1, 2)) > 0.5, c, 0)


def test_a_pattern_that_turns_every_target_is_followed():
    """Members' pieces turn every target, the rest's none: the largest effect and z (McNemar:
    √pairs), not a zero spread read as no evidence."""
    from spray.verdict.transplant import decide

    x = np.zeros((40, 1, 12, 12), np.float32)
    x[:10, 0, :3, :3] = 1.0
    maps = np.full((40, 12, 12), 0.01)
    maps[:10, :3, :3] = 1.0
    tests = transplant_test(_bright_corner(7), x, maps, np.arange(40) < 10,
                            np.zeros((50, 1, 12, 12), np.float32), 7, side=0.25, pairs=64)
    assert [(t.members, t.rest, t.effect, t.z) for t in tests] == [(1.0, 0.0, 1.0, 8.0)] * 2
    assert decide(tests, 1.0, 3.0) == "followed"


def test_place_agreement_counts_where_the_members_pieces_are_alike():
    """A stamp's pixels agree in every member whatever the rest show there; pieces that differ
    among the members as much as from the rest agree nowhere; values where the rest do not
    deviate from the members' median count for nothing."""
    from spray.verdict.transplant import place_agreement

    rng = np.random.default_rng(0)
    rest = rng.random((50, 8))
    stamp = np.tile([1.0, 0.0, 1.0, 0.0], (20, 2)) + rng.normal(0, 0.01, (20, 8))
    assert place_agreement(stamp, rest, 0.5) == 1.0
    assert place_agreement(rng.random((20, 8)), rest, 0.5) == 0.0
    half = np.hstack([stamp[:, :4], rng.random((20, 4))])       # the stamp on half the values
    assert place_agreement(half, rest, 0.5) == 0.5
    assert place_agreement(half, rest, 0.001) == 0.0            # no spread that tight
    flat = np.hstack([np.zeros((20, 4)), rng.random((20, 4))])
    rest_flat = np.hstack([np.zeros((50, 4)), rng.random((50, 4))])
    assert place_agreement(flat, rest_flat, 0.5) == 0.0         # the zeros count for nothing
    assert np.isnan(place_agreement(np.zeros((5, 3)), np.zeros((5, 3)), 0.5))
    assert np.isnan(place_agreement(stamp[:0], rest, 0.5))


def _corner_class(rng, low: float, high: float):
    """40 RGB images 12 × 12 of uniform noise; the first 10 (the members) carry values in
    [``low``, ``high``] in the red channel of the top-left 3 × 3 pixels, where their relevance
    lies; the model answers 7 exactly when that corner is bright."""
    x = rng.random((40, 3, 12, 12)).astype(np.float32) * 0.4
    x[:10, 0, :3, :3] = rng.uniform(low, high, (10, 3, 3))
    maps = np.full((40, 12, 12), 0.01)
    maps[:10, :3, :3] = 1.0
    return x, maps, np.arange(40) < 10, lambda b: np.where(
        np.asarray(b)[:, 0, :3, :3].mean(axis=(1, 2)) > 0.5, 7, 0)


def test_the_transplant_test_measures_the_members_agreement_at_their_place():
    """Members alike in one of three colour channels at the place: that third of its values
    agrees (the members', not the rest's, spread counted); nothing without ``spread``, never
    in the ``peak`` region; a NaN agreement is written as None."""
    rng = np.random.default_rng(1)
    x, maps, members, predict = _corner_class(rng, 0.8, 0.8)
    x[10:, 0, :3, :3] = rng.random((30, 3, 3))     # the rest anywhere there: only they vary
    targets = np.zeros((50, 3, 12, 12), np.float32)
    tests = {t.region: t for t in transplant_test(predict, x, maps, members, targets, 7,
                                                  side=0.25, pairs=64, spread=0.5)}
    # the red third agrees; of the noise channels at most a few values by chance
    agreed = tests["place"].agreed
    assert 1 / 3 <= agreed < 0.5 and tests["peak"].agreed is None
    assert tests["place"].to_dict()["agreed"] == round(agreed, 4)
    plain = transplant_test(predict, x, maps, members, targets, 7, side=0.25, pairs=64)
    assert plain[0].agreed is None
    tests["place"].agreed = float("nan")
    assert tests["place"].to_dict()["agreed"] is None


def test_a_candidate_below_the_threshold_needs_its_pieces_alike_at_the_spread():
    """The model follows the members' bright corner; their values there vary (0.6–1.0) but lie
    far closer to their median than the rest's: alike at the spread 0.5, not at 0.05."""
    from spray.config.presets import FlagsSection
    from spray.verdict.score import _near_test
    from spray.verdict.transplant import ModelTest, shown_margin

    x, maps, members, predict = _corner_class(np.random.default_rng(2), 0.6, 1.0)
    test = ModelTest(predict, lambda r: x[r], lambda r: maps[r],
                     np.zeros((50, 3, 12, 12), np.float32), 7)
    flags = {"transplant_pairs": 64, "window_side": 0.25}
    decision, tests, _ = _near_test(test, members, FlagsSection(**flags), 1)
    assert decision == "followed" and 1 / 3 <= tests[0].agreed < 0.5
    tight = FlagsSection(**flags, transplant_near_spread=0.05)
    assert _near_test(test, members, tight, 1)[0] == "unlike"
    # confirmed: shown with 64 pairs, decided on a run of transplant_near_max_pairs
    sure = FlagsSection(**flags, transplant_near_max_pairs=1024, transplant_confirm=True)
    decision, confirmed, margin = _near_test(test, members, sure, 1)
    assert decision == "followed" and {t.pairs for t in confirmed} == {1024}
    assert margin == pytest.approx(shown_margin([confirmed[0]], 0.05, 3.0), abs=1e-4)
    assert {t.pairs for t in _near_test(test, members, FlagsSection(
        **flags, transplant_near_max_pairs=1024), 1)[1]} == {64}          # not confirmed


def test_a_candidate_below_the_threshold_gets_more_pairs_only_to_sharpen_a_real_effect():
    """Alike pieces the model follows on 8 % of the targets: one run of 64 pairs cannot show
    it (undecided), four times the pairs can (``transplant_near_max_pairs``); pieces that are
    not alike are not tested again, and pieces that turn nothing only until that is shown
    (below the bar by three errors: "ignored")."""
    from spray.config.presets import FlagsSection
    from spray.verdict.score import _near_test
    from spray.verdict.transplant import ModelTest

    x, maps, members, corner = _corner_class(np.random.default_rng(3), 0.8, 0.8)
    targets = np.random.default_rng(4).random((400, 3, 12, 12)).astype(np.float32) * 0.4
    targets[:32, 1, 11, 11] = 1.0                   # 8 % of the targets can be turned

    def predict(b):
        return np.where((corner(b) == 7) & (np.asarray(b)[:, 1, 11, 11] > 0.5), 7, 0)

    test = ModelTest(predict, lambda r: x[r], lambda r: maps[r], targets, 7)
    flags = {"transplant_pairs": 64, "window_side": 0.25}
    decision, tests, _ = _near_test(test, members, FlagsSection(**flags), 1)
    assert decision == "undecided" and {t.pairs for t in tests} == {64}
    more = FlagsSection(**flags, transplant_near_max_pairs=1024)
    decision, tests, _ = _near_test(test, members, more, 1)
    assert decision == "followed" and {t.pairs for t in tests} == {1024}
    assert 0.05 <= tests[0].effect <= 0.12 and tests[0].agreed >= 1 / 3
    unlike = FlagsSection(**flags, transplant_near_max_pairs=1024, transplant_near_spread=0.05,
                          transplant_near_agreed=0.5)
    decision, tests, _ = _near_test(test, members, unlike, 1)
    assert decision == "undecided" and {t.pairs for t in tests} == {64}
    # at twice the bar (0.1) a lucky first draw shows it (0.14 at 256 pairs); confirmed with
    # 1 024 pairs the effect is 0.09, undecided: the flag would have hung on that draw
    lucky = {**flags, "transplant_near_max_pairs": 1024, "transplant_near_effect": 0.1,
             "seed": 1}
    decision, tests, margin = _near_test(test, members, FlagsSection(**lucky), 1)
    assert decision == "followed" and tests[0].pairs < 1024 and margin >= 0
    decision, tests, margin = _near_test(test, members, FlagsSection(
        **lucky, transplant_confirm=True), 1)
    assert decision == "undecided" and {t.pairs for t in tests} == {1024} and margin < 0
    dark = x.copy()
    dark[:10, 0, :3, :3] = 0.2                      # alike, but the model ignores them
    test = ModelTest(predict, lambda r: dark[r], lambda r: maps[r], targets, 7)
    decision, tests, _ = _near_test(test, members, more, 1)
    assert decision == "ignored" and {t.pairs for t in tests} == {256}


def test_pieces_are_alike_only_where_the_place_was_measured_at_the_bar():
    from spray.verdict.transplant import TransplantResult, pieces_alike

    def results(agreed):
        return [TransplantResult("place", 0.3, 0.0, 0.3, 5.0, 256, agreed=agreed),
                TransplantResult("peak", 0.3, 0.0, 0.3, 5.0, 256)]
    assert pieces_alike(results(0.3), 0.15) and pieces_alike(results(0.15), 0.15)
    assert not pieces_alike(results(0.1), 0.15)
    assert not pieces_alike(results(None), 0.15) and not pieces_alike(results(np.nan), 0.0)
    assert not pieces_alike(results(0.3)[1:], 0.0)               # no place region


def _verdict(labels: np.ndarray, suspects: list[int], scores: dict | None = None):
    """A verdict at threshold 1.7 with the clusters of ``labels`` (scored 3.0 unless
    ``scores`` says otherwise) and ``suspects`` flagged."""
    from spray.verdict.result import ClusterEvidence, Verdict

    clusters = [ClusterEvidence.of(labels == i, id=int(i), score=(scores or {}).get(i, 3.0))
                for i in np.unique(labels)]
    return Verdict(score=3.0, threshold=1.7, flagged=True, suspect_cluster=suspects[0],
                   suspect_clusters=list(suspects), candidate_cluster=suspects[0],
                   clusters=clusters, splits=[], labels=labels, other_k=[], params={})


def test_a_suspect_the_test_cannot_run_on_stays_flagged():
    """Every target image is already predicted as the class: nothing to turn, no result, and
    the suspect stays (untested, fail closed)."""
    from spray.config.presets import FlagsSection
    from spray.verdict.score import follow_suspects
    from spray.verdict.transplant import ModelTest

    x = np.random.default_rng(0).random((30, 1, 8, 8)).astype(np.float32)
    labels = (np.arange(30) < 10).astype(np.int64)
    v = _verdict(labels, [1], {0: 0.0, 1: 3.0})
    always = ModelTest(lambda b: np.full(len(b), 4), lambda rows: x[rows],
                       lambda rows: x[rows, 0], x, 4)
    follow_suspects(v, always, FlagsSection(transplant_pairs=64))
    assert v.flagged and v.suspect_clusters == [1] and v.not_followed == []
    assert v.cluster(1).decision == "untested" and v.cluster(1).transplant == []


def _result(effect: float, z: float, se: float, region: str = "place"):
    from spray.verdict.transplant import TransplantResult

    return TransplantResult(region, effect, 0.0, effect, z, 256, se)


def test_only_an_effect_shown_below_the_bar_clears_a_suspect():
    """Followed: at the bar with z ≥ 3 in either region. Ignored: below the bar by 3 standard
    errors in every region. Anything else (an effect near the bar, a region not decided)
    stays undecided: the suspect is kept."""
    from spray.verdict.transplant import decide

    assert decide([_result(0.2, 6.0, 0.03), _result(0.0, 0.0, 0.01, "peak")],
                  0.05, 3) == "followed"
    assert decide([_result(0.0, 0.0, 0.01), _result(-0.1, -3.0, 0.02, "peak")],
                  0.05, 3) == "ignored"
    assert decide([_result(0.04, 2.5, 0.015)], 0.05, 3) == "undecided"        # 0.01 < 3 se
    assert decide([_result(0.0, 0.0, 0.01), _result(0.03, 2.0, 0.012, "peak")],
                  0.05, 3) == "undecided"                                     # one region open
    assert decide([_result(0.06, 2.0, 0.03)], 0.05, 3) == "undecided"         # at the bar, z < 3
    assert decide([], 0.05, 3) == "untested"


def test_a_group_below_the_threshold_needs_its_effect_clear_of_the_clustered_error():
    """``shown_followed``: the effect at the bar and ``min_z`` clustered (floored) errors above
    none in some region. A McNemar z that counts the pairs as independent is not enough (a few
    donors turning many targets: a large clustered error); a NaN error shows nothing."""
    from spray.verdict.transplant import TransplantResult, decide, shown_followed

    clear = _result(0.2, 6.0, 0.05)                     # 0.2 ≥ 3.5 × 0.05
    assert shown_followed([_result(0.0, 0.0, 0.01, "peak"), clear], 0.05, 3.5)
    few_donors = _result(0.2, 6.0, 0.074)               # McNemar's z 6, 2.7 clustered errors
    assert decide([few_donors], 0.05, 3) == "followed"
    assert not shown_followed([few_donors], 0.05, 3.5)
    assert not shown_followed([_result(0.04, 9.0, 0.001)], 0.05, 3.5)        # below the bar
    assert not shown_followed([_result(0.2, 6.0, float("nan"))], 0.05, 3.5)
    # the floor: no pair differing among few targets shows nothing either
    few = TransplantResult("place", 0.3, 0.0, 0.3, 3.0, 9, 0.0, targets=9)
    assert not shown_followed([few], 0.05, 3.5)            # floor 1/9: 0.3 < 3.5 / 9
    assert not shown_followed([], 0.05, 3.5)


def test_the_margin_is_the_errors_past_the_nearer_bar():
    """``shown_margin``: in errors (floored), the smaller of the effect's distance past the bar
    and its distance past ``min_z`` errors from none, the best region's; 0 or above where
    ``shown_followed`` holds (but for rounding at an exact tie); −inf where no error is
    finite."""
    from spray.verdict.transplant import TransplantResult, shown_followed, shown_margin

    # 256 distinct targets: the floor √(0.05 · 0.95 / 256) = 0.0136 lies below these errors
    wide = _result(0.2, 6.0, 0.05)                       # past the bar by 3, 4 − 3.5 = 0.5
    assert shown_margin([wide], 0.05, 3.5) == pytest.approx(0.5)
    sure = _result(0.2, 9.0, 0.02)                        # past the bar by 7.5, 10 − 3.5 = 6.5
    assert shown_margin([wide, sure], 0.05, 3.5) == pytest.approx(6.5)
    near = _result(0.06, 9.0, 0.002)                      # 0.01 / floor 0.0136: the bar binds
    assert shown_margin([near], 0.05, 3.5) == pytest.approx(0.01 / np.sqrt(0.05 * 0.95 / 256))
    assert shown_margin([_result(0.2, 6.0, float("nan"))], 0.05, 3.5) == -np.inf
    assert shown_margin([], 0.05, 3.5) == -np.inf
    # the lattice the test produces (effects of k / pairs, errors at their floors or between)
    seen = set()
    for pairs in (9, 64, 256):
        for k in range(-pairs // 4, pairs + 1):
            for se in (0.0, 1 / pairs, 0.02, 0.07, float("nan")):
                for targets in (1, pairs // 3, pairs):
                    r = TransplantResult("place", 0.0, 0.0, k / pairs, 0.0, pairs, se,
                                         targets=targets)
                    margin = shown_margin([r], 0.05, 3.5)
                    if abs(margin) > 1e-9:                       # not a tie
                        assert shown_followed([r], 0.05, 3.5) == (margin > 0), (k, se)
                        seen.add(margin > 0)
    assert seen == {True, False}


def test_the_effects_error_counts_pairs_that_share_a_donor_or_a_target():
    """Pairs drawn with replacement are not independent: when one member's piece turns every
    target and the other members' none, or one target turns with every member's piece and the
    others with none, the error is that of a few donors or targets, not of N pairs."""
    from spray.verdict.transplant import effect_se

    rng = np.random.default_rng(0)
    n = 400
    targets = rng.integers(0, 1000, n)
    rest = rng.integers(0, 100, n)
    many = rng.integers(0, 100, n)                     # 100 member donors, turns at random
    few = rng.integers(0, 4, n)                        # 4 member donors, one of them turns all
    a_many, a_few = rng.random(n) < 0.25, few == 0
    b = np.zeros(n, bool)
    paired = np.sqrt(np.var(a_few.astype(float)) / n)
    assert effect_se(a_few, b, targets, few, rest) > 3 * paired
    assert effect_se(a_many, b, targets, many, rest) < 1.6 * np.sqrt(
        np.var(a_many.astype(float)) / n)
    four = rng.integers(0, 4, n)                       # 4 targets, one turns with every piece
    assert effect_se(four == 0, b, four, many, rest) > 3 * paired
    assert effect_se(b, b, targets, many, rest) == 0.0


def test_few_targets_or_no_error_never_clear_a_suspect():
    """No pair differing proves little when the pairs share a few targets: one target, or a
    handful, is never enough to clear (the floor of an effect at the bar); a NaN error decides
    nothing."""
    from spray.verdict.transplant import TransplantResult, decide

    def none_turned(pairs: int, targets: int):
        return [TransplantResult("place", 0.0, 0.0, 0.0, 0.0, pairs, 0.0, targets)]

    assert decide(none_turned(256, 1), 0.05, 3) == "undecided"
    assert decide(none_turned(256, 10), 0.05, 3) == "undecided"
    assert decide(none_turned(256, 200), 0.05, 3) == "ignored"
    assert decide(none_turned(64, 64), 0.05, 3) == "undecided"      # 3 √(0.0475 / 64) > 0.05
    assert decide([_result(0.0, 0.0, float("nan"))], 0.05, 3) == "undecided"


def test_one_usable_target_never_clears_a_suspect():
    """In the test itself: every pair shares the one target the model does not already call
    the class, and no piece turns it; the suspect is not cleared however many pairs."""
    from spray.verdict.transplant import ModelTest, decided_test

    x = np.zeros((40, 1, 12, 12), np.float32)
    maps = np.full((40, 12, 12), 0.01)
    maps[:, :3, :3] = 1.0
    test = ModelTest(_bright_corner(7), lambda rows: x[rows], lambda rows: maps[rows],
                     np.zeros((1, 1, 12, 12), np.float32), 7)
    decision, results = decided_test(test, np.arange(40) < 10, side=0.25, area=0.0625,
                                     pairs=256, max_pairs=1024, seed=0, min_effect=0.05,
                                     min_z=3.0)
    assert decision == "undecided" and {(r.pairs, r.targets) for r in results} == {(1024, 1)}


def test_an_undecided_suspect_is_tested_again_with_more_pairs():
    """A group whose pieces turn targets 5 points more often than the rest's (exactly the bar)
    stays undecided through every size up to ``max_pairs``; a group far above it is decided
    with the first pairs."""
    from spray.verdict.transplant import ModelTest, decided_test

    rng = np.random.default_rng(0)
    x = np.zeros((400, 1, 12, 12), np.float32)
    members = np.arange(400) < 200
    x[np.flatnonzero(members)[:20], 0, :3, :3] = 1.0       # 10 % of the members
    x[np.flatnonzero(~members)[:10], 0, :3, :3] = 1.0      # 5 % of the rest
    maps = np.full((400, 12, 12), 0.01) + rng.random((400, 12, 12)) * 1e-3
    maps[:, :3, :3] = 1.0
    test = ModelTest(_bright_corner(7), lambda rows: x[rows], lambda rows: maps[rows],
                     np.zeros((300, 1, 12, 12), np.float32), 7)
    kw = dict(side=0.25, area=0.0625, seed=0, min_effect=0.05, min_z=3.0)
    decision, results = decided_test(test, members, pairs=64, max_pairs=1024, **kw)
    assert decision == "undecided" and {r.pairs for r in results} == {1024}
    decision, results = decided_test(test, members, pairs=64, max_pairs=64, **kw)
    assert decision == "undecided" and {r.pairs for r in results} == {64}
    far = x[:, 0, 0, 0] > 0.5                               # every bright corner, no other
    decision, results = decided_test(test, far, pairs=64, max_pairs=1024, **kw)
    assert decision == "followed" and {r.pairs for r in results} == {64}
    # confirmed: decided on a run of max_pairs; nothing to turn is not tested again
    decision, results = decided_test(test, far, pairs=64, max_pairs=1024, confirm=True, **kw)
    assert decision == "followed" and {r.pairs for r in results} == {1024}
    decision, results = decided_test(test, members, pairs=64, max_pairs=1024, confirm=True,
                                     **kw)
    assert decision == "undecided" and {r.pairs for r in results} == {1024}
    dark = ModelTest(_bright_corner(7), lambda rows: x[rows], lambda rows: maps[rows],
                     np.ones((30, 1, 12, 12), np.float32), 7)     # all predicted 7 already
    assert decided_test(dark, far, pairs=64, max_pairs=1024, confirm=True,
                        **kw) == ("untested", [])



def test_the_headline_says_what_the_test_decided():
    from spray.report.headline import transplant_sentence

    tests = [{"region": "place", "members": 0.07, "rest": 0.02, "effect": 0.05, "z": 2.0}]
    assert "too close to the bar to tell, so they stay suspect" in transplant_sentence(
        {"transplant": tests, "decision": "undecided"})
    assert "shown to ignore" in transplant_sentence({"transplant": tests, "followed": False})
    assert "turn 7 % of them to this class (the rest's 2 %)" in transplant_sentence(
        {"transplant": tests, "decision": "followed"})
    assert transplant_sentence({"transplant": []}) == ""

def test_pasted_flips_move_only_the_region():
    seen = []

    def predict(x):
        seen.append(x.copy())
        return np.where(x[:, 0, 0, 0] > 0.5, 1, 0)

    targets, donors = np.zeros((4, 1, 3, 3)), np.ones((4, 1, 3, 3))
    region = np.zeros((3, 3), bool)
    region[0, 0] = True
    assert pasted_flips(predict, targets, donors, region, 1).all()
    assert seen[0][:, 0].sum() == 4      # one pixel of each target, nothing else
    per_pair = np.zeros((4, 3, 3), bool)
    per_pair[:2, 0, 0] = True
    assert pasted_flips(predict, targets, donors, per_pair, 1).tolist() == [True, True,
                                                                              False, False]


@pytest.fixture(scope="module")
def stamped(small_problem, single_torch_thread):
    """The session's CNN (a stamp on 30 % of class 2), class 2's inputs and LRP maps."""
    from spray.lrp import attribute

    namespace: dict = {}
    exec((small_problem["root"] / "smallnet.py").read_text(), namespace)
    model = namespace["build"]()
    model.load_state_dict(torch.load(small_problem["root"] / "weights.pt", weights_only=True))
    model.eval()
    x, y = small_problem["x"], small_problem["y"]
    cls = np.flatnonzero(y == 2)
    maps = attribute(model, torch.as_tensor(x[cls]), torch.as_tensor(y[cls]),
                     composite="epsilon-plus-flat").detach().numpy()[:, 0]
    with torch.no_grad():
        pred = model(torch.as_tensor(x)).argmax(1).numpy()
    targets = x[(y != 2) & (pred != 2)]
    stamp = np.isin(cls, small_problem["poisoned"])

    def predict(batch):
        with torch.no_grad():
            return model(torch.as_tensor(batch)).argmax(1).numpy()
    return {"predict": predict, "x": x[cls], "maps": maps, "stamp": stamp, "targets": targets}


def test_the_stamped_groups_pieces_turn_other_classes(stamped):
    s = stamped
    tests = {t.region: t for t in transplant_test(s["predict"], s["x"], s["maps"], s["stamp"],
                                                  s["targets"], 2, pairs=200)}
    assert set(tests) == {"place", "peak"}
    assert tests["place"].members > 0.3 and tests["place"].rest < 0.1
    assert tests["place"].effect > 0.3 and tests["place"].z > 5
    assert tests["peak"].effect > 0.1 and tests["peak"].z > 3


def test_unstamped_groups_pieces_do_not(stamped):
    s = stamped
    clean = np.flatnonzero(~s["stamp"])
    group = np.zeros(len(s["stamp"]), bool)
    group[np.random.default_rng(0).choice(clean, size=int(s["stamp"].sum()), replace=False)] = \
        True
    tests = transplant_test(s["predict"], s["x"], s["maps"], group, s["targets"], 2, pairs=200)
    assert [t.region for t in tests] == ["place", "peak"]
    for t in tests:
        # the rest holds the stamped samples: their pieces turn more, never the group's
        assert t.members < 0.2 and t.effect < 0.1


def test_nothing_to_compare_gives_no_test(stamped):
    s = stamped
    none = np.zeros(len(s["stamp"]), bool)
    assert transplant_test(s["predict"], s["x"], s["maps"], none, s["targets"], 2) == []
    assert transplant_test(s["predict"], s["x"], s["maps"], ~none, s["targets"], 2) == []
    assert transplant_test(s["predict"], s["x"], s["maps"], s["stamp"], s["targets"][:0],
                           2) == []


# ------------------------------------------------------------------ in a run of the pipeline


def _project(small_problem, root, pairs=128):
    """The small problem's files and config in ``root`` with the transplant test on."""
    import copy
    import shutil

    import yaml

    root.mkdir(parents=True)
    for name in ("data.npz", "weights.pt", "smallnet.py"):
        shutil.copy(small_problem["root"] / name, root / name)
    cfg = copy.deepcopy(small_problem["raw_config"])
    cfg["output"] = "out"
    cfg["pipeline"] = {"preset": "spray-default", "embedding": {"method": "none"},
                       "flags": {"transplant_pairs": pairs}}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root


def _run(small_problem, root, preset="spray-default", **flags):
    """:func:`_project` with the pipeline ``preset`` and more ``flags``, run to the end
    (exit 0)."""
    import yaml

    from spray.cli.main import main

    root = _project(small_problem, root)
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    cfg["pipeline"]["preset"] = preset
    cfg["pipeline"]["flags"].update(flags)
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(root / "config.yaml"), "--quiet"]) == 0
    return root


def _classes(root) -> dict:
    import json

    summary = json.loads((root / "out" / "report" / "summary.json").read_text())
    return {e["class"]: e for e in summary["classes"]}


def test_a_run_flags_the_stamp_its_model_follows(small_problem, tmp_path):
    """The stamped class's suspect gets the transplant test in the run and stays flagged (the
    class scored on a subsample, its labels extended to the whole class first)."""
    from spray.cli.main import main

    root = _run(small_problem, tmp_path / "followed", score_max_samples=100)
    assert main(["check", str(root / "out")]) == 1
    entry = _classes(root)[2]
    assert entry["flagged"], entry
    from spray.store import open_class

    flags = open_class(root / "out", 2).attrs["analysis"]["flags"]
    suspect = next(c for c in flags["clusters"] if c["id"] == flags["suspect_cluster"])
    assert suspect["decision"] == "followed"
    assert {t["region"] for t in suspect["transplant"]} == {"place", "peak"}
    assert max(t["effect"] for t in suspect["transplant"]) > 0.3
    assert flags["not_followed"] == [] and flags["scored_on"] == 100
    page = (root / "out" / "report" / "class_2.html").read_text()
    assert "Pasted onto images of other classes" in page and "the model follows them" in page


def test_a_suspect_the_model_ignores_is_watched_not_flagged(stamped):
    """A suspect of unstamped samples (the trained CNN, its maps): the model is shown to
    ignore its pieces, so the class is not flagged and the suspect is listed as not followed;
    the score stays. The stamped group in the same verdict stays a suspect."""
    from spray.config.presets import FlagsSection
    from spray.verdict.score import follow_suspects, gate_score
    from spray.verdict.transplant import ModelTest

    s = stamped
    clean = np.flatnonzero(~s["stamp"])
    labels = np.zeros(len(s["stamp"]), dtype=np.int64)
    labels[np.random.default_rng(1).choice(clean, size=40, replace=False)] = 1

    test = ModelTest(s["predict"], lambda rows: s["x"][rows], lambda rows: s["maps"][rows],
                     s["targets"], 2)
    params = FlagsSection(transplant_pairs=200)
    v = _verdict(labels, [1], {0: 0.5})
    follow_suspects(v, test, params)
    assert not v.flagged and v.suspect_clusters == [] and v.not_followed == [1]
    assert v.score == 3.0 and v.cluster(1).decision == "ignored"
    assert v.to_dict()["not_followed"] == [1]
    assert v.cluster(1).followed_margin is None and gate_score(v) == 0.5   # cleared: nothing
    both = labels.copy()
    both[s["stamp"]] = 2
    v = _verdict(both, [1, 2], {0: 0.5})
    follow_suspects(v, test, params)
    assert v.flagged and v.suspect_clusters == [2] and v.suspect_cluster == 2
    assert v.not_followed == [1] and v.cluster(2).decision == "followed"
    # no candidates below the threshold asked about: no margin, the gate's score is the score
    assert v.cluster(2).followed_margin is None and gate_score(v) == 3.0

    def margin_at(**flags):
        v = _verdict(both, [1, 2], {0: 0.5})
        follow_suspects(v, test, FlagsSection(transplant_pairs=200, transplant_reach=1.0,
                                              **flags))
        assert v.cluster(2).decision == "followed"
        return v, v.cluster(2).followed_margin

    # the stamp's margin at the stricter bar: the gate's score is the better of the two
    v, margin = margin_at()
    assert margin > 0 and gate_score(v) == pytest.approx(max(3.0, v.threshold + margin))
    assert margin_at(transplant_near_effect=0.3)[1] < margin     # the candidates' bar, higher
    assert margin_at(transplant_near_effect=0.01)[1] == margin   # the suspects', higher


def test_a_run_watches_a_suspect_shown_below_the_bar(small_problem, tmp_path):
    """With a bar no effect reaches (``transplant_min_effect: 1``) the stamped class's suspect
    is shown below it: the run's gate passes, the class is watched, its page says why, and its
    score is the one without the test."""
    from spray.cli.main import main

    root = _run(small_problem, tmp_path / "unreachable", transplant_min_effect=1.0)
    assert main(["check", str(root / "out")]) == 0
    entry = _classes(root)[2]
    assert not entry["flagged"] and entry["watch"] and entry["score"] >= entry["threshold"]
    assert entry["gate_score"] < entry["threshold"]     # the cleared suspect counts for nothing
    assert entry["not_followed"] and entry["suspect_clusters"] == []
    shown = next(c for c in entry["clusters"] if c["id"] == entry["not_followed"][0])
    assert shown["decision"] == "ignored" and shown["members"]
    page = (root / "out" / "report" / "class_2.html").read_text()
    assert "not followed by the model" in page and "transplant test" in page


def test_the_probe_tests_the_measured_candidates(stamped):
    """tests/benchmarks/probe_transplant.py on the stamped class: the verdict's suspect is
    the stamped group, tested with a large effect; every tested candidate is one the rule
    measured, each with its planted share."""
    import argparse
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))
    from probe_transplant import probe_class

    from spray.config.presets import load_pipeline

    s = stamped
    args = argparse.Namespace(top=3, top_windows=2, side=0.22, area=0.1, pairs=128)
    rows = probe_class(s["predict"], s["maps"], s["x"], s["stamp"], s["targets"], 2,
                       load_pipeline("spray-default"), args, seed=0)
    assert {r["source"] for r in rows} == {"top", "verdict"}
    suspect = next(r for r in rows if r["source"] == "verdict")
    assert suspect["flagged"] and suspect["precision"] >= 0.9 and suspect["recall"] >= 0.9
    assert suspect["place_effect"] > 0.3 and suspect["place_z"] > 5
    assert all(r["planted_in"] <= r["size"] for r in rows)
    assert len([r for r in rows if r["source"] == "top"]) <= 3


# ------------------------------------------------- candidates below the threshold (transplant_reach)


def _class_scored(stamped, rows=None, model=True, **flags):
    """Class 2 of the trained CNN scored with the default rule and ``flags`` (the transplant
    test on), with the model test of its samples unless ``model`` is False."""
    from spray.analysis.analyze import analyze
    from spray.analysis.preprocess import preprocess
    from spray.config.presets import load_pipeline
    from spray.verdict.score import score_class
    from spray.verdict.transplant import ModelTest

    s = stamped
    pipe = load_pipeline("spray-default")
    pipe["flags"] = {"transplant_pairs": 128, **flags}
    maps, x = s["maps"], s["x"]
    feats = preprocess(maps, pipe["preprocess"])
    result = analyze(feats, pipeline=pipe, embed=False)
    test = ModelTest(s["predict"], lambda r: x[r], lambda r: maps[r], s["targets"], 2)
    return score_class(result, preprocess(x, pipe["preprocess"]), pipe, features=feats,
                       model_test=test if model else None)


@pytest.fixture(scope="module")
def stamp_score(stamped):
    """The stamped class's score by the default rule (its suspect is the stamp)."""
    v = _class_scored(stamped, model=False)
    assert v.flagged
    return v.score


def _suspect_pr(v, stamp) -> tuple[float, float]:
    members = np.isin(v.labels, v.suspect_clusters)
    hit = int((members & stamp).sum())
    return hit / max(1, int(members.sum())), hit / int(stamp.sum())


def test_a_candidate_below_the_threshold_the_model_follows_is_the_suspect(stamped, stamp_score):
    """With the threshold above the stamp's score, the stamp's group is scored within
    ``transplant_reach`` below it: tested, followed, the suspect (flagged, its score as it
    was); not flagged without the reach, without the model, or with a bar no effect reaches."""
    raised = {"threshold": stamp_score + 0.5}
    v = _class_scored(stamped, transplant_reach=1.0, **raised)
    assert v.flagged and v.score == stamp_score and v.score < v.threshold
    suspect = v.cluster(v.suspect_cluster)
    assert suspect.followed_below and suspect.decision == "followed"
    # flagged: the gate's score at the threshold plus the place test's margin (kept from the
    # test that promoted it, not from the suspects' test after it)
    place = next(t for t in v.near_tested[0]["tests"] if t["region"] == "place")
    kept = TransplantResult(**{k: np.nan if x is None else x for k, x in place.items()})
    bar, z = v.params["transplant_near_effect"], v.params["transplant_near_z"]
    assert suspect.followed_margin == pytest.approx(shown_margin([kept], bar, z), rel=0.02)
    assert suspect.followed_margin >= 0
    assert v.gate_score == pytest.approx(v.threshold + suspect.followed_margin)
    assert min(_suspect_pr(v, stamped["stamp"])) >= 0.9
    first = v.near_tested[0]
    assert first["decision"] == "followed" and first["score"] < v.threshold
    assert max(t["effect"] for t in first["tests"]) > 0.3
    place = next(t for t in first["tests"] if t["region"] == "place")
    assert place["agreed"] >= 0.35                      # the stamp: the same pixels in each
    assert v.to_dict()["near_tested"][0]["members"] == first["members"]
    for flags in ({"transplant_reach": 0.0}, {"transplant_reach": 0.4}):
        off = _class_scored(stamped, **flags, **raised)
        assert not off.flagged and off.near_tested is None and off.score == stamp_score
    assert not _class_scored(stamped, model=False, transplant_reach=1.0, **raised).flagged
    unreachable = _class_scored(stamped, transplant_reach=1.0, transplant_near_effect=1.0,
                                **raised)
    assert not unreachable.flagged and unreachable.near_tested
    assert unreachable.gate_score == unreachable.score < unreachable.threshold
    assert all(t["decision"] != "followed" for t in unreachable.near_tested)
    assert not any(c.followed_below for c in unreachable.clusters)
    # followed, but pieces held to be alike in every value: class evidence, not a suspect
    unlike = _class_scored(stamped, transplant_reach=1.0, transplant_near_agreed=1.0,
                           **raised)
    assert not unlike.flagged and unlike.near_tested[0]["decision"] == "unlike"
    assert not any(c.followed_below for c in unlike.clusters)


def test_candidates_below_the_threshold_the_model_does_not_follow_stay_unflagged(stamped,
                                                                                 stamp_score):
    """Groups of unstamped samples only (the stamped samples left out of the class): the best
    candidates within reach are tested, at most ``transplant_near_tries``, best first, and
    none is followed."""
    from spray.analysis.analyze import analyze
    from spray.analysis.preprocess import preprocess
    from spray.config.presets import load_pipeline
    from spray.verdict.score import score_class
    from spray.verdict.transplant import ModelTest

    s = stamped
    keep = np.flatnonzero(~s["stamp"])
    pipe = load_pipeline("spray-default")
    pipe["flags"] = {"transplant_pairs": 128}
    maps, x = s["maps"][keep], s["x"][keep]
    feats = preprocess(maps, pipe["preprocess"])
    result = analyze(feats, pipeline=pipe, embed=False)
    test = ModelTest(s["predict"], lambda r: x[r], lambda r: maps[r], s["targets"], 2)
    # every candidate lies below a threshold of 50 and within the reach
    pipe["flags"].update(threshold=50.0, transplant_reach=60.0, transplant_near_tries=3)
    v = score_class(result, preprocess(x, pipe["preprocess"]), pipe, features=feats,
                    model_test=test)
    assert not v.flagged and 1 <= len(v.near_tested) <= 3
    assert [t["score"] for t in v.near_tested] == sorted(
        (t["score"] for t in v.near_tested), reverse=True)
    assert all(t["decision"] != "followed" for t in v.near_tested)


def test_a_subsampled_class_tests_its_candidates_on_the_samples_drawn(stamped, stamp_score):
    """On a subsample (``score_max_samples``) the candidate's members are the class's rows:
    the test reads the drawn samples, the suspect is extended to the class."""
    v = _class_scored(stamped, transplant_reach=1.5, score_max_samples=100,
                      threshold=stamp_score + 0.5)
    assert v.scored_on == 100 and v.flagged
    members = np.asarray(v.near_tested[0]["members"])
    assert len(members) < 100 and members.max() < len(stamped["stamp"])
    assert stamped["stamp"][members].mean() >= 0.9
    assert min(_suspect_pr(v, stamped["stamp"])) >= 0.9


def test_a_run_flags_a_class_below_the_threshold_its_model_follows(small_problem, tmp_path,
                                                                   stamp_score):
    """In a run of the preset ``followed`` (which asks about candidates below the threshold)
    with the threshold raised above the stamp's score: the class is flagged below it, the
    check fails it and says why, the class page too."""
    from spray.cli.main import main

    root = _run(small_problem, tmp_path / "below", preset="followed",
                threshold=round(stamp_score + 0.8, 3))
    entry = _classes(root)[2]
    assert entry["flagged"] and entry["score"] < entry["threshold"]
    suspect = next(c for c in entry["clusters"] if c["id"] == entry["suspect_cluster"])
    assert suspect["followed_below"] and suspect["decision"] == "followed"
    assert not any(e["flagged"] for c, e in _classes(root).items() if c != 2)
    assert main(["check", str(root / "out")]) == 1
    assert entry["gate_score"] >= entry["threshold"]
    assert all(e.get("gate_score", np.inf) < e["threshold"]
               for c, e in _classes(root).items() if c != 2)
    page = (root / "out" / "report" / "class_2.html").read_text()
    assert "Flagged below the threshold" in page and "the model follows them" in page
    assert "Gate score" in page


def _near_setup(stamped):
    """Class 2's graphs and its analysis clusters (all below the band), for ``_follow_near``."""
    from spray.analysis.analyze import analyze
    from spray.analysis.preprocess import preprocess
    from spray.config.presets import load_pipeline
    from spray.verdict.evidence import ClassGraphs
    from spray.verdict.result import ClusterEvidence
    from spray.verdict.score import flag_params
    from spray.verdict.transplant import ModelTest

    s = stamped
    pipe = load_pipeline("spray-default")
    pipe["flags"] = {"transplant_pairs": 128, "transplant_reach": 1.0}
    feats = preprocess(s["maps"], pipe["preprocess"])
    result = analyze(feats, pipeline=pipe, embed=False)
    graphs = ClassGraphs.build(result, preprocess(s["x"], pipe["preprocess"]), pipe,
                               flag_params(pipe), feats)
    labels = np.zeros(len(s["stamp"]), dtype=np.int64)
    labels[len(labels) // 2:] = 1
    clusters = [ClusterEvidence.of(labels == i, id=i, score=-3.0) for i in (0, 1)]
    test = ModelTest(s["predict"], lambda r: s["x"][r], lambda r: s["maps"][r], s["targets"], 2)
    return labels, clusters, graphs, test


def test_a_cut_the_model_follows_below_the_threshold_is_split_off(stamped):
    """A cut within the band whose pieces the model follows becomes a cluster of its own (the
    next id; its members leave both clusters, which are measured again); a cut that holds a
    whole cluster is never tested (splitting it would drop that cluster)."""
    from spray.verdict.result import ClusterEvidence
    from spray.verdict.score import _follow_near

    labels, clusters, graphs, test = _near_setup(stamped)
    stamp = stamped["stamp"]
    cut = ClusterEvidence.of(stamp.copy(), cut_along=2, cut_graph="edges", score=1.2)
    out, after, splits, promoted, tested = _follow_near(labels, clusters, [(cut, None)], graphs,
                                                        None, lambda: test, (0.7, 1.7))
    assert promoted == 2 and splits == [{"cluster": 2, "from": int(np.bincount(
        labels[stamp]).argmax())}]
    assert (out == 2).tolist() == stamp.tolist() and tested[0]["decision"] == "followed"
    entry = next(c for c in after if c.id == 2)
    assert entry.followed_below and entry.cut_graph == "edges" and entry.score == 1.2
    assert all(c.size == int((out == c.id).sum()) for c in after)
    # a cut holding cluster 0 whole: left out, nothing tested or split
    holder = ClusterEvidence.of(stamp | (labels == 0), cut_along=1, score=1.2)
    out, after, splits, promoted, tested = _follow_near(labels, clusters, [(holder, None)],
                                                        graphs, None, lambda: test, (0.7, 1.7))
    assert promoted is None and tested == [] and splits == [] and len(after) == 2
    # outside the band (or without a model): nothing tested
    for band, get in (((1.3, 1.7), lambda: test), ((0.7, 1.7), lambda: None)):
        assert _follow_near(labels, clusters, [(cut, None)], graphs, None, get,
                            band)[3:] == (None, [])
