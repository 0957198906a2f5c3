"""Members by their pattern: the raw inputs at a suspect's hot spot, read in chunks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from spray.analysis.preprocess import cell_pixels, preprocess
from spray.config.presets import FlagsSection
from spray.verdict.evidence import difference, top_cells
from spray.verdict.members import (
    _guard,
    _guarded_join,
    _within,
    apart_bar,
    at_places,
    carrier_bar,
    carriers_apart,
    decide_members,
    fixed_places,
    join_bar,
    join_by_pattern,
    join_where_looked,
    lower_fence,
    pattern_outliers,
    trim_by_pattern,
    upper_fence,
)
from spray.verdict.patterns import InputPatterns, _PeakWindows, hot_region
from spray.verdict.result import ClusterEvidence

PRE = {"channel_sum": True, "transform": "none", "pool": [8, 8], "normalize": "l1"}
#: the far fence of the last member step's bar, as configured by default
FAR = FlagsSection().peak_far_iqr
GLYPH = np.array([[1, 0, 0, 0, 0, 0, 1],
                  [1, 0, 0, 1, 0, 0, 1],
                  [1, 0, 1, 0, 1, 0, 1],
                  [1, 1, 0, 0, 0, 1, 1],
                  [1, 0, 0, 0, 0, 0, 1]], dtype=bool)     # a "W", 5 × 7 px
BOX = (slice(10, 15), slice(2, 9))


def _colour_fields(seed: int, n: int, stamped: int, lookalikes: int):
    """RGB 16 × 16 smooth colour fields, the mask of the first ``stamped`` and that of the
    ``lookalikes`` after them, and the generator to go on with."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.1, 0.6, (n, 3, 1, 1)) + gaussian_filter(rng.normal(0, 0.15, (n, 3, 16, 16)),
                                                              (0, 0, 2, 2))
    x = np.clip(x, 0, 1).astype(np.float32)
    first = np.arange(n) < stamped
    look = (np.arange(n) >= stamped) & (np.arange(n) < stamped + lookalikes)
    return rng, x, first, look


def _first_as_cluster(rel: np.ndarray, suspects: int):
    """The features of relevance maps ``rel``, labels with the first ``suspects`` in cluster 1
    and the rest in 0, and the two clusters."""
    labels = (np.arange(len(rel)) < suspects).astype(np.int64)
    return preprocess(rel, PRE), labels, [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]


def _scene_class(seed: int = 0, n: int = 200, suspects: int = 30, outside: int = 12,
                 lookalikes: int = 15, sign: float = 1.0, stamp: bool = True,
                 seen: int | None = None):
    """RGB 16 × 16 images of smooth colour fields. The first ``suspects`` carry the glyph in
    white at 75 % over the box and form cluster 1; the next ``outside`` carry it too but are in
    cluster 0; the next ``lookalikes`` have the box as bright as the glyph makes it on average,
    without the glyph's shape. Relevance features (8 × 8) of the stamped samples sit on the box
    (``sign`` −1: the model's relevance there is negative). Without ``stamp`` nobody carries the
    glyph, and the group is one the model looks at the box for. With ``seen``, only the first
    ``seen`` stamped samples have their relevance there.

    Returns inputs ``(n, 3, 16, 16)``, features, labels, clusters, stamped, lookalike."""
    rng, x, stamped, look = _colour_fields(seed, n, suspects + outside, lookalikes)
    box = x[:, :, BOX[0], BOX[1]]
    alpha = 0.75 * GLYPH * stamp
    box[stamped] = box[stamped] * (1 - alpha) + alpha
    box[look] = box[look] * (1 - 0.75 * GLYPH.mean()) + 0.75 * GLYPH.mean()
    rel = sign * rng.uniform(0, 0.2, (n, 16, 16)).astype(np.float32)
    looked = stamped.copy()
    if seen is not None:
        looked[seen:] = False
    rel[looked, BOX[0], BOX[1]] += sign * 2.0
    return (x, *_first_as_cluster(rel, suspects), stamped, look)


def test_cell_pixels_takes_the_pixels_mostly_in_the_cells():
    # 32 px onto 20 cells: cell 0 covers [0, 1.6), cell 1 [1.6, 3.2)
    rows = np.flatnonzero(cell_pixels(np.array([0]), (20, 20), 32, 32).any(axis=1))
    assert rows.tolist() == [0, 1]                        # pixel 1: 0.6 in cell 0
    both = cell_pixels(np.array([0, 1]), (20, 20), 32, 32)
    assert both[0].nonzero()[0].tolist() == [0, 1, 2]     # pixel 2 lies wholly in cell 1
    assert both.sum() == 6
    plain = cell_pixels(np.array([0, 5]), None, 4, 4)     # no grid: the cells are pixels
    assert np.argwhere(plain).tolist() == [[0, 0], [1, 1]]
    # a grid finer than the map: cells 0 and 1 hold exactly half of pixel (0, 0), cell 0 a quarter
    assert cell_pixels(np.array([0, 1]), (4, 4), 2, 2).tolist() == [[True, False], [False, False]]
    assert not cell_pixels(np.array([0]), (4, 4), 2, 2).any()
    # a sixth of a pixel per cell: three cells are half of it, up to rounding
    assert cell_pixels(np.array([0, 1, 2]), (1, 12), 1, 2).tolist() == [[True, False]]
    # not square: 4 × 8 pixels onto 2 × 4 cells; cell 1 is row 0, column 1
    wide = cell_pixels(np.array([1]), (2, 4), 4, 8)
    assert np.argwhere(wide).tolist() == [[0, 2], [0, 3], [1, 2], [1, 3]]


def _hot_spot(feats, mask):
    return top_cells(np.abs(difference(feats, mask)), 0.1)


def test_stamped_samples_outside_join_and_look_alikes_do_not():
    x, feats, labels, clusters, stamped, look = _scene_class()
    patterns = InputPatterns.of(x, PRE)
    r = patterns.correlation(_hot_spot(feats, labels == 1), labels == 1, 2000)
    # the look-alikes are as bright there: the pooled luminance the rest of the rule sees
    # does not tell them from the stamped samples, the pattern does
    assert r[look].max() < 0.5 < 0.9 < r[stamped].min()
    out = join_by_pattern(labels, clusters, [1], feats, 0.1, 1.0, patterns, 2000)
    joins = (labels == 0) & (r >= lower_fence(r[labels == 1], 1.0))
    assert ((out == 1) == ((labels == 1) | joins)).all()
    assert (joins <= stamped).all() and joins.sum() >= 10           # of the 12 outside
    assert clusters[1].pattern_joined == joins.sum()
    assert clusters[1].size == 30 + joins.sum() and clusters[0].size == len(labels) - 30 - joins.sum()


def test_look_alikes_inside_leave_and_the_stamped_outside_then_join():
    """The relevance graph put the 15 look-alikes in the suspect with the 30 stamped samples (a
    third without the glyph): the members' lower fence falls below the rest's upper fence and
    the pattern join takes no one in. The pattern trim moves the look-alikes out (they are
    not carriers: below the outside's upper fence), and the stamped samples outside join."""
    import scipy.sparse as sp

    x, feats, labels, _, stamped, look = _scene_class()
    labels = labels.copy()
    labels[look] = 1
    patterns = InputPatterns.of(x, PRE)
    W = sp.csr_matrix(np.ones((len(x), len(x))) - np.eye(len(x)))
    clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
    assert (join_by_pattern(labels, clusters, [1], feats, 0.1, 1.0, patterns, 2000)
            == labels).all()
    clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
    trimmed = trim_by_pattern(labels, clusters, [1], W, feats, 0.1, 1.0, 1.5, patterns, 2000)
    assert ((trimmed == 1) == (labels == 1) & stamped).all()
    assert clusters[1].pattern_trimmed == 15 and clusters[1].size == 30
    out = join_by_pattern(trimmed, clusters, [1], feats, 0.1, 1.0, patterns, 2000)
    assert ((out == 1) <= stamped).all() and clusters[1].pattern_joined >= 10   # of the 12
    # off: nothing moves
    assert trim_by_pattern(labels, clusters, [1], W, feats, 0.1, 1.0, None, patterns,
                           2000) is labels


def test_carriers_outside_that_outnumber_the_members_join_where_they_stand_apart():
    """The suspect holds 20 of 80 stamped samples: the 60 outside lift the outside's upper fence
    above the members' lower fence and the guard refuses. With the gap the stamped samples
    outside join (they stand apart from the rest above a bar), the look-alikes do not."""
    x, feats, labels, clusters, stamped, look = _scene_class(suspects=20, outside=60)
    patterns = InputPatterns.of(x, PRE)
    outside = labels == 0
    r = patterns.correlation(_hot_spot(feats, labels == 1), labels == 1, 2000)
    assert lower_fence(r[labels == 1], 1.0) < upper_fence(r[outside], 1.0)      # refused
    assert (join_by_pattern(labels, clusters, [1], feats, 0.1, 1.0, patterns, 2000)
            == labels).all() and clusters[1].pattern_joined == 0
    clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
    out = join_by_pattern(labels, clusters, [1], feats, 0.1, 1.0, patterns, 2000, 1.5, 0.1)
    joined = outside & (out == 1)
    assert (joined <= stamped).all() and joined.sum() >= 55 and not (joined & look).any()
    assert clusters[1].pattern_joined == joined.sum() == (outside & (r >= apart_bar(
        r, labels == 1, outside, 1.0, 0.1, 1.5))).sum()
    # through decide_members: only with the flag (the later steps take no look-alike either)
    import scipy.sparse as sp

    W = sp.csr_matrix(np.ones((len(x), len(x))) - np.eye(len(x)))
    for gap in (0.0, 0.1):
        clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
        out = decide_members(labels, clusters, [1], W, preprocess(x, PRE), feats, 0.1,
                             _flags(pattern_join_gap=gap), patterns)
        assert (clusters[1].pattern_joined >= 55) == (gap > 0)
        assert not (out[look] == 1).any()


def test_the_apart_bar_is_the_lowest_where_carriers_apart_holds():
    rng = np.random.default_rng(3)
    for _ in range(40):
        rest = np.concatenate([rng.normal(0, 0.08, rng.integers(20, 200)),
                               rng.normal(rng.uniform(0.1, 0.7), 0.1, rng.integers(0, 80))])
        members = rng.normal(rng.uniform(0.3, 0.8), rng.uniform(0.05, 0.3), 30)
        r = np.concatenate([members, rest])
        mask = np.arange(len(r)) < len(members)
        low, high = lower_fence(members, 1.0), float(np.median(members))
        tried = np.unique(rest[(rest >= low) & (rest <= high)])
        want = next((float(b) for b in tried if carriers_apart(rest, b, 1.0, 0.1)), None)
        assert apart_bar(r, mask, ~mask, 1.0, 0.1) == want
    # a pattern the rest shares by degrees has no gap; gap 0: never
    rest = np.linspace(-0.2, 0.8, 300)
    members = np.linspace(0.5, 0.9, 30)
    r, mask = np.concatenate([members, rest]), np.arange(330) < 30
    assert apart_bar(r, mask, ~mask, 1.0, 0.1) is None
    two = np.concatenate([members, np.zeros(200), np.full(40, 0.7)])
    m2 = np.arange(len(two)) < 30
    assert apart_bar(two, m2, ~m2, 1.0, 0.1) == 0.7
    assert apart_bar(two, m2, ~m2, 1.0, 0.0) is None
    # the floor: members Q1 0.6, IQR 0.2; carriers at 0.35 lie between the fences at 1.0 (0.4)
    # and 1.5 (0.3)
    members = np.linspace(0.5, 0.9, 41)
    r = np.concatenate([members, np.zeros(200), np.full(40, 0.35)])
    mask = np.arange(len(r)) < len(members)
    assert apart_bar(r, mask, ~mask, 1.0, 0.1) is None
    assert apart_bar(r, mask, ~mask, 1.0, 0.1, 1.5) == 0.35
    # a tie of the rest's fence with a bar decides as carriers_apart does (the fence read off
    # the sorted values may differ from numpy's percentile in the last digit)
    below = np.array([-0.16, -0.08, -0.08, -0.01, 0.03, 0.08, 0.14, 0.17, 0.22, 0.25, 0.26])
    rest = np.append(below, 0.435)
    r = np.concatenate([[0.385, 0.435, 0.535, 0.635], rest])
    mask = np.arange(len(r)) < 4
    want = 0.435 if carriers_apart(rest, 0.435, 1.0, 0.005) else None
    assert apart_bar(r, mask, ~mask, 1.0, 0.005) == want


def test_decide_members_trims_look_alikes_only_with_the_flag():
    """Through ``decide_members``: with ``pattern_trim_iqr`` (1) most look-alikes the graph
    put in the suspect leave it, no stamped member does, and the stamped samples outside are
    in it at the end; without it (None) the look-alikes stay."""
    import scipy.sparse as sp

    x, feats, labels, _, stamped, look = _scene_class()
    labels = labels.copy()
    labels[look] = 1
    W = sp.csr_matrix(np.ones((len(x), len(x))) - np.eye(len(x)))
    reported = {}
    for reach in (None, 1.0):
        clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
        out = decide_members(labels, clusters, [1], W, preprocess(x, PRE), feats, 0.1,
                             _flags(pattern_trim_iqr=reach), InputPatterns.of(x, PRE))
        reported[reach] = (out == 1, clusters[1])
    kept, entry = reported[None]
    assert kept[look].all() and not entry.pattern_trimmed
    trimmed, entry = reported[1.0]
    # the look-alikes are built to be as bright as the glyph: a few correlate about 0.5 and
    # stay at this reach (at 1.5 all leave: the test above); no stamped member leaves
    left = look & ~trimmed
    assert left.sum() >= 12 and entry.pattern_trimmed == left.sum()
    assert trimmed[(labels == 1) & stamped].all() and (trimmed & stamped).sum() >= 40


def test_the_window_recorded_is_the_span_compared_on_blocks():
    """A hot region of 3 × 3 cells of a 20 × 20 grid on 224-pixel maps is a 34-pixel window,
    compared as 11 blocks of 3 pixels: 33 pixels; doubled, 11 blocks of 6: 66."""
    maps = np.zeros((2, 224, 224), np.float32)
    patterns = InputPatterns.of(np.zeros((2, 3, 224, 224), np.float32),
                                {"channel_sum": True, "transform": "none", "pool": [20, 20]},
                                maps=maps)
    diff = np.zeros((20, 20))
    diff[:3, :3] = 1.0
    assert patterns.peak_window(diff.ravel()) == 33
    assert patterns.peak_window(diff.ravel(), 2) == 66


def test_an_image_with_a_nan_has_no_best_window():
    """An image with a NaN outside the window that would match: every cosine is NaN, and its
    window is NaN (left out of an aligned template), not the top-left one."""
    rng = np.random.default_rng(5)
    x = rng.random((2, 3, 32, 32)).astype(np.float32)
    x[1, 0, 31, 31] = np.nan
    windows = _PeakWindows(5, 32, 32)
    template = _unit_template(rng, 3, 5).ravel()
    found = windows.best_match(x, template, windows=True)
    assert np.isfinite(found[0]).all() and np.isnan(found[1]).all()
    assert np.isnan(windows.best_match(x, template)[1])
def test_a_fainter_stamp_outside_joins_from_the_widened_bar():
    """The 30 members carry the glyph at 75 %; 12 samples outside carry it at 35 % (a fainter
    stamp), below the members' tight lower fence but far above the rest. From the members'
    fence alone few of them join; from the widened bar (the larger of the outside's upper
    fence and the midpoint to the members) all do, and no look-alike does."""
    x, feats, labels, clusters, stamped, look = _scene_class(outside=0)
    x = x.copy()
    faint = np.arange(30, 42)
    box = x[:, :, BOX[0], BOX[1]]
    box[faint] = box[faint] * (1 - 0.35 * GLYPH) + 0.35 * GLYPH
    x[:, :, BOX[0], BOX[1]] = box
    patterns = InputPatterns.of(x, PRE)
    joined = []
    for reach in (None, 1.5):
        clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
        out = join_by_pattern(labels, clusters, [1], feats, 0.1, 1.0, patterns, 2000, reach)
        joins = (labels == 0) & (out == 1)
        assert not joins[~np.isin(np.arange(len(x)), faint)].any()
        joined.append(int(joins.sum()))
    assert joined[0] <= 6 and joined[1] == 12


def test_the_join_bar_is_never_above_the_members_fence():
    rng = np.random.default_rng(0)
    rest = rng.normal(0.0, 0.15, 200)
    members = rng.uniform(0.85, 0.95, 30)
    r = np.r_[members, rest]
    mask = np.r_[np.ones(30, bool), np.zeros(200, bool)]
    fence = lower_fence(members, 1.0)
    bar = join_bar(r, mask, ~mask, fence, 1.5)
    assert upper_fence(rest, 1.5) <= bar < fence
    assert bar >= (np.median(rest) + np.median(members)) / 2
    # a fence below the widened bar stays the bar
    assert join_bar(r, mask, ~mask, 0.2, 1.5) == 0.2


def test_no_pattern_trim_without_a_pattern_most_members_carry():
    """Nobody carries the glyph: the members that lie above the outside's upper fence are
    fewer than half of them, and no one leaves."""
    import scipy.sparse as sp

    x, feats, labels, _, _, look = _scene_class(stamp=False)
    labels = labels.copy()
    labels[look] = 1
    W = sp.csr_matrix(np.ones((len(x), len(x))) - np.eye(len(x)))
    clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
    out = trim_by_pattern(labels, clusters, [1], W, feats, 0.1, 1.0, 1.5,
                          InputPatterns.of(x, PRE), 2000)
    assert (out == labels).all() and clusters[1].pattern_trimmed == 0


def test_pattern_outliers_are_the_non_carriers_below_the_carriers_fence():
    """Members leave below the outside's upper fence, the carriers' lower fence and the
    midpoint between the outside's median and the carriers'; none unless the carriers are
    at least half the members."""
    outside = np.r_[np.zeros(8, bool), np.ones(40, bool)]
    rest = np.linspace(-0.2, 0.2, 40)                     # upper fence at 1.5: 0.4
    members = np.array([0.9, 0.92, 0.95, 0.97, 0.93, 0.35, 0.1, np.nan])
    r = np.r_[members, rest]
    mask = ~outside
    assert pattern_outliers(r, mask, outside, 1.0, 1.5).tolist() == [5, 6]
    # 0.35 is not a carrier, but above the carriers' lower fence at a long reach (0.32)
    assert pattern_outliers(r, mask, outside, 20.0, 1.5).tolist() == [6]
    # at the outside's upper fence a member is a carrier; at the bar it stays
    at_fence = upper_fence(rest, 1.5)
    edge = np.r_[[0.9, 0.92, 0.95, 0.97, at_fence, 0.35, 0.1, np.nan], rest]
    assert 4 not in pattern_outliers(edge, mask, outside, 1.0, 1.5).tolist()
    carriers = np.r_[0.9, 0.92, 0.95, 0.97, at_fence]
    bar = min(lower_fence(carriers, 1.0), (np.median(rest) + np.median(carriers)) / 2)
    edge[5] = bar
    assert pattern_outliers(edge, mask, outside, 1.0, 1.5).tolist() == [6]
    # carriers fewer than half the members: none leave
    few = np.r_[[0.9, 0.92, 0.95, 0.1, 0.0, -0.1, 0.05, 0.02], rest]
    assert pattern_outliers(few, mask, outside, 1.0, 1.5).tolist() == []
    assert pattern_outliers(r, mask, np.zeros(48, bool), 1.0, 1.5).tolist() == []
    # every member stamped, the weakest at 0.5; stamped samples outside lift the outside's
    # upper fence to 0.53 and 0.5 lies below the carriers' lower fence (0.625) too, but not
    # below the midpoint between the outside's median and the carriers' (0.40): it stays
    members = np.array([0.5, 0.55, 0.7, 0.8, 0.85, 0.85, 0.9, 0.9])
    others = np.r_[np.linspace(-0.45, 0.2, 40), np.linspace(0.55, 0.77, 8)]
    inside = np.r_[np.ones(8, bool), np.zeros(48, bool)]
    assert pattern_outliers(np.r_[members, others], inside, ~inside, 1.0, 1.0).tolist() == []
    assert pattern_outliers(np.r_[members[:7], 0.3, others], inside, ~inside, 1.0,
                            1.0).tolist() == [7]


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_the_hot_spot_is_where_relevance_differs_either_way(sign):
    x, feats, labels, clusters, stamped, _ = _scene_class(sign=sign)
    out = join_by_pattern(labels, clusters, [1], feats, 0.1, 1.0, InputPatterns.of(x, PRE), 2000)
    assert clusters[1].pattern_joined >= 10 and (out[labels == 0] == 1).sum() >= 10
    assert ((out == 1) <= stamped).all()


def test_correlation_is_the_cosine_with_the_median_centred_pattern():
    x, feats, labels, *_ = _scene_class()
    x[3, :, BOX[0], BOX[1]] *= 40.0                          # an outlier member: not in a median
    cells = _hot_spot(feats, labels == 1)
    pix = cell_pixels(cells, (8, 8), 16, 16)
    V = x[:, :, pix].astype(np.float64)
    V = (V - V.mean(axis=-1, keepdims=True)).reshape(len(x), -1)
    t = np.median(V[labels == 1], axis=0)
    expected = V @ t / np.linalg.norm(V, axis=1) / np.linalg.norm(t)
    r = InputPatterns.of(x, PRE).correlation(cells, labels == 1, 2000)
    np.testing.assert_allclose(r, expected, atol=1e-5)
    assert np.abs(r).max() <= 1 + 1e-9


def test_members_without_a_common_pattern_take_no_one_in():
    """The model looks at the box for the group, but nothing is stamped there: the members'
    correlations spread about 0, their lower fence falls below the rest's upper one."""
    for seed in range(3):
        x, feats, labels, clusters, *_ = _scene_class(seed=seed, stamp=False)
        patterns = InputPatterns.of(x, PRE)
        r = patterns.correlation(_hot_spot(feats, labels == 1), labels == 1, 2000)
        assert lower_fence(r[labels == 1], 1.0) < upper_fence(r[labels == 0], 1.0)
        assert (r[labels == 0] > 0).sum() > 40              # what the sign alone would take
        out = join_by_pattern(labels, clusters, [1], feats, 0.1, 1.0, patterns, 2000)
        assert (out == labels).all() and clusters[1].pattern_joined == 0


def test_score_class_passes_the_patterns_on_and_keeps_every_score():
    """Both paths of the score (the whole class, and a subsample of a large one) hand the raw
    inputs to the members; the scores, flags and suspects are those without them. The graphs
    see the inputs without the stamp (so the 45 samples the model looks at are flagged); the
    raw inputs carry it, also on 20 samples the model does not look at there."""
    from spray.analysis.analyze import analyze
    from spray.config.presets import load_pipeline
    from spray.verdict.score import score_class

    x, feats, labels, _, stamped, _ = _scene_class(n=300, suspects=45, outside=20, seen=45)
    unstamped = preprocess(_scene_class(n=300, suspects=45, outside=20, stamp=False)[0], PRE)
    for flags in ({}, {"score_max_samples": 100}):
        pipe = load_pipeline("spray-default", overrides={
            "preprocess": PRE, "embedding": {"method": "none"}, "flags": flags})
        result = analyze(feats, pipeline=pipe, embed=False)
        plain = score_class(result, unstamped, pipe, features=feats)
        seen = score_class(result, unstamped, pipe, features=feats,
                           patterns=InputPatterns.of(x, PRE))
        assert seen.flagged and (plain.score, plain.suspect_clusters, plain.clean_rate) == (
            seen.score, seen.suspect_clusters, seen.clean_rate)
        assert [c.score for c in plain.clusters] == [c.score for c in seen.clusters]
        before = np.isin(plain.labels, plain.suspect_clusters)
        after = np.isin(seen.labels, seen.suspect_clusters)
        joined = sum(c.pattern_joined or 0 for c in seen.clusters)
        assert joined >= 15 and (after & ~before).sum() == joined and (after >= before).all()
        assert stamped[after & ~before].all(), flags


def test_no_patterns_no_join():
    x, feats, labels, clusters, *_ = _scene_class()
    assert join_by_pattern(labels, clusters, [1], feats, 0.1, 1.0, None, 2000) is labels
    assert clusters[1].pattern_joined is None
    assert join_by_pattern(labels, clusters, [1], feats, 0.0, 1.0, InputPatterns.of(x, PRE),
                           2000) is labels


@pytest.mark.parametrize("reach", [0.5, 1.0, 2.0])
def test_the_members_fence_decides_who_joins(reach):
    """Half the members carry the glyph under noise: a wide spread. Who joins is exactly who
    lies at or above the members' lower fence of that reach, while that fence lies at or above
    the upper fence of the samples outside (at reach 2 it does not: nobody joins)."""
    x, feats, labels, clusters, stamped, _ = _scene_class(outside=20, lookalikes=0)
    rng = np.random.default_rng(1)
    x[:15] = np.clip(x[:15] + rng.normal(0, 0.2, x[:15].shape), 0, 1)
    patterns = InputPatterns.of(x, PRE)
    r = patterns.correlation(_hot_spot(feats, labels == 1), labels == 1, 2000)
    out = join_by_pattern(labels, clusters, [1], feats, 0.1, reach, patterns, 2000)
    fence = lower_fence(r[labels == 1], reach)
    if reach == 2.0:
        assert fence < upper_fence(r[labels == 0], reach)
        assert (out == labels).all() and clusters[1].pattern_joined == 0
        return
    assert fence >= upper_fence(r[labels == 0], reach)
    assert (((out == 1) & (labels == 0)) == ((labels == 0) & (r >= fence))).all()
    assert ((out == 1) <= stamped).all() and clusters[1].pattern_joined >= 10


def test_another_suspect_keeps_its_members():
    x, feats, labels, clusters, stamped, _ = _scene_class()
    labels = labels.copy()
    labels[30:36] = 2                                     # six stamped samples of another suspect
    clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1, 2)]
    out = join_by_pattern(labels, clusters, [1, 2], feats, 0.1, 1.0, InputPatterns.of(x, PRE),
                          2000)
    assert (out[30:36] == 2).all() and (out[36:42] == 1).all()


def test_chunks_and_the_template_cap():
    """Chunked reads give the same correlations; the template reads at most ``max_template``
    members, evenly spaced."""
    x, feats, labels, *_ = _scene_class()
    cells = _hot_spot(feats, labels == 1)
    whole = InputPatterns.of(x, PRE).correlation(cells, labels == 1, 2000)
    chunked = InputPatterns.of(x, PRE, chunk=7).correlation(cells, labels == 1, 2000)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-7)
    reads = []

    def load(rows):
        reads.append(np.asarray(rows).copy())
        return x[rows]

    capped = InputPatterns.for_pipeline(load, len(x), PRE, chunk=3)
    r = capped.correlation(cells, labels == 1, 4)
    assert np.concatenate(reads[:2]).tolist() == [0, 9, 19, 29]     # the template, in chunks
    assert all(len(rows) <= 3 for rows in reads)
    assert r.shape == (len(x),) and r[:42].min() > 0.8 > 0.5 > r[42:].max()


def test_flat_or_misplaced_hot_spots_give_no_pattern():
    x, feats, labels, clusters, *_ = _scene_class()
    flat = np.zeros_like(x)
    assert InputPatterns.of(flat, PRE).correlation(np.arange(6), labels == 1, 2000) is None
    out = join_by_pattern(labels, clusters, [1], feats, 0.1, 1.0, InputPatterns.of(flat, PRE),
                          2000)
    assert (out == labels).all() and clusters[1].pattern_joined == 0
    grey = x.mean(axis=1)                                 # (n, H, W) inputs work alike
    r = InputPatterns.of(grey, PRE).correlation(np.arange(6), labels == 1, 2000)
    assert r is not None and r.shape == (len(x),)


@pytest.mark.parametrize("pre", [{**PRE, "transform": "fft"}, {**PRE, "channel_sum": False}])
def test_features_that_are_not_places_have_no_patterns(pre):
    x = np.zeros((4, 3, 16, 16), np.float32)
    assert InputPatterns.of(x, pre) is None
    assert InputPatterns.of(x, {**PRE, "pool": None}).grid is None
    assert InputPatterns.of(x, {}).grid == (20, 20)          # the preset's defaults


# ---------------------------------------------------------------- where the model looks

RING = np.array([[0, 1, 1, 1, 0],
                 [1, 0, 0, 0, 1],
                 [1, 0, 1, 0, 1],
                 [1, 0, 0, 0, 1],
                 [0, 1, 1, 1, 0]], dtype=bool)       # a logo, 5 × 5 px
CORNERS = [(1, 1), (1, 26), (26, 1), (26, 26)]       # its top-left corner, per place


def _logo_class(seed: int = 0, n: int = 240, stamped: int = 60, lookalikes: int = 20,
                unseen: int = 0, logo: bool = True):
    """RGB 32 × 32 smooth colour fields. The first ``stamped`` carry a red ring in one of four
    corners (15 in each; corner 0 first) and the model's relevance sits on it, except for the
    last ``unseen`` of them, whose relevance sits on an object blob like everyone else's. The
    next ``lookalikes`` have relevance on a corner too, over a bright patch without the ring.
    Cluster 1 holds the stamped samples of corner 0 (the suspect), cluster 0 the rest. Without
    ``logo`` nobody carries the ring (a group the model looks at a corner for).

    Returns inputs ``(n, 3, 32, 32)``, relevance maps ``(n, 32, 32)``, features (8 × 8),
    labels, clusters, stamped."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.1, 0.6, (n, 3, 1, 1)) + gaussian_filter(
        rng.normal(0, 0.2, (n, 3, 32, 32)), (0, 0, 2, 2))
    x = np.clip(x, 0, 1).astype(np.float32)
    rel = rng.uniform(0, 0.05, (n, 32, 32)).astype(np.float32)
    corner = np.full(n, -1)
    corner[:stamped] = np.repeat(np.arange(4), stamped // 4)
    for i in range(n):
        if i < stamped:
            y0, x0 = CORNERS[corner[i]]
            if logo:
                x[i, :, y0:y0 + 5, x0:x0 + 5][:, RING] = np.array([0.9, 0.1, 0.1])[:, None]
            if i < stamped - unseen:
                rel[i, y0:y0 + 5, x0:x0 + 5] += 1.0
                continue
        elif i < stamped + lookalikes:
            y0, x0 = CORNERS[i % 4]
            x[i, :, y0:y0 + 5, x0:x0 + 5] = np.clip(x[i, :, y0:y0 + 5, x0:x0 + 5] + 0.3, 0, 1)
            rel[i, y0:y0 + 5, x0:x0 + 5] += 1.0
            continue
        cy, cx = rng.integers(9, 23, 2)                       # the object, somewhere inside
        rel[i, cy - 3:cy + 3, cx - 3:cx + 3] += 0.5
    feats = preprocess(rel, PRE)
    labels = np.zeros(n, dtype=np.int64)
    labels[:stamped // 4] = 1
    clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
    truth = np.zeros(n, bool)
    truth[:stamped] = logo
    return x, rel, feats, labels, clusters, truth


def test_the_logo_in_other_corners_joins_where_the_model_looks():
    """The suspect holds the logos of one corner; those of the other three join by the pattern
    at their own relevance peak, and no bright corner without the ring does."""
    x, rel, feats, labels, clusters, truth = _logo_class()
    patterns = InputPatterns.of(x, PRE, maps=rel)
    r = patterns.peak_correlation(difference(feats, labels == 1), labels == 1, 2000)
    assert r[truth].min() > 0.6 > 0.5 > r[~truth].max()
    out = join_where_looked(labels, clusters, [1], feats, 1.0, 1.5, patterns, 2000, 0, 0.0, FAR)
    joins = (labels == 0) & (out == 1)
    assert (joins <= truth).all() and joins.sum() >= 40                # of the 45 outside
    bar = carrier_bar(r, labels == 1, labels == 0, lower_fence(r[labels == 1], 1.0), FAR)
    assert ((labels == 0) & (r >= bar) == joins).all()
    assert clusters[1].peak_joined == joins.sum() and clusters[1].size == 15 + joins.sum()
    assert clusters[0].size == len(labels) - 15 - joins.sum()
    # without the relevance maps nothing is read and nothing moves
    plain = InputPatterns.of(x, PRE)
    assert (join_where_looked(labels, clusters, [1], feats, 1.0, 1.5, plain, 2000, 0, 0.0, FAR)
            == labels).all()


def test_a_logo_whose_relevance_peaks_on_the_object_joins():
    """Stamped samples whose relevance lies on their object: the ring is at their corner all
    the same, and the members' pattern is found there; no bright corner without it joins."""
    x, rel, feats, labels, clusters, truth = _logo_class(unseen=8)
    out = join_where_looked(labels, clusters, [1], feats, 1.0, 1.5, InputPatterns.of(x, PRE, maps=rel),
                            2000, 0, 0.0, FAR)
    joins = (labels == 0) & (out == 1)
    assert joins[52:60].all() and (joins <= truth).all()
    assert joins.sum() >= 43 and clusters[1].peak_joined == joins.sum()   # of the 45 outside


def test_members_that_look_at_part_of_the_stamp_are_aligned():
    """The members' relevance peaks on a corner of their ring, a different one for each: the
    windows there hold different parts of it, and their median is a blur. The template is the
    members' windows at their best match with that blur: the whole ring, aligned, which every
    stamped sample outside matches as closely as the members do."""
    x, rel, _, labels, clusters, truth = _logo_class(unseen=0)
    rel = rel.copy()
    rng = np.random.default_rng(3)
    for i in range(60):
        y0, x0 = CORNERS[i // 15]
        rel[i] = rng.uniform(0, 0.05, (32, 32))
        dy, dx = rng.integers(0, 3, 2)                    # a 3 × 3 part of the 5 × 5 ring
        rel[i, y0 + dy:y0 + dy + 3, x0 + dx:x0 + dx + 3] += 1.0
    feats = preprocess(rel, PRE)
    r = InputPatterns.of(x, PRE, maps=rel).peak_correlation(difference(feats, labels == 1),
                                                            labels == 1, 2000)
    assert r[:15].min() > r[60:].max()
    out = join_where_looked(labels, clusters, [1], feats, 1.0, 1.5, InputPatterns.of(x, PRE, maps=rel),
                            2000, 0, 0.0, FAR)
    joins = (labels == 0) & (out == 1)
    assert (joins <= truth).all() and joins.sum() >= 40                 # of the 45 outside


def test_no_join_for_members_without_a_common_pattern():
    """A group the model looks at a corner for, with nothing stamped there: the members'
    correlations fall below the upper fence of the rest's, and nobody joins (the guard)."""
    x, rel, feats, labels, clusters, _ = _logo_class(logo=False)
    out = join_where_looked(labels, clusters, [1], feats, 1.0, 1.5, InputPatterns.of(x, PRE, maps=rel),
                            2000, 0, 0.0, FAR)
    assert (out == labels).all() and clusters[1].peak_joined == 0


def test_the_window_is_the_hot_region_in_pixels():
    """The window's side is the larger side of the region around the peak difference that
    holds at least half of it, scaled from the feature grid to pixels."""
    diff = np.zeros((8, 8))
    diff[1:3, 5:8] = [[0.6, 1.0, 0.5], [0.2, 0.7, 0.6]]
    diff[6, 0] = 0.9                      # another region: not connected to the peak
    assert hot_region(diff) == (2, 3)
    assert hot_region(-np.ones((4, 4))) is None
    x, rel, feats, labels, *_ = _logo_class()
    seen = {}

    class Spy(_PeakWindows):
        def __init__(self, side, H, W):
            seen["side"] = side
            super().__init__(side, H, W)

    import spray.verdict.patterns as patterns_module

    original = patterns_module._PeakWindows
    patterns_module._PeakWindows = Spy
    try:
        InputPatterns.of(x, PRE, maps=rel).peak_correlation(difference(feats, labels == 1),
                                                            labels == 1, 2000)
    finally:
        patterns_module._PeakWindows = original
    region = hot_region(difference(feats, labels == 1).reshape(8, 8))
    assert seen["side"] == round(max(region) * 32 / 8)


def _brute_force(side, x, template):
    """Each sample's best cosine and best window, by looping over every window: the image's
    full-resolution edge pixels repeated S // 2 blocks beyond the border, averaged over f × f
    blocks, then every per-channel centred S × S window."""
    x = x if x.ndim == 4 else x[:, None]
    f = max(1, -(-side // 12))
    H, W = x.shape[-2] // f, x.shape[-1] // f
    S = max(1, min(round(side / f), H, W))
    m = S // 2

    def down(v):
        h, w = v.shape[-2] // f, v.shape[-1] // f
        v = v[..., :h * f, :w * f].astype(np.float64)
        return v.reshape(*v.shape[:-2], h, f, w, f).mean(axis=(-3, -1))

    crop = x[..., :H * f, :W * f]
    xd = down(np.pad(crop, ((0, 0), (0, 0), (m * f, m * f), (m * f, m * f)), mode="edge"))
    T = template.reshape(x.shape[1], S, S)
    r, best_windows = np.empty(len(x)), []
    for i in range(len(x)):
        best, window = -2.0, None
        for py in range(xd.shape[-2] - S + 1):
            for px in range(xd.shape[-1] - S + 1):
                v = xd[i, :, py:py + S, px:px + S]
                v = v - v.mean(axis=(1, 2), keepdims=True)
                norm = np.linalg.norm(v)
                cos = float((v * T).sum() / norm) if norm > 1e-9 else 0.0
                if cos > best:
                    best, window = cos, (v / norm if norm > 1e-9 else 0 * v).ravel()
                    _brute_force.places[i] = (py - m, px - m)
        r[i] = best
        best_windows.append(window)
    return r, np.array(best_windows)


#: the last :func:`_brute_force` call's best places (top left, in blocks) by sample
_brute_force.places = {}


@pytest.mark.parametrize("side, C, H, W, grey", [
    (5, 3, 17, 11, False), (7, 1, 9, 23, True), (4, 2, 6, 6, False),
    (6, 3, 8, 30, False), (13, 1, 27, 31, True), (30, 3, 64, 50, False)])
def test_the_match_is_the_best_cosine_of_every_window(side, C, H, W, grey):
    """Against a loop over every window: non-square images, grey inputs, windows averaged over
    blocks (side above 12), windows reaching half their side past the border; and the best
    window itself."""
    rng = np.random.default_rng(side * 100 + H)
    x = rng.random((6, H, W) if grey else (6, C, H, W)).astype(np.float32)
    windows = _PeakWindows(side, H, W)
    T = rng.normal(size=(1 if grey else C, windows.side, windows.side))
    T -= T.mean(axis=(1, 2), keepdims=True)
    T = (T / np.linalg.norm(T)).ravel()
    want_r, want_windows = _brute_force(side, x, T)
    np.testing.assert_allclose(windows.best_match(x, T), want_r, atol=1e-6)   # float32 blocks
    np.testing.assert_allclose(windows.best_match(x, T, windows=True), want_windows, atol=1e-6)
    r, places = windows.best_match(x, T, places=True)
    np.testing.assert_allclose(r, want_r, atol=1e-6)
    assert places.tolist() == [list(_brute_force.places[i]) for i in range(len(x))]


def test_sub_chunks_give_the_same_matches(monkeypatch):
    """Images compared a few at a time (a small :data:`SUB_ELEMENTS`) match as all at once."""
    import spray.verdict.patterns as patterns_module

    rng = np.random.default_rng(1)
    x = rng.random((9, 3, 20, 20)).astype(np.float32)
    rel = rng.random((9, 20, 20)).astype(np.float32)
    windows = _PeakWindows(6, 20, 20)
    T = windows.at_peak(x[:1], rel[:1])[0]
    whole, peaks = windows.best_match(x, T), windows.at_peak(x, rel)
    monkeypatch.setattr(patterns_module, "SUB_ELEMENTS", 2 * 3 * 26 * 26)
    assert len(windows._parts(x)) == 5
    np.testing.assert_allclose(windows.best_match(x, T), whole, atol=1e-12)
    np.testing.assert_allclose(windows.at_peak(x, rel), peaks, atol=1e-12)


@pytest.mark.parametrize("sub", [None, 2 * 3 * 26 * 26])
def test_members_aligned_from_the_kept_class_images_bit_for_bit(monkeypatch, sub):
    """A group's windows at their best match, read from the class's kept spectra (members in
    several chunks and sub-chunks, an image with a NaN), are those of matching the members'
    images alone; where a chunk is not kept (yet, or too large) the members are matched alone
    and nothing is prepared for the class."""
    import spray.verdict.patterns as patterns_module

    if sub is not None:
        monkeypatch.setattr(patterns_module, "SUB_ELEMENTS", sub)
    rng = np.random.default_rng(3)
    x = rng.random((23, 3, 20, 20)).astype(np.float32)
    x[11, 1, 4, 4] = np.nan
    rel = rng.random((23, 20, 20)).astype(np.float32)
    p = InputPatterns.of(x, {"pool": None}, chunk=7, maps=rel)
    windows = _PeakWindows(6, 20, 20)
    T = windows.at_peak(x[:1], rel[:1])[0]
    rows = np.array([0, 2, 3, 8, 11, 12, 13, 20, 22])
    want = windows.best_match(x[rows], T, windows=True)
    assert np.array_equal(p._aligned(windows, x[rows], rows, T), want, equal_nan=True)
    assert p._prepared_at is None                       # nothing kept: matched alone
    for start in range(0, 23, 7):                       # the class's matches keep its chunks
        p._prepared(windows, np.arange(start, min(start + 7, 23)))
    assert len(p._prepared_at[1]) == 4 and p._gathered(windows, rows) is not None
    got = p._aligned(windows, x[rows], rows, T)
    assert np.isnan(got[rows == 11]).all() and np.isfinite(np.delete(got, 4, axis=0)).all()
    assert np.array_equal(got, want, equal_nan=True)
    monkeypatch.setattr(patterns_module, "KEPT_BYTES", 0)
    cold = InputPatterns.of(x, {"pool": None}, chunk=7, maps=rel)
    for start in range(0, 23, 7):
        cold._prepared(windows, np.arange(start, min(start + 7, 23)))
    assert cold._prepared_at[1] == {} and cold._gathered(windows, rows) is None
    assert np.array_equal(cold._aligned(windows, x[rows], rows, T), want, equal_nan=True)


@pytest.mark.parametrize("kept", [True, False])
def test_matching_some_rows_gives_their_matches_of_all(monkeypatch, kept):
    """``peak_correlation`` of a few rows gives those rows' cosines and places of matching the
    whole class (kept chunks cut down, or the rows prepared alone), NaN elsewhere; and a match
    is finite exactly where the image is (what ``aligned_agreement`` reads instead)."""
    import spray.verdict.patterns as patterns_module

    if not kept:
        monkeypatch.setattr(patterns_module, "KEPT_BYTES", 0)
    rng = np.random.default_rng(4)
    x = rng.random((23, 3, 20, 20)).astype(np.float32)
    x[5, 0, 3, 9] = x[17, 2, 19, 19] = np.nan              # another channel, a corner
    rel = rng.random((23, 20, 20)).astype(np.float32)
    mask = np.zeros(23, dtype=bool)
    mask[[1, 2, 5, 9, 10, 16]] = True
    diff = rel[mask].mean(0).ravel() - rel[~mask].mean(0).ravel()
    whole = InputPatterns.of(x, {"pool": None}, chunk=7, maps=rel).peak_correlation(
        diff, mask, 50, side_share=0.3, places=True)
    rows = np.array([1, 2, 5, 9, 10, 16, 17, 21])
    p = InputPatterns.of(x, {"pool": None}, chunk=7, maps=rel)
    some = p.peak_correlation(diff, mask, 50, side_share=0.3, places=True, rows=rows)
    assert np.array_equal(some.r[rows], whole.r[rows], equal_nan=True)
    assert np.array_equal(some.places[rows], whole.places[rows])
    assert np.isnan(np.delete(some.r, rows)).all()
    assert (p._prepared_at is not None and len(p._prepared_at[1]) == 4) == kept
    window = _PeakWindows(p._peak_side(diff, 1, 0.3), 20, 20)
    assert np.array_equal(p._finite(window), np.isfinite(whole.r))


@pytest.mark.parametrize("dtype, H, share, big", [(np.float64, 16, 0.3, [(3, 0, 8, 8, 1e39)]),
                                                   (np.float32, 40, 0.7,
                                                    [(4, 1, 9, 9, 3e38), (4, 1, 9, 10, 3e38)])])
def test_a_finite_image_that_overflows_as_compared_has_no_match(dtype, H, share, big):
    """An image finite as given but not once compared (a float64 value beyond float32's range;
    float32 values whose block sum overflows) is left out as its NaN match would leave it; the
    images are read once per block size."""
    rng = np.random.default_rng(5)
    x = rng.random((12, 3, H, H)).astype(dtype)
    for i, c, r, q, v in big:
        x[i, c, r, q] = v
    rel = rng.random((12, H, H)).astype(np.float32)
    mask = np.arange(12) < 6
    diff = rel[mask].mean(0).ravel() - rel[~mask].mean(0).ravel()
    reads = []
    p = InputPatterns(lambda rows: reads.append(len(rows)) or x[rows], 12, None, 5,
                      lambda rows: rel[rows])
    whole = p.peak_correlation(diff, mask, 50, side_share=share)
    assert np.isfinite(x[big[0][0]]).all() and np.isnan(whole[big[0][0]])
    window = _PeakWindows(p._peak_side(diff, 1, share), H, H)
    reads.clear()
    assert np.array_equal(p._finite(window), np.isfinite(whole))
    assert np.array_equal(p._finite(window), np.isfinite(whole)) and sum(reads) == 12


def test_the_window_at_the_peak_holds_the_pixels_there():
    x = np.random.default_rng(0).random((2, 3, 10, 12)).astype(np.float32)
    rel = np.zeros((2, 10, 12), np.float32)
    rel[0, 6:10, 8:12] = 1.0                                  # the bottom right corner
    rel[1, 2:6, 3:7] = 1.0
    v = _PeakWindows(4, 10, 12).at_peak(x, rel)
    for i, (y0, x0) in enumerate([(6, 8), (2, 3)]):
        w = x[i, :, y0:y0 + 4, x0:x0 + 4].astype(np.float64)
        w -= w.mean(axis=(1, 2), keepdims=True)
        np.testing.assert_allclose(v[i], (w / np.linalg.norm(w)).ravel(), atol=1e-6)


def test_peak_windows_of_every_sample_and_their_relevance_share():
    """:meth:`InputPatterns.peak_windows`: each sample's window of ``window_side`` of the
    shorter side at its relevance peak, read in chunks, with that window's share of its
    |relevance|; a sample with a non-finite value gets zeros and share 0."""
    rng = np.random.default_rng(1)
    x = rng.random((5, 3, 20, 24)).astype(np.float32)
    rel = 0.01 * rng.random((5, 20, 24)).astype(np.float32)
    corners = [(0, 0), (15, 19), (7, 9), (3, 12), (10, 2)]
    for i, (y0, x0) in enumerate(corners):
        rel[i, y0:y0 + 5, x0:x0 + 5] += 1.0
    x[4, 1, 11, 3] = np.nan                                  # inside its window
    patterns = InputPatterns.of(x, PRE, chunk=2, maps=rel)
    windows, share = patterns.peak_windows(0.25)             # 5 pixels of 20
    assert windows.shape == (5, 3 * 25) and windows.dtype == np.float32
    for i, (y0, x0) in enumerate(corners[:4]):
        w = x[i, :, y0:y0 + 5, x0:x0 + 5].astype(np.float64)
        w -= w.mean(axis=(1, 2), keepdims=True)
        np.testing.assert_allclose(windows[i], (w / np.linalg.norm(w)).ravel(), atol=1e-5)
        expected = np.abs(rel[i, y0:y0 + 5, x0:x0 + 5]).sum() / np.abs(rel[i]).sum()
        assert share[i] == pytest.approx(expected, rel=1e-5)
    assert not windows[4].any() and share[4] == 0
    rel[2, 0, 0] = np.nan                                     # a map with a NaN: no pattern
    windows, share = InputPatterns.of(x, PRE, chunk=2, maps=rel).peak_windows(0.25)
    assert not windows[2].any() and share[2] == 0 and windows[3].any()
    rows = np.array([3, 1])
    some, some_share = patterns.peak_windows(0.25, rows)
    np.testing.assert_array_equal(some, windows[rows])
    np.testing.assert_array_equal(some_share, share[rows])
    assert InputPatterns.of(x, PRE).peak_windows(0.25) is None      # no relevance maps


def _window_side(x, rel, diff, mask) -> int:
    """The window side :meth:`InputPatterns.peak_correlation` chooses."""
    import spray.verdict.patterns as patterns_module

    seen = {}

    class Spy(_PeakWindows):
        def __init__(self, side, H, W):
            seen["side"] = side
            super().__init__(side, H, W)

    original, patterns_module._PeakWindows = patterns_module._PeakWindows, Spy
    try:
        InputPatterns.of(x, PRE, maps=rel).peak_correlation(diff, mask, 100)
    finally:
        patterns_module._PeakWindows = original
    return seen["side"]


def test_each_grid_axis_scales_to_its_own_image_axis():
    """A region of 1 × 2 cells on the 8 × 8 grid of 32 × 64 images: 2 cells of 8 pixels."""
    rng = np.random.default_rng(0)
    diff = np.zeros((8, 8))
    diff[3, 2:4] = 1.0
    side = _window_side(rng.random((20, 3, 32, 64)).astype(np.float32),
                        rng.random((20, 32, 64)).astype(np.float32), diff.ravel(),
                        np.arange(20) < 5)
    assert side == 16


@pytest.mark.parametrize("H", [26, 32, 64, 224])
def test_a_hot_region_as_wide_as_the_image(H):
    """A difference spread over the whole grid: the window is the whole image (it used to be
    wider than the averaged image, and the run failed)."""
    rng = np.random.default_rng(H)
    x = rng.random((12, 3, H, H)).astype(np.float32)
    rel = rng.random((12, H, H)).astype(np.float32)
    diff = np.ones(64)
    diff[0] = 1.5
    found = InputPatterns.of(x, PRE, maps=rel).peak_correlation(diff, np.arange(12) < 4, 100)
    assert found is None or np.isfinite(found).all()


def test_flat_windows_carry_no_pattern():
    """Most members looked at a flat grey patch (0.3 is not exact in float32): their windows
    are no pattern, not unit vectors of rounding residue; every cosine stays in [−1, 1]."""
    x, rel, feats, labels, *_ = _logo_class()
    x = x.copy()
    x[:15, :, :12, :12] = 0.3
    found = InputPatterns.of(x, PRE, maps=rel).peak_correlation(difference(feats, labels == 1),
                                                                labels == 1, 2000)
    assert found is None or np.abs(found).max() <= 1.0
    v = _PeakWindows(5, 32, 32).at_peak(x[:3], rel[:3])
    assert not v.any()


def test_a_copy_of_the_only_member_joins():
    """Ties at both fences join (at or above): a sample outside identical to the member."""
    x, rel, feats, labels, clusters, _ = _logo_class()
    labels = np.zeros(len(labels), np.int64)
    labels[0] = 1
    x, rel = x.copy(), rel.copy()
    x[100], rel[100] = x[0], rel[0]
    feats = preprocess(rel, PRE)
    clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
    out = join_where_looked(labels, clusters, [1], feats, 1.0, 1.5, InputPatterns.of(x, PRE, maps=rel),
                            2000, 0, 0.0, FAR)
    assert out[100] == 1


def test_rows_are_one_slice_only_when_consecutive():
    from spray.verdict.patterns import consecutive

    assert consecutive(np.array([3, 4, 5])) and not consecutive(np.array([4, 4, 6]))
    assert not consecutive(np.array([], dtype=int)) and not consecutive(np.array([5, 4, 3]))
    rows = InputPatterns.of(np.arange(10.0)[:, None, None], PRE).load(np.array([4, 4, 6]))
    assert rows.ravel().tolist() == [4.0, 4.0, 6.0]


def test_black_windows_match_nothing():
    """Windows of exact zeros (a black background) carry no pattern: a cosine at rounding level
    (0 when the whole image is black), never the rounding residue of the running sums
    divided by a zero norm."""
    rng = np.random.default_rng(2)
    x = np.zeros((4, 1, 28, 28), np.float32)
    x[:, :, 8:20, 8:20] = rng.random((4, 1, 12, 12))
    windows = _PeakWindows(5, 28, 28)
    T = rng.normal(size=(1, 5, 5))
    T -= T.mean()
    T = (T / np.linalg.norm(T)).ravel()
    want, _ = _brute_force(5, x, T)
    np.testing.assert_allclose(windows.best_match(x, T), want, atol=1e-9)
    assert windows.best_match(np.zeros((2, 1, 28, 28), np.float32), T).tolist() == [0.0, 0.0]


def _unit_template(rng, C, S):
    T = rng.normal(size=(C, S, S))
    T -= T.mean(axis=(1, 2), keepdims=True)
    return T / np.linalg.norm(T)


def test_a_low_contrast_stamp_is_still_a_pattern():
    """A stamp 1e-4 over a grey of 0.5 (centred norm ~2e-5 of the window's) is no rounding
    residue: it matches its own template."""
    rng = np.random.default_rng(0)
    T = _unit_template(rng, 3, 5)
    x = np.full((2, 3, 20, 20), 0.5)
    x[:, :, 7:12, 7:12] += 1e-4 * T
    np.testing.assert_allclose(_PeakWindows(5, 20, 20).best_match(x, T.ravel()), 1.0, atol=1e-3)


def test_cosines_never_exceed_one_on_large_bright_images():
    """The running sums of a 224-pixel image of values up to 255 round; the exact stamp
    still gives at most 1."""
    rng = np.random.default_rng(0)
    x = np.full((2, 3, 224, 224), 200.0, np.float32)
    x[:, :, :100] = rng.integers(0, 256, (2, 3, 100, 224))
    pat = rng.standard_normal((3, 12, 12))
    x[:, :, 180:192, 100:112] += (0.01 * pat).astype(np.float32)
    w = x[0, :, 180:192, 100:112].astype(np.float64)
    T = w - w.mean(axis=(1, 2), keepdims=True)
    r = _PeakWindows(12, 224, 224).best_match(x, (T / np.linalg.norm(T)).ravel())
    assert r.max() <= 1.0 and r.min() > 0.999


def test_a_template_constant_per_channel_is_flat():
    p = InputPatterns.of(np.zeros((3, 1, 10, 10), np.float32), PRE)
    window = _PeakWindows(5, 10, 10)
    d = np.random.default_rng(0).normal(size=25)
    V = np.stack([0.7 + d, 0.7 - d, np.full(25, 0.7)])        # median: 0.7 everywhere
    assert p._template(window, np.arange(3), lambda x, rows: V[rows]) is None


def test_the_template_is_the_median_not_the_mean():
    rng = np.random.default_rng(1)
    p = InputPatterns.of(np.zeros((5, 1, 10, 10), np.float32), PRE)
    window = _PeakWindows(5, 10, 10)
    u, v = (_unit_template(rng, 1, 5).ravel() for _ in range(2))
    V = np.stack([u, u, u, v, v])
    np.testing.assert_allclose(p._template(window, np.arange(5), lambda x, rows: V[rows]), u,
                               atol=1e-12)


def test_the_guard_lets_in_at_equal_fences():
    """'None when that fence lies *below* the upper fence': equal fences join."""
    r = np.ones(4)
    mask = np.array([True, False, False, False])
    assert _guarded_join(r, mask, ~mask, 1.0).tolist() == [False, True, True, True]


def test_the_guard_reaches_further_for_the_samples_outside():
    """Members at 0.70-0.76, the samples outside at 0.4-0.58 and one carrier at 0.95: the
    members' lower fence (0.685 at reach 1) passes the outside's upper fence at reach 1 (0.65),
    not at 1.5 (0.70)."""
    r = np.array([0.7, 0.72, 0.74, 0.76, 0.4, 0.42, 0.45, 0.48, 0.5, 0.52, 0.55, 0.58, 0.95])
    mask = np.arange(13) < 4
    assert _guarded_join(r, mask, ~mask, 1.0).tolist() == [False] * 12 + [True]
    assert _guarded_join(r, mask, ~mask, 1.0, 1.0) is not None
    assert _guarded_join(r, mask, ~mask, 1.0, 1.5) is None


def test_rounding_level_textures_are_flat():
    """A grey of 0.3 whose pixels differ by one float32 ulp: no pattern, at the peak and in
    the match."""
    rng = np.random.default_rng(2)
    x = np.full((2, 3, 12, 12), 0.3, np.float32)
    x += np.spacing(np.float32(0.3)) * rng.integers(0, 2, x.shape).astype(np.float32)
    rel = rng.random((2, 12, 12)).astype(np.float32)
    windows = _PeakWindows(5, 12, 12)
    assert not windows.at_peak(x, rel).any()
    assert windows.best_match(x, _unit_template(rng, 3, 5).ravel()).tolist() == [0.0, 0.0]

def test_a_nan_pixel_does_not_open_the_guard():
    """One NaN pixel in one image outside makes its cosine NaN; the guard still compares the
    finite ones, and a group without a common pattern takes no one in."""
    x, rel, feats, labels, clusters, _ = _logo_class(logo=False)
    x = x.copy()
    x[200, 0, 20, 20] = np.nan
    out = join_where_looked(labels, clusters, [1], feats, 1.0, 1.5, InputPatterns.of(x, PRE, maps=rel),
                            2000, 0, 0.0, FAR)
    assert (out == labels).all() and clusters[1].peak_joined == 0


def test_a_member_with_a_nan_is_left_out_of_the_template():
    """A NaN pixel in the window of one member (at its ring) used to make the median template
    NaN, every correlation NaN, and the step took no one in. Left out of the template, that
    member's own correlation is NaN and the rings of the other corners join as before."""
    x, rel, feats, labels, _, truth = _logo_class()
    x = x.copy()
    x[3, 1, 3, 3] = np.nan                              # inside member 3's ring
    patterns = InputPatterns.of(x, PRE, maps=rel)
    r = patterns.peak_correlation(difference(feats, labels == 1), labels == 1, 2000)
    assert np.isnan(r[3]) and np.isfinite(np.delete(r, 3)).all()
    clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
    out = join_where_looked(labels, clusters, [1], feats, 1.0, 1.5, patterns, 2000, 0, 0.0, FAR)
    joins = (labels == 0) & (out == 1)
    assert (joins <= truth).all() and joins.sum() >= 40                # of the 45 outside


def test_a_member_with_a_nan_at_the_hot_spot_is_left_out_of_its_pattern():
    """The step before (the pixels at the hot spot): a member with a NaN there is left out of
    the median pattern; its own correlation is NaN, everyone else's as without the NaN."""
    x, rel, feats, labels, _, _ = _logo_class()
    mask = labels == 1
    cells = top_cells(np.abs(difference(feats, mask)), 0.05)
    clean = InputPatterns.of(x, PRE).correlation(cells, mask, 2000)
    x = x.copy()
    x[3, 0, 3, 3] = np.nan
    r = InputPatterns.of(x, PRE).correlation(cells, mask, 2000)
    assert np.isnan(r[3]) and np.isfinite(np.delete(r, 3)).all()
    assert np.abs(np.delete(r - clean, 3)).max() < 0.05


def test_the_window_and_the_guard_are_on_the_class_page():
    """The class page names the window side, how the guard passed and the bar (the members'
    fence or the far fence of the rest) for the samples that joined where the model looks."""
    from spray.report.class_page import _member_notes

    for guard, said in (("fences", False), ("apart", True)):
        cl = {"id": 1, "size": 60, "peak_joined": 45, "peak_window": 8, "peak_guard": guard}
        text = " ".join(_member_notes(cl))
        assert "45 samples outside carry" in text and "window of 8 pixels" in text
        assert ("peak_carrier_gap" in text) is said and "peak_far_iqr" in text
    assert "12 samples the relevance graph put in this group do not carry" in " ".join(
        _member_notes({"id": 1, "size": 30, "pattern_trimmed": 12}))
    # look-alikes left out by the place rule: said on their own, also when nobody joined
    for joined in (0, 5):
        text = " ".join(_member_notes({"id": 1, "size": 30, "peak_joined": joined,
                                       "peak_off_place": 7, "peak_window": 6}))
        assert "7 samples outside carry its members' pattern" in text
        assert "peak_place_share" in text and "look-alikes" in text
    assert "peak_place_share" not in " ".join(
        _member_notes({"id": 1, "size": 30, "peak_joined": 5, "peak_off_place": 0}))


def test_near_black_windows_of_large_images_match_nothing():
    """A busy bright half and a near-black half (noise of 1e-7) in 224-pixel images: the
    near-black windows' variance is below the rounding of the running sums, not a pattern
    (they used to give cosines of 1)."""
    rng = np.random.default_rng(7)
    x = np.zeros((3, 3, 224, 224), np.float32)
    x[:, :, :112] = rng.random((3, 3, 112, 224))
    x[:, :, 112:] = 1e-7 * rng.random((3, 3, 112, 224))
    windows = _PeakWindows(12, 224, 224)
    T = _unit_template(rng, 3, windows.side).ravel()
    assert windows.best_match(x, T).max() < 0.5


def test_sub_chunks_hold_the_full_resolution_copies():
    """Windows averaged over f × f blocks: a sub-chunk's padded images are made at full
    resolution first, and the bound counts them."""
    import spray.verdict.patterns as patterns_module

    windows = _PeakWindows(224, 224, 224)
    x = np.zeros((3000, 3, 224, 224), np.float32)[:, :, :1, :1]        # only the shape counts
    x = np.broadcast_to(x, (3000, 3, 224, 224))
    per = 3 * (windows.H + 2 * windows.slack) * (windows.W + 2 * windows.slack) \
        * windows.factor ** 2
    step = windows._parts(x)[0].stop
    assert step * per <= max(patterns_module.SUB_ELEMENTS, per)


PRE16 = dict(PRE, pool=[16, 16])


def _textured_logo_class(seed: int, logo: bool = True):
    """The logo class of :func:`_logo_class` on a fine texture (every pixel ± 0.3, the ring
    itself left clean), the relevance of the stamped samples and the look-alikes on 2 × 2
    pixels inside the ring (a ViT's one-patch peak; on the 16 × 16 grid they straddle 2 × 2
    cells): the window of 4 pixels is smaller than the ring, and some 4 × 4 patch of every
    textured image matches it."""
    x, _, _, labels, clusters, truth = _logo_class(seed=seed, logo=logo)
    rng = np.random.default_rng(5 + seed)
    noise = rng.uniform(-0.3, 0.3, x.shape).astype(np.float32)
    rel = rng.uniform(0, 0.05, (len(x), 32, 32)).astype(np.float32)
    for i in range(80):
        y0, x0 = CORNERS[i // 15 if i < 60 else i % 4]
        if i < 60:
            noise[i, :, y0:y0 + 5, x0:x0 + 5][:, RING] = 0
        rel[i, y0 + 2:y0 + 4, x0 + 2:x0 + 4] += 1.0
    for i in range(80, len(x)):
        cy, cx = rng.integers(9, 23, 2)
        rel[i, cy - 3:cy + 3, cx - 3:cx + 3] += 0.5
    x = np.clip(x + noise, 0, 1)
    return x, rel, preprocess(rel, PRE16), labels, clusters, truth


def _sides_tried(monkeypatch) -> list:
    import spray.verdict.patterns as patterns_module

    seen = []

    class Spy(_PeakWindows):
        def __init__(self, side, H, W):
            seen.append(side)
            super().__init__(side, H, W)

    monkeypatch.setattr(patterns_module, "_PeakWindows", Spy)
    return seen


def test_a_one_cell_hot_spot_widens_until_the_guard_passes(monkeypatch):
    """A 4-pixel window matches part of every textured image: the guard refuses, and without
    doublings nobody joins. Doubled once (8 pixels), the ring's pattern sets the members apart,
    the guard passes and the rings of the other corners join; no look-alike does, and no wider
    window is tried."""
    x, rel, feats, labels, _, truth = _textured_logo_class(0)
    patterns = InputPatterns.of(x, PRE16, maps=rel)
    clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
    assert (join_where_looked(labels, clusters, [1], feats, 1.0, 1.5, patterns, 2000, 0, 0.0, FAR)
            == labels).all()
    sides = _sides_tried(monkeypatch)
    clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
    out = join_where_looked(labels, clusters, [1], feats, 1.0, 1.5, patterns, 2000, 2, 0.0, FAR)
    joins = (labels == 0) & (out == 1)
    assert (joins <= truth).all() and joins.sum() >= 40                  # of the 45 outside
    assert clusters[1].peak_joined == joins.sum()
    assert sides == [4, 8]
    assert (clusters[1].peak_window, clusters[1].peak_guard) == (8, "fences")


def _object_first_logo_class(seed: int, logo: bool = True):
    """The logo class of :func:`_logo_class` where the model looks hardest at the object: every
    sample's relevance peaks on an object blob at a random place, the stamped samples' (and
    the look-alikes') relevance on their corner is 0.4 of that peak. The suspect (the stamped
    samples of corner 0) differs from the rest at its corner, while its members' peaks lie
    on objects that every sample of the class has (a cross): a pattern that does not set
    them apart."""
    x, _, _, labels, clusters, truth = _logo_class(seed=seed, logo=logo)
    rng = np.random.default_rng(11 + seed)
    rel = rng.uniform(0, 0.05, (len(x), 32, 32)).astype(np.float32)
    cross = np.zeros((6, 6), bool)
    cross[2:4, :] = cross[:, 2:4] = True
    for i in range(len(x)):
        cy, cx = rng.integers(9, 23, 2)           # the object: a cross of a random colour
        x[i, :, cy - 3:cy + 3, cx - 3:cx + 3][:, cross] = rng.uniform(0, 1, (3, 1))
        rel[i, cy - 3:cy + 3, cx - 3:cx + 3] += 1.0
        if i < 80:
            y0, x0 = CORNERS[i // 15 if i < 60 else i % 4]
            rel[i, y0:y0 + 5, x0:x0 + 5] += 0.4
    return x, rel, preprocess(rel, PRE), labels, clusters, truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_suspect_whose_model_looks_at_the_object_takes_the_pattern_at_its_place(seed):
    """At the members' relevance peaks (on their objects) no window passes the guard; the
    template at the suspect's hot region (its corner) is the ring, and the rings of the other
    three corners join (not the bright look-alikes without it)."""
    x, rel, feats, labels, clusters, truth = _object_first_logo_class(seed)
    patterns = InputPatterns.of(x, PRE, maps=rel)
    diff = difference(feats, labels == 1)
    assert all(_guard(r, labels == 1, labels == 0, 1.0, 1.5) is None for r in (
        patterns.peak_correlation(diff, labels == 1, 2000, scale=2 ** s) for s in range(3))
        if r is not None)
    out = join_where_looked(labels, clusters, [1], feats, 1.0, 1.5, patterns, 2000, 2, 0.1, FAR)
    joins = (labels == 0) & (out == 1)
    assert (joins <= truth).all() and joins.sum() >= 43                  # of the 45 outside
    assert clusters[1].peak_at == "region" and clusters[1].peak_joined == joins.sum()


def test_the_region_path_lowers_its_bar_to_the_far_fence_of_the_rest():
    """Carriers at other places match the ring less crisply than the members at theirs: with
    the far fence of the rest (``peak_far_iqr``) they join from below the members' fence;
    without (None) only those at the members' fence do."""
    x, rel, feats, labels, clusters, truth = _object_first_logo_class(2)
    patterns = InputPatterns.of(x, PRE, maps=rel)
    joined = {}
    for far in (None, FAR):
        clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
        out = join_where_looked(labels, clusters, [1], feats, 1.0, 1.5, patterns, 2000, 2, 0.1,
                                far)
        joins = (labels == 0) & (out == 1)
        assert (joins <= truth).all()
        joined[far] = int(joins.sum())
    assert joined[None] < joined[FAR] == 45


def _rest_and_carriers(seed: int, centre: float, spread: float, carriers: np.ndarray,
                       n: int = 250) -> tuple[np.ndarray, np.ndarray]:
    """Correlations outside (a rest of ``n`` normal in Fisher z around ``centre``, then
    ``carriers``, then 20 at 0.97) and 20 members from 0.96 to 1 (a mask); the members' fence
    is taken as 0.95."""
    rest = np.tanh(np.random.default_rng(seed).normal(np.arctanh(centre), spread, n))
    r = np.r_[rest, carriers, np.full(20, 0.97), np.linspace(0.96, 1.0, 20)]
    mask = np.r_[np.zeros(len(r) - 20, bool), np.ones(20, bool)]
    return r, mask


@pytest.mark.parametrize("centre,spread,carriers", [
    (0.3, 0.08, np.linspace(0.75, 0.90, 30)),           # a CNN's: the rest far below
    (0.7, 0.08, np.linspace(0.91, 0.94, 30)),           # a ViT's: every image matches at 0.7
])
def test_the_carrier_bar_lies_between_the_rest_and_carriers_below_the_fence(centre, spread,
                                                                              carriers):
    """The bar lies above every one of 250 samples of the rest (its far fence in z) and at
    or below every carrier; it never rises above the members' fence, which it is with None,
    and with no carriers nobody of the rest reaches it."""
    for seed in range(5):
        r, mask = _rest_and_carriers(seed, centre, spread, carriers)
        bar = carrier_bar(r, mask, ~mask, 0.95, FAR)
        assert r[:250].max() < bar <= carriers.min()
        assert carrier_bar(r, mask, ~mask, 0.95, None) == 0.95
        alone = np.r_[r[:250], r[-20:]]
        lone = np.r_[np.zeros(250, bool), np.ones(20, bool)]
        assert (alone[:250] < carrier_bar(alone, lone, ~lone, 0.95, FAR)).all()
    high = np.r_[np.linspace(0.5, 0.9, 250), np.full(20, 0.97)]
    members = np.r_[np.zeros(250, bool), np.ones(20, bool)]
    assert carrier_bar(high, members, ~members, 0.6, FAR) == 0.6


@pytest.mark.parametrize("tie", [0.1, 0.3, 0.55, 0.7, 0.9])
def test_a_rest_of_ties_stays_below_the_carrier_bar(tie):
    """A rest whose values are mostly one value (duplicate images) has its far fence at that
    value: the bar lies strictly above it, whatever the rounding of artanh and tanh."""
    r = np.r_[np.full(200, tie), np.linspace(tie - 0.05, tie, 50), np.linspace(0.96, 1.0, 20)]
    mask = np.r_[np.zeros(250, bool), np.ones(20, bool)]
    bar = carrier_bar(r, mask, ~mask, 0.95, FAR)
    assert (r[~mask] < bar).all() and bar <= 0.95


def test_the_far_fence_is_finite_or_none():
    """``peak_far_iqr`` refuses inf and NaN (an infinite reach is None: the members' fence)."""
    import pydantic

    for bad in (float("inf"), float("nan")):
        with pytest.raises(pydantic.ValidationError):
            FlagsSection(peak_far_iqr=bad)
    assert FlagsSection(peak_far_iqr=None).peak_far_iqr is None


def test_members_that_all_match_alike_leave_no_room_below_their_fence():
    """A one-pixel line: every member matches its template at 1, and 15 garments with a bright
    edge sit in the rest's tail (0.79–0.98, 14 of them above its far fence): the bar stays at
    the members' fence and none of them joins; members of a logo, spread from 0.9 to 1, let it
    drop below their fence."""
    rest = np.tanh(np.random.default_rng(0).normal(np.arctanh(0.5), 0.08, 250))
    r = np.r_[rest, np.linspace(0.79, 0.98, 15), np.ones(40)]
    mask = np.r_[np.zeros(265, bool), np.ones(40, bool)]
    assert carrier_bar(r, mask, ~mask, 1.0, FAR) == 1.0
    r[mask] = np.linspace(0.9, 1.0, 40)
    assert carrier_bar(r, mask, ~mask, 0.9, FAR) < 0.85


def test_a_match_away_from_a_place_leaves_that_place_out():
    """``best_match`` with ``away``: the best matches anywhere, and away from that place: an
    image whose only copy of the pattern is at the place has no match there away from it (a
    lower one); a copy elsewhere is found in full. Rows not ``rows_away`` are matched
    everywhere in both."""
    rng = np.random.default_rng(1)
    x = rng.uniform(0.3, 0.5, (3, 3, 32, 32)).astype(np.float32)
    x[:2, :, 1:6, 1:6][:, :, RING] = np.array([0.9, 0.1, 0.1])[:, None]     # at the place
    x[2, :, 26:31, 26:31][:, RING] = np.array([0.9, 0.1, 0.1])[:, None]     # elsewhere
    window = _PeakWindows(5, 32, 32)
    template = window.at_place(x[:1], 1, 1)[0]
    everywhere = window.best_match(x, template)
    anywhere, away = window.best_match(x, template, away=(1, 1),
                                       rows_away=np.array([True, False, True]))
    assert (everywhere > 0.95).all() and (anywhere == everywhere).all()
    assert away[0] < 0.9 and away[1] == everywhere[1] and away[2] == everywhere[2]
    # the places of the cosines that join: away from the place for rows 0 and 2, at it for 1
    both, places = window.best_match(x, template, away=(1, 1),
                                     rows_away=np.array([True, False, True]), places=True)
    assert (both == np.stack([anywhere, away])).all()
    assert places[1].tolist() == [1, 1] and places[2].tolist() == [26, 26]
    assert np.abs(places[0] - 1).max() >= 5                    # no overlap with the place


def test_the_place_of_the_hot_region_takes_no_one_in_without_a_pattern():
    """The same class with no ring: neither template lets anyone in."""
    x, rel, feats, labels, clusters, _ = _object_first_logo_class(0, logo=False)
    out = join_where_looked(labels, clusters, [1], feats, 1.0, 1.5,
                            InputPatterns.of(x, PRE, maps=rel), 2000, 2, 0.1, FAR)
    assert (out == labels).all() and clusters[1].peak_joined == 0
    assert clusters[1].peak_at is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_widening_takes_no_one_in_without_a_pattern(seed, monkeypatch):
    """The same class with no ring: windows of 4, 8 and 16 pixels are tried (doubled each
    time), at the members' peaks and then at the hot region's place, and none lets anyone
    in."""
    x, rel, feats, labels, _, _ = _textured_logo_class(seed, logo=False)
    clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
    sides = _sides_tried(monkeypatch)
    out = join_where_looked(labels, clusters, [1], feats, 1.0, 1.5,
                            InputPatterns.of(x, PRE16, maps=rel), 2000, 2, 0.0, FAR)
    assert (out == labels).all() and clusters[1].peak_joined == 0
    assert sides == [4, 8, 16] * 2
    assert clusters[1].peak_window is None and clusters[1].peak_guard is None


def _flags(**given) -> FlagsSection:
    """The flags section of these tests: the trim's AUC 0.99, fences at 1 and 1.5 IQR."""
    return FlagsSection(trim_min_auc=0.99, trim_fence_iqr=1.0, peak_guard_iqr=1.5, **given)


def test_decide_members_widens_as_configured():
    """``decide_members`` hands its doublings to the last step: with none, the rings of the
    other corners stay outside; with two, they join."""
    x, rel, feats, labels, _, truth = _textured_logo_class(0)
    patterns = InputPatterns.of(x, PRE16, maps=rel)
    inputs = preprocess(x, PRE16)
    W = np.ones((len(x), len(x))) - np.eye(len(x))
    joined = []
    for doublings in (0, 2):
        clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
        out = decide_members(labels, clusters, [1], W, inputs, feats, 0.1,
                             _flags(peak_window_doublings=doublings, peak_carrier_gap=0.0),
                             patterns)
        joined.append(int(((out == 1) & (labels == 0) & truth).sum()))
        assert not ((out == 1) & ~truth).any()
    assert joined[0] < 10 and joined[1] >= 40


def test_a_window_without_a_pattern_is_widened():
    """On the pixel grid a one-pixel hot spot gives a 1-pixel window, flat once centred (no
    template, None); the wider windows are still tried."""
    rng = np.random.default_rng(1)
    x = rng.random((12, 3, 16, 16)).astype(np.float32)
    rel = rng.random((12, 16, 16)).astype(np.float32)
    pre = dict(PRE, pool=None)
    diff = np.zeros(256)
    diff[5 * 16 + 5] = 1.0
    patterns = InputPatterns.of(x, pre, maps=rel)
    assert patterns.peak_correlation(diff, np.arange(12) < 4, 100) is None
    for scale in (2, 4):
        assert patterns.peak_correlation(diff, np.arange(12) < 4, 100, scale=scale) is not None


def test_a_doubled_window_of_the_same_blocks_is_not_tried():
    """Near the image's side a doubled window can span the same blocks (30 and 32 pixels of a
    32-pixel image are both 10 blocks of 3) or fewer pixels (216 and 224 of 224): not tried."""
    from spray.verdict.patterns import _span

    assert _span(30, 32, 32) == _span(32, 32, 32) == 30
    assert _span(224, 224, 224) < _span(216, 224, 224)
    rng = np.random.default_rng(2)
    x = rng.random((8, 3, 32, 32)).astype(np.float32)
    rel = rng.random((8, 32, 32)).astype(np.float32)
    diff = np.full((16, 16), 0.1)
    diff[0:15, 0] = 1.0                      # 15 cells of 2 pixels: 30 at scale 1, 32 at 2
    patterns = InputPatterns.of(x, PRE16, maps=rel)
    assert patterns.peak_correlation(diff.ravel(), np.arange(8) < 3, 100) is not None
    assert patterns.peak_correlation(diff.ravel(), np.arange(8) < 3, 100, scale=2) is None


def test_a_window_as_wide_as_the_image_is_not_widened():
    """A region as wide as the grid gives a window of the whole image: doubled, it is no wider,
    and nothing is computed again (None)."""
    rng = np.random.default_rng(0)
    x = rng.random((12, 3, 32, 32)).astype(np.float32)
    rel = rng.random((12, 32, 32)).astype(np.float32)
    diff = np.ones(64)
    diff[0] = 1.5
    patterns = InputPatterns.of(x, PRE, maps=rel)
    assert patterns.peak_correlation(diff, np.arange(12) < 4, 100, scale=2) is None
    diff = np.zeros(64)
    diff[9] = 1.0                               # one cell of 4 pixels: 8 and 16 are wider
    for scale in (1, 2, 4):
        assert patterns.peak_correlation(diff, np.arange(12) < 4, 100, scale=scale) is not None


@pytest.mark.parametrize("seed", [0, 1])
def test_carriers_outside_no_longer_shut_the_guard(seed):
    """A ring on 80 of 240 samples, 20 in the suspect: the 60 stamped samples outside (27 % of
    them) lift the outside's upper fence above the members' lower fence, and the plain guard
    lets nobody in. Left out of that fence (they stand apart, with a gap below them), they join;
    no bright corner without the ring does."""
    x, rel, feats, labels, _, truth = _logo_class(seed=seed, stamped=80)
    patterns = InputPatterns.of(x, PRE, maps=rel)
    joined = []
    for gap in (0.0, 0.1):
        clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
        out = join_where_looked(labels, clusters, [1], feats, 1.0, 1.5, patterns, 2000, 2, gap, FAR)
        joins = (labels == 0) & (out == 1)
        assert (joins <= truth).all()
        joined.append(int(joins.sum()))
        assert gap == 0 or clusters[1].peak_guard == "apart"
    assert joined[0] == 0 and joined[1] >= 40                          # of the 60 outside


@pytest.mark.parametrize("seed", [0, 1])
def test_no_carriers_apart_without_a_pattern(seed):
    """The same class with nothing stamped: no window lets anyone in, gap or not."""
    x, rel, feats, labels, _, _ = _logo_class(seed=seed, stamped=120, logo=False)
    clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
    out = join_where_looked(labels, clusters, [1], feats, 1.0, 1.5,
                            InputPatterns.of(x, PRE, maps=rel), 2000, 2, 0.1, FAR)
    assert (out == labels).all() and clusters[1].peak_joined == 0


def test_carriers_stand_apart_only_above_a_gap():
    """Candidates above the fence stand apart when fewer than half, the rest's upper fence is
    at or below the fence and few of the rest lie just below it; a tail that thins out into the
    fence (a pattern shared by degrees) does not."""
    rng = np.random.default_rng(0)
    rest = rng.normal(0.4, 0.05, 200)
    carriers = rng.normal(0.9, 0.03, 50)
    assert carriers_apart(np.concatenate([rest, carriers]), 0.8, 1.5, 0.1)
    assert not carriers_apart(np.concatenate([rest, carriers]), 0.8, 1.5, 0.0)
    tail = np.linspace(0.55, 0.95, 60)                      # no gap under the fence
    assert not carriers_apart(np.concatenate([rest, tail]), 0.8, 1.5, 0.1)
    many = rng.normal(0.9, 0.03, 250)                       # the candidates are most of them
    assert not carriers_apart(np.concatenate([rest, many]), 0.8, 1.5, 0.1)
    near = np.concatenate([rest, carriers, np.full(30, 0.75)])    # 30 just below, 50 above
    assert not carriers_apart(near, 0.8, 1.5, 0.1)


def test_decide_members_hands_the_gap_on():
    """``decide_members`` passes its gap to the last step: the carriers of the class above join
    only with it."""
    x, rel, feats, labels, _, truth = _logo_class(seed=0, stamped=80)
    patterns = InputPatterns.of(x, PRE, maps=rel)
    W = np.ones((len(x), len(x))) - np.eye(len(x))
    joined = []
    for gap in (0.0, 0.1):
        clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
        out = decide_members(labels, clusters, [1], W, preprocess(x, PRE), feats, 0.1,
                             _flags(peak_window_doublings=2, peak_carrier_gap=gap), patterns)
        joined.append(clusters[1].peak_joined)
        assert not ((out == 1) & ~truth).any()
    assert joined[0] == 0 and joined[1] >= 40


def test_decide_members_passes_the_far_fence_to_the_last_step():
    """``decide_members`` passes ``peak_far_iqr`` to the last step: the carriers of the other
    corners that match below the members' fence join only with it."""
    x, rel, feats, labels, _, truth = _object_first_logo_class(2)
    patterns = InputPatterns.of(x, PRE, maps=rel)
    W = np.ones((len(x), len(x))) - np.eye(len(x))
    joined = []
    for far in (None, FAR):
        clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
        out = decide_members(labels, clusters, [1], W, preprocess(x, PRE), feats, 0.1,
                             _flags(peak_window_doublings=2, peak_far_iqr=far), patterns)
        joined.append(clusters[1].peak_joined)
        assert not ((out == 1) & ~truth).any()
    assert joined[0] < joined[1]


@pytest.mark.parametrize("side,H,W,C", [(5, 32, 32, 3), (34, 224, 224, 3), (68, 224, 200, 1),
                                        (1, 12, 12, 3), (13, 40, 29, 3), (136, 224, 224, 3)])
def test_padded_images_equal_the_padded_then_averaged_ones(side, H, W, C):
    """The images a match compares (edge pixels repeated ``slack`` blocks beyond the border,
    averaged over blocks) are, bit for bit, the full-resolution padded images averaged by
    numpy's reductions, for block factors summed by strided additions (below 8) and by those
    reductions alike; and within float32 rounding of the exact block means."""
    rng = np.random.default_rng(side)
    x = (rng.random((3, C, H, W), dtype=np.float32) * rng.choice([1e-6, 1.0, 300.0])
         ).astype(np.float32)
    windows = _PeakWindows(side, H, W)
    f, m = windows.factor, windows.slack
    full = np.pad(x[..., :windows.H * f, :windows.W * f],
                  ((0, 0), (0, 0), (m * f, m * f), (m * f, m * f)), mode="edge")
    h, w = full.shape[-2] // f, full.shape[-1] // f
    # numpy's reductions over each block's columns, then its rows (the sums before strided
    # additions replaced them below 8), in float32
    reduced = full.reshape(3, C, h * f, w, f).sum(axis=-1).reshape(3, C, h, f, w).sum(axis=-2)
    got = windows._padded(x)
    assert got.shape == reduced.shape
    assert np.array_equal(got, (reduced / np.float32(f * f)).astype(np.float64))
    exact = full.reshape(3, C, h, f, w, f).sum(axis=(3, 5), dtype=np.float64) / f ** 2
    assert np.allclose(got, exact, rtol=1e-5, atol=0)


def _flat_stamp_class(seed: int = 0, n: int = 200, suspects: int = 30, outside: int = 12,
                      lookalikes: int = 15):
    """RGB 16 × 16 smooth colour fields; the first ``suspects + outside`` carry an opaque white
    box (a flat stamp: no centred pattern of its own). The suspects' relevance lies on the box
    and, less, on an object region; the stamped samples outside look at the object only (their
    relevance graph neighbours are elsewhere), and the look-alikes have the box as bright on
    average (0.8), with a third of the rest's texture. Returns inputs, features, labels
    (suspects: 1), clusters, stamped, look-alike."""
    rng, x, stamped, look = _colour_fields(seed, n, suspects + outside, lookalikes)
    x[stamped, :, BOX[0], BOX[1]] = 1.0
    box = x[:, :, BOX[0], BOX[1]]
    box[look] = np.clip(0.8 + 0.3 * (box[look] - box[look].mean(axis=(1, 2, 3), keepdims=True)),
                        0, 1)
    rel = rng.uniform(0, 0.2, (n, 16, 16)).astype(np.float32)
    rel[:suspects, BOX[0], BOX[1]] += 2.0
    rel[suspects:, 2:8, 8:14] += 1.0              # the object, where the others look
    return (x, *_first_as_cluster(rel, suspects), stamped, look)


def test_a_flat_stamp_outside_joins_by_what_the_members_agree_on():
    from spray.verdict.members import join_by_agreement

    x, feats, labels, clusters, stamped, look = _flat_stamp_class()
    patterns = InputPatterns.of(x, PRE)
    cells = _hot_spot(feats, labels == 1)
    d = patterns.agreement(cells, labels == 1, 0.1, 2000)
    assert d[stamped].max() < 0.05 < 0.1 < d[look].min() and d[~stamped & ~look].min() > 0.3
    out = join_by_agreement(labels, clusters, [1], feats, 0.1, patterns, 2000, 0.1, 1.5)
    assert ((out == 1) == stamped).all()
    assert clusters[1].agreed_joined == 12 and clusters[1].size == 42
    # the same class without the agreement: a centred correlation has nothing to read in a
    # flat box, and the pattern join takes no stamped sample in
    clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
    before = join_by_pattern(labels, clusters, [1], feats, 0.1, 1.0, patterns, 2000, 1.5)
    assert not ((before == 1) & (labels == 0)).any()
    # off: nothing moves, nothing is read
    for spread, reach in ((None, 1.5), (0.0, 1.5), (0.1, None)):
        assert join_by_agreement(labels, clusters, [1], feats, 0.1, patterns, 2000, spread,
                                 reach) is labels


def test_no_one_joins_a_pattern_the_class_shares_by_degrees():
    """The box's brightness runs evenly over the class, and the suspects are its brightest 30:
    they agree more than the rest, but the next brightest are no group apart from the others
    (the guard: the members' upper fence must lie below the lower fence of the samples outside
    that do not join), and no one joins."""
    from spray.verdict.members import join_by_agreement

    rng = np.random.default_rng(1)
    n = 200
    x = np.clip(rng.uniform(0.1, 0.6, (n, 3, 1, 1)) + rng.normal(0, 0.05, (n, 3, 16, 16)), 0, 1)
    level = np.linspace(0, 1, n) ** 0.02          # dense near 1: the members are near-identical
    x[:, :, BOX[0], BOX[1]] = level[:, None, None, None]
    x = x.astype(np.float32)
    rel = rng.uniform(0, 0.2, (n, 16, 16)).astype(np.float32)
    labels = (level >= level[-30]).astype(np.int64)
    rel[labels == 1, BOX[0], BOX[1]] += 2.0
    feats = preprocess(rel, PRE)
    clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
    patterns = InputPatterns.of(x, PRE)
    d = patterns.agreement(_hot_spot(feats, labels == 1), labels == 1, 0.1, 2000)
    fence = upper_fence(d[labels == 1], 1.5)
    assert d is not None and fence <= 0.1 and (d[labels == 0] <= fence).any()
    out = join_by_agreement(labels, clusters, [1], feats, 0.1, patterns, 2000, 0.1, 1.5)
    assert (out == labels).all() and clusters[1].agreed_joined == 0


def test_agreement_needs_pixels_the_rest_varies_on():
    x, feats, labels, _, _, _ = _flat_stamp_class()
    x = x.copy()
    x[:, :, BOX[0], BOX[1]] = 1.0                  # every sample has the box: nothing to agree on
    cells = _hot_spot(feats, labels == 1)
    rest = cells[np.isin(cells, top_cells(np.abs(difference(feats, labels == 1)), 0.02))]
    assert InputPatterns.of(x, PRE).agreement(rest, labels == 1, 0.1, 2000) is None


def test_the_member_steps_take_the_flat_stamp_in_by_default():
    import scipy.sparse as sp

    x, feats, labels, _, stamped, _ = _flat_stamp_class()
    W = sp.csr_matrix(np.ones((len(x), len(x))) - np.eye(len(x)))
    inputs = preprocess(x, PRE)
    found = {}
    for spread in (0.1, None):
        clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
        flags = FlagsSection(agreement_spread=spread)
        out = decide_members(labels, clusters, [1], W, inputs, feats, 0.1, flags,
                             InputPatterns.of(x, PRE))
        found[spread] = int(((out == 1) & stamped).sum())
        assert ((out == 1) <= stamped).all()
    assert FlagsSection().agreement_spread == 0.1
    assert found[0.1] == 42 and found[None] < 42


def test_a_half_transparent_stamp_is_left_to_the_correlation():
    """A stamp at 70 % over backgrounds of any brightness (the rest of the class is dark): its
    members' values there vary with the background (their distances have an upper fence above
    ``agreement_spread``), and unstamped samples whose own box is as bright are as close to the
    members' median as they are. No one joins by agreement (the correlation, which reads the
    stamp's shape, is the step for such a stamp)."""
    from spray.verdict.members import join_by_agreement

    rng = np.random.default_rng(2)
    n, suspects, outside, bright = 200, 30, 12, 15
    stamped = np.arange(n) < suspects + outside
    level = np.where(stamped, rng.uniform(0.1, 0.9, n), rng.uniform(0.1, 0.3, n))
    x = np.clip(level[:, None, None, None] + rng.normal(0, 0.02, (n, 3, 16, 16)), 0, 1)
    box = x[:, :, BOX[0], BOX[1]]
    box[stamped] = 0.7 + 0.3 * box[stamped]
    look = (np.arange(n) >= suspects + outside) & (np.arange(n) < suspects + outside + bright)
    box[look] = rng.uniform(0.83, 0.87, (bright, 1, 1, 1)) + rng.normal(0, 0.005, box[look].shape)
    x = x.astype(np.float32)
    rel = rng.uniform(0, 0.2, (n, 16, 16)).astype(np.float32)
    rel[:suspects, BOX[0], BOX[1]] += 2.0
    feats = preprocess(rel, PRE)
    labels = (np.arange(n) < suspects).astype(np.int64)
    patterns = InputPatterns.of(x, PRE)
    d = patterns.agreement(_hot_spot(feats, labels == 1), labels == 1, 0.1, 2000)
    fence = upper_fence(d[labels == 1], 1.5)
    assert fence > 0.1 and (d[look] <= fence).sum() >= 10       # look-alikes as close
    clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
    out = join_by_agreement(labels, clusters, [1], feats, 0.1, patterns, 2000, 0.1, 1.5)
    assert (out == labels).all() and clusters[1].agreed_joined == 0


def _placed(members: list, candidates: list) -> tuple:
    """Best-match places of members then candidates, and their masks (``(n, 2)`` places)."""
    places = np.array(members + candidates)
    mask = np.zeros(len(places), bool)
    mask[:len(members)] = True
    return places, mask, ~mask


def test_candidates_of_a_fixed_place_join_at_a_place_of_the_artefact():
    """Members at one place (a stamp): candidates near it or at another place three of them
    share stay; look-alikes each at a place of their own are left out."""
    corner = [(20, 24), (20, 25), (21, 24)]
    alone = [(10, 12), (15, 5)]
    near = [(3, 2)]                                           # within half the window (4)
    places, mask, join = _placed([(0, 0)] * 10, corner + alone + near)
    kept = at_places(join, places, mask, 8, 0.5, 3)
    assert kept[mask].sum() == 0
    assert kept[~mask].tolist() == [True, True, True, False, False, True]
    # two at a place are not another place with three, but are with two
    assert not at_places(join, places, mask, 8, 0.5, 4)[10:13].any()
    assert at_places(join, places, mask, 8, 0.5, 2)[10:13].all()
    # half a window: (5, 0) is beyond 8 // 2 of the members' place, (4, 0) within
    places, mask, join = _placed([(0, 0)] * 10, [(5, 0), (4, 0)])
    assert at_places(join, places, mask, 8, 0.5, 3)[10:].tolist() == [False, True]


def test_a_place_one_member_holds_is_no_place_of_the_artefact():
    """Only places two members share count: a candidate beside a lone member's place is
    left out; a second shared place counts as much as the first (together half the
    members); members left out (no finite correlation) count for nothing."""
    places, mask, join = _placed([(0, 0)] * 9 + [(20, 20)], [(20, 21)])
    assert not at_places(join, places, mask, 8, 0.5, 3)[-1]
    members = [(0, 0)] * 3 + [(20, 20)] * 3 + [(i, 9 + 2 * i) for i in range(6)]
    places, mask, join = _placed(members, [(20, 22), (10, 3)])
    assert at_places(join, places, mask, 8, 0.5, 3)[-2:].tolist() == [True, False]
    places, mask, join = _placed([(0, 0)] * 10 + [(i, 3 * i) for i in range(6)], [(30, 30)])
    assert not at_places(join, places, mask, 8, 0.5, 3)[-1]
    finite = mask.copy()
    finite[:8] = False                       # 2 of the 8 left at (0, 0): a quarter
    assert at_places(join, places, finite, 8, 0.5, 3)[-1]


def test_another_place_is_a_quarter_window_of_at_least_a_block():
    """Three candidates within a quarter window of each other make a place; a window of 2 or
    3 blocks still reaches one block; candidates two quarters apart do not."""
    places, mask, join = _placed([(0, 0)] * 10, [(20, 20), (21, 21), (20, 22)])
    # reach 1: only (21, 21) has both others within a block; (20, 20) and (20, 22) are 2 apart
    assert at_places(join, places, mask, 3, 0.5, 3)[-3:].tolist() == [False, True, False]
    assert at_places(join, places, mask, 8, 0.5, 3)[-3:].all()         # reach 2
    places, mask, join = _placed([(0, 0)] * 10, [(20, 20), (21, 21), (21, 20)])
    assert at_places(join, places, mask, 2, 0.5, 3)[-3:].all()         # reach 1, not 0
    places, mask, join = _placed([(0, 0)] * 10, [(20, 20), (23, 20), (26, 20)])
    assert not at_places(join, places, mask, 8, 0.5, 3)[-3:].any()     # 3 apart, reach 2


def test_members_sharing_places_by_chance_are_not_fixed():
    """More members than places a moving pattern covers share places by chance, but have as
    many pairs a block apart: not fixed. A frame's members sliding along one border are."""
    rng = np.random.default_rng(0)
    jitter = rng.integers(-2, 3, (200, 2)) + 9                # ±2 blocks around one spot
    here, counts = np.unique(jitter, axis=0, return_counts=True)
    assert counts[counts >= 2].sum() >= 0.5 * len(jitter)      # the share alone passes
    assert fixed_places(jitter, 0.5) is None
    border = np.stack([np.full(40, 3), rng.integers(2, 28, 40)], axis=1)
    assert fixed_places(border, 0.5) is not None
    corner = np.repeat([[1, 1]], 12, axis=0)
    assert fixed_places(corner, 0.5).tolist() == [[1, 1]]
    assert fixed_places(corner[:1], 0.5) is None
    # pairs at one place against one pair a block apart in each axis: four pass, three not
    apart = [[20, 20], [21, 20], [20, 21]]
    four = np.array([[0, 0]] * 2 + [[5, 5]] * 2 + [[9, 9]] * 2 + [[12, 12]] * 2 + apart)
    assert fixed_places(four, 0.4) is not None and fixed_places(four[2:], 0.4) is None
    assert fixed_places(four[:-1], 0.4) is not None       # no pair across: at least once


@pytest.mark.parametrize("nan_members", [0, 40])
def test_a_disc_that_moves_a_little_keeps_its_carriers(nan_members):
    """A colour disc within ±2 pixels of one spot on 60 members, 15 carriers outside at other
    spots: the members share places by chance, the rule does not apply, every carrier joins
    as without it. Members with a NaN pixel (no correlation, their best match nowhere) do
    not make the others' places fixed."""
    rng = np.random.default_rng(3)
    n, members, carriers = 240, 60, 15
    x = rng.uniform(0.1, 0.6, (n, 3, 1, 1)) + gaussian_filter(
        rng.normal(0, 0.2, (n, 3, 32, 32)), (0, 0, 2, 2))
    x = np.clip(x, 0, 0.8).astype(np.float32)
    rel = rng.uniform(0, 0.05, (n, 32, 32)).astype(np.float32)
    yy, xx = np.mgrid[:32, :32]
    for i in range(members + carriers):
        c = (np.array((9, 9)) + rng.integers(-2, 3, 2) if i < members
             else rng.integers(6, 26, 2))
        disc = (yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= 6
        x[i][:, disc] = np.array([0.95, 0.05, 0.05])[:, None]
        rel[i][disc] += 1.0
    for i in range(members + carriers, n):
        cy, cx = rng.integers(9, 23, 2)
        rel[i, cy - 3:cy + 3, cx - 3:cx + 3] += 0.5
    x[:nan_members, 0, 31, 31] = np.nan
    labels = np.zeros(n, np.int64)
    labels[:members] = 1
    feats = preprocess(rel, PRE)
    patterns = InputPatterns.of(x, PRE, maps=rel)
    joined = []
    for share in (2.0, 0.5):
        clusters = [ClusterEvidence.of(labels == k, id=k) for k in (0, 1)]
        out = join_where_looked(labels, clusters, [1], feats, 1.0, 1.5, patterns, 2000, 2,
                                0.0, FAR, None, share, 3)
        joined.append(int((out[members:members + carriers] == 1).sum()))
    assert joined[0] >= 13 and joined[1] == joined[0]


def test_candidates_of_a_moving_pattern_join_anywhere():
    """Members at places of their own (a patch on the object), fewer than ``share`` of them at
    a shared place, or ``share`` above 1: every candidate stays."""
    spread = [(i, 3 * i) for i in range(10)]
    places, mask, join = _placed(spread, [(30, 1), (2, 17)])
    assert (at_places(join, places, mask, 8, 0.5, 3) == join).all()
    # 4 of 10 members at one place: below half; 5: at half, fixed
    four = [(0, 0)] * 4 + spread[4:]
    five = [(0, 0)] * 5 + spread[5:]
    places, mask, join = _placed(four, [(30, 1)])
    assert at_places(join, places, mask, 8, 0.5, 3)[-1]
    places, mask, join = _placed(five, [(30, 1)])
    assert not at_places(join, places, mask, 8, 0.5, 3)[-1]
    places, mask, join = _placed([(0, 0)] * 10, [(30, 1)])
    assert at_places(join, places, mask, 8, 1.01, 3)[-1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_within_counts_the_places_in_reach(seed):
    """``_within`` against a table of every pair: places within ``reach`` in both
    coordinates, counted and as a mask, with negative coordinates."""
    rng = np.random.default_rng(seed)
    points = rng.integers(-4, 30, (40, 2))
    places = rng.integers(-4, 30, (25, 2))
    for reach in (0, 1, 3):
        table = (np.abs(points[:, None] - places[None]).max(axis=-1) <= reach)
        assert (_within(points, places, reach, counts=True) == table.sum(axis=1)).all()
        assert (_within(points, places, reach) == table.any(axis=1)).all()
    assert not _within(points, places[:0], 2).any()
    assert _within(points[:0], places, 2).shape == (0,)


def _square_class(seed: int = 0, n: int = 160, stamped: int = 30, lookalikes: int = 8):
    """RGB 32 × 32 smooth colour fields; the first ``stamped`` carry a white 4 × 4 square at
    the top left (1, 1), the model's relevance on it; the next ``lookalikes`` carry the same
    square on their object, each at a place of its own, the relevance there too. Cluster 1
    holds the first 20 stamped samples (the suspect), cluster 0 the rest."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.1, 0.6, (n, 3, 1, 1)) + gaussian_filter(
        rng.normal(0, 0.2, (n, 3, 32, 32)), (0, 0, 2, 2))
    x = np.clip(x, 0, 0.8).astype(np.float32)
    rel = rng.uniform(0, 0.05, (n, 32, 32)).astype(np.float32)
    spots = [(8, 10), (20, 14), (12, 24), (24, 22), (16, 6), (9, 17), (26, 9), (17, 27)]
    for i in range(stamped + lookalikes):
        y0, x0 = (1, 1) if i < stamped else spots[(i - stamped) % len(spots)]
        x[i, :, y0:y0 + 4, x0:x0 + 4] = 1.0
        rel[i, y0:y0 + 4, x0:x0 + 4] += 1.0
    for i in range(stamped + lookalikes, n):
        cy, cx = rng.integers(9, 23, 2)
        rel[i, cy - 3:cy + 3, cx - 3:cx + 3] += 0.5
    labels = np.zeros(n, dtype=np.int64)
    labels[:20] = 1
    truth = np.zeros(n, bool)
    truth[:stamped] = True
    return x, rel, preprocess(rel, PRE), labels, truth


def test_look_alikes_of_a_fixed_stamp_elsewhere_stay_out():
    """A square at a fixed place: the stamped samples outside join; the same square at places
    of their own on the object joins anywhere without the place rule and stays out with it
    (counted in ``peak_off_place``)."""
    x, rel, feats, labels, truth = _square_class()
    patterns = InputPatterns.of(x, PRE, maps=rel)
    joined = {}
    for share in (2.0, 0.5):
        clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
        out = join_where_looked(labels, clusters, [1], feats, 1.0, 1.5, patterns, 2000, 2,
                                0.0, FAR, None, share, 3)
        joined[share] = (labels == 0) & (out == 1)
        assert joined[share][20:30].all()                    # the stamped outside
        assert clusters[1].peak_joined == joined[share].sum()
    assert joined[2.0][30:38].all() and not joined[0.5][30:38].any()
    assert clusters[1].peak_off_place == 8
    assert not (joined[0.5] & ~truth).any()


def test_the_logo_in_other_corners_joins_at_its_places():
    """A logo in one of four corners: its members match at one place, and the carriers of the
    other three corners (15 each) join at theirs with the place rule as without it."""
    x, rel, feats, labels, clusters, truth = _logo_class()
    patterns = InputPatterns.of(x, PRE, maps=rel)
    out = join_where_looked(labels, clusters, [1], feats, 1.0, 1.5, patterns, 2000, 0, 0.0,
                            FAR, None, 0.5, 3)
    joins = (labels == 0) & (out == 1)
    assert (joins <= truth).all() and joins.sum() >= 40
    assert clusters[1].peak_off_place == 0


def test_decide_members_hands_the_place_rule_on():
    """``decide_members`` passes ``peak_place_share`` and ``peak_place_carriers``: by default
    the look-alikes of a fixed square stay out; with the share above 1, or with another place
    needing fewer candidates than each look-alike alone, they join."""
    x, rel, feats, labels, truth = _square_class()
    patterns = InputPatterns.of(x, PRE, maps=rel)
    W = np.ones((len(x), len(x))) - np.eye(len(x))
    members = {}
    for given in ({}, {"peak_place_share": 1.5}, {"peak_place_carriers": 1}):
        clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
        out = decide_members(labels, clusters, [1], W, preprocess(x, PRE), feats, 0.1,
                             _flags(**given), patterns)
        members[tuple(given)] = out == 1
    assert not (members[()] & ~truth).any() and members[()][:30].all()
    assert members[("peak_place_share",)][30:38].all()
    assert members[("peak_place_carriers",)][30:38].all()


# ------------------------------------------- what the members agree on, anywhere (opt-in)


def test_what_the_members_agree_on_is_found_at_every_corner():
    """The ring of one corner's suspect is its members' agreed pixels: every carrier matches it
    exactly at its own corner, a bright corner without the ring or an unstamped sample does
    not; the best place and distance are those of every window compared one by one."""
    x, rel, feats, labels, *_ = _logo_class()
    mask = labels == 1
    found = InputPatterns.of(x, PRE, chunk=64).agreement_anywhere(
        _hot_spot(feats, mask), mask, 0.1, 2000)
    d, places = found.distance, found.places
    assert d[:60].max() < 1e-3 < 0.3 < d[60:].min()
    home = np.array(found.home)
    corner = np.repeat(np.arange(4), 15)
    offset = home - np.array(CORNERS[0])                 # the template's box against the ring's
    assert (places[:60] == np.array(CORNERS)[corner] + offset).all()
    # the FFT against a loop over every place, for a few samples
    V = x.reshape(len(x), -1).astype(np.float64)
    M = V[mask]
    med = np.median(M, axis=0)
    inside, outside = np.abs(M - med).mean(0), np.abs(V[~mask] - med).mean(0)
    cells = _hot_spot(feats, mask)
    at = np.flatnonzero(np.tile(cell_pixels(cells, (8, 8), 32, 32).ravel(), 3))
    agreed = at[(outside[at] > 0) & (inside[at] <= 0.1 * outside[at])]
    c, rest = np.divmod(agreed, 32 * 32)
    y, xx = np.divmod(rest, 32)
    assert tuple(found.home) == (y.min(), xx.min())
    for i in (0, 20, 70, 150):
        best = min(
            np.sqrt(np.mean(((x[i, c, y - y.min() + oy, xx - xx.min() + ox] - med[agreed])
                             / outside[agreed]) ** 2))
            for oy in range(33 - (y.max() - y.min() + 1))
            for ox in range(33 - (xx.max() - xx.min() + 1)))
        assert d[i] == pytest.approx(best, abs=1e-6)


def test_the_other_corners_join_at_the_places_they_share():
    """The carriers of the three other corners join the one-corner suspect, no look-alike does;
    a carrier alone at a place of its own joins only at a place enough candidates share."""
    from spray.verdict.members import join_anywhere

    x, rel, feats, labels, clusters, truth = _logo_class()
    x[200, :, 12:17, 14:19][:, RING] = np.array([0.9, 0.1, 0.1])[:, None]   # a stray ring
    patterns = InputPatterns.of(x, PRE)
    out = join_anywhere(labels, clusters, [1], feats, 0.1, patterns, 2000, 0.1, 1.5, 3)
    joins = (labels == 0) & (out == 1)
    assert (joins == (truth & (labels == 0))).all() and clusters[1].anywhere_joined == 45
    # no place shared by 16 candidates: only carriers at the members' own corner join
    labels2 = labels.copy()
    labels2[[13, 14]] = 0                                  # two of corner 0 left outside
    clusters2 = [ClusterEvidence.of(labels2 == c, id=c) for c in (0, 1)]
    alone = join_anywhere(labels2, clusters2, [1], feats, 0.1, patterns, 2000, 0.1, 1.5, 16)
    assert ((alone == 1) == (labels == 1)).all() and clusters2[1].anywhere_joined == 2
    # nothing read without the raw inputs, the spread or the reach
    for args in ((None, 0.1, 1.5), (patterns, None, 1.5), (patterns, 0.1, None)):
        assert (join_anywhere(labels, clusters, [1], feats, 0.1, args[0], 2000, args[1],
                              args[2], 3) == labels).all()


def test_decide_members_looks_anywhere_only_with_the_flag():
    x, rel, feats, labels, clusters, truth = _logo_class()
    import scipy.sparse as sp

    W = sp.csr_matrix((len(labels), len(labels)))
    patterns = InputPatterns.of(x, PRE)
    inputs = preprocess(x.sum(axis=1), PRE)
    for flag in (False, True):
        fresh = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
        out = decide_members(labels, fresh, [1], W, inputs, feats, 0.1,
                             FlagsSection(agreement_anywhere=flag), patterns)
        assert (fresh[1].anywhere_joined == 45) if flag else fresh[1].anywhere_joined is None
        if flag:
            assert ((out == 1) == truth).all()


def test_carriers_at_the_members_own_place_join_only_while_fewer_than_the_members():
    """40 more samples carry the ring at the suspect's own corner (15 members): the agreement
    step's guard holds there, none of them joins; the other corners still do. The template's
    place is that of the members' corner (an asymmetric one here)."""
    from spray.verdict.members import join_anywhere

    x, rel, feats, labels, clusters, truth = _logo_class()
    labels = np.zeros(len(labels), dtype=np.int64)
    labels[30:45] = 1                                      # corner 2, at (26, 1): the suspect
    extra = np.arange(100, 140)
    for i in extra:
        x[i, :, 26:31, 1:6][:, RING] = np.array([0.9, 0.1, 0.1])[:, None]
    clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
    patterns = InputPatterns.of(x, PRE)
    found = patterns.agreement_anywhere(_hot_spot(feats, labels == 1), labels == 1, 0.1, 2000)
    assert (found.places[30:45] == np.asarray(found.home)).all()
    assert found.home[0] > found.home[1]                   # row 26 and more, column 1 and more
    out = join_anywhere(labels, clusters, [1], feats, 0.1, patterns, 2000, 0.1, 1.5, 3)
    joins = (labels == 0) & (out == 1)
    assert not joins[extra].any() and joins[:60].sum() == 45


def test_an_image_with_a_nan_has_no_distance_and_does_not_join():
    from spray.verdict.members import join_anywhere

    x, rel, feats, labels, clusters, truth = _logo_class()
    x[20, 1, 30, 30] = np.nan                              # a carrier of corner 1
    patterns = InputPatterns.of(x, PRE)
    found = patterns.agreement_anywhere(_hot_spot(feats, labels == 1), labels == 1, 0.1, 2000)
    assert np.isnan(found.distance[20]) and np.isfinite(np.delete(found.distance, 20)).all()
    out = join_anywhere(labels, clusters, [1], feats, 0.1, patterns, 2000, 0.1, 1.5, 3)
    assert out[20] == 0 and ((labels == 0) & (out == 1)).sum() == 44
