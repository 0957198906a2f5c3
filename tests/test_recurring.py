"""Candidates by a pattern that recurs where the model looks (``flags.recurring_candidates``;
:mod:`spray.verdict.recurring`): the recurrence matrix against a per-template match, the seed
groups, the boxes of the ``agreed`` transplant region, and the whole path on CNNs trained here
on digit scenes (coloured digits on photographs, tests/benchmarks/eval_data.py) with a ring
logo in a random corner of each stamped image."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import digit_scenes, scored_without_cuts, suspect_pr

from spray.config.presets import load_pipeline


def _patterns(x, maps):
    from spray.verdict.patterns import InputPatterns

    return InputPatterns.of(x, load_pipeline("followed")["preprocess"], maps=maps)


@pytest.mark.parametrize("channels", [1, 3])
def test_recurrence_is_each_peak_windows_best_match(channels):
    """Entry (i, j) is sample i's peak window's best cosine anywhere in image j, as
    :meth:`_PeakWindows.best_match` (checked against a loop over every window in
    test_patterns.py) gives it in double precision; NaN on the diagonal, in the row of a flat
    window and in the column of a non-finite image. A stamp at two places recurs at 1."""
    from spray.verdict.patterns import _PeakWindows, _share_side

    rng = np.random.default_rng(4)
    n, H = 14, 23
    x = rng.random((n, channels, H, H)).astype(np.float32)
    maps = rng.random((n, H, H)).astype(np.float32) * 0.01
    stamp = rng.random((channels, 5, 5)).astype(np.float32)
    x[0, :, 2:7, 3:8] = stamp                     # the same stamp at two places
    x[1, :, 15:20, 14:19] = stamp
    maps[0, 2:7, 3:8] = maps[1, 15:20, 14:19] = 1.0
    x[2] = 0.5                                    # flat: its window holds no pattern
    x[3, 0, 10, 10] = np.nan                      # non-finite: no match in it
    rows = np.array([0, 1, 2, 3, 5, 8, 9, 13])
    p = _patterns(x, maps)
    got = p.recurrence(rows, 0.22)
    assert got.shape == (len(rows), len(rows))
    assert np.isnan(np.diag(got)).all()
    assert np.isnan(got[2]).all() and np.isnan(got[:, 3]).all()
    windows = p.peak_windows(0.22, rows)[0]
    window = _PeakWindows(_share_side(0.22, H, H), H, H)
    for i in (0, 1, 4, 6):
        want = window.best_match(x[rows], windows[i].astype(np.float64))
        want[i] = np.nan
        assert np.allclose(got[i], want, atol=1e-4, equal_nan=True)
    assert got[0, 1] > 0.999 and got[1, 0] > 0.999
    others = np.delete(got[0], [0, 1, 3])
    assert others.max() < 0.95


def _similar(n: int, stamped: np.ndarray, rng) -> np.ndarray:
    s = rng.random((n, n)) * 0.5
    s[np.ix_(stamped, stamped)] = 0.95 + rng.random((len(stamped), len(stamped))) * 0.04
    return s


def test_seeds_start_at_the_most_recurring_pattern():
    """The first seed group is a group whose members find each other (the better of the two
    ways round: a stamped sample whose own window is flat still joins); a pattern every image
    matches (a flat corner) is no seed before it, however high its matches; each sample is in
    one group at most as a seed; fewer samples than a group: none."""
    from spray.verdict.recurring import recurring_seeds

    rng = np.random.default_rng(0)
    n, stamped = 60, np.arange(20, 34)
    s = _similar(n, stamped, rng)
    s[25] = np.nan                       # flat window: found by the others' templates only
    s[:, 7] = s[7] = 0.97                # matched by everything and matching everything
    groups = recurring_seeds(s, 10, 3)
    assert len(groups) == 3 and all(len(g) == 10 and len(set(g)) == 10 for g in groups)
    assert set(groups[0]) <= set(stamped)
    assert 7 not in groups[0]
    seeds = [g[0] for g in groups]
    assert len(set(seeds)) == 3 and all(s_ not in g for s_, g in zip(seeds[1:], groups[:1]))
    assert recurring_seeds(s[:9, :9], 10, 3) == []
    assert recurring_seeds(s, 10, 0) == []


def test_a_common_pattern_would_seed_first_by_its_matches_alone():
    """Why a pair counts above the two samples' usual similarity: a pattern every image
    matches at 0.99 has the highest matches (the stamp's lie at 0.95–0.99), yet it recurs no
    more than usual; the first seed is a stamped sample, and its group holds no other."""
    from spray.verdict.recurring import recurring_seeds

    rng = np.random.default_rng(1)
    n, stamped = 50, np.arange(10, 22)
    s = _similar(n, stamped, rng)
    s[:, 3] = s[3] = 0.99
    both = np.fmax(s, s.T)
    np.fill_diagonal(both, -np.inf)
    top = -np.sort(-both, axis=1)[:, :9].mean(axis=1)
    assert top.argmax() == 3                       # by the matches alone: the common one
    first = recurring_seeds(s, 10, 1)[0]
    assert set(first) <= set(stamped)


def test_boxes_at_places_past_the_border():
    """``boxes_at``: the part of each window inside the image (top-left corners may lie past
    the top or left border, or reach past the bottom and right)."""
    from spray.verdict.transplant import boxes_at

    boxes = boxes_at(np.array([[0, 0], [-2, 3], [6, 7], [2, 2]]), 4, 8, 9)
    assert boxes.shape == (4, 8, 9) and boxes.dtype == bool
    assert boxes[0, :4, :4].all() and boxes[0].sum() == 16
    assert boxes[1, :2, 3:7].all() and boxes[1].sum() == 8
    assert boxes[2, 6:, 7:].all() and boxes[2].sum() == 4
    assert boxes[3, 2:6, 2:6].all() and boxes[3].sum() == 16


@pytest.fixture(scope="module")
def logo_relied(single_torch_thread):
    return digit_scenes("logo", True)


@pytest.fixture(scope="module")
def logo_ignored(single_torch_thread):
    return digit_scenes("logo", False)


_pr = suspect_pr


def test_the_logo_models_are_what_the_cases_need(logo_relied, logo_ignored):
    """The logo turns most other-class scenes to 2 in the first model, few in the second."""
    assert logo_relied["flips"] > 0.5 and abs(logo_ignored["flips"]) < 0.05


def test_the_seed_groups_are_the_logo(logo_relied):
    """The most recurring seed group is stamped samples only (the logo finds the logo in any
    corner; the photographs' windows recur in no other scene as closely)."""
    from spray.verdict.patterns import _evenly
    from spray.verdict.recurring import SEED_SIZE, recurring_seeds
    from spray.verdict.score import flag_params

    s = logo_relied
    params = flag_params(load_pipeline("followed"))
    p = _patterns(s["x"], s["maps"])
    rows = _evenly(np.arange(p.n), params.recurrence_samples)
    groups = recurring_seeds(p.recurrence(rows, params.window_side), SEED_SIZE, 2)
    assert s["stamp"][rows[groups[0]]].all()


def test_a_recurring_logo_the_model_follows_is_flagged(logo_relied, monkeypatch):
    """The seed groups' carriers are the stamped samples, and the model follows their windows
    where they carry the logo (the ``agreed`` region): flagged below the threshold, the
    suspect is the stamped group, its record and the gate's score say how."""
    s = logo_relied
    v = scored_without_cuts(s, monkeypatch)
    assert v.flagged and v.score < v.threshold
    suspect = v.cluster(v.suspect_cluster)
    assert suspect.carried and suspect.recurring and suspect.followed_below
    assert min(_pr(v, s["stamp"])) >= 0.9
    record = v.near_tested[-1]
    assert record["recurring"] and record["decision"] == "followed"
    agreed = next(t for t in record["tests"] if t["region"] == "agreed")
    assert agreed["effect"] >= 0.2 and v.gate_score > v.threshold
    # the suspects' test moves the same windows (the peak windows would miss the logo)
    assert [t["region"] for t in suspect.transplant] == ["place", "agreed"]
    assert suspect.decision == "followed"
    assert v.to_dict()["clusters"][[c.id for c in v.clusters].index(suspect.id)]["recurring"]
    # the relevance graph cut the logo one corner at a time: those clusters are absorbed
    absorbed = v.splits[-1].get("absorbed")
    assert absorbed and not set(absorbed) & {c.id for c in v.clusters}
    assert not np.isin(v.labels, absorbed).any()
    assert set(np.unique(v.labels)) == {c.id for c in v.clusters if c.size}


def test_recurring_candidates_need_the_flag_and_an_effect(logo_relied, monkeypatch):
    """Off: no group is tested; at a bar no effect reaches: tested, not followed."""
    off = scored_without_cuts(logo_relied, monkeypatch, recurring_candidates=False)
    assert not off.flagged and not off.near_tested
    high = scored_without_cuts(logo_relied, monkeypatch, transplant_near_effect=1.0)
    assert not high.flagged and any(t.get("recurring") for t in high.near_tested)


def test_a_logo_the_model_does_not_follow_stays_unflagged(logo_ignored, monkeypatch):
    """The same logo on 30 % of every class of a model that reads the digit: the seed groups
    may be the logo, but the model does not follow it where it is: unflagged."""
    v = scored_without_cuts(logo_ignored, monkeypatch)
    assert not v.flagged
    assert all(t["decision"] != "followed" for t in v.near_tested or [])


def test_a_split_absorbs_the_clusters_it_holds_whole():
    """:func:`~spray.verdict.halves.split_cut`: a cluster all of whose members the cut holds
    is gone and named under ``absorbed``; ``split_from`` is the cluster left that held most of
    the cut's members, None when none is left; the others are measured again."""
    from spray.verdict.halves import split_cut
    from spray.verdict.result import ClusterEvidence

    labels = np.array([0] * 6 + [1] * 3 + [2] * 2 + [3] * 4)
    clusters = [ClusterEvidence.of(labels == c, id=c) for c in range(4)]
    cut = np.zeros(len(labels), dtype=bool)
    cut[[4, 5, 6, 7, 8, 9, 10]] = True            # 2 of cluster 0, all of 1 and 2
    new, out, splits, changed = split_cut(labels, clusters, ClusterEvidence.of(cut))
    assert splits == [{"cluster": 4, "from": 0, "absorbed": [1, 2]}]
    assert [c.id for c in out] == [0, 3, 4] and [c.id for c in changed] == [0]
    assert (new == 4).sum() == 7 and not np.isin(new, [1, 2]).any()
    only = (labels == 1) | (labels == 2)
    _, out, splits, _ = split_cut(labels, clusters, ClusterEvidence.of(only))
    assert splits == [{"cluster": 4, "from": None, "absorbed": [1, 2]}]
    assert out[-1].split_from is None
    part = np.zeros(len(labels), dtype=bool)
    part[[0, 1, 6]] = True                          # holds none whole: as before
    _, _, splits, _ = split_cut(labels, clusters, ClusterEvidence.of(part))
    assert splits == [{"cluster": 4, "from": 0}]


def test_each_candidate_is_tested_where_its_own_group_carries_the_pattern():
    """``_carried_pool``: a group that matches a cluster is that cluster, with the places of
    the group (its ``carried_at``), not those of another source's group that matched it
    before; a cluster's own entry is not changed by pooling."""
    from spray.verdict.result import ClusterEvidence
    from spray.verdict.score import _carried_pool

    n = 100
    labels = np.repeat([0, 1, 2, 3], 25)
    clusters = [ClusterEvidence.of(labels == c, id=c) for c in range(4)]

    def group(rows, tag):
        mask = np.zeros(n, dtype=bool)
        mask[rows] = True
        entry = ClusterEvidence.of(mask, cut_graph="windows")
        entry.carried_at = (np.full((n, 2), tag), 7)
        return entry

    first = _carried_pool([group(np.arange(0, 20), 1), group(np.arange(30, 48), 2),
                           group(np.arange(50, 74), 3)], clusters, [], 0.5)
    assert [(e.id, at[0][0, 0]) for e, at in first] == [(0, 1), (1, 2), (2, 3)]
    second = _carried_pool([group(np.arange(50, 75), 4)], clusters,
                           [e for e, _ in first[:2]], 0.5, absorb=True)
    assert [(e.id, at[0][0, 0]) for e, at in second] == [(2, 4)]
    assert all(c.carried_at is None for c in clusters)
