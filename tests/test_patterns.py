"""Members by their pattern: the raw inputs at a suspect's hot spot, read in chunks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from spray.analysis.preprocess import cell_pixels, preprocess
from spray.verdict.evidence import difference, top_cells
from spray.verdict.members import join_by_pattern, lower_fence
from spray.verdict.patterns import InputPatterns
from spray.verdict.result import ClusterEvidence

PRE = {"channel_sum": True, "transform": "none", "pool": [8, 8], "normalize": "l1"}
GLYPH = np.array([[1, 0, 0, 0, 0, 0, 1],
                  [1, 0, 0, 1, 0, 0, 1],
                  [1, 0, 1, 0, 1, 0, 1],
                  [1, 1, 0, 0, 0, 1, 1],
                  [1, 0, 0, 0, 0, 0, 1]], dtype=bool)     # a "W", 5 × 7 px
BOX = (slice(10, 15), slice(2, 9))


def _scene_class(seed: int = 0, n: int = 200, suspects: int = 30, outside: int = 12,
                 lookalikes: int = 15):
    """RGB 16 × 16 images of smooth colour fields. The first ``suspects`` carry the glyph in
    white at 75 % over the box and form cluster 1; the next ``outside`` carry it too but are in
    cluster 0; the next ``lookalikes`` have the box as bright as the glyph makes it on average,
    without the glyph's shape. Relevance features (8 × 8) of the stamped samples sit on the box.

    Returns inputs ``(n, 3, 16, 16)``, features, labels, clusters, stamped, lookalike."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.1, 0.6, (n, 3, 1, 1)) + gaussian_filter(rng.normal(0, 0.15, (n, 3, 16, 16)),
                                                              (0, 0, 2, 2))
    x = np.clip(x, 0, 1).astype(np.float32)
    stamped = np.zeros(n, bool)
    stamped[:suspects + outside] = True
    look = np.zeros(n, bool)
    look[suspects + outside:suspects + outside + lookalikes] = True
    box = x[:, :, BOX[0], BOX[1]]
    alpha = 0.75 * GLYPH
    box[stamped] = box[stamped] * (1 - alpha) + alpha
    box[look] = box[look] * (1 - 0.75 * GLYPH.mean()) + 0.75 * GLYPH.mean()
    rel = rng.uniform(0, 0.2, (n, 16, 16)).astype(np.float32)
    rel[stamped, BOX[0], BOX[1]] += 2.0
    feats = preprocess(rel, PRE)
    labels = np.zeros(n, dtype=np.int64)
    labels[:suspects] = 1
    clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
    return x, feats, labels, clusters, stamped, look


def test_cell_pixels_takes_the_pixels_mostly_in_the_cells():
    # 32 px onto 20 cells: cell 0 covers [0, 1.6), cell 1 [1.6, 3.2)
    rows = np.flatnonzero(cell_pixels(np.array([0]), (20, 20), 32, 32).any(axis=1))
    assert rows.tolist() == [0, 1]                        # pixel 1: 0.6 in cell 0
    both = cell_pixels(np.array([0, 1]), (20, 20), 32, 32)
    assert both[0].nonzero()[0].tolist() == [0, 1, 2]     # pixel 2 lies wholly in cell 1
    assert both.sum() == 6
    plain = cell_pixels(np.array([0, 5]), None, 4, 4)     # no grid: the cells are pixels
    assert np.argwhere(plain).tolist() == [[0, 0], [1, 1]]


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


def test_no_patterns_no_join():
    x, feats, labels, clusters, *_ = _scene_class()
    assert join_by_pattern(labels, clusters, [1], feats, 0.1, 1.0, None, 2000) is labels
    assert clusters[1].pattern_joined is None
    assert join_by_pattern(labels, clusters, [1], feats, 0.0, 1.0, InputPatterns.of(x, PRE),
                           2000) is labels


def test_the_fence_and_the_sign_decide_who_joins():
    """A wider fence takes in more, but never a sample that does not correlate at all."""
    x, feats, labels, clusters, stamped, look = _scene_class(outside=0, lookalikes=0)
    # half the members carry the glyph faintly over busy backgrounds: a wide spread
    rng = np.random.default_rng(1)
    x[:15] = np.clip(x[:15] + rng.normal(0, 0.3, x[:15].shape), 0, 1)
    patterns = InputPatterns.of(x, PRE)
    r = patterns.correlation(_hot_spot(feats, labels == 1), labels == 1, 2000)
    tight = join_by_pattern(labels, clusters, [1], feats, 0.1, 1.0, patterns, 2000)
    clusters = [ClusterEvidence.of(labels == c, id=c) for c in (0, 1)]
    wide = join_by_pattern(labels, clusters, [1], feats, 0.1, 100.0, patterns, 2000)
    joined_tight, joined_wide = (tight == 1) & (labels == 0), (wide == 1) & (labels == 0)
    assert joined_tight.sum() < joined_wide.sum()
    assert (r[joined_wide] > 0).all() and (r[(labels == 0) & ~joined_wide] <= 0).all()


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
