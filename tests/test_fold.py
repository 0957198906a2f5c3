"""The folded view (spray.verdict.fold): an artefact in one of four corners on one place."""

from __future__ import annotations

import numpy as np
import pytest

from spray.analysis.analyze import analyze
from spray.analysis.preprocess import preprocess
from spray.config.presets import load_pipeline
from spray.verdict.fold import Fold, extend_by_neighbours
from spray.verdict.patterns import InputPatterns
from spray.verdict.score import clever_hans_score

GRID = 10
PRE = {"pool": [GRID, GRID]}


def _pipe(**flags):
    return load_pipeline("spray-default", overrides={
        "preprocess": {"pool": [GRID, GRID]}, "embedding": {"method": "none"},
        "flags": flags or None})


def _normalize(x):
    flat = x.reshape(len(x), -1)
    return flat / np.abs(flat).sum(axis=1, keepdims=True)


def _corner_class(seed: int = 0, n: int = 300, size: int = 24, keep: float = 0.6):
    """``n`` blurry objects at the centre; ``size`` of them carry a faint 2 × 2 mark in one of
    the four corners (in turn) that dominates their relevance (the rest of it scaled by
    ``keep``). Returns relevance features, input features and the group."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(3, 6, size=(n, 2))
    yy, xx = np.mgrid[0:GRID, 0:GRID]
    x = np.exp(-((yy[None] - centres[:, :1, None]) ** 2 + (xx[None] - centres[:, 1:, None]) ** 2)
               / (2 * 2.0 ** 2))
    x += 0.05 * rng.random((n, GRID, GRID))
    group = np.zeros(n, dtype=bool)
    members = rng.choice(n, size=size, replace=False)
    group[members] = True
    rel = x * (1 + 0.3 * rng.standard_normal(x.shape))
    for i, row in enumerate(members):
        r0, c0 = [(0, 0), (0, GRID - 2), (GRID - 2, 0), (GRID - 2, GRID - 2)][i % 4]
        x[row, r0:r0 + 2, c0:c0 + 2] += 0.3
        rel[row] *= keep
        rel[row, r0:r0 + 2, c0:c0 + 2] = 1.0 + 0.7 * rng.random((2, 2))
    return _normalize(rel), _normalize(x), group


@pytest.fixture(scope="module")
def corner_class():
    return _corner_class()


def test_a_peak_in_the_middle_is_not_mirrored():
    """Only a peak in the far quarter along an axis is mirrored along it."""
    maps = np.zeros((3, GRID, GRID), np.float32)
    maps[0, 4:6, 7:9] = 1.0          # middle rows, right columns: left-right only
    maps[1, 5:7, 5:7] = 1.0          # the middle: neither
    maps[2, 8:10, 3:5] = 1.0         # bottom rows, middle columns: up-down only
    fold = Fold.of(maps.reshape(3, -1), PRE)
    assert fold.flip_y.tolist() == [False, False, True]
    assert fold.flip_x.tolist() == [True, False, False]


def test_the_fold_puts_each_peak_in_the_top_left_quadrant():
    maps = np.zeros((4, GRID, GRID), np.float32)
    for i, (r, c) in enumerate([(1, 1), (1, 8), (8, 1), (8, 8)]):
        maps[i, r, c] = -5.0                       # |relevance|: a negative peak counts too
        maps[i, 4:6, 4:6] = 0.5
    fold = Fold.of(maps.reshape(4, -1), PRE)
    assert fold.flip_y.tolist() == [False, False, True, True]
    assert fold.flip_x.tolist() == [False, True, False, True]
    folded = fold.apply(maps.reshape(4, -1)).reshape(4, GRID, GRID)
    assert (folded[:, 1, 1] == -5.0).all()


def test_features_and_pixels_fold_alike():
    """Folding pooled features is folding the maps before pooling (area-exact pooling of a
    mirrored map is the mirrored pooling); the inputs read through the folded patterns are
    mirrored with their row's fold."""
    rng = np.random.default_rng(1)
    maps = rng.standard_normal((6, 2, 25, 25)).astype(np.float32)
    for i, (r, c) in enumerate([(1, 1), (1, 22), (22, 1), (22, 22), (12, 22), (12, 12)]):
        maps[i, :, r:r + 3, c:c + 3] += 30.0           # a peak in each corner, two elsewhere
    feats = preprocess(maps, PRE)
    fold = Fold.of(feats, PRE)
    assert fold.flip_y.tolist() == [False, False, True, True, False, False]
    assert fold.flip_x.tolist() == [False, True, False, True, True, False]
    mirrored = maps.copy()
    mirrored[fold.flip_y] = mirrored[fold.flip_y][..., ::-1, :]
    mirrored[fold.flip_x] = mirrored[fold.flip_x][..., :, ::-1]
    np.testing.assert_allclose(fold.apply(feats), preprocess(mirrored, PRE), atol=1e-6)
    patterns = fold.patterns(InputPatterns.of(maps, PRE, maps=maps[:, 0]))
    rows = np.array([4, 1, 5])
    np.testing.assert_array_equal(patterns.load(rows), mirrored[rows])
    np.testing.assert_array_equal(patterns.relevance(rows), mirrored[rows, 0])
    assert fold.patterns(None) is None and fold.apply(None) is None


def test_no_fold_where_a_cell_is_no_place():
    feats = np.ones((3, 4), np.float32)
    assert Fold.of(feats, {"pool": None}) is None
    assert Fold.of(feats, {"pool": [2, 2], "transform": "fft"}) is None


def test_a_mark_in_one_of_four_corners_is_flagged_in_the_folded_view(corner_class):
    """24 of 300 marked, six per corner: the class's own view does not flag it (each corner
    is too small a group); folded, the marked samples are one group, flagged, all found."""
    feats, inputs, group = corner_class
    result = analyze(feats, pipeline=_pipe(), embed=False)
    own = clever_hans_score(result, inputs, _pipe(fold=False), features=feats)
    v = clever_hans_score(result, inputs, _pipe(), features=feats)
    assert not own["flagged"] and "view" not in own and own["score"] < 0
    assert v["flagged"] and v["view"] == "folded" and v["score"] > own["score"]
    members = v["labels"] == v["suspect_cluster"]
    assert (members & group).sum() / members.sum() >= 0.9
    assert (members & group).sum() / group.sum() >= 0.9


def test_a_flagged_class_keeps_its_own_view():
    """Nine per corner: the class's own view flags one corner's group, and the verdict stays
    that view's (the fold only adds a detection)."""
    feats, inputs, group = _corner_class(size=36, keep=0.3)
    result = analyze(feats, pipeline=_pipe(), embed=False)
    own = clever_hans_score(result, inputs, _pipe(fold=False), features=feats)
    v = clever_hans_score(result, inputs, _pipe(), features=feats)
    assert own["flagged"] and v["flagged"] and "view" not in v and "folded_score" not in v
    assert v["score"] == own["score"]
    assert (v["labels"] == own["labels"]).all()


def test_a_large_class_extends_the_folded_labels_through_its_nearest_drawn_samples():
    """A class above ``fold_max_samples``: the folded view is scored on a subsample of that
    many and every sample gets a label; the marked ones end up in the suspect."""
    feats, inputs, group = _corner_class(seed=3, n=600, size=48)
    pipe = _pipe(score_max_samples=300, fold_max_samples=300)
    result = analyze(feats, pipeline=pipe, embed=False)
    v = clever_hans_score(result, inputs, pipe, features=feats)
    assert v["view"] == "folded" and v["scored_on"] == 300 and len(v["labels"]) == 600
    members = v["labels"] == v["suspect_cluster"]
    assert v["flagged"] and (members & group).sum() / group.sum() >= 0.9
    assert (members & group).sum() / members.sum() >= 0.9


def test_the_fold_of_a_grid_that_is_not_square():
    """8 × 16 cells, channels kept apart: folding the features is folding the maps."""
    rng = np.random.default_rng(5)
    maps = rng.random((3, 2, 16, 32)).astype(np.float32)
    maps[0, :, 14:16, 28:32] += 20.0        # bottom right
    maps[1, :, 0:2, 28:32] += 20.0          # top right
    pre = {"pool": [8, 16], "channel_sum": False}
    feats = preprocess(maps, pre)
    fold = Fold.of(feats, pre)
    assert fold.flip_y.tolist() == [True, False, False]
    assert fold.flip_x.tolist() == [True, True, False]
    mirrored = maps.copy()
    mirrored[fold.flip_y] = mirrored[fold.flip_y][..., ::-1, :]
    mirrored[fold.flip_x] = mirrored[fold.flip_x][..., :, ::-1]
    np.testing.assert_allclose(fold.apply(feats), preprocess(mirrored, pre), atol=1e-6)


def test_extend_by_neighbours_takes_the_majority_of_the_nearest():
    feats = np.array([[0.0], [0.3], [0.35], [5.0], [0.1]])
    labels, _ = extend_by_neighbours(feats, np.array([0, 1, 2, 3]), np.array([1, 2, 2, 3]), k=3)
    assert labels[4] == 2          # nearest is 0 (label 1), but two of three say 2


def test_extend_by_neighbours_votes_and_links():
    feats = np.array([[0.0], [0.1], [10.0], [10.1], [0.05], [9.9], [10.05]])
    rows = np.array([0, 1, 2, 3])
    labels, W = extend_by_neighbours(feats, rows, np.array([7, 7, 9, 9]), k=2)
    assert labels.tolist() == [7, 7, 9, 9, 7, 9, 9]
    assert W.shape == (7, 7) and (W != W.T).nnz == 0
    assert sorted(W[4].indices.tolist()) == [0, 1] and W[0, 1] == 0


def test_an_unflagged_class_keeps_its_own_score():
    """No mark: neither view flags; the class keeps its own score, and a folded score, where
    one is recorded, lies below the threshold."""
    feats, inputs, _ = _corner_class(seed=4, size=0)
    result = analyze(feats, pipeline=_pipe(), embed=False)
    own = clever_hans_score(result, inputs, _pipe(fold=False), features=feats)
    v = clever_hans_score(result, inputs, _pipe(), features=feats)
    assert not v["flagged"] and "view" not in v and "folded_score" not in own
    assert v["score"] == own["score"] and (v["labels"] == own["labels"]).all()
    assert v.get("folded_score") is None or v["folded_score"] < v["threshold"]


def test_the_report_names_the_folded_view(corner_class):
    """The class page's evidence says the verdict is the folded view's."""
    from spray.report.class_page import _evidence

    feats, inputs, _ = corner_class
    result = analyze(feats, pipeline=_pipe(), embed=False)
    v = clever_hans_score(result, inputs, _pipe(), features=feats)
    entry = {k: v[k] for k in ("flagged", "suspect_cluster", "candidate_cluster", "threshold",
                               "clusters", "view")}
    assert "folded view" in _evidence(entry)
    assert "folded view" not in _evidence({**entry, "view": None})


def test_pruning_the_folded_view_keeps_its_flag_and_members(corner_class, monkeypatch):
    """The folded view measures only candidates that can reach the threshold; measuring all of
    them gives the same flag, score and labels (an unflagged class: the same verdict)."""
    import spray.verdict.evidence as evidence

    below = evidence._below
    calls = []
    for feats, inputs, _ in (corner_class, _corner_class(seed=4, size=0)):
        result = analyze(feats, pipeline=_pipe(), embed=False)
        monkeypatch.setattr(evidence, "_below", lambda *a: calls.append(below(*a)) or calls[-1])
        fast = clever_hans_score(result, inputs, _pipe(), features=feats)
        monkeypatch.setattr(evidence, "_below", lambda *a: False)
        full = clever_hans_score(result, inputs, _pipe(), features=feats)
        assert fast["flagged"] == full["flagged"] and fast["score"] == full["score"]
        assert (fast["labels"] == full["labels"]).all()
        assert fast.get("view") == full.get("view")
    assert any(calls)          # something was pruned
