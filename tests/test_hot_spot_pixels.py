"""The hot-spot separation in the pixels (``flags.hot_spot_agreement_spread``): fine stripes
that pooling to the feature grid blurs into the photograph beneath them."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from test_patterns import PRE, _hot_spot

from spray.analysis.preprocess import preprocess
from spray.config.presets import FlagsSection, load_pipeline
from spray.verdict.evidence import ClassGraphs, auc, hot_spot_side
from spray.verdict.patterns import InputPatterns

N, STAMPED = 240, 60
REGION = (slice(3, 15), slice(3, 15))          # 12 × 12 px, the stripes' square


def _stripes_class(seed: int = 0, shift: bool = False):
    """RGB 32 × 32 textured colour fields (a photograph's variation within a cell); the first
    ``STAMPED`` carry violet diagonal
    stripes (one line in three) blended at 70 % over the square ``REGION`` (``shift``: each at a
    random offset of the square, a pattern that moves). Relevance sits on the square for the
    stamped samples. Returns inputs, relevance features and the stamped mask."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.1, 0.8, (N, 3, 1, 1)) + gaussian_filter(
        rng.normal(0, 2.0, (N, 3, 32, 32)), (0, 0, 1.5, 1.5))
    x = np.clip(x, 0, 1).astype(np.float32)
    yy, xx = np.mgrid[0:12, 0:12]
    violet = np.array([0.35, 0.0, 0.45], np.float32)[:, None, None]
    stamped = np.arange(N) < STAMPED
    for i in np.flatnonzero(stamped):
        lines = ((yy + xx + (rng.integers(3) if shift else 0)) % 3 == 0) * 0.7
        box = x[i, :, REGION[0], REGION[1]]
        x[i, :, REGION[0], REGION[1]] = box * (1 - lines) + lines * violet
    rel = rng.uniform(0, 0.2, (N, 32, 32)).astype(np.float32)
    rel[stamped, REGION[0], REGION[1]] += 1.0
    return x, preprocess(rel, PRE), stamped


def test_fine_stripes_separate_in_the_pixels_not_pooled():
    x, feats, stamped = _stripes_class()
    inputs = preprocess(x, PRE)
    cells = _hot_spot(feats, stamped)
    pooled = auc(hot_spot_side(inputs, feats, stamped, 0.1), stamped)
    pixels = InputPatterns.of(x, PRE).agreement_separation(cells, stamped, 0.5, 2000)
    assert pooled < 0.7 and pixels > 0.97


def test_a_random_subset_and_a_moving_pattern_agree_on_nothing():
    x, feats, stamped = _stripes_class()
    patterns = InputPatterns.of(x, PRE)
    rng = np.random.default_rng(1)
    for _ in range(5):
        group = np.zeros(N, bool)
        group[rng.choice(N, STAMPED, replace=False)] = True
        assert abs(patterns.agreement_separation(_hot_spot(feats, group), group, 0.5, 2000)
                   - 0.5) < 0.1
    moved, feats_m, _ = _stripes_class(shift=True)
    sep = InputPatterns.of(moved, PRE).agreement_separation(_hot_spot(feats_m, stamped),
                                                            stamped, 0.5, 2000)
    assert sep < 0.7


def test_the_halves_are_the_seeds_and_every_value_must_be_finite():
    x, feats, stamped = _stripes_class()
    cells = _hot_spot(feats, stamped)
    patterns = InputPatterns.of(x, PRE)
    assert patterns.agreement_separation(cells, stamped, 0.5, 2000, seed=3) == \
        patterns.agreement_separation(cells, stamped, 0.5, 2000, seed=3)
    x[5, 0, 5, 5] = np.nan                   # a stamped member with a NaN: left out, still high
    assert InputPatterns.of(x, PRE).agreement_separation(cells, stamped, 0.5, 2000) > 0.95
    one = np.zeros(N, bool)
    one[0] = True
    assert patterns.agreement_separation(cells, one, 0.5, 2000) is None
    assert patterns.agreement_separation(cells, np.ones(N, bool), 0.5, 2000) is None


def test_a_subset_reads_the_rows_it_names():
    x, feats, stamped = _stripes_class()
    rel = np.abs(x).sum(axis=1)
    rows = np.array([7, 3, 200, 11])
    sub = InputPatterns.of(x, PRE, maps=rel).subset(rows)
    assert sub.n == 4
    np.testing.assert_array_equal(sub.load(np.array([0, 2])), x[[7, 200]])
    np.testing.assert_array_equal(sub.relevance(np.array([1, 3])), rel[[3, 11]])


def _graphs(spread, x, feats):
    from spray.analysis.analyze import analyze

    pipe = load_pipeline("spray-default", overrides={
        "preprocess": PRE, "embedding": {"method": "none"},
        "flags": {"hot_spot_agreement_spread": spread}})
    result = analyze(feats, pipeline=pipe, embed=False)
    params = FlagsSection.coerce(pipe["flags"])
    return ClassGraphs.build(result, preprocess(x, PRE), pipe, params, feats,
                             patterns=InputPatterns.of(x, PRE))


@pytest.mark.parametrize("spread", [None, 0.5])
def test_the_flag_lifts_the_separation_of_stripes_only(spread):
    x, feats, stamped = _stripes_class()
    graphs = _graphs(spread, x, feats)
    pooled = auc(hot_spot_side(preprocess(x, PRE), feats, stamped, 0.1), stamped)
    sep = graphs.hot_spot_separation(stamped)
    if spread is None:
        assert graphs.patterns is None and sep == pooled
    else:
        assert sep > 0.97 > 0.7 > pooled
    group = np.zeros(N, bool)
    group[np.random.default_rng(2).choice(N, STAMPED, replace=False)] = True
    random_pooled = auc(hot_spot_side(preprocess(x, PRE), feats, group, 0.1), group)
    assert graphs.hot_spot_separation(group) == pytest.approx(random_pooled, abs=0.05)


def test_the_preset_followed_measures_the_pixels():
    flags = load_pipeline("followed")["flags"]
    assert flags["hot_spot_agreement_spread"] == flags["agreement_trim_spread"] == 0.5
    assert load_pipeline("spray-default")["flags"]["hot_spot_agreement_spread"] is None


def test_a_half_that_agrees_on_few_values_counts_half():
    """Stripes cover a third of their square: both halves agree on about a quarter of the hot
    spot's values. Asked for more than that share, nothing counts."""
    x, feats, stamped = _stripes_class()
    cells = _hot_spot(feats, stamped)
    patterns = InputPatterns.of(x, PRE)
    assert patterns.agreement_separation(cells, stamped, 0.5, 2000, least=0.15) > 0.97
    assert patterns.agreement_separation(cells, stamped, 0.5, 2000, least=0.6) == 0.5


def test_the_share_changes_no_score_while_the_pixels_are_off():
    from spray.verdict.calibration import scoring_params

    flags = FlagsSection().model_dump()
    off = scoring_params(flags)
    assert "hot_spot_agreed_share" not in off and "hot_spot_agreement_spread" not in off
    on = scoring_params({**flags, "hot_spot_agreement_spread": 0.5})
    assert on["hot_spot_agreed_share"] == 0.15 and on["hot_spot_agreement_spread"] == 0.5


@pytest.mark.parametrize("most", [2000, 120])
def test_the_score_of_a_stripes_class_rises_on_the_whole_class_and_a_subsample(most):
    """Both paths of the score (the whole class, and a subsample of a large one) hand the raw
    inputs to the graphs: the stamped group's cluster loses its hot-spot penalty, and no other
    score falls."""
    from spray.analysis.analyze import analyze
    from spray.verdict.score import score_class

    x, feats, stamped = _stripes_class()
    scores = {}
    for spread in (None, 0.5):
        pipe = load_pipeline("spray-default", overrides={
            "preprocess": PRE, "embedding": {"method": "none"},
            "flags": {"hot_spot_agreement_spread": spread, "score_max_samples": most}})
        result = analyze(feats, pipeline=pipe, embed=False)
        verdict = score_class(result, preprocess(x, PRE), pipe, features=feats,
                              patterns=InputPatterns.of(x, PRE))
        scores[spread] = {c.id: c for c in verdict.clusters if c.score is not None}
    lifted = [i for i in scores[0.5] if scores[0.5][i].score > scores[None][i].score + 0.5]
    assert lifted and all(scores[0.5][i].hot_spot_penalty == 0 for i in lifted)
    assert all(scores[0.5][i].score >= scores[None][i].score - 1e-9 for i in scores[None])


def _mixed_suspect(cut_graph=None):
    """The stripes class with the stamped samples and 20 unstamped ones as suspect 1."""
    from spray.verdict.result import ClusterEvidence

    x, feats, stamped = _stripes_class()
    labels = np.where(stamped | (np.arange(N) < STAMPED + 20), 1, 0)
    clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
    clusters[1].cut_graph = cut_graph
    return x, feats, stamped, labels, clusters


def test_members_are_trimmed_by_what_they_agree_on_except_in_a_window_cut():
    import scipy.sparse as sp

    from spray.verdict.members import trim_by_pattern

    W = sp.csr_matrix(np.ones((N, N)) - np.eye(N))
    x, feats, stamped, labels, clusters = _mixed_suspect()
    out = trim_by_pattern(labels, clusters, [1], W, feats, 0.1, 1.0, 1.0,
                          InputPatterns.of(x, PRE), 2000, spread=0.5)
    assert ((out == 1) == stamped).all() and clusters[1].pattern_trimmed == 20
    # the correlation trim keeps 3 unstamped members and lets a stamped one go here
    x, feats, stamped, labels, clusters = _mixed_suspect()
    plain = trim_by_pattern(labels, clusters, [1], W, feats, 0.1, 1.0, 1.0,
                            InputPatterns.of(x, PRE), 2000, spread=None)
    assert ((plain == 1) != stamped).sum() >= 2
    for spread, cut in ((None, None), (0.5, "windows")):
        x, feats, stamped, labels, clusters = _mixed_suspect(cut)
        by_correlation = trim_by_pattern(labels, clusters, [1], W, feats, 0.1, 1.0, 1.0,
                                         InputPatterns.of(x, PRE), 2000, spread=None)
        x, feats, stamped, labels, clusters = _mixed_suspect(cut)
        assert (trim_by_pattern(labels, clusters, [1], W, feats, 0.1, 1.0, 1.0,
                                InputPatterns.of(x, PRE), 2000, spread=spread)
                == by_correlation).all()
